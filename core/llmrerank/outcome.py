"""From a finished run to a :class:`~llmrerank.types.RerankResult`, without I/O: how the rerank went
(every diagnostic, the documents no answer placed, whether and why it degraded, its status) read
from the strategy's ranking and the driver's counters, then the ranked documents, the thresholds
and the frozen result."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .diagnostics import (
    CIRCUIT_OPEN,
    CONTEXT_TOO_SMALL,
    DEADLINE_EXCEEDED,
    MISSING_APPENDED,
    PERMUTATION_REPAIRED,
    PREFILTER_FAILED,
    STRATEGY_REPAIRED,
    UNREADABLE_CODES,
)
from .driver import Meter
from .protocol import Ranking
from .types import (
    ABSOLUTE_SCORE_KINDS,
    DEGRADED_REASONS,
    D,
    Diagnostic,
    RankedDocument,
    RerankResult,
    ScoreKind,
    Status,
    Usage,
)


@dataclass(frozen=True)
class Outcome:
    """How a rerank went, read from its ranking and the driver's counters (:func:`assess`)."""

    diagnostics: tuple[Diagnostic, ...]
    """The strategy's, the driver's, then the deadline's and the circuit breaker's."""
    unjudged: frozenset[int]
    """Documents no model answer placed: they keep a fallback place."""
    reasons: tuple[str, ...]
    """:data:`~llmrerank.types.DEGRADED_REASONS` that apply; empty when the rerank did not degrade."""
    status: Status
    score_kind: ScoreKind
    warning: str | None
    """The one line to log when the rerank degraded (:func:`describe_degraded`)."""

    @property
    def degraded(self) -> bool:
        """Whether anything did not rerank."""
        return bool(self.reasons)


def complete(ranking: Ranking, n: int) -> Ranking:
    """Guard the never-lose-a-document promise against a faulty custom strategy."""
    order = list(dict.fromkeys(i for i in ranking.order if 0 <= i < n))
    if len(order) < n:
        seen = set(order)
        ranking.diagnostics.append(
            Diagnostic(STRATEGY_REPAIRED, f"strategy returned {len(order)} of {n} documents; rest appended")
        )
        order += [i for i in range(n) if i not in seen]
    ranking.order = order
    return ranking


def driver_notes(meter: Meter, deadline: float | None) -> list[Diagnostic]:
    """The driver's own diagnostics, then the deadline's and the circuit breaker's."""
    notes = list(meter.diagnostics)
    if meter.deadline_hit:
        notes.append(Diagnostic(DEADLINE_EXCEEDED, f"deadline of {deadline}s passed"))
    if meter.silent:
        why = "a call timed out and the server did not answer a check; the rest were not sent"
        notes.append(Diagnostic(CIRCUIT_OPEN, why))
    elif meter.circuit_open:
        notes.append(Diagnostic(CIRCUIT_OPEN, "calls kept timing out; the rest were not sent"))
    return notes


def assess(ranking: Ranking, meter: Meter, n: int, strategy: str, deadline: float | None) -> Outcome:
    """How the rerank of ``n`` documents by ``strategy`` went: degraded when a call failed, an answer
    was unreadable or incomplete, the prefilter failed, the deadline passed, the context was too
    small, or a document kept a fallback place; ``fallback`` when none was placed, else ``partial``."""
    diagnostics = [*ranking.diagnostics, *driver_notes(meter, deadline)]
    unjudged = frozenset(ranking.unjudged & set(range(n)))
    left_out = any(d.code == MISSING_APPENDED and d.index in unjudged for d in diagnostics)
    reasons = degraded_reasons(bool(meter.errors), meter.deadline_hit, diagnostics, left_out)
    if unjudged and not reasons:
        reasons = ("unreadable_answer",)
    status: Status = "reranked"
    kind = ranking.score_kind
    warning = None
    if reasons:
        status = "fallback" if len(unjudged) == n else "partial"
        if status == "fallback" and not ranking.scores:
            kind = "input_order"
        warning = describe_degraded(strategy, reasons, meter, withheld(diagnostics), len(unjudged), n)
    return Outcome(tuple(diagnostics), unjudged, reasons, status, kind, warning)


def ranked_documents(ranking: Ranking, originals: Sequence[D], outcome: Outcome) -> list[RankedDocument[D]]:
    """The caller's documents in the ranking's order, each with its score, reason and diagnostics
    (unnumbered: :func:`build_result` numbers the ones it keeps)."""
    by_index: dict[int, list[Diagnostic]] = {}
    for d in outcome.diagnostics:
        if d.index is not None:
            by_index.setdefault(d.index, []).append(d)
    return [
        RankedDocument(
            index=i,
            document=originals[i],
            score=ranking.scores.get(i),
            rank=0,
            reason=ranking.reasons.get(i),
            diagnostics=tuple(by_index.get(i, ())),
            fallback=i in outcome.unjudged,
        )
        for i in ranking.order
    ]


def drop_below(
    ranked: list[RankedDocument[D]], kind: str, min_score: float | None, min_probability: float | None
) -> tuple[list[RankedDocument[D]], list[RankedDocument[D]]]:
    """(kept, dropped): ``min_score`` applies to 0-10 ratings, ``min_probability`` to calibrated
    probabilities. Unscored (fallback) documents were not judged below a threshold: they stay."""
    threshold = min_probability if kind == "probability" else min_score if kind in ABSOLUTE_SCORE_KINDS else None
    if threshold is None:
        return ranked, []
    dropped = [d for d in ranked if d.score is not None and d.score < threshold]
    return [d for d in ranked if d.score is None or d.score >= threshold], dropped


def build_result(
    query: str,
    strategy: str,
    outcome: Outcome,
    ranked: Sequence[RankedDocument[D]],
    *,
    top_k: int | None,
    usage: Usage,
    model: str | None,
    dropped: Sequence[RankedDocument[D]] = (),
    notes: Sequence[Diagnostic] = (),
) -> RerankResult[D]:
    """The frozen result: the best ``top_k`` of ``ranked`` (all when None), numbered from 1;
    ``notes``: diagnostics of what came after the ranking (diversity)."""
    kept = ranked[:top_k] if top_k else ranked
    return RerankResult(
        items=tuple(replace(d, rank=r + 1) for r, d in enumerate(kept)),
        query=query,
        strategy=strategy,
        score_kind=outcome.score_kind,
        usage=usage,
        diagnostics=outcome.diagnostics + tuple(notes),
        degraded=outcome.degraded,
        degraded_reasons=outcome.reasons,
        status=outcome.status,
        dropped=tuple(dropped),
        model=model,
    )


def degraded_reasons(
    calls_failed: bool, deadline_hit: bool, diagnostics: Sequence[Diagnostic], left_out: bool = False
) -> tuple[str, ...]:
    """The :data:`~llmrerank.types.DEGRADED_REASONS` that apply, in that order (``left_out``: an
    answer left out documents that no other answer placed)."""
    codes = {d.code for d in diagnostics}
    found = {
        "call_failed": calls_failed,
        "unreadable_answer": bool(codes & UNREADABLE_CODES),
        "incomplete_answer": left_out,
        "prefilter_failed": PREFILTER_FAILED in codes,
        "deadline_exceeded": deadline_hit,
        "context_too_small": CONTEXT_TOO_SMALL in codes,
    }
    return tuple(code for code in DEGRADED_REASONS if found[code])


def _cause(error: BaseException) -> str:
    """``Class (HTTP status): message``, the message cut to 160 characters (without its earlier cause)."""
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "") + f": {Exception.__str__(error)[:160]}"


def withheld(diagnostics: Sequence[Diagnostic]) -> list[Diagnostic]:
    """``diagnostics`` with each unreadable answer's message (which quotes the answer, and answers
    echo documents) replaced by its code, length and a hash, for a log line that holds no document
    text; the result keeps the messages whole."""
    return [
        replace(d, message=f"{d.code}, {len(d.message)} characters, sha256 {_digest(d.message)}")
        if d.code in UNREADABLE_CODES
        else d
        for d in diagnostics
    ]


def unreadable_quotes(diagnostics: Sequence[Diagnostic]) -> str:
    """The unreadable answers' own messages (the first five), for a DEBUG record."""
    return " | ".join([f"{d.code}: {d.message}" for d in diagnostics if d.code in UNREADABLE_CODES][:5])


def _digest(text: str) -> str:
    """The first 12 hex digits of the SHA-256 of ``text``: tells a log line's message from another's."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe_degraded(
    strategy: str, reasons: Sequence[str], meter: Meter, diagnostics: Sequence[Diagnostic], unjudged: int, n: int
) -> str:
    """One line naming why a rerank degraded: the first error's class and status (and the error it
    followed, when it was the retry of a context-length error), the start of an unreadable answer."""
    parts = []
    if meter.errors:
        first = meter.errors[0]
        earlier = getattr(first, "earlier", None)
        parts.append(
            f"{meter.failed_calls} of {meter.calls} calls failed, first {_cause(first)}"
            + (f", after {_cause(earlier)}" if earlier is not None else "")
        )
    unreadable = [d for d in diagnostics if d.code in UNREADABLE_CODES]
    if unreadable:
        parts.append(f"{len(unreadable)} unreadable answer(s), first: {unreadable[0].message[:120]}")
    if "incomplete_answer" in reasons:
        repaired = next((d.message for d in diagnostics if d.code == PERMUTATION_REPAIRED), "")
        left_out = {d.index for d in diagnostics if d.code == MISSING_APPENDED}
        parts.append(f"answers left out {len(left_out)} document(s), first: {repaired[:120]}")
    prefilter = next((d for d in diagnostics if d.code == PREFILTER_FAILED), None)
    if prefilter is not None:
        parts.append(f"prefilter failed: {prefilter.message[:160]}")
    small = next((d for d in diagnostics if d.code == CONTEXT_TOO_SMALL), None)
    if small is not None:
        parts.append(f"context too small: {small.message[:200]}")
    placed = f"{unjudged} of {n} documents keep a fallback place" if unjudged else "every document was placed"
    return f"{strategy} rerank degraded ({', '.join(reasons)}): {'; '.join(parts) or 'see diagnostics'}; {placed}"
