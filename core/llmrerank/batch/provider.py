"""Provider batch engines: every LLM call of a job in one OpenAI Batch or Anthropic Message Batch (half price).

Only strategies whose calls are all known before any answer arrives can run this way: each row's
plan is walked to its first LLM step (a cross-encoder prefilter runs locally), all those prompts
go to the provider as one batch, and when it ends each plan receives its answers and must finish.
The plans run inside the ordinary :meth:`Reranker.arerank` with a stand-in backend, so input
checks, parsing, fallbacks, diagnostics and usage are exactly those of a live rerank; requests are
built and responses read by the OpenAI/Anthropic backend's own ``request_options`` and
``completion_from``. A request that failed, expired or is missing from the results is a failed
call, as in a live rerank (``on_error`` decides).

State lives in the output folder: ``provider_batches.json`` names each submitted batch and its
rows, so a rerun polls and collects instead of submitting again; ``provider/requests-*.jsonl``
hold the requests (the OpenAI upload) until their batch is collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend, Forwarding
from ..errors import BackendError, ConfigurationError, ParseError, RateLimitError
from ..protocol import Completion, LogLikelihood, Prompt
from ..reranker import Reranker
from ..types import Usage
from .job import Job, Outcome, documents, rerank_row, stops_the_job
from .output import error_line, write_atomic
from .rows import Row

DISCOUNT = 0.5
"""Batch APIs bill half the list price; cost estimates are scaled by this."""
STATE = "provider_batches.json"
BATCHABLE = (
    "pointwise; pairwise with mode='all_pairs' (rows up to all_pairs_max candidates); listwise on rows with "
    "no more candidates than its window; hybrid over one of those"
)
MANY = 1 << 30


class NotBatchableError(ConfigurationError):
    """A strategy needs the answers of one round of LLM calls to build the next."""


def _custom_id(row: int, body: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:20]
    return f"r{row}-{digest}"


class _StandIn(Forwarding):
    """A backend that looks like ``real`` to the strategy (every setting read through) but answers
    from a provider batch.

    ``batch_size`` is huge, so the driver hands over each step of a plan in one ``generate_batch``.
    """

    batch_size = MANY

    def __init__(self, real: Backend) -> None:
        super().__init__(real)
        self.steps = 0

    async def generate(self, prompt: Prompt) -> Completion:
        """Answer one prompt as a step of its own."""
        (answer,) = await self.generate_batch([prompt])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        """Refused: the providers' batch APIs score no given text."""
        raise NotBatchableError("a provider batch cannot score a continuation's log-probability (query_likelihood)")

    async def aclose(self) -> None:
        """Nothing to close: the real backend stays the caller's."""


class _Recorder(_StandIn):
    """Records the prompts of each step and answers them with empty text."""

    def __init__(self, real: Backend) -> None:
        super().__init__(real)
        self.prompts: list[Prompt] = []

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        """Record the step (only the first one's prompts are kept)."""
        self.steps += 1
        if self.steps == 1:
            self.prompts = list(prompts)
        return [Completion("") for _ in prompts]


class _Answers(_StandIn):
    """Answers the first step from a provider batch's results; a second step is an error."""

    def __init__(self, real: Backend, provider: _Provider, row: int, results: BatchResults) -> None:
        super().__init__(real)
        self.provider = provider
        self.row = row
        self.results = results

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        """The results for these prompts, or the errors they ended in."""
        self.steps += 1
        if self.steps > 1:
            return [NotBatchableError("the strategy asked for a second round of calls") for _ in prompts]
        return [self._answer(p) for p in prompts]

    def _answer(self, prompt: Prompt) -> Completion | BaseException:
        answer = self.results.answers.get(_custom_id(self.row, self.provider.body(prompt)))
        if answer is None:
            return BackendError(
                f"{self.results.batch}: no result for this request ({self.results.status})", backend=self.name
            )
        if isinstance(answer, BaseException):
            return answer
        try:
            return self.provider.completion(answer, prompt)
        except Exception as exc:  # a body the backend cannot read: a failed call, as live
            return BackendError(f"{self.results.batch}: unreadable result: {exc}", backend=self.name)


def _shadow(reranker: Reranker, backend: Backend) -> Reranker:
    """``reranker``'s settings over ``backend``, without cache or deadline (no live call happens)."""
    return Reranker(reranker.strategy, backend, **{name: getattr(reranker, name) for name in _SHADOWED})


_SHADOWED = ("domain", "max_concurrency", "on_error", "strict", "min_score", "fusion")
"""The :class:`Reranker` settings a shadow keeps."""


_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar("llmrerank_batch_recording", default=False)


class _QuietWhileRecording(logging.Filter):
    """Drops the Reranker's own result warnings (degraded, fusion) in a task that is only recording a
    row's first step: they describe the empty stand-in answers, and :func:`assemble` reruns the rerank
    on the real answers, logging whatever applies then."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_RECORDING.get() and record.module == "reranker")


logging.getLogger("llmrerank").addFilter(_QuietWhileRecording())


async def first_step(reranker: Reranker, row: Row, top_k: int | None) -> list[Prompt]:
    """The prompts of the row's first LLM step, without repeats.

    Raises :class:`NotBatchableError` when the plan needs a second step, and whatever
    :meth:`Reranker.arerank` raises for the row's input.
    """
    recorder = _Recorder(reranker.backend)
    recording = _RECORDING.set(True)
    try:
        with contextlib.suppress(ParseError):  # strict=True on the empty answers: the step was recorded all the same
            await _shadow(reranker, recorder).arerank(row.query, documents(row), top_k)
    finally:
        _RECORDING.reset(recording)
    if recorder.steps > 1:
        raise NotBatchableError(
            f"strategy {reranker.strategy.name} needs {recorder.steps} rounds of LLM calls for row {row.number} "
            f"({len(row.candidates)} candidates), each built from the answers before; a provider batch can run "
            f"only strategies whose calls are known up front: {BATCHABLE}"
        )
    return list(dict.fromkeys(recorder.prompts))


@dataclass(frozen=True)
class BatchResults:
    """What a provider batch returned: custom_id -> response (or the exception it ended in)."""

    batch: str
    status: str
    """The batch's final status in words (for requests without a result)."""
    answers: Mapping[str, Any] = field(default_factory=dict)


async def assemble(
    reranker: Reranker, provider: _Provider, row: Row, top_k: int | None, results: BatchResults
) -> Outcome:
    """Finish the row's rerank with the provider batch's answers."""
    # A second round would be answered with NotBatchableError, which stops the job (rerank_row raises it).
    return await rerank_row(_shadow(reranker, _Answers(reranker.backend, provider, row.number, results)), row, top_k)


# -- providers -------------------------------------------------------------------------------


def _failure(backend: str, status: int | None, message: str) -> BackendError:
    if status == 429:
        return RateLimitError(message, status_code=status, backend=backend)
    return BackendError(message, status_code=status, backend=backend)


class _Provider:
    """One provider's batch API over the backend's own SDK client."""

    name: str
    max_requests: int
    max_bytes: int

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """The request body, as the backend would send it live."""
        options = dict(self.backend.request_options(prompt))
        extra = options.pop("extra_body", None) or {}
        return {**options, **extra}

    def line(self, custom_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One line of the requests file."""
        raise NotImplementedError

    async def _call(self, call: Any) -> Any:
        """``call()``'s SDK call, with the backend's retries and error mapping."""
        return await self.backend._request(call)

    @property
    def client(self) -> Any:
        """The SDK client of this event loop."""
        return self.backend._current_client()

    async def submit(self, path: Path) -> str:
        """Create a batch from a requests file; its id."""
        raise NotImplementedError

    async def poll(self, batch_id: str) -> tuple[bool, str]:
        """Whether the batch has ended, and its status in words."""
        raise NotImplementedError

    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel the batch."""
        raise NotImplementedError

    async def results(self, batch_id: str) -> BatchResults:
        """The responses (bodies or SDK objects) and failures of an ended batch."""
        raise NotImplementedError

    def completion(self, response: Any, prompt: Prompt) -> Completion:
        """The :class:`Completion` in one result."""
        raise NotImplementedError


class _OpenAI(_Provider):
    name = "openai"
    max_requests = 50_000
    max_bytes = 190 * 2**20
    endpoint = "/v1/chat/completions"
    ended = ("completed", "failed", "expired", "cancelled")

    def line(self, custom_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}

    async def submit(self, path: Path) -> str:
        content = await asyncio.to_thread(path.read_bytes)
        upload = await self._call(lambda: self.client.files.create(file=(path.name, content), purpose="batch"))
        batch = await self._call(
            lambda: self.client.batches.create(
                input_file_id=upload.id,
                endpoint=self.endpoint,
                completion_window="24h",
                metadata={"llmrerank": path.name},
            )
        )
        return str(batch.id)

    async def poll(self, batch_id: str) -> tuple[bool, str]:
        batch = await self._call(lambda: self.client.batches.retrieve(batch_id))
        counts = batch.request_counts
        done = f" {counts.completed + counts.failed}/{counts.total}" if counts is not None else ""
        return batch.status in self.ended, f"{batch_id}: {batch.status}{done}"

    async def cancel(self, batch_id: str) -> None:
        await self._call(lambda: self.client.batches.cancel(batch_id))

    async def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = await self._call(lambda: self.client.files.content(file_id))
        out = []
        for line in content.content.decode("utf-8", "replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                out.append(item)
        return out

    async def results(self, batch_id: str) -> BatchResults:
        batch = await self._call(lambda: self.client.batches.retrieve(batch_id))
        out: dict[str, Any] = {}
        for item in await self._lines(batch.error_file_id) + await self._lines(batch.output_file_id):
            response = item.get("response") or {}
            status = response.get("status_code")
            body = response.get("body")
            if status == 200 and isinstance(body, dict):
                out[item["custom_id"]] = body
                continue
            error = item.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
            detail = f"{code}: {message}" if code else str(message or f"HTTP {status}")
            out[item["custom_id"]] = _failure(self.name, status, f"provider batch {batch_id}: {detail}")
        status = f"batch {batch.status}"
        if batch.errors is not None and batch.errors.data:
            status += ": " + "; ".join(str(e.message) for e in batch.errors.data[:3])
        return BatchResults(batch_id, status, out)

    def completion(self, response: Any, prompt: Prompt) -> Completion:
        from openai.types.chat import ChatCompletion

        return self.backend.completion_from(ChatCompletion.construct(**response), prompt)


class _Anthropic(_Provider):
    name = "anthropic"
    max_requests = 100_000
    max_bytes = 240 * 2**20

    def line(self, custom_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": body}

    async def submit(self, path: Path) -> str:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        requests = [json.loads(line) for line in text.splitlines() if line.strip()]
        batch = await self._call(lambda: self.client.messages.batches.create(requests=requests))
        return str(batch.id)

    async def poll(self, batch_id: str) -> tuple[bool, str]:
        batch = await self._call(lambda: self.client.messages.batches.retrieve(batch_id))
        c = batch.request_counts
        counts = f" ok={c.succeeded} errored={c.errored} expired={c.expired} canceled={c.canceled}"
        return batch.processing_status == "ended", f"{batch_id}: {batch.processing_status}{counts}"

    async def cancel(self, batch_id: str) -> None:
        await self._call(lambda: self.client.messages.batches.cancel(batch_id))

    async def results(self, batch_id: str) -> BatchResults:
        out: dict[str, Any] = {}
        stream = await self._call(lambda: self.client.messages.batches.results(batch_id))
        async for entry in stream:
            result = entry.result
            kind = getattr(result, "type", None)
            if kind == "succeeded":
                out[entry.custom_id] = result.message
                continue
            error = getattr(getattr(result, "error", None), "error", None)
            detail = f"{error.type}: {error.message}" if error is not None else f"request {kind}"
            status = 429 if getattr(error, "type", None) == "rate_limit_error" else None
            out[entry.custom_id] = _failure(self.name, status, f"provider batch {batch_id}: {detail}")
        return BatchResults(batch_id, "batch ended", out)

    def completion(self, response: Any, prompt: Prompt) -> Completion:
        return self.backend.completion_from(response, prompt)


def provider_for(engine: str, backend: Backend) -> _Provider:
    """The provider of ``engine`` (``openai-batch`` or ``anthropic-batch``), checked against the backend."""
    if engine == "openai-batch":
        from ..backends.openai import OpenAIBackend

        if isinstance(backend, OpenAIBackend):
            return _OpenAI(backend)
    elif engine == "anthropic-batch":
        from ..backends.anthropic import AnthropicBackend

        if isinstance(backend, AnthropicBackend):
            return _Anthropic(backend)
    else:
        raise ConfigurationError(f"unknown provider batch engine {engine!r}")
    wanted = engine.split("-")[0]
    raise ConfigurationError(f"engine {engine} needs the {wanted} backend, not {backend.name} ({backend!r})")


# -- state -----------------------------------------------------------------------------------


@dataclass
class _Batch:
    id: str
    rows: list[int]
    requests: int
    file: str
    collected: bool = False


@dataclass
class _State:
    path: Path
    provider: str
    batches: list[_Batch] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, provider: str) -> _State:
        if not path.exists():
            return cls(path, provider)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            state = cls(path, str(data["provider"]), [_Batch(**b) for b in data["batches"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{path} is damaged ({exc}); move it away to submit anew") from exc
        if state.provider != provider and any(not b.collected for b in state.batches):
            raise ConfigurationError(
                f"{path.parent} has {state.provider} batches not yet collected; finish them with that engine first"
            )
        state.provider = provider
        return state

    def save(self) -> None:
        data = {"provider": self.provider, "batches": [vars(b) for b in self.batches]}
        write_atomic(self.path, json.dumps(data) + "\n")

    @property
    def open(self) -> list[_Batch]:
        return [b for b in self.batches if not b.collected]


def _chunks(
    provider: _Provider, folder: Path, requests: list[tuple[Row, list[tuple[str, dict[str, Any]]]]]
) -> list[tuple[Path, list[Row], int]]:
    """Write the requests into files of at most the provider's limits (a row never spans two)."""
    out: list[tuple[Path, list[Row], int]] = []
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    rows: list[Row] = []
    lines: list[bytes] = []
    size = 0

    def flush() -> None:
        if rows:
            path = folder / f"requests-{stamp}-{len(out) + 1}.jsonl"
            with open(path, "wb") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            out.append((path, list(rows), len(lines)))
            rows.clear()
            lines.clear()

    for row, items in requests:
        encoded = [(json.dumps(provider.line(cid, body), ensure_ascii=False) + "\n").encode() for cid, body in items]
        extra = sum(map(len, encoded))
        if rows and (len(lines) + len(encoded) > provider.max_requests or size + extra > provider.max_bytes):
            flush()
            size = 0
        rows.append(row)
        lines.extend(encoded)
        size += extra
    flush()
    return out


async def run_provider(
    job: Job, reranker: Reranker, engine: str, *, poll_interval: float, wait: bool, cancel: bool
) -> tuple[int, tuple[str, ...]]:
    """Run the job through a provider batch API; return the rows still pending and the open batch ids."""
    provider = provider_for(engine, reranker.backend)
    state = _State.load(job.folder.path / STATE, provider.name)
    requests_dir = job.folder.path / "provider"
    owner = {row: batch.id for batch in state.open for row in batch.rows}
    waiting: dict[str, list[Row]] = {batch.id: [] for batch in state.open}
    fresh: list[tuple[Row, list[tuple[str, dict[str, Any]]]]] = []
    for row in job.rows_to_rerank():
        if row.number in owner:
            waiting[owner[row.number]].append(row)
            continue
        try:
            prompts = await first_step(reranker, row, job.top_k)
        except Exception as exc:
            if stops_the_job(exc):  # NotBatchableError too: every row would fail alike
                raise
            job.record(Outcome("error", error_line(row.number, row.query_id, exc), Usage()))
            continue
        if not prompts:  # nothing to ask (e.g. one candidate): finish it now
            job.record(await assemble(reranker, provider, row, job.top_k, BatchResults("no batch", "nothing asked")))
            continue
        bodies = {_custom_id(row.number, body): body for body in map(provider.body, prompts)}
        fresh.append((row, list(bodies.items())))
    unsent = len(fresh)
    if fresh and not cancel:
        for path, rows, count in _chunks(provider, requests_dir, fresh):
            batch_id = await provider.submit(path)
            state.batches.append(_Batch(batch_id, [r.number for r in rows], count, path.name))
            state.save()
            waiting[batch_id] = rows
        unsent = 0
    if cancel:
        for batch in state.open:
            await provider.cancel(batch.id)
    while True:
        for batch in state.open:
            ended, status = await provider.poll(batch.id)
            job.progress.note(status)
            if not ended:
                continue
            results = await provider.results(batch.id)
            for row in waiting.pop(batch.id, []):
                job.record(await assemble(reranker, provider, row, job.top_k, results))
            batch.collected = True
            state.save()
            await asyncio.to_thread((requests_dir / batch.file).unlink, missing_ok=True)
        if not state.open or not wait:
            break
        await asyncio.sleep(poll_interval)
    pending = unsent + sum(len(rows) for rows in waiting.values())
    return pending, tuple(b.id for b in state.open)


__all__ = ["BATCHABLE", "DISCOUNT", "NotBatchableError", "assemble", "first_step", "provider_for", "run_provider"]
