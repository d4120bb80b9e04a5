"""Test doubles: :class:`FakeBackend`, a scripted backend with queued answers and a call history.

The HTTP server that speaks the OpenAI and Anthropic wire formats on loopback lives in
:mod:`llmrerank.testing.server`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Union

from ..backends.base import Backend, Completion, Prompt
from ..errors import LLMRerankError

Answer = Union[str, Completion, BaseException, Callable[[Prompt], "str | Completion"]]  # noqa: UP007


class FakeBackendExhausted(LLMRerankError, AssertionError):
    """A :class:`FakeBackend` was asked more than it was scripted to answer."""


class FakeBackend(Backend):
    """A backend that answers from a script, for tests and examples.

    Answers are taken from ``answers`` in call order (a string, a :class:`Completion`, an exception
    to raise, or a function of the prompt); when the queue is empty, ``respond(prompt)`` answers;
    with neither, :class:`FakeBackendExhausted` is raised. Every prompt is recorded in ``calls``.
    ``logprobs`` (a function of the prompt returning ``{choice: logprob}``) makes the backend
    report ``supports_logprobs`` and fill ``choice_logprobs`` for prompts with choices.
    """

    name = "fake"

    def __init__(
        self,
        answers: Iterable[Answer] = (),
        *,
        respond: Callable[[Prompt], str | Completion] | None = None,
        logprobs: Callable[[Prompt], Mapping[str, float]] | None = None,
        model: str = "fake-model",
        delay: float = 0.0,
        preferred_strategy: str = "listwise",
    ) -> None:
        self.model = model
        self.queue: deque[Answer] = deque(answers)
        self.respond = respond
        self.logprobs = logprobs
        self.supports_logprobs = logprobs is not None
        self.delay = delay
        self.preferred_strategy = preferred_strategy
        self.calls: list[Prompt] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def _next(self, prompt: Prompt) -> Answer:
        with self._lock:
            self.calls.append(prompt)
            if self.queue:
                return self.queue.popleft()
        if self.respond is not None:
            return self.respond
        raise FakeBackendExhausted(f"FakeBackend has no answer for call {len(self.calls)}")

    async def generate(self, prompt: Prompt) -> Completion:
        """Answer from the script, after ``delay`` seconds."""
        answer = self._next(prompt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if isinstance(answer, BaseException):
                raise answer
            if callable(answer):
                answer = answer(prompt)
            if isinstance(answer, Completion):
                return answer
            lp = dict(self.logprobs(prompt)) if self.logprobs and prompt.choices else None
            return Completion(
                text=str(answer),
                prompt_tokens=(len(prompt.system) + len(prompt.user)) // 4,
                completion_tokens=max(1, len(str(answer)) // 4),
                choice_logprobs=lp,
            )
        finally:
            self.in_flight -= 1


__all__ = ["FakeBackend", "FakeBackendExhausted"]
