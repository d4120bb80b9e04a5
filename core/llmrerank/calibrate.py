"""``llmrerank calibrate``: rerank judged queries, pair each raw score with its judgment, fit a map.

The fitting itself is :mod:`llmrerank.calibration`; this module gathers the pairs: the candidates
of each judged query (BM25's top ``depth``, or a run file's), reranked by a
:class:`~llmrerank.Reranker` without fusion or calibration, each document's raw score paired with
whether the qrels judge it relevant (grade >= ``relevant``; an unjudged document is not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError
from .evaluation import Collection, split_halves
from .reranker import Reranker


@dataclass(frozen=True)
class Pairs:
    """Raw scores and judgments gathered for a fit."""

    scores: list[float]
    labels: list[bool]
    score_kind: str
    queries: int
    degraded: int
    """Queries whose rerank degraded (their judged documents still count where they have a score)."""
    sizes: tuple[int, ...] = ()
    """Pairs per query, in query order (for intervals by query)."""


def read_run(path: str | Path) -> dict[str, list[str]]:
    """Candidates per query from a run file, best first: TREC format (``qid Q0 docid rank score tag``)
    or four columns (``qid docid rank score``, a header line allowed, as DL20's ``bm25-top100.tsv``)."""
    rows: dict[str, list[tuple[int, str]]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read run file {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 6:
            qid, doc, rank = fields[0], fields[2], fields[3]
        elif len(fields) == 4:
            qid, doc, rank = fields[0], fields[1], fields[2]
        else:
            raise ConfigurationError(f"{path}:{number}: expected 6 (TREC) or 4 columns, got {len(fields)}")
        if not rank.lstrip("-").isdigit():
            if number == 1:
                continue  # a header
            raise ConfigurationError(f"{path}:{number}: rank {rank!r} is not a number")
        rows.setdefault(qid, []).append((int(rank), doc))
    return {q: [d for _, d in sorted(found)] for q, found in rows.items()}


def pick_queries(collection: Collection, half: str, queries: int | None) -> list[str]:
    """The judged query ids of the ``tuning`` or ``report`` half (:func:`~llmrerank.evaluation.split_halves`)
    or ``all``, the first ``queries`` of them."""
    ids = list(collection.queries)
    if half != "all":
        tuning, report = split_halves(ids)
        ids = tuning if half == "tuning" else report
    return ids[:queries] if queries else ids


async def gather_pairs(
    reranker: Reranker,
    collection: Collection,
    query_ids: Sequence[str],
    *,
    depth: int = 20,
    run: Mapping[str, Sequence[str]] | None = None,
    relevant: int = 1,
    concurrency: int = 4,
) -> Pairs:
    """Rerank each query's candidates and pair every scored document with its judgment."""
    if reranker.fusion is not None or reranker.calibration is not None:
        raise ConfigurationError("calibrate the strategy's own scores: a reranker without fusion or calibration")
    if run is None:
        hits = collection.bm25().search([collection.queries[q] for q in query_ids], depth)
        candidates = {q: [d for d, _ in found] for q, found in zip(query_ids, hits, strict=True)}
    else:
        candidates = {q: [d for d in run.get(q, ()) if d in collection.documents][:depth] for q in query_ids}
    bound = asyncio.Semaphore(max(1, concurrency))
    kinds: set[str] = set()

    async def one(qid: str) -> tuple[list[float], list[bool], bool]:
        ids = candidates[qid]
        async with bound:
            result = await reranker.arerank(collection.queries[qid], [collection.documents[d] for d in ids])
        judged = collection.qrels.get(qid, {})
        scored = [item for item in result if item.score is not None]
        if scored:
            kinds.add(result.score_kind)
        return (
            [float(item.score) for item in scored if item.score is not None],
            [judged.get(ids[item.index], 0) >= relevant for item in scored],
            result.degraded,
        )

    done = await asyncio.gather(*(one(q) for q in query_ids))
    if len(kinds) > 1:
        raise ConfigurationError(f"the reranks gave scores of several kinds ({sorted(kinds)}): nothing to fit")
    if not kinds:
        raise ConfigurationError(
            "no rerank gave a score: a rank-only strategy (listwise, pairwise sort) cannot be calibrated"
        )
    return Pairs(
        scores=[s for scores, _, _ in done for s in scores],
        labels=[label for _, labels, _ in done for label in labels],
        score_kind=kinds.pop(),
        queries=len(query_ids),
        degraded=sum(d for _, _, d in done),
        sizes=tuple(len(scores) for scores, _, _ in done),
    )


__all__ = ["Pairs", "gather_pairs", "pick_queries", "read_run"]
