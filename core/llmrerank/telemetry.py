"""OpenTelemetry spans emitted by llmrerank itself, whenever ``opentelemetry-api`` is installed.

One span per rerank, ``rerank {strategy}`` (kind INTERNAL), with ``llmrerank.*`` attributes:
strategy, provider, request and response model, document count, ``top_k``, calls (sent, cached,
failed), token totals, status, ``degraded`` and its reasons, score kind; ``error.type`` when the
rerank raised. Under it, one span per LLM request the driver sends, following the OpenTelemetry
GenAI semantic conventions (``{gen_ai.operation.name} {gen_ai.request.model}``, kind CLIENT):
``gen_ai.operation.name`` (``chat``, or ``text_completion`` for continuation log-probs),
``gen_ai.provider.name`` and the older ``gen_ai.system`` (the backend's name), ``gen_ai.request.model``,
``gen_ai.request.max_tokens``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` and
``gen_ai.usage.output_tokens``, ``server.address`` / ``server.port``, and ``error.type`` (the
error's class, or ``cancelled``) with ``http.response.status_code`` where the server sent one and an
ERROR status for a failed or cancelled call. Token totals on the rerank span are ``llmrerank.usage.*``,
not ``gen_ai.usage.*``, so that tools summing GenAI usage do not count them twice. Answers from the
response cache send no request and make no span (``llmrerank.cached_calls`` counts them). No query,
document or prompt text is recorded.

Without ``opentelemetry-api`` these are no-ops; with the API but no SDK configured, the API's own
non-recording spans cost a few microseconds and no attribute is computed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from .backends.base import Backend
from .protocol import Completion, Prompt
from .types import RerankResult

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
except ImportError:  # the optional extra "otel" is not installed
    _context = _trace = None  # type: ignore[assignment]

tracer: Any = None if _trace is None else _trace.get_tracer("llmrerank")
"""The tracer spans come from: the global provider's, resolved on first use (None without the API)."""


def _ignore(_: object) -> None:
    pass


def _error_type(error: BaseException) -> str:
    return "cancelled" if isinstance(error, asyncio.CancelledError) else type(error).__qualname__


def _fail(span: Any, error: BaseException) -> None:
    span.set_attribute("error.type", _error_type(error))
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        span.set_attribute("http.response.status_code", status)
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{type(error).__name__}: {str(error)[:160]}"))


@contextlib.contextmanager
def rerank_span(
    strategy: str, backend: Backend, documents: object, top_k: int | None
) -> Iterator[Callable[[Any], None]]:
    """A span around one rerank; call what it yields with the :class:`RerankResult` before leaving."""
    if tracer is None:
        yield _ignore
        return
    span = tracer.start_span(f"rerank {strategy}")
    if not span.is_recording() and not span.get_span_context().is_valid:
        yield _ignore  # the API's no-op span: nothing to record or to pass on
        return
    if span.is_recording():
        attributes: dict[str, Any] = {
            "llmrerank.strategy": strategy,
            "llmrerank.provider": backend.name,
            "llmrerank.request.model": str(backend.model),
        }
        if isinstance(documents, Sequence):
            attributes["llmrerank.documents"] = len(documents)
        if isinstance(top_k, int) and not isinstance(top_k, bool):
            attributes["llmrerank.top_k"] = top_k
        span.set_attributes(attributes)
    token = _context.attach(_trace.set_span_in_context(span))
    try:
        yield lambda result: _record_rerank(span, result)
    except BaseException as exc:
        if span.is_recording():
            span.record_exception(exc)
            _fail(span, exc)
        raise
    finally:
        _context.detach(token)
        span.end()


def _record_rerank(span: Any, result: RerankResult[Any]) -> None:
    if not span.is_recording():
        return
    usage = result.usage
    attributes: dict[str, Any] = {
        "llmrerank.status": result.status,
        "llmrerank.degraded": result.degraded,
        "llmrerank.degraded_reasons": list(result.degraded_reasons),
        "llmrerank.score_kind": result.score_kind,
        "llmrerank.calls": usage.calls,
        "llmrerank.cached_calls": usage.cached_calls,
        "llmrerank.failed_calls": usage.failed_calls,
        "llmrerank.usage.input_tokens": usage.prompt_tokens,
        "llmrerank.usage.output_tokens": usage.completion_tokens,
    }
    if result.model:
        attributes["llmrerank.response.model"] = result.model
    span.set_attributes(attributes)


def _server(backend: Backend) -> dict[str, Any]:
    url = getattr(backend, "server_url", None)
    if not isinstance(url, str) or not url:
        return {}
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return {}
    return {"server.address": parts.hostname, "server.port": port} if parts.hostname else {}


class CallSpan:
    """The span of one LLM request, current (so an HTTP client's own spans nest under it) until :meth:`end`."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Any, token: Any) -> None:
        self._span = span
        self._token = token

    def end(self, answers: Sequence[object]) -> None:
        """Record the answers (completions or exceptions; a cancellation) and end the span."""
        try:
            _record_call(self._span, answers)
        finally:
            _context.detach(self._token)
            self._span.end()


class _NoSpan:
    __slots__ = ()

    def end(self, answers: Sequence[object]) -> None:
        pass


NO_SPAN = _NoSpan()


def start_call_span(backend: Backend, prompts: Sequence[Prompt], *, likelihood: bool = False) -> CallSpan | _NoSpan:
    """Start the span of one LLM request (a prompt, or a batch of them); end it with ``.end(answers)``
    in the same task."""
    if tracer is None:
        return NO_SPAN
    operation = "text_completion" if likelihood else "chat"
    span = tracer.start_span(f"{operation} {backend.model}", kind=_trace.SpanKind.CLIENT)
    if span.is_recording():
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": backend.name,
            "gen_ai.system": backend.name,
            "gen_ai.request.model": str(backend.model),
            **_server(backend),
        }
        if len(prompts) == 1 and not likelihood:
            attributes["gen_ai.request.max_tokens"] = prompts[0].max_tokens
        if len(prompts) > 1:
            attributes["llmrerank.batch_size"] = len(prompts)
        span.set_attributes(attributes)
    elif not span.get_span_context().is_valid:
        return NO_SPAN  # the API's no-op span: nothing to record or to pass on
    return CallSpan(span, _context.attach(_trace.set_span_in_context(span)))


def _record_call(span: Any, answers: Sequence[object]) -> None:
    if not span.is_recording():
        return
    done = [a for a in answers if isinstance(a, Completion)]
    failed = [a for a in answers if isinstance(a, BaseException)]
    if done:
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": sum(c.prompt_tokens for c in done),
                "gen_ai.usage.output_tokens": sum(c.completion_tokens for c in done),
            }
        )
        model = next((c.model for c in done if c.model), None)
        if model:
            span.set_attribute("gen_ai.response.model", model)
    if failed:
        _fail(span, failed[0])
