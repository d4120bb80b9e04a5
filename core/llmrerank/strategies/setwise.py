"""Setwise: the LLM picks the most relevant of a set of documents, driving a heap sort for the top-k.

After Zhuang et al., "A Setwise Approach for Effective and Highly Efficient Zero-shot Ranking with
Large Language Models" (SIGIR 2024). The documents form a heap in which each node has
``set_size - 1`` children; one call shows a node with its children (labelled ``A``, ``B``, ...)
and asks which is the most relevant, and the winner moves up. Building the heap and extracting
the best ``top_k`` take about ``n / (c - 1) + k * log_{c-1}(n)`` calls for set size ``c``, where
pairwise sorting compares two documents a call (and asks each pair in both orders). Sift-downs of
disjoint subtrees run concurrently while the heap is built; each extraction is sequential.

With log-probabilities the winner is the label most likely to be the answer's first token
(the distribution over the set's labels); otherwise the label is read from the answer's text.
"""

from __future__ import annotations

import string
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..diagnostics import CALL_FAILED, CHOICE_UNPARSED, TRUNCATED
from ..errors import ConfigurationError, ParseError
from ..parsing import choice_distribution, parse_choice
from ..prompts import check_template, clip, document_block, render, system_prompt
from ..protocol import Completion, Context, Prompt, Ranking
from ..types import Diagnostic, Document
from .base import Plan, Step, Strategy, check_int, failure, fit_documents, logprobs_note

SET_TEMPLATE = (
    "Which of the documents below is the most relevant to the query?\n\n"
    "Query: {query}\n\n"
    "{documents}\n\n"
    "Answer with the letter of the most relevant document ({labels}) and nothing else."
)
"""User prompt; placeholders ``{query}``, ``{documents}`` and ``{labels}`` (``A, B, C``).

What every call of one rerank shares (instruction, query) comes before the documents."""

LETTERS = tuple(string.ascii_uppercase)
MAX_SET_SIZE = 20
"""The most documents per call: 20 labels fit in the 20 first-token alternatives OpenAI returns."""


@dataclass(frozen=True)
class Setwise(Strategy):
    """Heap sort over "which of these ``set_size`` documents is the most relevant?" calls.

    Only the best ``top_k`` (all when None) are sorted; the documents below them follow in their
    first-stage order. The model gives an order, not scores: ``score_kind="rank"``, ``score=None``.
    A call that failed or whose answer names no label decides nothing: the set's earliest document
    (first-stage order) wins it, with a ``call_failed`` or ``choice_unparsed`` diagnostic, and a
    document that no readable answer ever compared keeps a fallback place (``fallback=True``)
    after the documents the model placed.
    """

    name: ClassVar[str] = "setwise"
    set_size: int = 4
    """Documents per call (the node and its children): 2 to 20. Larger sets mean fewer calls and
    longer prompts."""
    use_logprobs: bool | None = None
    """Pick the winner from the labels' log-probabilities when the backend has them (None: when available)."""
    max_doc_chars: int = 1500
    system_prompt: str | None = None
    template: str | None = None
    """Replaces the user prompt; placeholders ``{query}``, ``{documents}``, ``{labels}``."""

    def __post_init__(self) -> None:
        size = self.set_size
        if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= MAX_SET_SIZE:
            raise ConfigurationError(f"set_size must be an int from 2 to {MAX_SET_SIZE}, got {size!r}")
        check_int("max_doc_chars", self.max_doc_chars, 1)
        check_template(self.template, ("query", "documents"), "Setwise")

    def prompt(self, query: str, texts: Sequence[str], ctx: Context) -> Prompt:
        """The prompt asking which of ``texts`` is the most relevant."""
        return self._prompt(query, texts, ctx)

    def _prompt(self, query: str, texts: Sequence[str], ctx: Context) -> Prompt:
        labels = LETTERS[: len(texts)]
        blocks = "\n".join(document_block(label, t) for label, t in zip(labels, texts, strict=True))
        user = render(self.template or SET_TEMPLATE, query=query, documents=blocks, labels=", ".join(labels))
        logprobs = ctx.supports_logprobs if self.use_logprobs is None else self.use_logprobs
        return Prompt(
            system_prompt(self.system_prompt, ctx.domain), user, max_tokens=2, choices=labels if logprobs else None
        )

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """Build the heap level by level (sift-downs of one level concurrently), then extract the top-k."""
        n = len(docs)
        clipped = [clip(d.text, self.max_doc_chars) for d in docs]
        size = min(self.set_size, n)
        clipped, diagnostics = fit_documents(clipped, lambda texts: self._prompt(query, texts, ctx), size, ctx)
        texts = [c.text for c in clipped]
        diagnostics += [Diagnostic(TRUNCATED, "", i) for i, c in enumerate(clipped) if c.truncated]
        if n < 2:
            return Ranking(list(range(n)), "rank", diagnostics=diagnostics)
        fan = self.set_size - 1  # children per node
        heap = list(range(n))  # input positions, in heap layout
        judged: set[int] = set()

        def best(ids: list[int]) -> Generator[Step, Any, int]:
            """The most relevant of ``ids`` by one call (the earliest one when nothing could be read)."""
            (answer,) = yield [self.prompt(query, [texts[i] for i in ids], ctx)]
            pick = self.read(answer, ids, diagnostics, ctx)
            if pick is None:
                return min(ids)
            judged.update(ids)
            return ids[pick]

        def sift(node: int, size: int) -> Generator[Step, Any, None]:
            """Move ``heap[node]`` down until it beats its children (within the first ``size``)."""
            while (first := fan * node + 1) < size:
                children = range(first, min(first + fan, size))
                ids = [heap[node]] + [heap[c] for c in children]
                winner = yield from best(ids)
                if winner == ids[0]:
                    return
                child = children[ids.index(winner) - 1]
                heap[node], heap[child] = heap[child], heap[node]
                node = child

        levels: dict[int, list[int]] = {}
        for node in range((n - 2) // fan + 1):  # the nodes with children
            depth, parent = 0, node
            while parent:
                parent, depth = (parent - 1) // fan, depth + 1
            levels.setdefault(depth, []).append(node)
        for depth in sorted(levels, reverse=True):
            yield from side_by_side([sift(node, n) for node in levels[depth]])
        k = min(ctx.top_k or n, n)
        top: list[int] = []
        size = n
        while True:
            top.append(heap[0])
            size -= 1
            if len(top) == k or size == 0:
                break
            heap[0] = heap[size]
            yield from sift(0, size)
        placed = [i for i in top if i in judged]
        chosen = set(placed)
        rest = [i for i in range(n) if i not in chosen]
        return Ranking(placed + rest, "rank", diagnostics=diagnostics, unjudged=set(range(n)) - judged)

    def read(
        self, answer: Completion | BaseException, ids: list[int], diagnostics: list[Diagnostic], ctx: Context
    ) -> int | None:
        """The winner's position in ``ids`` from one answer, or None (recorded) when it cannot be read."""
        where = f"set of documents {', '.join(str(i + 1) for i in ids)}"
        error = failure(answer)
        if error is not None:
            diagnostics.append(Diagnostic(CALL_FAILED, f"{where}: {type(error).__name__}: {error}"))
            return None
        assert isinstance(answer, Completion)
        labels = LETTERS[: len(ids)]
        diagnostics += logprobs_note(answer, labels, where=where)
        probs = choice_distribution(answer.choice_logprobs, labels)
        if probs:
            # Labels the model finds equally likely keep the first-stage order.
            top = max(probs.values())
            choice: str | None = min(
                (label for label, p in probs.items() if p >= top * (1 - 1e-9)),
                key=lambda label: ids[labels.index(label)],
            )
        else:
            choice = parse_choice(answer.text, labels)
        if choice is None:
            if ctx.strict:
                raise ParseError("no label of the set in the answer", output=answer.text)
            diagnostics.append(Diagnostic(CHOICE_UNPARSED, f"{where}: {answer.text[:80]!r}"))
            return None
        return labels.index(choice)


def side_by_side(plans: Sequence[Generator[Step, Any, Any]]) -> Generator[Step, Any, list[Any]]:
    """Run sub-plans that yield lists of prompts together: each step joins their next prompts.

    Returns their results in order. Sub-plans must not share state a sibling changes.
    """
    results: list[Any] = [None] * len(plans)
    steps: dict[int, list[Prompt]] = {}
    for j, sub in enumerate(plans):
        try:
            steps[j] = _prompts(next(sub))
        except StopIteration as stop:
            results[j] = stop.value
    while steps:
        answers = yield [p for step in steps.values() for p in step]
        start, following = 0, {}
        for j, step in steps.items():
            part, start = answers[start : start + len(step)], start + len(step)
            try:
                following[j] = _prompts(plans[j].send(part))
            except StopIteration as stop:
                results[j] = stop.value
        steps = following
    return results


def _prompts(step: Step) -> list[Prompt]:
    if not isinstance(step, list):
        raise TypeError("side_by_side runs sub-plans of prompts only")
    return step
