"""Test doubles: :class:`FakeBackend`, a scripted backend with queued answers and a call history.

The word-overlap judge here also answers the CLI's ``fake`` backend. The repository's loopback HTTP
servers (the OpenAI and Anthropic wire formats) are test support in its ``testkit/`` folder and are
not installed with the package.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

from ..backends.base import Backend
from ..errors import LLMRerankError
from ..protocol import Completion, LogLikelihood, Prompt

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
    ``likelihood`` (a function of ``(context, continuation)`` returning a log-probability, a
    :class:`LogLikelihood`, or raising) makes it report ``supports_likelihood`` and answer
    :meth:`continuation_logprobs`; the pairs it was asked are recorded in ``pairs``.
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
        likelihood: Callable[[str, str], float | LogLikelihood] | None = None,
    ) -> None:
        self.model = model
        self.queue: deque[Answer] = deque(answers)
        self.respond = respond
        self.logprobs = logprobs
        self.supports_logprobs = logprobs is not None
        self.delay = delay
        self.preferred_strategy = preferred_strategy
        self.likelihood = likelihood
        self.supports_likelihood = likelihood is not None
        self.calls: list[Prompt] = []
        self.pairs: list[tuple[str, str]] = []
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

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        """Score each pair with ``likelihood``, after ``delay`` seconds; a raised exception is that pair's answer."""
        if self.likelihood is None:
            return await super().continuation_logprobs(pairs)
        with self._lock:
            self.pairs.extend(pairs)
        if self.delay:
            await asyncio.sleep(self.delay)
        out: list[LogLikelihood | BaseException] = []
        for context, continuation in pairs:
            try:
                value = self.likelihood(context, continuation)
            except Exception as exc:
                out.append(exc)
                continue
            if not isinstance(value, LogLikelihood):
                tokens = max(1, len(continuation.split()))
                value = LogLikelihood(float(value), tokens, (len(context) + len(continuation)) // 4)
            out.append(value)
        return out


_BLOCK = re.compile(r'<document id="([^"]*)">\n(.*?)\n</document>', re.DOTALL)


def _terms(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def overlap(query: str, text: str) -> float:
    """Share of the query's words (longer than two letters) found in ``text``."""
    q = _terms(query)
    return len(q & _terms(text)) / len(q) if q else 0.0


def read_prompt(user: str) -> tuple[str, list[tuple[str, str]]]:
    """The query and the ``(label, text)`` document blocks of one of llmrerank's built-in prompts."""
    query_line = re.search(r"^Query: (.*)$", user, re.MULTILINE)
    return (query_line.group(1) if query_line else ""), _BLOCK.findall(user)


def answer_from(user: str, labels: Sequence[str], relevance: Sequence[float], ratings: Sequence[float]) -> str:
    """How a judge that sees ``relevance`` for the labelled documents answers the prompt ``user``.

    ``ratings`` are the same judgments on the 0-10 scale, for prompts that ask for a rating.
    Ties go to the document shown first.
    """
    if not labels:
        return "I cannot help with that."
    if len(labels) == 1:
        if "Yes or No" in user:
            return "Yes" if ratings[0] >= 5 else "No"
        return str(round(ratings[0]))
    if "0 (unrelated) to 10" in user:
        return "\n".join(f"{label} {round(rating)}" for label, rating in zip(labels, ratings, strict=True))
    if all(len(label) == 1 and label.isalpha() for label in labels):
        return labels[max(range(len(labels)), key=lambda i: (relevance[i], -i))]  # the first of the best
    ranked = sorted(range(len(labels)), key=lambda i: (-relevance[i], i))
    return " > ".join(labels[i] for i in ranked)


def overlap_judge(prompt: Prompt) -> str:
    """A deterministic stand-in for an LLM that judges by word overlap with the query.

    It answers the built-in prompts of every strategy: a 0-10 score for pointwise, one
    ``[i] score`` line per document for batch scoring, the best letter for pairwise (``A``/``B``)
    and setwise (``A``, ``B``, ``C``, ...), ``[i] > [j] > ...`` for listwise (``Yes``/``No`` for
    yes/no prompts). Use it as ``FakeBackend(respond=overlap_judge)``.
    """
    query, blocks = read_prompt(prompt.user)
    scores = [overlap(query, text) for _, text in blocks]
    return answer_from(prompt.user, [label for label, _ in blocks], scores, [10 * s for s in scores])


def overlap_likelihood(context: str, continuation: str) -> float:
    """A deterministic stand-in for log P(continuation | context): higher when more of the
    continuation's words appear in the context. Use it as ``FakeBackend(likelihood=overlap_likelihood)``."""
    return math.log(0.05 + overlap(continuation, context))


def overlap_logprobs(prompt: Prompt, *, sharpness: float = 8.0) -> dict[str, float]:
    """First-token log-probabilities of the word-overlap judge for a prompt with ``choices``.

    Listwise labels and pairwise ``A``/``B`` get a softmax over their documents' overlap (times
    ``sharpness``); a single document gets its 0-10 rating (or Yes/No) nearly surely. Pair it with
    :func:`overlap_judge` for the text: ``FakeBackend(respond=overlap_judge, logprobs=overlap_logprobs)``.
    """
    query_line = re.search(r"^Query: (.*)$", prompt.user, re.MULTILINE)
    query = query_line.group(1) if query_line else ""
    blocks = [(label.strip("[]"), overlap(query, text)) for label, text in _BLOCK.findall(prompt.user)]
    if len(blocks) == 1:
        (choice,) = overlap_judge(prompt).split()
        return {c: (-0.01 if c == choice else -9.0) for c in prompt.choices or (choice,)}
    top = max((sharpness * score for _, score in blocks), default=0.0)
    weights = {label: math.exp(sharpness * score - top) for label, score in blocks}
    total = sum(weights.values())
    return {label: math.log(w / total) for label, w in weights.items()}


class FakeCrossEncoder:
    """A cross-encoder stand-in for :class:`~llmrerank.Hybrid`: ``predict(pairs)`` scores each
    ``(query, document)`` pair with ``score`` (default: :func:`overlap`)."""

    def __init__(self, score: Callable[[str, str], float] = overlap) -> None:
        self.score = score

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One score per pair."""
        return [float(self.score(query, text)) for query, text in pairs]


__all__ = [
    "FakeBackend",
    "FakeBackendExhausted",
    "FakeCrossEncoder",
    "answer_from",
    "overlap",
    "overlap_judge",
    "overlap_likelihood",
    "overlap_logprobs",
    "read_prompt",
]
