"""Measure a reranker: quality, LLM calls and tokens, estimated cost and latency, on a BEIR collection.

>>> from llmrerank import Reranker
>>> from llmrerank.evaluation import evaluate
>>> baseline = evaluate(depth=20, queries=50)                                   # doctest: +SKIP
>>> report = evaluate(reranker=Reranker("listwise"), depth=20, queries=50)      # doctest: +SKIP
>>> report.metrics["nDCG@10"], report.cost, report.latency_p95                  # doctest: +SKIP

The pipeline: BM25 over the collection, or a given first-stage run (``run=``, a TREC run file:
:func:`read_run`), (``bm25s``: Lucene-style BM25, ``k1=1.5``, ``b=0.75``,
English stopwords and the Snowball English stemmer from PyStemmer; each document indexed as
``title + "\\n" + text``) keeps the top ``depth`` documents per judged query; the reranker
reorders them; ``ir-measures`` scores the new order against the qrels: nDCG@3, nDCG@10, RR@10
(MRR@10 once averaged), RR (trec_eval's ``recip_rank``, no cutoff), P@1 and R@k. Every query counts
in the means, including those with nothing retrieved (they score 0).

trec_eval conventions (:func:`score_rankings`): nDCG uses the grades as linear gains and its
ideal ranking is built from every judged document of the query, those the run never retrieved
included; RR, P and R count a document relevant when its grade is at least the binary relevance
level, which follows the collection's convention (:func:`binary_relevance`: 2 on TREC DL's 0-3
scale, else 1) and can be set (``relevance=``). Paired differences between two reports on the
same queries come with a seeded bootstrap interval (:func:`paired_difference`).

The data: a folder in BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``),
given as ``data=``, else ``$LLMRERANK_DATA``, else the first ``shared/data/scifact`` found beside
the working directory or the llmrerank checkout, or in one of their parents
(see :func:`default_data_path`).

Needs the ``eval`` extra: ``pip install "llmrerank[eval]"``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Union

from .diagnostics import PROBLEM_CODES
from .errors import ConfigurationError, InvalidInputError, require
from .pricing import PRICES_AS_OF, PriceSource, cost_basis
from .reranker import Reranker
from .runner import run_blocking
from .types import Diagnostic, RerankResult, Usage

ENV_VAR = "LLMRERANK_DATA"
"""Environment variable naming the default collection folder."""

DEFAULT_COLLECTION = Path("shared", "data", "scifact")
"""Where the default collection is looked for, relative to the working directory and its parents."""

CHECKOUT_SLICE = Path(__file__).resolve().parents[2] / "tests" / "data" / "scifact-slice"
"""In a checkout without the full collection: the SciFact slice the tests use (20 queries, 288 abstracts)."""

CUTOFF_METRICS = ("nDCG@3", "nDCG@10", "RR@10", "RR", "P@1")
"""Metrics always reported; ``R@k`` follows with the ``k`` asked for."""

RerankFn = Callable[[str, Any], Union[RerankResult, Sequence[int], Awaitable[Union[RerankResult, Sequence[int]]]]]  # noqa: UP007
"""A reranker as a function: ``(query, documents) -> RerankResult or input positions, best first``."""


# --------------------------------------------------------------------------- data


def default_data_path() -> Path:
    """``$LLMRERANK_DATA``, else the first ``shared/data/scifact`` beside the cwd or the checkout.

    Searched: the working directory and each of its parents, then the folder holding the
    llmrerank source tree and each of its parents. Raises :class:`ConfigurationError` when none
    is found, or when ``$LLMRERANK_DATA`` names no folder (a typo must not pass for "no collection").
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not Path(explicit).is_dir():
            raise ConfigurationError(
                f"{ENV_VAR} is {explicit!r}: no such folder; point it at a BEIR folder (corpus.jsonl, "
                "queries.jsonl, qrels/) or unset it"
            )
        return Path(explicit)
    checkout = Path(__file__).resolve().parent
    for start in (Path.cwd().resolve(), checkout):
        for folder in (start, *start.parents):
            candidate = folder / DEFAULT_COLLECTION
            if (candidate / "corpus.jsonl").is_file():
                return candidate
    raise ConfigurationError(
        f"no collection found: pass data=PATH (--data PATH), set {ENV_VAR}, or put a BEIR folder at "
        f"{DEFAULT_COLLECTION} beside the working directory"
    )


def default_data_or_slice() -> tuple[Path, str | None]:
    """:func:`default_data_path`, else the committed SciFact slice of a checkout, with a note saying so.

    Returns ``(path, note)``; ``note`` is None when the default collection was found. Raises
    :class:`ConfigurationError` when neither is there (an installed package has no slice).
    """
    try:
        return default_data_path(), None
    except ConfigurationError as exc:
        if not (CHECKOUT_SLICE / "corpus.jsonl").is_file():
            raise
        return CHECKOUT_SLICE, (
            f"no SciFact collection found ({exc}); using the slice committed with the tests at {CHECKOUT_SLICE} "
            "(20 queries, 288 abstracts): its figures are NOT the full collection's"
        )


@dataclass(frozen=True)
class Collection:
    """A BEIR collection in memory: documents, judged queries and their relevance judgments."""

    path: Path
    documents: Mapping[str, str]
    """Document id -> ``title + "\\n" + text`` (just the text when there is no title)."""
    queries: Mapping[str, str]
    """Query id -> text, for the judged queries only, in ``queries.jsonl`` order."""
    qrels: Mapping[str, Mapping[str, int]]
    """Query id -> document id -> relevance grade."""
    split: str = "test"
    all_queries: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """Every query of ``queries.jsonl``, judged or not (what a run may rank)."""
    _indexes: dict[bool, BM25] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"Collection(path={str(self.path)!r}, split={self.split!r}, documents={len(self.documents)}, "
            f"queries={len(self.queries)})"
        )

    def bm25(self, *, stem: bool = True) -> BM25:
        """The BM25 index over the documents, built on first use and kept."""
        index = self._indexes.get(stem)
        if index is None:
            index = self._indexes[stem] = BM25(self.documents, stem=stem)
        return index


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise ConfigurationError(f"{path}:{n}: not JSON: {exc}") from exc


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (``query-id  corpus-id  score``, header optional)."""
    qrels: dict[str, dict[str, int]] = {}
    with Path(path).open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if len(parts) < 3:
                raise ConfigurationError(f"{path}:{n}: expected query-id, corpus-id, score")
            try:
                grade = int(float(parts[2]))
            except ValueError:
                if n == 1:
                    continue  # the header line
                raise ConfigurationError(f"{path}:{n}: score {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


def load_beir(path: str | Path | None = None, split: str = "test") -> Collection:
    """Load a BEIR folder (default: :func:`default_data_path`); keeps the queries judged in ``split``."""
    root = Path(path) if path is not None else default_data_path()
    qrels_file = root / "qrels" / f"{split}.tsv"
    for needed in (root / "corpus.jsonl", root / "queries.jsonl", qrels_file):
        if not needed.is_file():
            raise ConfigurationError(f"{needed} not found: {root} is not a BEIR folder with a {split!r} split")
    documents = {}
    for doc in _read_jsonl(root / "corpus.jsonl"):
        title, text = str(doc.get("title") or "").strip(), str(doc.get("text") or "").strip()
        documents[str(doc["_id"])] = f"{title}\n{text}" if title else text
    qrels = read_qrels(qrels_file)
    every = {str(q["_id"]): str(q["text"]) for q in _read_jsonl(root / "queries.jsonl")}
    queries = {q: text for q, text in every.items() if q in qrels}
    return Collection(root, documents, queries, {q: qrels[q] for q in queries}, split, every)


@dataclass(frozen=True)
class Run:
    """A first-stage run: per query, the candidate documents with their scores, best first."""

    path: Path
    name: str
    """The file name without its suffix (TREC tags are often uninformative, such as ``rank``)."""
    hits: Mapping[str, tuple[tuple[str, float], ...]]
    """Query id -> (document id, score) pairs in trec_eval's order (see :func:`read_run`)."""

    def __repr__(self) -> str:
        return f"Run(path={str(self.path)!r}, name={self.name!r}, queries={len(self.hits)})"


def read_run(path: str | Path) -> Run:
    """Read a first-stage run: the TREC format ``qid Q0 docid rank score tag`` (whitespace-separated,
    what trec_eval reads) or the TSV form ``query-id corpus-id rank score`` (header optional).

    Each query's documents are put in the order trec_eval evaluates them: by score, descending,
    ties broken by document id, descending. The rank column is read, checked to be a number and
    otherwise ignored, as trec_eval ignores it; a run whose ranks follow its scores (the official
    runs do) keeps its order, except among tied scores. A document listed twice for one query is a
    :class:`ConfigurationError` (trec_eval refuses it too).
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigurationError(f"run file {source} not found")
    hits: dict[str, dict[str, float]] = {}
    with source.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 6:
                qid, _, doc, rank, score, _ = parts
            elif len(parts) == 4:
                qid, doc, rank, score = parts
            else:
                raise ConfigurationError(
                    f"{source}:{n}: expected 'qid Q0 docid rank score tag' (TREC) or 'query-id corpus-id rank score' "
                    f"(TSV), got {len(parts)} columns"
                )
            try:
                int(rank)
                value = float(score)
            except ValueError:
                if n == 1:
                    continue  # the TSV header
                raise ConfigurationError(f"{source}:{n}: rank {rank!r} or score {score!r} is not a number") from None
            if not math.isfinite(value):
                raise ConfigurationError(f"{source}:{n}: score {score!r} is not finite")
            found = hits.setdefault(qid, {})
            if doc in found:
                raise ConfigurationError(f"{source}:{n}: document {doc} is listed twice for query {qid}")
            found[doc] = value
    if not hits:
        raise ConfigurationError(f"run file {source} holds no ranking")
    ordered = {
        qid: tuple(sorted(found.items(), key=lambda hit: (hit[1], hit[0]), reverse=True)) for qid, found in hits.items()
    }
    return Run(source, source.stem, ordered)


def run_rows(
    run: str | Path | Run, collection: Collection, *, depth: int | None = None, judged_only: bool = False
) -> list[dict[str, Any]]:
    """A run file as batch rows (``llmrerank batch``'s input, :mod:`llmrerank.batch.rows`): per query
    of the run, ``{"query_id", "query", "candidates": [{"id", "text", "score"}]}`` with the run's top
    ``depth`` documents (all when None) in trec_eval's order and with the run's scores.

    The texts come from ``collection`` (its ``queries.jsonl`` and ``corpus.jsonl``: every query of
    the file, judged or not, unless ``judged_only``); a query or document it lacks is a
    :class:`ConfigurationError` naming a few.
    """
    given = run if isinstance(run, Run) else read_run(run)
    texts = collection.all_queries or collection.queries
    wanted = [q for q in given.hits if not judged_only or q in collection.queries]
    unknown = [q for q in wanted if q not in texts]
    if unknown:
        raise ConfigurationError(
            f"{len(unknown)} queries of run {given.path} are not in {collection.path}: {unknown[:5]}"
        )
    rows = []
    missing: set[str] = set()
    for qid in wanted:
        hits = given.hits[qid][:depth]
        missing.update(d for d, _ in hits if d not in collection.documents)
        rows.append(
            {
                "query_id": qid,
                "query": texts[qid],
                "candidates": [{"id": d, "text": collection.documents.get(d, ""), "score": s} for d, s in hits],
            }
        )
    if missing:
        raise ConfigurationError(
            f"{len(missing)} documents of run {given.path} are not in {collection.path}/corpus.jsonl: "
            f"{sorted(missing)[:5]}"
        )
    return rows


def binary_relevance(qrels: Mapping[str, Mapping[str, int]]) -> int:
    """The lowest grade counted relevant by RR, P and R: the collection's convention.

    2 when the grades reach 3 (TREC Deep Learning's 0-3 scale, where 1 is "related" and the track
    reports binary measures at grade 2: trec_eval ``-l 2``), else 1 (trec_eval's default, and
    BEIR's binary collections).
    """
    top = max((g for judged in qrels.values() for g in judged.values()), default=1)
    return 2 if top >= 3 else 1


class BM25:
    """First-stage retrieval with ``bm25s`` (see the module docstring for the settings)."""

    def __init__(self, documents: Mapping[str, str], *, stem: bool = True, k1: float = 1.5, b: float = 0.75) -> None:
        bm25s: Any = require("bm25s", "eval")
        self._stemmer = None
        if stem:
            stemmer: Any = require("Stemmer", "eval", "PyStemmer")
            self._stemmer = stemmer.Stemmer("english")
        self._bm25s = bm25s
        self.ids = list(documents)
        tokens = bm25s.tokenize(list(documents.values()), stopwords="en", stemmer=self._stemmer, show_progress=False)
        self.index = bm25s.BM25(method="lucene", k1=k1, b=b)
        self.index.index(tokens, show_progress=False)

    def search(self, queries: Sequence[str], depth: int) -> list[list[tuple[str, float]]]:
        """The best ``depth`` (document id, score) pairs per query, best first."""
        if not queries:
            return []
        depth = min(depth, len(self.ids))
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", stemmer=self._stemmer, show_progress=False)
        found, scores = self.index.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
        return [
            [(self.ids[int(d)], float(s)) for d, s in zip(row_d, row_s, strict=True)]
            for row_d, row_s in zip(found, scores, strict=True)
        ]


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class QueryResult:
    """One query's outcome."""

    query_id: str
    metrics: Mapping[str, float]
    ranking: tuple[str, ...]
    """Document ids in the reranked order."""
    seconds: float
    """Wall time of the rerank call."""
    usage: Usage = field(default_factory=Usage)
    degraded: bool = False
    status: str = "reranked"
    """:attr:`~llmrerank.RerankResult.status`: ``reranked``, ``partial`` or ``fallback``."""
    degraded_reasons: tuple[str, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()
    """When it degraded: the diagnostics that say why (failed calls, unreadable answers; at most 10)."""
    model: str | None = None
    """The model that answered, as the server named it (:attr:`~llmrerank.RerankResult.model`)."""


@dataclass(frozen=True)
class EvalReport:
    """Quality, cost and speed of one reranker over a set of queries.

    ``metrics`` are means over every evaluated query; ``per_query`` keeps each query's values.
    ``cost`` is an estimate in USD (None when no price applies: an unknown model, a server of your
    own; :attr:`cost_note` says which, see :func:`llmrerank.pricing.cost_basis`).
    ``latency_p50``/``latency_p95`` are seconds per query. ``model`` is the model that answered,
    as the server named it (a llama.cpp server answers with its own name); ``requested_model``
    the name sent, when the two differ.
    """

    name: str
    metrics: Mapping[str, float]
    per_query: tuple[QueryResult, ...]
    usage: Usage
    cost: float | None
    latency_p50: float
    latency_p95: float
    wall_seconds: float
    depth: int
    k: int
    data: str | None = None
    backend: str | None = None
    model: str | None = None
    prices_as_of: str = PRICES_AS_OF
    cost_note: str = ""
    """How :attr:`cost` was reached: ``estimated, prices as of ...``, or ``n/a: ...`` and why."""
    requested_model: str | None = None
    relevance: int = 1
    """The lowest grade RR, P and R count relevant (:func:`binary_relevance`)."""
    first_stage: str = "bm25"
    """What produced the candidates: ``bm25`` (retrieved here) or ``run:NAME`` (a run file's)."""

    @property
    def queries(self) -> int:
        """How many queries were evaluated."""
        return len(self.per_query)

    @property
    def degraded(self) -> int:
        """How many queries got a degraded (fallback) ranking."""
        return sum(q.degraded for q in self.per_query)

    @property
    def degraded_reasons(self) -> dict[str, int]:
        """How many queries degraded for each reason code."""
        return dict(Counter(reason for q in self.per_query for reason in q.degraded_reasons))

    @property
    def always_degraded(self) -> bool:
        """True when every query degraded: the figures measure the fallback order, not the reranker."""
        return bool(self.per_query) and self.degraded == self.queries

    def first_problem(self) -> str | None:
        """The first degraded query's first diagnostic, as ``query id: code: message``."""
        for q in self.per_query:
            if q.degraded and q.diagnostics:
                d = q.diagnostics[0]
                return f"query {q.query_id}: {d.code}: {d.message}"
        return None

    def per_query_mean(self, value: Callable[[QueryResult], float]) -> float:
        """Mean of ``value`` over the queries (0 when there are none)."""
        return sum(map(value, self.per_query)) / len(self.per_query) if self.per_query else 0.0

    @property
    def calls_per_query(self) -> float:
        """Mean LLM calls per query (cache hits excluded)."""
        return self.per_query_mean(lambda q: q.usage.calls)

    def to_dict(self, per_query: bool = True) -> dict[str, Any]:
        """A JSON-able dict of the report."""
        out: dict[str, Any] = {
            "name": self.name,
            "data": self.data,
            "backend": self.backend,
            "model": self.model,
            "requested_model": self.requested_model,
            "queries": self.queries,
            "depth": self.depth,
            "k": self.k,
            "first_stage": self.first_stage,
            "relevance": self.relevance,
            "metrics": dict(self.metrics),
            "usage": asdict(self.usage),
            "calls_per_query": self.calls_per_query,
            "cost_usd": self.cost,
            "cost_note": self.cost_note or f"estimated, prices as of {self.prices_as_of}",
            "latency_p50_s": self.latency_p50,
            "latency_p95_s": self.latency_p95,
            "wall_seconds": self.wall_seconds,
            "degraded_queries": self.degraded,
            "degraded_reasons": self.degraded_reasons,
            "first_problem": self.first_problem(),
        }
        if per_query:
            out["per_query"] = [
                {
                    "query_id": q.query_id,
                    "metrics": dict(q.metrics),
                    "ranking": list(q.ranking),
                    "seconds": q.seconds,
                    "usage": asdict(q.usage),
                    "degraded": q.degraded,
                    "status": q.status,
                    "degraded_reasons": list(q.degraded_reasons),
                    "diagnostics": [asdict(d) for d in q.diagnostics],
                }
                for q in self.per_query
            ]
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def metric_names(k: int) -> tuple[str, ...]:
    """The metrics reported for recall cutoff ``k``."""
    return (*CUTOFF_METRICS, f"R@{k}")


def score_rankings(
    rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: int = 10, relevance: int = 1
) -> dict[str, dict[str, float]]:
    """Per-query metrics (see :func:`metric_names`) of ranked document ids, computed by ir-measures
    (its trec_eval provider: ``ndcg_cut``, ``recip_rank``, ``P``, ``recall`` with ``-l relevance``).

    nDCG uses the grades as linear gains over every judged document; RR, P and R count grades
    ``>= relevance``. A query with no ranked document scores 0 on every metric.
    """
    ir_measures: Any = require("ir_measures", "eval", "ir-measures")
    if relevance < 1:
        raise ConfigurationError("relevance (the lowest grade counted relevant) must be >= 1")
    names = metric_names(k)
    measures = [ir_measures.parse_measure(_with_level(n, relevance)) for n in names]
    by_measure = {m: n for m, n in zip(measures, names, strict=True)}
    # Strictly decreasing scores: trec_eval breaks score ties by document id, not by our order.
    run = {
        qid: {doc: float(len(docs) - r) for r, doc in enumerate(dict.fromkeys(docs))}
        for qid, docs in rankings.items()
        if docs
    }
    judged = {qid: {d: int(g) for d, g in qrels.get(qid, {}).items()} for qid in rankings}
    out = {qid: dict.fromkeys(names, 0.0) for qid in rankings}
    if run and any(judged.values()):
        for m in ir_measures.iter_calc(measures, {q: j for q, j in judged.items() if j}, run):
            out[m.query_id][by_measure[m.measure]] = float(m.value)
    return out


def _with_level(name: str, relevance: int) -> str:
    """``P@1`` -> ``P(rel=2)@1`` for a binary measure when the level is not trec_eval's default 1."""
    if relevance == 1 or name.startswith("nDCG"):
        return name
    measure, at, cutoff = name.partition("@")
    return f"{measure}(rel={relevance}){at}{cutoff}"


@dataclass(frozen=True)
class Difference:
    """A strategy's paired difference from a baseline on one metric, over the same queries."""

    metric: str
    delta: float
    """Mean of the per-query differences (strategy minus baseline)."""
    low: float
    high: float
    """The 95% interval (``level``) of ``delta``."""
    queries: int
    method: str = "paired bootstrap"
    resamples: int = 10_000
    seed: int = 0
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.delta:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(
    report: EvalReport,
    baseline: EvalReport,
    metric: str = "nDCG@10",
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Difference:
    """The mean per-query difference ``report - baseline`` on ``metric`` with a paired bootstrap
    percentile interval: ``resamples`` draws of the queries with replacement (``random.Random(seed)``,
    so the same reports give the same interval), the same draw for both reports.

    The reports must cover the same queries (matched by id); raises :class:`ConfigurationError` if not.
    """
    import random

    mine = {q.query_id: q.metrics[metric] for q in report.per_query}
    theirs = {q.query_id: q.metrics[metric] for q in baseline.per_query}
    if set(mine) != set(theirs):
        raise ConfigurationError(f"{report.name} and {baseline.name} were measured on different queries")
    diffs = [mine[q] - theirs[q] for q in mine]
    n = len(diffs)
    if n == 0:
        return Difference(metric, 0.0, 0.0, 0.0, 0, resamples=resamples, seed=seed, level=level)
    draw = random.Random(seed)
    means = sorted(sum(diffs[draw.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[min(resamples - 1, math.floor(tail * resamples))]
    high = means[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return Difference(metric, sum(diffs) / n, low, high, n, resamples=resamples, seed=seed, level=level)


# --------------------------------------------------------------------------- running


@dataclass
class _Task:
    query_id: str
    query: str
    documents: Sequence[Any]
    doc_ids: list[str]


def _order(answer: Any, n: int) -> list[int]:
    """Input positions from a reranker's answer; repeats dropped, missing ones appended in input order."""
    if isinstance(answer, RerankResult):
        positions: Iterable[Any] = answer.indices
    elif isinstance(answer, Sequence) and not isinstance(answer, str | bytes):
        positions = answer
    else:
        raise InvalidInputError(
            f"a rerank function must return a RerankResult or a list of input positions, got {type(answer).__name__}"
        )
    order = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < n:
            raise InvalidInputError(f"rerank function returned position {p!r} for {n} documents")
        order.append(p)
    order = list(dict.fromkeys(order))
    seen = set(order)
    return order + [i for i in range(n) if i not in seen]


async def _run_all(
    tasks: Sequence[_Task],
    reranker: Reranker | RerankFn | None,
    concurrency: int,
    bar: Any,
) -> list[QueryResult]:
    limiter = asyncio.Semaphore(concurrency)
    lock = threading.Lock()

    async def one(task: _Task) -> QueryResult:
        async with limiter:
            started = time.perf_counter()
            n = len(task.documents)
            answer: Any = None
            if reranker is None or n == 0:
                order = list(range(n))
            elif isinstance(reranker, Reranker):
                answer = await reranker.arerank(task.query, task.documents)
                order = _order(answer, n)
            else:
                if inspect.iscoroutinefunction(reranker):
                    answer = await reranker(task.query, task.documents)
                else:
                    answer = await asyncio.to_thread(reranker, task.query, task.documents)
                    if inspect.isawaitable(answer):
                        answer = await answer
                order = _order(answer, n)
            seconds = time.perf_counter() - started
        if bar is not None:
            with lock:
                bar.update(1)
        result = answer if isinstance(answer, RerankResult) else None
        usage = result.usage if result is not None else Usage()
        return QueryResult(
            task.query_id,
            {},
            tuple(task.doc_ids[i] for i in order),
            seconds,
            usage if usage.wall_seconds else Usage(**{**asdict(usage), "wall_seconds": seconds}),
            result is not None and result.degraded,
            result.status if result is not None else "reranked",
            result.degraded_reasons if result is not None else (),
            _problems(result) if result is not None and result.degraded else (),
            result.model if result is not None else None,
        )

    running = [asyncio.ensure_future(one(t)) for t in tasks]
    try:
        return list(await asyncio.gather(*running))
    finally:
        # A query that raised ends the run: the others are cancelled, not left running unowned.
        for query in running:
            query.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if isinstance(reranker, Reranker):
            await reranker.backend.aclose()


def _problems(result: RerankResult[Any]) -> tuple[Diagnostic, ...]:
    return tuple(d for d in result.diagnostics if d.code in PROBLEM_CODES)[:10]


def _label(reranker: Reranker | RerankFn | None) -> str:
    if reranker is None:
        return "bm25"
    if isinstance(reranker, Reranker):
        return reranker.strategy.name
    return getattr(reranker, "__name__", type(reranker).__name__)


def _measure(
    tasks: Sequence[_Task],
    qrels: Mapping[str, Mapping[str, int]],
    reranker: Reranker | RerankFn | None,
    *,
    name: str | None,
    depth: int,
    k: int,
    data: str | None,
    model: str | None,
    prices: PriceSource,
    concurrency: int,
    progress: bool,
    relevance: int | None = None,
    first_stage: str = "bm25",
) -> EvalReport:
    for option, value in (("concurrency", concurrency), ("k", k)):
        if value < 1:
            raise ConfigurationError(f"{option} must be >= 1")
    name = name or _label(reranker)
    results, wall = _run_with_bar(tasks, reranker, concurrency, name if progress else None)
    if relevance is None:
        relevance = binary_relevance(qrels)
    results, means = _scored(results, qrels, k, relevance)
    usage = sum((r.usage for r in results), Usage())
    backend = reranker.backend if isinstance(reranker, Reranker) else None
    backend_name = backend.name if backend is not None else None
    requested = model or (backend.model if backend is not None else None)
    served = Counter(r.model for r in results if r.model).most_common(1)
    model = served[0][0] if served else requested
    cost, note = _cost(reranker, model, usage, prices)
    seconds = [r.seconds for r in results]
    return EvalReport(
        name=name,
        metrics=means,
        per_query=tuple(results),
        usage=usage,
        cost=cost,
        latency_p50=percentile(seconds, 50),
        latency_p95=percentile(seconds, 95),
        wall_seconds=wall,
        depth=depth,
        k=k,
        data=data,
        backend=backend_name,
        model=model,
        cost_note=note,
        requested_model=requested if requested != model else None,
        relevance=relevance,
        first_stage=first_stage,
    )


def _run_with_bar(
    tasks: Sequence[_Task], reranker: Reranker | RerankFn | None, concurrency: int, bar_name: str | None
) -> tuple[list[QueryResult], float]:
    """Every task's result and the run's wall seconds, with a tqdm bar named ``bar_name`` (none when None)."""
    bar = None
    if bar_name is not None:
        tqdm: Any = require("tqdm", "eval")
        bar = tqdm.tqdm(total=len(tasks), desc=bar_name, unit="q", leave=True)
    started = time.perf_counter()
    try:
        results = run_blocking(_run_all(tasks, reranker, concurrency, bar))
    finally:
        if bar is not None:
            bar.close()
    return results, time.perf_counter() - started


def _scored(
    results: list[QueryResult], qrels: Mapping[str, Mapping[str, int]], k: int, relevance: int
) -> tuple[list[QueryResult], dict[str, float]]:
    """The results with their metrics filled in, and each metric's mean over them (0.0 when none)."""
    per_query_metrics = score_rankings({r.query_id: r.ranking for r in results}, qrels, k, relevance)
    results = [replace(r, metrics=per_query_metrics[r.query_id]) for r in results]
    names = metric_names(k)
    means = {n: sum(m[n] for m in per_query_metrics.values()) / len(results) if results else 0.0 for n in names}
    return results, means


def _cost(
    reranker: Reranker | RerankFn | None, model: str | None, usage: Usage, prices: PriceSource
) -> tuple[float | None, str]:
    """The estimated USD cost of ``usage`` (None: no price applies) and how it was reached."""
    if reranker is None:
        return 0.0, "no LLM calls"
    backend = reranker.backend if isinstance(reranker, Reranker) else None
    backend_name = backend.name if backend is not None else None
    server_url = getattr(backend, "server_url", None)
    price, note = cost_basis(model, prices, backend=backend_name, server_url=server_url)
    return (None if price is None else price.cost(usage.prompt_tokens, usage.completion_tokens)), note


def split_halves(query_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """Deterministic tuning and report halves: the ids sorted (numerically when they are numbers),
    then alternately assigned, the first to tuning. Pick settings on one, report on the other."""
    ordered = sorted(query_ids, key=lambda q: (0, int(q), q) if q.isdigit() else (1, 0, q))
    return ordered[0::2], ordered[1::2]


def select_queries(collection: Collection, queries: int | Sequence[str] | None) -> list[str]:
    """Query ids to evaluate: all judged (None), the first N, or the ids given."""
    if queries is None:
        return list(collection.queries)
    if isinstance(queries, bool | str):
        raise ConfigurationError("queries is a count or a list of query ids")
    if isinstance(queries, int):
        if queries < 1:
            raise ConfigurationError("queries must be >= 1")
        return list(collection.queries)[:queries]
    ids = [str(q) for q in queries]
    unknown = [q for q in ids if q not in collection.queries]
    if unknown:
        raise ConfigurationError(f"queries not judged in the {collection.split!r} split: {unknown[:5]}")
    return ids


def evaluate(
    data: str | Path | Collection | None = None,
    reranker: Reranker | RerankFn | None = None,
    *,
    depth: int = 20,
    queries: int | Sequence[str] | None = None,
    k: int = 10,
    name: str | None = None,
    split: str = "test",
    model: str | None = None,
    prices: PriceSource = None,
    concurrency: int = 1,
    progress: bool = False,
    stem: bool = True,
    with_scores: bool = False,
    run: str | Path | Run | None = None,
    relevance: int | None = None,
) -> EvalReport:
    """BM25 top ``depth`` (or a given run's), reranked by ``reranker``, scored against the collection's qrels.

    ``data``: a BEIR folder or a loaded :class:`Collection` (default: :func:`default_data_path`).
    ``reranker``: None (the first stage's order itself, the baseline), a :class:`~llmrerank.Reranker`, or a
    function ``(query, texts) -> RerankResult | list of positions`` (sync or async; ``texts`` are
    the first stage's hits' texts, best first; positions left out follow in first-stage order).
    ``run``: a first-stage run file (or a :class:`Run` from :func:`read_run`): its top ``depth``
    documents per query, in trec_eval's order and with its scores, replace BM25; the baseline
    (``reranker=None``) is then the run itself, named after it. Every judged query is evaluated;
    one the run does not list has no candidates and scores 0.
    ``queries``: how many judged queries (the first N in file order) or which query ids; None: all.
    ``k``: the recall cutoff (R@k). ``model``: the model name for the cost estimate when
    ``reranker`` is a function (a Reranker's backend knows its own). ``prices``: overrides for the
    price table (a dict or a JSON file; see :mod:`llmrerank.pricing`). ``concurrency``: queries
    reranked at once (latency is per query either way). ``progress``: show a tqdm bar.
    ``stem=False`` indexes without stemming. ``with_scores=True`` passes each hit as a dict
    ``{"id", "content", "score"}`` with its first-stage score (what a Reranker's ``fusion`` reads).
    ``relevance``: the lowest grade RR, P and R count relevant (default: :func:`binary_relevance`).
    """
    if depth < 1:
        raise ConfigurationError("depth must be >= 1")
    collection = data if isinstance(data, Collection) else load_beir(data, split)
    ids = select_queries(collection, queries)
    hits, first_stage = _first_stage(collection, ids, depth, run, stem)
    if run is not None and reranker is None and name is None:
        name = first_stage
    return _measure(
        _collection_tasks(collection, ids, hits, with_scores),
        collection.qrels,
        reranker,
        name=name,
        depth=depth,
        k=k,
        data=str(collection.path),
        model=model,
        prices=prices,
        concurrency=concurrency,
        progress=progress,
        relevance=relevance,
        first_stage=first_stage,
    )


def _first_stage(
    collection: Collection, ids: Sequence[str], depth: int, run: str | Path | Run | None, stem: bool
) -> tuple[list[list[tuple[str, float]]], str]:
    """Each query's top ``depth`` (document id, score) hits, from BM25 or ``run``, and the first stage's name."""
    if run is None:
        return collection.bm25(stem=stem).search([collection.queries[q] for q in ids], depth), "bm25"
    given = run if isinstance(run, Run) else read_run(run)
    hits = [list(given.hits.get(q, ()))[:depth] for q in ids]
    missing = sorted({d for found in hits for d, _ in found if d not in collection.documents})
    if missing:
        raise ConfigurationError(
            f"{len(missing)} documents of run {given.path} are not in {collection.path}/corpus.jsonl: {missing[:5]}"
        )
    return hits, f"run:{given.name}"


def _collection_tasks(
    collection: Collection, ids: Sequence[str], hits: Sequence[Sequence[tuple[str, float]]], with_scores: bool
) -> list[_Task]:
    """One task per query: its hits' texts (dicts with their first-stage scores ``with_scores``)."""

    def hit(doc_id: str, score: float) -> Any:
        text = collection.documents[doc_id]
        return {"id": doc_id, "content": text, "score": score} if with_scores else text

    return [
        _Task(qid, collection.queries[qid], [hit(d, s) for d, s in found], [d for d, _ in found])
        for qid, found in zip(ids, hits, strict=True)
    ]


def _doc_id(doc: Any, position: int) -> str:
    if isinstance(doc, Mapping):
        for key in ("id", "_id", "doc_id"):
            if doc.get(key) is not None:
                return str(doc[key])
    else:
        for attr in ("id", "id_", "doc_id"):
            value = getattr(doc, attr, None)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return str(position)


def _judgments(value: Any) -> dict[str, int]:
    if isinstance(value, Mapping):
        return {str(d): int(g) for d, g in value.items()}
    if isinstance(value, str | int):
        return {str(value): 1}
    return {str(d): 1 for d in value}


def _given_tasks(queries: Sequence[Mapping[str, Any]]) -> list[_Task]:
    """One task per query dict of :func:`evaluate_reranking` (:class:`InvalidInputError` for a malformed one)."""
    tasks: list[_Task] = []
    for n, q in enumerate(queries):
        if not isinstance(q, Mapping):
            raise InvalidInputError(f"queries[{n}] must be a dict with 'query' and 'documents'")
        text = q.get("query", q.get("text"))
        if not isinstance(text, str):
            raise InvalidInputError(f"queries[{n}] has no 'query' (or 'text') string")
        docs = q.get("documents")
        if docs is None or isinstance(docs, str | bytes):
            raise InvalidInputError(f"queries[{n}] has no 'documents' list")
        docs = list(docs)
        qid = str(q.get("id", q.get("_id", n)))
        tasks.append(_Task(qid, text, docs, [_doc_id(d, i) for i, d in enumerate(docs)]))
    if len({t.query_id for t in tasks}) != len(tasks):
        raise InvalidInputError("query ids must be unique")
    return tasks


def _given_qrels(ground_truth: Mapping[Any, Any] | Sequence[Any], tasks: Sequence[_Task]) -> dict[str, dict[str, int]]:
    """The judgments of :func:`evaluate_reranking`'s ``ground_truth``, keyed by query id."""
    if isinstance(ground_truth, Mapping):
        return {str(q): _judgments(v) for q, v in ground_truth.items()}
    truth = list(ground_truth)
    if len(truth) != len(tasks):
        raise InvalidInputError(f"ground_truth has {len(truth)} entries for {len(tasks)} queries")
    return {t.query_id: _judgments(v) for t, v in zip(tasks, truth, strict=True)}


def evaluate_reranking(
    queries: Sequence[Mapping[str, Any]],
    ground_truth: Mapping[Any, Any] | Sequence[Any],
    rerank_fn: Reranker | RerankFn | None,
    *,
    k: int = 10,
    name: str | None = None,
    model: str | None = None,
    prices: PriceSource = None,
    concurrency: int = 1,
    progress: bool = False,
    relevance: int | None = None,
) -> EvalReport:
    """Evaluate a reranker on your own queries and candidate lists, without a BEIR folder.

    ``queries``: a list of dicts, each with the query under ``"query"`` (or ``"text"``), its
    candidates under ``"documents"`` (strings, dicts or objects; passed to ``rerank_fn`` as given)
    and optionally an ``"id"``. A candidate's id is its ``id``/``_id``/``doc_id`` when it has one,
    else its position in the list as a string (``"0"``, ``"1"``, ...). A query's id is its
    ``"id"``, else its position.

    ``ground_truth``: per query, the relevant candidate ids (a list or set: grade 1) or a dict of
    id -> grade; either a dict keyed by query id or a list aligned with ``queries``.

    ``rerank_fn``: a :class:`~llmrerank.Reranker`, a function ``(query, documents) ->
    RerankResult | list of positions`` or None (keep the given order). ``relevance``: the lowest
    grade RR, P and R count relevant (default: :func:`binary_relevance`). Returns an
    :class:`EvalReport` with the same metrics as :func:`evaluate`.

    >>> report = evaluate_reranking(
    ...     [{"query": "capital of France", "documents": ["Berlin is...", "Paris is..."]}],
    ...     [["1"]],
    ...     lambda query, docs: [1, 0],
    ... )
    >>> report.metrics["P@1"]
    1.0
    """
    tasks = _given_tasks(queries)
    return _measure(
        tasks,
        _given_qrels(ground_truth, tasks),
        rerank_fn,
        name=name or ("input" if rerank_fn is None else None),
        depth=max((len(t.documents) for t in tasks), default=0),
        k=k,
        data=None,
        model=model,
        prices=prices,
        concurrency=concurrency,
        progress=progress,
        relevance=relevance,
        first_stage="input",
    )


__all__ = [
    "BM25",
    "CHECKOUT_SLICE",
    "ENV_VAR",
    "Collection",
    "Difference",
    "EvalReport",
    "QueryResult",
    "Run",
    "binary_relevance",
    "default_data_or_slice",
    "default_data_path",
    "evaluate",
    "evaluate_reranking",
    "load_beir",
    "paired_difference",
    "percentile",
    "read_qrels",
    "read_run",
    "run_rows",
    "score_rankings",
    "select_queries",
    "split_halves",
]
