"""The one async driver: runs a strategy's plan against a backend, with bounds and accounting."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any, Literal

from .adaptive import CALL, AdaptiveLimiter, Slot
from .backends.base import RERANK_ENDS, Backend
from .cache import ResponseCache, alookup_many, astore, likelihood_prompt, store
from .diagnostics import CONTEXT_SHRUNK
from .errors import (
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    ContextLengthError,
    DeadlineExceededError,
    LLMRerankError,
    RateLimitError,
    error_from_status,
)
from .prompts import halve_documents
from .protocol import Completion, LogLikelihood, Prompt, Ranking
from .strategies.base import Likelihood, Plan, Predict, Step
from .telemetry import start_call_span
from .types import Diagnostic, Usage

OnError = Literal["degrade", "degrade_all", "raise"]
"""What a failed LLM call does to a rerank.

- ``degrade`` (default): transient failures (429, 5xx, timeouts, resets, responses that are not
  completions) give a fallback order with ``degraded=True``; permanent ones (401, 403, 404, 400,
  context length: :class:`~llmrerank.errors.PermanentBackendError`) raise, since retrying cannot fix them.
- ``degrade_all``: every backend failure degrades, permanent ones too.
- ``raise``: every failure raises its typed error.

Configuration errors (a missing API key or package) always raise.
"""

Ask = Callable[[list[Prompt]], Awaitable[list[Completion | BaseException]]]
"""How a step's prompts reach the backend when it is not :meth:`Backend.generate` (likelihood requests)."""

CIRCUIT_TIMEOUTS = 2
"""After this many timed-out calls in a row, a rerank sends no more calls: a server that does not
answer would make every later call wait for its full timeout too."""


@dataclass
class Meter:
    """Mutable usage counters for one rerank."""

    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    llm_seconds: float = 0.0
    reasoning_tokens: int = 0
    model: str | None = None
    """The first model name an answer carried."""
    deadline_hit: bool = False
    errors: list[BaseException] = field(default_factory=list)
    """The failures, in the order they happened."""
    diagnostics: list[Diagnostic] = field(default_factory=list)
    """What the driver itself did (``context_shrunk``)."""
    timeouts_in_a_row: int = 0
    circuit_open: bool = False
    """Set once :data:`CIRCUIT_TIMEOUTS` calls in a row timed out, or once a call timed out and the
    server did not answer a quick check (:meth:`~llmrerank.backends.base.Backend.answers`): later
    calls of the rerank are not sent."""
    silent: bool = False
    """The server did not answer the check after a timed-out call: it has stopped answering."""

    def usage(self, wall_seconds: float) -> Usage:
        """Freeze the counters."""
        counters = {f.name: getattr(self, f.name) for f in fields(Usage) if f.name != "wall_seconds"}
        return Usage(**counters, wall_seconds=wall_seconds)

    def count(self, answer: Completion) -> None:
        """Add an answered call and its tokens."""
        self.calls += 1
        self.prompt_tokens += answer.prompt_tokens
        self.completion_tokens += answer.completion_tokens
        self.cached_prompt_tokens += answer.cached_prompt_tokens
        self.reasoning_tokens += answer.reasoning_tokens
        self.model = self.model or answer.model

    def count_timeout(self, answer: Completion | BaseException) -> None:
        """Open the circuit after :data:`CIRCUIT_TIMEOUTS` timed-out answers in a row."""
        self.timeouts_in_a_row = self.timeouts_in_a_row + 1 if isinstance(answer, BackendTimeoutError) else 0
        self.circuit_open |= self.timeouts_in_a_row >= CIRCUIT_TIMEOUTS


def _as_failure(exc: Exception, backend: Backend) -> LLMRerankError:
    if isinstance(exc, LLMRerankError):
        return exc
    # A framework's model (LangChain, LlamaIndex) raises its SDK's errors: keep their HTTP status.
    status = getattr(exc, "status_code", None)
    error = error_from_status(status if isinstance(status, int) else None, f"{type(exc).__name__}: {exc}")
    error.backend = backend.name
    error.__cause__ = exc
    return error


def reset_var(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    """``var.reset(token)``, unless this runs in another context than the one ``token`` came from:
    a rerank abandoned by its caller (an orphaned task) is closed by the collector, or at exit, in
    whatever context is current then, and there is nothing of its own to restore there."""
    with contextlib.suppress(ValueError):  # "<Token ...> was created in a different Context"
        var.reset(token)


def learn_context(backend: Backend, error: ContextLengthError) -> None:
    """Keep the context size a context-length error states (llama.cpp and vLLM say it) on the
    backend, so that the next reranks fit their prompts to it."""
    from .backends.servers import stated_context

    stated = stated_context(str(error))
    if stated is not None and (backend.context_tokens is None or stated < backend.context_tokens):
        backend.context_tokens = stated


def shorter_prompt(prompt: Prompt) -> Prompt | None:
    """What is resent, once, for a prompt too long for the model: the strategy's own shorter version
    (:attr:`~llmrerank.protocol.Prompt.shrink`), else the prompt with each document cut to
    half (:func:`~llmrerank.prompts.halve_documents`); None when it holds no document to cut.
    The same for every strategy."""
    return prompt.shrink() if prompt.shrink is not None else halve_documents(prompt)


def is_fatal(error: BaseException, on_error: OnError) -> bool:
    """Whether the failure of a call, ``error``, must end the rerank under ``on_error`` instead of
    degrading it. (A deadline or a prefilter ends it only under ``"raise"``: :meth:`Driver._unless_raising`.)"""
    if not isinstance(error, BackendError):
        return True  # configuration problems, ParseError, anything unexpected
    if on_error == "raise":
        return True
    return error.permanent and on_error != "degrade_all"


@dataclass(eq=False)
class Driver:
    """Executes plans for one backend.

    ``limiter`` bounds the LLM calls in flight across every rerank sharing it. ``deadline`` (seconds)
    bounds one rerank: calls still running then are cancelled and count as failed.
    """

    backend: Backend
    limiter: AdaptiveLimiter
    _: KW_ONLY
    on_error: OnError = "degrade"
    deadline: float | None = None
    cache: ResponseCache | None = None
    meter: Meter = field(default_factory=Meter, init=False)
    _ends_at: float | None = field(default=None, init=False)
    _writes: list[asyncio.Future[None]] = field(default_factory=list, init=False)
    _check: asyncio.Future[bool | None] | None = field(default=None, init=False)

    async def run(self, plan: Plan) -> Ranking:
        """Drive ``plan`` to its :class:`Ranking`."""
        loop = asyncio.get_running_loop()
        self._ends_at = None if self.deadline is None else loop.time() + self.deadline
        ends = RERANK_ENDS.set(None if self.deadline is None else time.monotonic() + self.deadline)
        try:
            step: Step = next(plan)
            while True:
                answers = await self._step(step)
                step = plan.send(answers)
        except StopIteration as stop:
            ranking: Ranking = stop.value
            if self._writes:  # the rerank's cache writes end with it (within the deadline)
                await asyncio.wait(self._writes, timeout=self._remaining())
            return ranking
        finally:
            plan.close()
            reset_var(RERANK_ENDS, ends)
            if self._check is not None:
                self._check.cancel()

    def _store(self, cache: ResponseCache, prompt: Prompt, completion: Completion) -> None:
        """Write an answer to the cache: at once for an in-process cache; for one that writes off
        the event loop (``aset``), as a task :meth:`run` waits for at the end, so that the answer is
        never held up (nor lost to a deadline) by its write."""
        if getattr(cache, "aset", None) is None:
            store(cache, self.backend, prompt, completion)
        else:
            self._writes.append(asyncio.ensure_future(astore(cache, self.backend, prompt, completion)))

    def _remaining(self) -> float | None:
        if self._ends_at is None:
            return None
        return max(0.0, self._ends_at - asyncio.get_running_loop().time())

    async def _step(self, step: Step) -> Any:
        if isinstance(step, Predict):
            return await self._predict(step)
        if isinstance(step, Likelihood):
            return await self._likelihood(step)
        return await self._prompts(step)

    async def _likelihood(self, step: Likelihood) -> list[LogLikelihood | BaseException]:
        """Continuation log-probs, through the same limiter, batching, deadline, cache and accounting as prompts."""
        if not self.backend.supports_likelihood:
            raise ConfigurationError(f"backend {self.backend!r} cannot score continuations (supports_likelihood)")
        keys = [likelihood_prompt(context, continuation) for context, continuation in step.pairs]
        answers = await self._prompts(keys, self._ask_likelihood)
        return [a if isinstance(a, BaseException) else LogLikelihood.from_completion(a) for a in answers]

    async def _ask_likelihood(self, keys: list[Prompt]) -> list[Completion | BaseException]:
        pairs = [(key.user, (key.choices or ("",))[0]) for key in keys]
        results = await self.backend.continuation_logprobs(pairs)
        return [r.as_completion() if isinstance(r, LogLikelihood) else r for r in results]

    async def _predict(self, step: Predict) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(step.scorer, step.pairs), self._remaining())
        except asyncio.TimeoutError:
            return self._unless_raising(self._deadline_passed(" in the prefilter"))
        except ConfigurationError:
            raise  # a missing sentence-transformers or model file is not a passing fault
        except Exception as exc:
            return self._unless_raising(exc, BackendError(f"prefilter failed: {type(exc).__name__}: {exc}"))

    def _deadline_passed(self, when: str) -> DeadlineExceededError:
        """Note that the rerank's deadline passed; the error that stands for what it cut off."""
        self.meter.deadline_hit = True
        return DeadlineExceededError(f"deadline of {self.deadline}s passed{when}")

    def _unless_raising(self, error: BaseException, raised: BaseException | None = None) -> BaseException:
        """``error``, to stand for an answer that did not come; under ``on_error="raise"`` the rerank
        ends instead with ``raised`` (caused by ``error``), or with ``error`` itself."""
        if self.on_error == "raise":
            if raised is None:
                raise error from None
            raise raised from error
        return error

    async def _prompts(self, prompts: Sequence[Prompt], ask: Ask | None = None) -> list[Completion | BaseException]:
        answers: list[Completion | BaseException | None] = [None] * len(prompts)
        todo: list[int] = []
        hits: list[Completion | None] = [None] * len(prompts)
        if self.cache is not None:
            hits = await alookup_many(self.cache, self.backend, prompts)
        for i, hit in enumerate(hits):
            if hit is not None:
                answers[i] = hit
                self.meter.cached_calls += 1
                self.meter.model = self.meter.model or hit.model
            else:
                todo.append(i)
        size = max(1, self.backend.batch_size)
        chunks = [todo[k : k + size] for k in range(0, len(todo), size)]
        remaining = self._remaining()
        if chunks and remaining is not None and remaining <= 0:
            for i in todo:
                answers[i] = self._unless_raising(self._deadline_passed(" before this call"))
            return [a for a in answers if a is not None]
        tasks = [asyncio.ensure_future(self._call([prompts[i] for i in chunk], ask=ask)) for chunk in chunks]
        closed = False
        try:
            if tasks:
                # A task raises only for a failure that ends the rerank (see is_fatal): stop the rest then.
                done, _ = await asyncio.wait(tasks, timeout=remaining, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        raise exc
        except GeneratorExit:  # closed, not cancelled (an abandoned rerank collected): no loop to await on
            closed = True
            raise
        finally:
            for task in tasks:
                task.cancel()
            if not closed:
                await asyncio.gather(*tasks, return_exceptions=True)
        for chunk, task in zip(chunks, tasks, strict=True):
            if task.cancelled():
                self.meter.calls += len(chunk)
                self.meter.failed_calls += len(chunk)
                error = self._unless_raising(self._deadline_passed(" during this call"))
                for i in chunk:
                    answers[i] = error
                continue
            for i, answer in zip(chunk, task.result(), strict=True):
                answers[i] = answer
        return [a for a in answers if a is not None]

    async def _check_silence(self) -> None:
        """After a timed-out call: ask the backend, once per rerank, whether its server answers at
        all; when it does not, open the circuit, so that one rerank spends about one ``timeout`` on
        a server that stopped answering (not one per call)."""
        if self._check is None:
            self._check = asyncio.ensure_future(self.backend.answers())
        try:
            answers = await asyncio.shield(self._check)
        except Exception:  # a backend's check must not fail the rerank
            return
        if answers is False:
            self.meter.silent = self.meter.circuit_open = True

    async def _call(
        self, prompts: list[Prompt], after: BackendError | None = None, ask: Ask | None = None
    ) -> list[Completion | BaseException]:
        """One backend call (or batch) under the limiter; failures become answers unless fatal.

        ``after``: the context-length error these prompts are the shorter resend of; a failure of
        theirs names it as its first cause (:attr:`~llmrerank.errors.BackendError.earlier`).
        ``ask``: how to send them instead of :meth:`Backend.generate` (likelihood requests).
        """
        slot = await self._slot()
        if slot is None:
            skipped = BackendError("not sent: earlier calls of this rerank timed out", backend=self.backend.name)
            return [skipped] * len(prompts)
        results = await self._send(prompts, slot, ask)
        self._feedback(slot, results)
        if any(isinstance(r, BackendTimeoutError) for r in results) and not self.meter.circuit_open:
            await self._check_silence()
        out: list[Completion | BaseException] = []
        for prompt, result in zip(prompts, results, strict=True):
            self.meter.count_timeout(result)
            if isinstance(result, Exception):
                out += await self._failed(prompt, result, after, ask)
            elif isinstance(result, BaseException):
                raise result
            else:
                out.append(self._answered(prompt, result))
        return out

    async def _slot(self) -> Slot | None:
        """A slot of the limiter, once a pending check of the server is over; None (and no slot
        held) when the circuit is open."""
        slot = await self.limiter.take()
        if self._check is not None and not self._check.done():
            await asyncio.wait([self._check])  # a call timed out: send nothing more until the server answers a check
        if self.meter.circuit_open:
            self.limiter.give(slot)
            return None
        return slot

    async def _send(self, prompts: list[Prompt], slot: Slot, ask: Ask | None) -> list[Completion | BaseException]:
        """The backend's answers to ``prompts`` (an exception stands for each when the call fails),
        timed and traced; the slot is given back when they come."""
        token = CALL.set((self.limiter, slot))  # for the SDK's HTTP hooks (llmrerank.adaptive)
        span = start_call_span(self.backend, prompts, likelihood=ask is not None)
        start = time.perf_counter()
        try:
            results = await self._generate(prompts, ask)
        except Exception as exc:
            results = [exc] * len(prompts)
        except BaseException as exc:  # cancelled: the deadline, a fatal sibling call, a client gone
            span.end([exc])
            raise
        finally:
            self.meter.llm_seconds += time.perf_counter() - start
            reset_var(CALL, token)
            self.limiter.give(slot)
        span.end(results)
        return results

    async def _generate(self, prompts: list[Prompt], ask: Ask | None) -> list[Completion | BaseException]:
        if ask is not None:
            return await ask(prompts)
        if len(prompts) == 1 and self.backend.batch_size <= 1:
            return [await self.backend.generate(prompts[0])]
        return await self.backend.generate_batch(prompts)

    def _feedback(self, slot: Slot, results: Sequence[Completion | BaseException]) -> None:
        """Tell the limiter how the call went: a rate limit (that the HTTP hook did not see, from
        another backend) cuts the limit; a call with no failure grows it."""
        limited = [r for r in results if isinstance(r, RateLimitError)]
        if limited and not slot.rate_limited:
            self.limiter.rate_limited(slot, limited[0].retry_after)
        elif not any(isinstance(r, BaseException) for r in results):
            self.limiter.succeeded(slot)

    async def _failed(
        self, prompt: Prompt, result: Exception, after: BackendError | None, ask: Ask | None
    ) -> list[Completion | BaseException]:
        """A failed call counted, and its error as the answer (raised when fatal); a prompt too long
        for the model is resent once, shorter (:func:`shorter_prompt`), and that answer stands."""
        failure = _as_failure(result, self.backend)
        self.meter.calls += 1
        if isinstance(failure, BackendError) and after is not None and failure is not after:
            failure.earlier = after
        if isinstance(failure, ContextLengthError):
            learn_context(self.backend, failure)
            shorter = shorter_prompt(prompt) if after is None else None
            if shorter is not None:
                message = f"prompt too long for the model, resent shorter: {failure}"
                self.meter.diagnostics.append(Diagnostic(CONTEXT_SHRUNK, message))
                return await self._call([shorter], after=failure, ask=ask)
        self.meter.failed_calls += 1
        self.meter.errors.append(failure)
        if is_fatal(failure, self.on_error):
            raise failure
        return [failure]

    def _answered(self, prompt: Prompt, answer: Completion) -> Completion:
        """An answer counted, and cached."""
        self.meter.count(answer)
        if self.cache is not None:
            self._store(self.cache, prompt, answer)
        return answer
