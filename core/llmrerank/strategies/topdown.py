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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigurationError
from ..prompts import clip
from ..protocol import Context, Ranking
from ..types import Diagnostic, Document, ScoreKind
from .base import Plan, Strategy
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
        inner = Listwise(
            window=self.window,
            step=self.window,
            max_doc_chars=self.max_doc_chars,
            system_prompt=self.system_prompt,
            template=self.template,
            method=self.method,
            self_consistency=self.self_consistency,
            seed=self.seed,
        )
        object.__setattr__(self, "listwise", inner)

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """Rank the first window, partition the rest against its pivot in parallel, rank the candidates."""
        lw = self.listwise
        n = len(docs)
        clipped = [clip(d.text, self.max_doc_chars) for d in docs]
        window, _, cap = lw.fitted(query, [c.text for c in clipped], ctx)
        diagnostics: list[Diagnostic] = []
        if window < min(self.window, n):
            note = f"window of {window} documents to fit {ctx.context_tokens} tokens of context"
            diagnostics.append(Diagnostic("context_fitted", note))
        if cap is not None:
            clipped = [clip(c.text, cap) if len(c.text) > cap else c for c in clipped]
            diagnostics.append(Diagnostic("context_fitted", f"documents cut to {cap} characters to fit the context"))
        diagnostics += [Diagnostic("truncated", "", i) for i, c in enumerate(clipped) if c.truncated]
        texts = [c.text for c in clipped]
        depth = min(max(self.top_k, ctx.top_k or 0), window - 1)
        scores: dict[int, float] = {}
        judged: set[int] = set()
        pool = list(range(n))
        below: list[int] = []  # out of the top, best first: each first window's rest, in its order
        unjudged: set[int] = set()
        while len(pool) > window:
            first = pool[:window]
            shown = lw.shown(first, 0)
            answers = yield [lw.prompt(query, [texts[i] for i in s], ctx) for s in shown]
            read = lw.aggregate(answers, shown, diagnostics, f"first window of {len(pool)}", ctx, {})
            if read is None:
                unjudged.update(first)
                ranked = first
            else:
                ranked, named = read
                judged.update(named)
                unjudged.update(i for i in first if i not in set(named))
            pivot = ranked[depth - 1]
            candidates = ranked[: depth - 1]
            below = ranked[depth:] + below
            groups = [pool[k : k + window - 1] for k in range(window, len(pool), window - 1)]
            # The pivot goes first: a document must beat it, not tie with it (a judge's ties go to
            # what it is shown first), to become a candidate.
            shows = [lw.shown([pivot, *group], g + 1) for g, group in enumerate(groups)]
            prompts = [lw.prompt(query, [texts[i] for i in s], ctx) for shown in shows for s in shown]
            answers = yield prompts
            passes = len(shows[0]) if shows else 0
            for g, (group, shown) in enumerate(zip(groups, shows, strict=True)):
                where = f"group {g + 1} of {len(groups)} against the pivot"
                got = lw.aggregate(answers[g * passes : (g + 1) * passes], shown, diagnostics, where, ctx, {})
                if got is None or pivot not in got[1]:
                    if got is not None:
                        diagnostics.append(Diagnostic("pivot_unplaced", f"{where}: the answer left out the pivot"))
                    unjudged.update(group)
                    continue
                order, named = got
                judged.update(named)
                cut = order.index(pivot)
                candidates += [i for i in order[:cut] if i in set(named)]
                unjudged.update(i for i in group if i not in set(named))
            pool = [*candidates, pivot]  # at least window - depth fewer: the first window's rest is out
        if len(pool) >= 2:
            shown = lw.shown(pool, 0)
            answers = yield [lw.prompt(query, [texts[i] for i in s], ctx) for s in shown]
            read = lw.aggregate(answers, shown, diagnostics, f"final window of {len(pool)}", ctx, scores)
            if read is None:
                unjudged.update(pool)
            else:
                pool, named = read
                judged.update(named)
                unjudged.update(i for i in pool if i not in set(named))
        placed = set(pool) | set(below)
        order = pool + below + [i for i in range(n) if i not in placed]
        unjudged -= judged
        kind: ScoreKind = "rank"
        if scores:
            kind = "borda" if self.self_consistency > 1 else "first_token"
        kept = {i: s for i, s in scores.items() if i in judged}
        return Ranking(order, kind, kept, {}, diagnostics, unjudged if n >= 2 else set())
