"""Top-down partitioning for deep lists (Parry, MacAvaney and Ganguly, SIGIR 2024).

Sliding windows over 100 documents take 9 calls one after the other. Top-down partitioning finds
the top ``top_k`` in three rounds:

1. rank the first ``window`` documents (one call) and take the ``top_k``-th of them as the *pivot*;
   the documents above it are candidates, those below it are out of the top;
2. rank every other group of ``window - 1`` documents together with the pivot, shown first, all
   groups at once (one round of parallel calls); the documents ranked above the pivot join the
   candidates;
3. rank the candidates and the pivot in one window (when they are more than a window, repeat from
   1 on them).

The prompts and their reading are :class:`~llmrerank.strategies.Listwise`'s (with its
``self_consistency``, ``method`` and context fitting). Documents out of the top follow the ranked
ones: first those the first window ranked below the pivot, in its order, then the rest in
first-stage order; their order among themselves is no model's judgment.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..diagnostics import PIVOT_UNPLACED
from ..errors import ConfigurationError
from ..protocol import Context, Ranking
from ..types import Diagnostic, Document, ScoreKind
from .base import Plan, Step, Strategy
from .listwise import Listwise, Method


@dataclass(frozen=True)
class TopDown(Strategy):
    """Find the best ``top_k`` of a long list by partitioning it around a pivot (see the module docstring).

    ``top_k`` is the depth ranked by the model (a rerank asking for more, up to ``window - 1``,
    raises it for that call). A list of at most ``window`` documents is one listwise window.
    A window whose call failed or whose answer is unreadable: its documents keep a fallback place
    below the pivot (the first window's: its first-stage order gives the pivot). Scores are the
    final window's when it gives any (``first_token``, ``borda``); otherwise ``score_kind="rank"``.
    """

    name: ClassVar[str] = "topdown"
    window: int = 20
    top_k: int = 10
    max_doc_chars: int = 1200
    system_prompt: str | None = None
    template: str | None = None
    method: Method = "generate"
    self_consistency: int = 1
    seed: int = 0
    listwise: Listwise = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k < self.window:
            raise ConfigurationError(f"need 1 <= top_k < window (got top_k={self.top_k!r}, window={self.window!r})")
        passed_on = {name: getattr(self, name) for name in _LISTWISE_OPTIONS}
        object.__setattr__(self, "listwise", Listwise(step=self.window, **passed_on))

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """Rank the first window, partition the rest against its pivot in parallel, rank the candidates."""
        n = len(docs)
        texts, window, diagnostics = self._fit(query, docs, ctx)
        depth = min(max(self.top_k, ctx.top_k or 0), window - 1)
        marks = _Marks(diagnostics)
        scores: dict[int, float] = {}
        pool = list(range(n))
        below: list[int] = []  # out of the top, best first: each first window's rest, in its order
        while len(pool) > window:
            pool, rest = yield from self._partition(query, texts, pool, window, depth, ctx, marks)
            below = rest + below
        if len(pool) >= 2:
            pool = yield from self._rank(query, texts, pool, f"final window of {len(pool)}", ctx, marks, scores)
        placed = set(pool) | set(below)
        order = pool + below + [i for i in range(n) if i not in placed]
        unjudged = marks.unjudged - marks.judged
        kind: ScoreKind = "rank"
        if scores:
            kind = "borda" if self.self_consistency > 1 else "first_token"
        kept = {i: s for i, s in scores.items() if i in marks.judged}
        return Ranking(order, kind, kept, {}, diagnostics, unjudged if n >= 2 else set())

    def _fit(self, query: str, docs: Sequence[Document], ctx: Context) -> tuple[list[str], int, list[Diagnostic]]:
        """The clipped texts, the window that fits the context, and the diagnostics of both
        (:meth:`Listwise.fit_texts`: its windows are this strategy's)."""
        clipped, window, _, diagnostics = self.listwise.fit_texts(query, docs, ctx)
        return [c.text for c in clipped], window, diagnostics

    def _rank(
        self,
        query: str,
        texts: list[str],
        ids: list[int],
        where: str,
        ctx: Context,
        marks: _Marks,
        scores: dict[int, float],
    ) -> Generator[Step, Any, list[int]]:
        """``ids`` ranked in one window (in their order when the answer cannot be read)."""
        lw = self.listwise
        shown = lw.shown(ids, 0)
        answers = yield [lw.prompt(query, [texts[i] for i in s], ctx) for s in shown]
        read = lw.aggregate(answers, shown, marks.diagnostics, where, ctx, scores)
        if read is None:
            marks.unjudged.update(ids)
            return ids
        ranked, named = read
        marks.placed(ids, named)
        return ranked

    def _partition(
        self, query: str, texts: list[str], pool: list[int], window: int, depth: int, ctx: Context, marks: _Marks
    ) -> Generator[Step, Any, tuple[list[int], list[int]]]:
        """One round: the pool's candidates with the pivot last, and the first window's rest (out of the top)."""
        lw = self.listwise
        ranked = yield from self._rank(query, texts, pool[:window], f"first window of {len(pool)}", ctx, marks, {})
        pivot = ranked[depth - 1]
        candidates = ranked[: depth - 1]
        groups = [pool[k : k + window - 1] for k in range(window, len(pool), window - 1)]
        # The pivot goes first: a document must beat it, not tie with it (a judge's ties go to
        # what it is shown first), to become a candidate.
        shows = [lw.shown([pivot, *group], g + 1) for g, group in enumerate(groups)]
        prompts = [lw.prompt(query, [texts[i] for i in s], ctx) for shown in shows for s in shown]
        answers = yield prompts
        passes = len(shows[0]) if shows else 0
        for g, (group, shown) in enumerate(zip(groups, shows, strict=True)):
            where = f"group {g + 1} of {len(groups)} against the pivot"
            got = lw.aggregate(answers[g * passes : (g + 1) * passes], shown, marks.diagnostics, where, ctx, {})
            if got is None or pivot not in got[1]:
                if got is not None:
                    marks.diagnostics.append(Diagnostic(PIVOT_UNPLACED, f"{where}: the answer left out the pivot"))
                marks.unjudged.update(group)
                continue
            order, named = got
            marks.placed(group, named)
            cut = order.index(pivot)
            candidates += [i for i in order[:cut] if i in set(named)]
        # At least window - depth fewer: the first window's rest is out.
        return [*candidates, pivot], ranked[depth:]


_LISTWISE_OPTIONS = ("window", "max_doc_chars", "system_prompt", "template", "method", "self_consistency", "seed")
"""The options a :class:`TopDown` passes on to the :class:`Listwise` that writes and reads its prompts."""


@dataclass
class _Marks:
    """What one plan learns besides the order: its diagnostics, the documents the model placed and
    those it did not (each window's fallbacks)."""

    diagnostics: list[Diagnostic]
    judged: set[int] = field(default_factory=set)
    unjudged: set[int] = field(default_factory=set)

    def placed(self, shown: list[int], named: list[int]) -> None:
        """The model named ``named`` of the ``shown`` documents: the others keep a fallback place."""
        self.judged.update(named)
        self.unjudged.update(i for i in shown if i not in set(named))
