"""A loopback server for the providers' batch APIs: OpenAI Files + Batch API, Anthropic Message Batches.

:class:`FakeBatchServer` is a :class:`~testkit.server.FakeLLMServer` (so the ordinary
endpoints still work) that also speaks::

    POST /v1/files                      GET /v1/files/{id}      GET /v1/files/{id}/content
    POST /v1/batches                    GET /v1/batches/{id}    POST /v1/batches/{id}/cancel
    POST /v1/messages/batches           GET /v1/messages/batches/{id}
    POST /v1/messages/batches/{id}/cancel                       GET /v1/messages/batches/{id}/results

Each request in a batch is answered by the same responder as a live call (a :class:`Reply` with
``status`` >= 400 becomes that request's error). A batch ends ``batch_delay`` seconds after it
was created, when it is next retrieved; ``outcome`` makes it end ``"expired"`` (the first
``processed`` requests answered, the rest expired) or ``"failed"``; ``omit`` drops requests from
the results altogether. Standard library only.

::

    with FakeBatchServer(overlap_responder, batch_delay=0.2) as srv:  # testkit.server's word-overlap judge
        OpenAIBackend(base_url=srv.base_url, api_key="test")
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal

from .server import (
    Api,
    FakeLLMServer,
    Reply,
    Responder,
    ServerRequest,
    _anthropic_message,
    _error_body,
    _Handler,
    _openai_completion,
    _parse,
    _phrase,
)

Outcome = Literal["completed", "expired", "failed"]
CHAT_ENDPOINT = "/v1/chat/completions"


@dataclass
class FakeBatch:
    """One batch as the server keeps it."""

    id: str
    api: Api
    requests: list[tuple[str, dict[str, Any]]]
    """``(custom_id, request body)`` in submission order."""
    created: float
    input_file_id: str | None = None
    status: str = "in_progress"
    """OpenAI's status words (``in_progress``, ``completed``, ``expired``, ``failed``, ``cancelled``)."""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """custom_id -> ``{"kind": "succeeded" | "errored" | "expired" | "canceled", ...}``."""
    output_file_id: str | None = None
    error_file_id: str | None = None
    ended: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """Whether processing has ended."""
        return self.ended is not None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class FakeBatchServer(FakeLLMServer):
    """:class:`FakeLLMServer` plus the OpenAI Batch API and Anthropic Message Batches.

    ``batch_delay``: seconds from creation until a batch ends (slow completion). ``outcome``:
    ``"completed"`` (default), ``"expired"`` (only the first ``processed`` requests, default half,
    are answered; the others are reported expired) or ``"failed"`` (OpenAI: the batch fails
    validation and has no output; Anthropic: every request is errored). ``omit``: a function of
    the custom_id; true ones are missing from the results, as if the provider lost them.
    Created batches are in :attr:`batches`, uploaded files in :attr:`files`.
    """

    def __init__(
        self,
        responder: Responder | Reply | str | None = None,
        *,
        latency: float = 0.0,
        models: Iterable[str] = ("fake-model",),
        batch_delay: float = 0.0,
        outcome: Outcome = "completed",
        processed: int | None = None,
        omit: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(responder, latency=latency, models=models)
        self.batch_delay = batch_delay
        self.outcome = outcome
        self.processed = processed
        self.omit = omit
        self.batches: dict[str, FakeBatch] = {}
        self.files: dict[str, tuple[str, bytes, str]] = {}
        """file id -> (filename, content, purpose)."""
        self._batch_lock = threading.RLock()

    # -- routing -----------------------------------------------------------------------------

    def _route(self, handler: _Handler, method: str, path: str, headers: Mapping[str, str], raw: bytes) -> bool:
        parts = path.strip("/").split("/")
        if parts[:3] == ["v1", "messages", "batches"]:
            api: Api = "anthropic"
        elif parts[:2] in (["v1", "files"], ["v1", "batches"]):
            api = "openai"
        else:
            return False
        if method == "POST":
            body: Any = {}
            if raw and not headers.get("content-type", "").startswith("multipart/"):
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    handler._send(400, _error_body(api, 400, f"invalid JSON body: {exc}"))
                    return True
            handler._record(ServerRequest(api=api, method="POST", path=path, body=body, headers=headers))
        else:
            body = {}
        try:
            status, answer = self._dispatch(api, method, parts[1:], headers, raw, body)
        except _NotFound as exc:
            status, answer = 404, _error_body(api, 404, str(exc))
        except _Invalid as exc:
            status, answer = 400, _error_body(api, 400, str(exc))
        handler._send(status, answer)
        return True

    def _dispatch(
        self, api: Api, method: str, parts: list[str], headers: Mapping[str, str], raw: bytes, body: Any
    ) -> tuple[int, Mapping[str, Any] | bytes]:
        if api == "anthropic":
            rest = parts[2:]
            if method == "POST" and not rest:
                return 200, self._anthropic_batch(self._create_anthropic(body))
            batch = self._batch(rest[0] if rest else "", "anthropic")
            if method == "GET" and len(rest) == 1:
                return 200, self._anthropic_batch(batch)
            if method == "POST" and rest[1:] == ["cancel"]:
                return 200, self._anthropic_batch(self._cancel(batch))
            if method == "GET" and rest[1:] == ["results"]:
                return 200, self._anthropic_results(batch)
            raise _NotFound(f"unknown path /v1/{'/'.join(parts)}")
        if parts[0] == "files":
            if method == "POST" and len(parts) == 1:
                return 200, self._upload(headers, raw)
            file_id = parts[1] if len(parts) > 1 else ""
            if file_id not in self.files:
                raise _NotFound(f"no file {file_id!r}")
            if method == "GET" and len(parts) == 2:
                return 200, self._file_object(file_id)
            if method == "GET" and parts[2:] == ["content"]:
                return 200, self.files[file_id][1]
            raise _NotFound(f"unknown path /v1/{'/'.join(parts)}")
        if method == "POST" and len(parts) == 1:
            return 200, self._openai_batch(self._create_openai(body))
        batch = self._batch(parts[1] if len(parts) > 1 else "", "openai")
        if method == "GET" and len(parts) == 2:
            return 200, self._openai_batch(batch)
        if method == "POST" and parts[2:] == ["cancel"]:
            return 200, self._openai_batch(self._cancel(batch))
        raise _NotFound(f"unknown path /v1/{'/'.join(parts)}")

    # -- files -------------------------------------------------------------------------------

    def _upload(self, headers: Mapping[str, str], raw: bytes) -> dict[str, Any]:
        head = f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (part.get_filename(), payload)
        if "file" not in fields or "purpose" not in fields:
            raise _Invalid("a file upload needs the fields 'file' and 'purpose'")
        file_id = self._add_file(fields["file"][0] or "upload.jsonl", fields["file"][1], fields["purpose"][1].decode())
        return self._file_object(file_id)

    def _add_file(self, name: str, content: bytes, purpose: str) -> str:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        with self._batch_lock:
            self.files[file_id] = (name, content, purpose)
        return file_id

    def _file_object(self, file_id: str) -> dict[str, Any]:
        name, content, purpose = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }

    # -- batches -----------------------------------------------------------------------------

    def _create_openai(self, body: Any) -> FakeBatch:
        if not isinstance(body, dict):
            raise _Invalid("the body is not a JSON object")
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            raise _NotFound(f"no file {file_id!r}")
        if body.get("endpoint") != CHAT_ENDPOINT:
            raise _Invalid(f"endpoint must be {CHAT_ENDPOINT}")
        if self.files[file_id][2] != "batch":
            raise _Invalid("the input file was not uploaded with purpose 'batch'")
        batch = FakeBatch(f"batch_{uuid.uuid4().hex[:24]}", "openai", [], time.time(), input_file_id=file_id)
        problems: list[str] = []
        seen: set[str] = set()
        for n, line in enumerate(self.files[file_id][1].decode().splitlines(), 1):
            try:
                item = json.loads(line)
                custom_id, request = item["custom_id"], item["body"]
                if item.get("method") != "POST" or item.get("url") != CHAT_ENDPOINT:
                    raise ValueError(f"method/url must be POST {CHAT_ENDPOINT}")
                if not isinstance(custom_id, str) or custom_id in seen or not isinstance(request, dict):
                    raise ValueError(f"custom_id {custom_id!r} is missing, repeated or has no body")
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"line {n}: {exc}")
                continue
            seen.add(custom_id)
            batch.requests.append((custom_id, request))
        if problems or self.outcome == "failed":
            batch.errors = [{"code": "invalid_request", "message": p, "line": None} for p in problems] or [
                {"code": "invalid_request", "message": "the batch failed validation", "line": None}
            ]
            batch.status, batch.ended = "failed", time.time()
        return self._keep(batch)

    def _create_anthropic(self, body: Any) -> FakeBatch:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise _Invalid("requests: a non-empty list is required")
        batch = FakeBatch(f"msgbatch_{uuid.uuid4().hex[:24]}", "anthropic", [], time.time())
        seen: set[str] = set()
        for item in requests:
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or custom_id in seen or not isinstance(params, dict):
                raise _Invalid(f"custom_id {custom_id!r} is missing, repeated or has no params")
            if not 1 <= len(custom_id) <= 64 or not all(c.isalnum() or c in "_-" for c in custom_id):
                raise _Invalid(f"custom_id {custom_id!r} must match ^[a-zA-Z0-9_-]{{1,64}}$")
            seen.add(custom_id)
            batch.requests.append((custom_id, params))
        return self._keep(batch)

    def _keep(self, batch: FakeBatch) -> FakeBatch:
        with self._batch_lock:
            self.batches[batch.id] = batch
        return batch

    def _batch(self, batch_id: str, api: Api) -> FakeBatch:
        with self._batch_lock:
            batch = self.batches.get(batch_id)
        if batch is None or batch.api != api:
            raise _NotFound(f"no batch {batch_id!r}")
        self._advance(batch)
        return batch

    def _advance(self, batch: FakeBatch) -> None:
        """End the batch once ``batch_delay`` has passed: answer its requests as the outcome says."""
        with self._batch_lock:
            if batch.done or time.time() - batch.created < self.batch_delay:
                return
            answered = len(batch.requests)
            if self.outcome == "expired":
                answered = len(batch.requests) // 2 if self.processed is None else self.processed
            for n, (custom_id, request) in enumerate(batch.requests):
                if n >= answered:
                    batch.results[custom_id] = {"kind": "expired"}
                elif batch.api == "anthropic" and self.outcome == "failed":
                    batch.results[custom_id] = {"kind": "errored", "status": 500, "message": "Internal server error"}
                else:
                    batch.results[custom_id] = self._answer_item(batch.api, request)
            batch.status = "expired" if self.outcome == "expired" else "completed"
            self._finish(batch)

    def _cancel(self, batch: FakeBatch) -> FakeBatch:
        with self._batch_lock:
            if not batch.done:
                for custom_id, _ in batch.requests:
                    batch.results[custom_id] = {"kind": "canceled"}
                batch.status = "cancelled"
                self._finish(batch)
        return batch

    def _finish(self, batch: FakeBatch) -> None:
        batch.ended = time.time()
        if self.omit is not None:
            batch.results = {k: v for k, v in batch.results.items() if not self.omit(k)}
        if batch.api == "openai":
            out = [self._openai_line(k, v) for k, v in batch.results.items() if v["kind"] == "succeeded"]
            err = [self._openai_line(k, v) for k, v in batch.results.items() if v["kind"] != "succeeded"]
            if out:
                batch.output_file_id = self._add_file("output.jsonl", _jsonl(out), "batch_output")
            if err:
                batch.error_file_id = self._add_file("errors.jsonl", _jsonl(err), "batch_output")

    def _answer_item(self, api: Api, body: dict[str, Any]) -> dict[str, Any]:
        request = _parse(api, "POST", CHAT_ENDPOINT if api == "openai" else "/v1/messages", body, {})
        if not request.model or (api == "anthropic" and request.max_tokens is None):
            return {"kind": "errored", "status": 400, "message": "model and max_tokens are required"}
        reply = self._answer(request)
        if reply.status >= 400 or reply.reset:
            status = reply.status if reply.status >= 400 else 500
            return {"kind": "errored", "status": status, "message": reply.text or _phrase(status)}
        message = _openai_completion(request, reply) if api == "openai" else _anthropic_message(request, reply)
        return {"kind": "succeeded", "body": message}

    # -- wire formats ------------------------------------------------------------------------

    def _openai_line(self, custom_id: str, result: dict[str, Any]) -> dict[str, Any]:
        line: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id}
        kind = result["kind"]
        if kind == "succeeded":
            line["response"] = {"status_code": 200, "request_id": uuid.uuid4().hex, "body": result["body"]}
            line["error"] = None
        elif kind == "errored":
            body = _error_body("openai", result["status"], result["message"])
            line["response"] = {"status_code": result["status"], "request_id": uuid.uuid4().hex, "body": body}
            line["error"] = None
        else:
            code = "batch_expired" if kind == "expired" else "batch_cancelled"
            line["response"] = None
            line["error"] = {"code": code, "message": f"This request was {kind} before it could be executed."}
        return line

    def _openai_batch(self, batch: FakeBatch) -> dict[str, Any]:
        kinds = [r["kind"] for r in batch.results.values()]
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": CHAT_ENDPOINT,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "created_at": int(batch.created),
            "expires_at": int(batch.created) + 86400,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "request_counts": {
                "total": len(batch.requests),
                "completed": kinds.count("succeeded"),
                "failed": len(kinds) - kinds.count("succeeded"),
            },
            "metadata": None,
        }

    def _anthropic_batch(self, batch: FakeBatch) -> dict[str, Any]:
        kinds = [r["kind"] for r in batch.results.values()]
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if batch.done else "in_progress",
            "request_counts": {
                "processing": 0 if batch.done else len(batch.requests),
                "succeeded": kinds.count("succeeded"),
                "errored": kinds.count("errored"),
                "canceled": kinds.count("canceled"),
                "expired": kinds.count("expired"),
            },
            "created_at": _iso(batch.created),
            "expires_at": _iso(batch.created + 86400),
            "ended_at": _iso(batch.ended) if batch.ended else None,
            "cancel_initiated_at": _iso(batch.ended) if batch.status == "cancelled" and batch.ended else None,
            "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch.id}/results" if batch.done else None,
        }

    def _anthropic_results(self, batch: FakeBatch) -> bytes:
        if not batch.done:
            raise _Invalid(f"batch {batch.id} is still in progress")
        lines = []
        for custom_id, result in batch.results.items():
            kind = result["kind"]
            if kind == "succeeded":
                item: dict[str, Any] = {"type": "succeeded", "message": result["body"]}
            elif kind == "errored":
                item = {"type": "errored", "error": _error_body("anthropic", result["status"], result["message"])}
            else:
                item = {"type": kind}
            lines.append({"custom_id": custom_id, "result": item})
        return _jsonl(lines)


def _jsonl(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode()


class _NotFound(Exception):
    pass


class _Invalid(Exception):
    pass


__all__ = ["CHAT_ENDPOINT", "FakeBatch", "FakeBatchServer", "Outcome"]
