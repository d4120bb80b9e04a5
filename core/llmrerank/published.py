"""Published nDCG@10 figures for the setups ``llmrerank eval`` can run, to put beside a measurement.

Every figure here is **published, not measured here**: copied by hand from its source, for the
same collection and first stage (TREC DL with the official BM25 top-100, SciFact with BM25).
:func:`published_for` picks the rows that match a run: the first stage's own figure at any depth,
rerankers' figures only at the depth they were measured at.

>>> [f.method for f in published_for("dl20", 100)]
['BM25', 'RankGPT (gpt-4o-mini)', 'RankZephyr 7B', 'MonoT5-3B']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LABEL = "published, not measured here"
"""How every row of this table is labelled wherever it is shown."""

RANK_LLM_2CR = (
    "castorini/rank_llm two-click reproductions (2CR), BM25 top-100 condition (https://github.com/castorini/rank_llm)"
)
PYSERINI_BM25 = (
    "Pyserini BM25 default (k1=0.9, b=0.4) on MS MARCO v1 passage, trec_eval -c -m ndcg_cut.10; RankGPT paper"
)


@dataclass(frozen=True)
class PublishedFigure:
    """One published nDCG@10 figure and where it comes from."""

    collection: str
    """``dl19``, ``dl20`` or ``scifact`` (see :func:`collection_key`)."""
    method: str
    value: float
    source: str
    depth: int | None = None
    """Candidates reranked (the BM25 top ``depth``); None for the first stage itself, whose
    nDCG@10 does not depend on how deep a reranker reads."""
    high: float | None = None
    """When the sources disagree: the top of the range (``value`` is its bottom)."""

    def figure(self) -> str:
        """The value as published, or the range."""
        return f"{self.value:g}" if self.high is None else f"{self.value:g}-{self.high:g}"


PUBLISHED: tuple[PublishedFigure, ...] = (
    PublishedFigure("dl19", "BM25", 0.5058, PYSERINI_BM25),
    PublishedFigure("dl20", "BM25", 0.4796, PYSERINI_BM25),
    PublishedFigure("dl19", "RankGPT (gpt-4o-mini)", 0.7345, RANK_LLM_2CR, depth=100),
    PublishedFigure("dl20", "RankGPT (gpt-4o-mini)", 0.6841, RANK_LLM_2CR, depth=100),
    PublishedFigure("dl19", "RankZephyr 7B", 0.7365, RANK_LLM_2CR, depth=100),
    PublishedFigure("dl20", "RankZephyr 7B", 0.7080, RANK_LLM_2CR, depth=100),
    PublishedFigure("dl19", "MonoT5-3B", 0.7173, RANK_LLM_2CR, depth=100),
    PublishedFigure("dl20", "MonoT5-3B", 0.6887, RANK_LLM_2CR, depth=100),
    PublishedFigure(
        "scifact",
        "BM25",
        0.665,
        "BEIR paper (Thakur et al., 2021; 0.665) to later BM25 reproductions (Pyserini, PyTerrier, bm25s; up to "
        "0.691): implementations differ in tokenisation and parameters",
        high=0.691,
    ),
)
"""The table (nDCG@10, trec_eval conventions, all judged test queries of each collection)."""

COLLECTION_NAMES = {
    "dl19": ("dl19", "dl-19", "trec-dl19", "trec-dl-2019", "dl2019"),
    "dl20": ("dl20", "dl-20", "trec-dl20", "trec-dl-2020", "dl2020"),
    "scifact": ("scifact",),
}


def collection_key(path: str | Path | None) -> str | None:
    """``dl19``, ``dl20`` or ``scifact`` from a collection folder's name (``trec-dl20-passage`` is
    ``dl20``), or None for a collection with no published figures here (or a slice of one)."""
    if path is None:
        return None
    name = Path(path).name.lower()
    if "slice" in name:
        return None  # a few queries of a collection: its published figures do not apply
    for key, spellings in COLLECTION_NAMES.items():
        if any(name == s or name.startswith(f"{s}-") or name.startswith(f"{s}_") for s in spellings):
            return key
    return None


def published_for(collection: str | None, depth: int | None = None) -> list[PublishedFigure]:
    """The rows for ``collection`` (a key of :func:`collection_key`): the first stage's always,
    a reranker's only when ``depth`` is the depth it was published at."""
    return [f for f in PUBLISHED if f.collection == collection and (f.depth is None or f.depth == depth)]


__all__ = ["LABEL", "PUBLISHED", "PublishedFigure", "collection_key", "published_for"]
