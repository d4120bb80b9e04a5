"""Pairwise: the LLM says which of two documents (A or B) answers the query better.

Each pair is asked in both orders (A/B and B/A) to cancel position bias. Two modes:

- ``all_pairs``: every pair, both orders: ``n * (n - 1)`` calls in one concurrent step; the score
  is each document's average preference over the others (``win_rate``).
- ``sort``: a quickselect-then-quicksort over the first-stage order that only sorts what the
  top-k needs: each round compares a segment's members with one pivot concurrently, about
  ``2 * (2n + k log2 k)`` calls in expectation and ``O(log n)`` sequential rounds.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..diagnostics import CALL_FAILED, CHOICE_UNPARSED, TRUNCATED
from ..errors import ConfigurationError, ParseError
from ..parsing import choice_distribution, parse_choice
from ..prompts import check_template, clip, document_block, render, system_prompt
from ..protocol import Completion, Context, Prompt, Ranking
from ..types import Diagnostic, Document
from .base import Plan, Step, Strategy, check_int, failure, fit_documents, logprobs_note

PAIR_TEMPLATE = (
    "Compare how well two documents answer a query.\n\n"
    "Query: {query}\n\n{document_a}\n\n{document_b}\n\n"
    "Which document answers the query better, A or B? Answer with the single letter A or B."
)
"""User prompt; placeholders ``{query}``, ``{document_a}``, ``{document_b}`` (instruction and query first)."""

AB = ("A", "B")


@dataclass(frozen=True)
class Pairwise(Strategy):
    """Compare documents two at a time, in both orders; see the module docstring for the call counts."""

    name: ClassVar[str] = "pairwise"
    mode: Literal["auto", "all_pairs", "sort"] = "auto"
    """``auto``: ``all_pairs`` up to ``all_pairs_max`` documents, else ``sort``."""
    all_pairs_max: int = 8
    use_logprobs: bool | None = None
    """Use the A/B log-probability margin when the backend has log-probs (None: when available)."""
    max_doc_chars: int = 1500
    system_prompt: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "all_pairs", "sort"):
            raise ConfigurationError(f"unknown pairwise mode {self.mode!r}")
        check_int("max_doc_chars", self.max_doc_chars, 1)
        check_int("all_pairs_max", self.all_pairs_max, 2)
        check_template(self.template, ("query", "document_a", "document_b"), "Pairwise")

    def prompt(self, query: str, a: str, b: str, ctx: Context) -> Prompt:
        """The prompt comparing clipped texts ``a`` and ``b``."""
        user = render(
            self.template or PAIR_TEMPLATE,
            query=query,
            document_a=document_block("A", a),
            document_b=document_block("B", b),
        )
        logprobs = ctx.supports_logprobs if self.use_logprobs is None else self.use_logprobs
        return Prompt(
            system_prompt(self.system_prompt, ctx.domain),
            user,
            max_tokens=2,
            choices=AB if logprobs else None,
        )

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """All pairs or sort-based, by ``mode``."""
        n = len(docs)
        texts, diagnostics = self._fit(query, docs, ctx)
        mode = self.mode if self.mode != "auto" else ("all_pairs" if n <= self.all_pairs_max else "sort")
        if n < 2:
            return Ranking(list(range(n)), "rank", diagnostics=diagnostics)
        comparisons = _Comparisons(self, query, texts, ctx, diagnostics)
        if mode == "all_pairs":
            return (yield from comparisons.all_pairs())
        order = yield from comparisons.select(list(range(n)), ctx.top_k or n)
        return Ranking(order, "rank", diagnostics=diagnostics, unjudged=set(range(n)) - comparisons.judged)

    def _fit(self, query: str, docs: Sequence[Document], ctx: Context) -> tuple[list[str], list[Diagnostic]]:
        """The clipped texts, cut further where two would not fit the context, and the diagnostics of both."""
        clipped = [clip(d.text, self.max_doc_chars) for d in docs]
        diagnostics: list[Diagnostic] = []
        if len(docs) >= 2:  # a prompt holds the two longest
            clipped, diagnostics = fit_documents(clipped, lambda two: self.prompt(query, two[0], two[1], ctx), 2, ctx)
        diagnostics += [Diagnostic(TRUNCATED, "", i) for i, c in enumerate(clipped) if c.truncated]
        return [c.text for c in clipped], diagnostics

    def read(
        self, answer: Completion | BaseException, diagnostics: list[Diagnostic], index: int, ctx: Context
    ) -> float | None:
        """P(A is better) from one answer, or None (recorded) when it cannot be read."""
        error = failure(answer)
        if error is not None:
            diagnostics.append(Diagnostic(CALL_FAILED, f"{type(error).__name__}: {error}", index))
            return None
        assert isinstance(answer, Completion)
        diagnostics += logprobs_note(answer, AB, index)
        probs = choice_distribution(answer.choice_logprobs, AB)
        if probs:
            return probs.get("A", 0.0)
        choice = parse_choice(answer.text, AB)
        if choice is None:
            if ctx.strict:
                raise ParseError("no A/B answer", output=answer.text)
            diagnostics.append(Diagnostic(CHOICE_UNPARSED, f"{answer.text[:80]!r}", index))
            return None
        return 1.0 if choice == "A" else 0.0


@dataclass
class _Comparisons:
    """The comparisons of one plan: its texts, the diagnostics of each answer, the documents judged."""

    strategy: Pairwise
    query: str
    texts: list[str]
    ctx: Context
    diagnostics: list[Diagnostic]
    judged: set[int] = field(default_factory=set)

    def compare(self, pairs: list[tuple[int, int]]) -> Generator[Step, Any, list[float | None]]:
        """Preference of i over j in [0, 1] for each pair (None when neither order could be read)."""
        prompt, texts, query, ctx = self.strategy.prompt, self.texts, self.query, self.ctx
        prompts = []
        for i, j in pairs:
            prompts += [prompt(query, texts[i], texts[j], ctx), prompt(query, texts[j], texts[i], ctx)]
        answers = yield list(prompts)
        prefs: list[float | None] = []
        for k, (i, j) in enumerate(pairs):
            first = self.strategy.read(answers[2 * k], self.diagnostics, i, ctx)
            second = self.strategy.read(answers[2 * k + 1], self.diagnostics, j, ctx)
            votes = [v for v in (first, None if second is None else 1.0 - second) if v is not None]
            if votes:
                self.judged.update((i, j))
            prefs.append(sum(votes) / len(votes) if votes else None)
        return prefs

    def all_pairs(self) -> Generator[Step, Any, Ranking]:
        """Every pair in one step; documents ordered by win rate."""
        n = len(self.texts)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        prefs = yield from self.compare(pairs)
        wins = [0.0] * n
        known = [0] * n
        for (i, j), p in zip(pairs, prefs, strict=True):
            if p is None:
                continue
            wins[i] += p
            wins[j] += 1.0 - p
            known[i] += 1
            known[j] += 1
        # A document's win rate is over the comparisons that could be read; with none, it has no score.
        scores = {i: wins[i] / known[i] for i in range(n) if known[i]}
        order = sorted(scores, key=lambda i: (-scores[i], i))
        unscored = [i for i in range(n) if i not in scores]
        return Ranking(order + unscored, "win_rate", scores, diagnostics=self.diagnostics, unjudged=set(unscored))

    def select(self, items: list[int], k: int) -> Generator[Step, Any, list[int]]:
        """Sort ``items`` well enough that its best ``k`` come first in order."""
        if len(items) <= 1 or k <= 0:
            return items
        pivot = items[len(items) // 2]
        others = [x for x in items if x != pivot]
        prefs = yield from self.compare([(x, pivot) for x in others])
        # An unreadable comparison counts as a tie, which keeps the first-stage order.
        ties = [0.5 if p is None else p for p in prefs]
        better = [x for x, p in zip(others, ties, strict=True) if p > 0.5 or (p == 0.5 and x < pivot)]
        worse = [x for x in others if x not in better]
        head = yield from self.select(better, k)
        if len(head) + 1 >= k:
            return [*head, pivot, *worse]
        tail = yield from self.select(worse, k - len(head) - 1)
        return [*head, pivot, *tail]
