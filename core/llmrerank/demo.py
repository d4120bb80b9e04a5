"""``llmrerank demo``: rerank one real query offline and show the retriever's order beside the new one.

With the SciFact collection at hand (``$LLMRERANK_DATA`` or ``shared/data/scifact``; see
:func:`llmrerank.evaluation.default_data_path`), BM25 retrieves the top ``--depth`` documents for
a fixed test query (``--query`` picks another query id, or any text) and the default
:class:`~llmrerank.Reranker` reorders them: the local SmolLM2 model unless an API key is set.
Without it, in a checkout, the SciFact slice under ``tests/data`` stands in; elsewhere a handful of
built-in passages are used. Documents judged relevant are marked ✓.

Beside the one query it prints BM25 against the reranked order over many SciFact queries:
measured in the run with ``--measure N`` (the first N queries of the report half, see
:func:`llmrerank.evaluation.split_halves`), else the figures :data:`PRECOMPUTED` by exactly that
command for the default local set-up, labelled as such.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.base import Backend, Forwarding
from .errors import LLMRerankError
from .protocol import Completion, LogLikelihood, Prompt
from .reranker import Reranker
from .routing import default_backend
from .strategies import Pointwise, make_strategy

if TYPE_CHECKING:
    from .evaluation import Collection

DEFAULT_QUERY_ID = "36"
"""SciFact test query shown by default: its relevant abstract is 6th in the BM25 top 10."""

CHECKOUT_SLICE = Path(__file__).resolve().parents[2] / "tests" / "data" / "scifact-slice"
"""In a checkout without the full collection: the SciFact slice the tests use (20 queries, 288 abstracts)."""

PRECOMPUTED: dict[str, Any] = {
    "command": "llmrerank demo --measure 30",
    "queries": 30,
    "depth": 10,
    "setting": "query_likelihood + BM25 fusion (minmax, LLM weight 0.5)",
    "bm25": {"nDCG@10": 0.785, "P@1": 0.667},
    "reranked": {"nDCG@10": 0.800, "P@1": 0.700},
    "ΔnDCG@10 95% CI": [-0.035, 0.062],
    "seconds": 121.0,
    "measured": "2026-12-06 (2 CPU cores, load average 1)",
}
"""The many-query figures for the default local set-up, as ``command`` printed them (copied by hand);
the interval is the 95% paired bootstrap of reranked minus BM25 nDCG@10 over those queries."""

DEMO_DOC_CHARS = 800
"""Pointwise prompts see the first this many characters of each document (title and abstract start)."""

BUILTIN_QUERY = "How do vaccines train the immune system?"
BUILTIN_PASSAGES = {
    "p1": "The stock market fell sharply on Tuesday amid fears of rising inflation and interest rates.",
    "p2": "Vaccines expose the immune system to a harmless antigen, so it learns to recognise the real pathogen.",
    "p3": "A recipe for sourdough bread: mix flour, water and starter, then ferment the dough overnight.",
    "p4": "The football season starts next week, with three new teams joining the league.",
    "p5": "Immunisation trains antibodies and memory T cells, which respond quickly when the virus appears later.",
    "p6": "Volcanic eruptions release ash and sulfur dioxide that can cool the climate for a year or two.",
}
BUILTIN_RELEVANT = frozenset({"p2", "p5"})


@dataclass
class Example:
    """What the demo reranks: a query, the retriever's hits and the relevance judgments."""

    query: str
    label: str
    doc_ids: list[str]
    texts: list[str]
    first_stage: list[float]
    relevant: frozenset[str]
    source: str
    first_stage_label: str = "BM25"
    """Header of the retriever's score column: what ``first_stage`` measures."""


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``llmrerank demo``."""
    parser = argparse.ArgumentParser(prog="llmrerank demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--query", help=f"a SciFact test query id, or any text (default: query {DEFAULT_QUERY_ID}, or a built-in one)"
    )
    parser.add_argument("--depth", type=int, default=10, help="BM25 documents to rerank (default: 10)")
    parser.add_argument("--top-k", type=int, help="rows shown (default: all --depth)")
    parser.add_argument(
        "--strategy",
        help="query_likelihood, pointwise, batch_score, pairwise, setwise, listwise or hybrid "
        "(default: the backend's preferred one)",
    )
    parser.add_argument("--data", help="BEIR folder (default: the SciFact collection, when found)")
    parser.add_argument(
        "--measure",
        type=int,
        metavar="N",
        help="also rerank the first N report-half SciFact queries and print BM25 against the reranked order",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def load_collection(data: str | None) -> Collection | None:
    """The collection at ``data`` (or the default one), else the checkout's slice, else None."""
    from .evaluation import load_beir

    try:
        return load_beir(data)
    except LLMRerankError:
        if data is not None:
            raise
        return load_beir(CHECKOUT_SLICE) if CHECKOUT_SLICE.is_dir() else None


def load_example(query: str | None, depth: int, collection: Collection | None) -> Example:
    """The query and BM25 hits from ``collection``, else (None) the built-in passages (scored by word overlap)."""
    if collection is None:
        return _builtin(query, depth)
    index = collection.bm25()
    label = query or DEFAULT_QUERY_ID
    if label in collection.queries:
        text, relevant = collection.queries[label], frozenset(d for d, g in collection.qrels[label].items() if g > 0)
    else:
        text, label, relevant = label, "your query", frozenset()
    (hits,) = index.search([text], depth)
    where = f"BM25 over {len(collection.documents)} SciFact abstracts"
    if on_slice(collection):
        where += " (the slice committed with the tests: the full collection was not found)"
    return Example(
        query=text,
        label=f"SciFact query {label}" if relevant else label,
        doc_ids=[d for d, _ in hits],
        texts=[collection.documents[d] for d, _ in hits],
        first_stage=[s for _, s in hits],
        relevant=relevant,
        source=where,
    )


def on_slice(collection: Collection) -> bool:
    """Whether ``collection`` is the checkout's slice rather than a full collection."""
    return collection.path.resolve() == CHECKOUT_SLICE.resolve()


def data_label(collection: Collection) -> str:
    """Which data measured figures come from, in words."""
    if on_slice(collection):
        return f"the committed SciFact slice ({len(collection.queries)} queries), not the full collection"
    return f"the SciFact collection at {collection.path} ({len(collection.queries)} judged test queries)"


def _builtin(query: str | None, depth: int) -> Example:
    text = query or BUILTIN_QUERY
    words = {w.strip("?.,").lower() for w in text.split() if len(w) > 3}
    overlap = {d: float(len(words & {w.strip("?.,").lower() for w in t.split()})) for d, t in BUILTIN_PASSAGES.items()}
    ids = sorted(BUILTIN_PASSAGES, key=lambda d: -overlap[d])[:depth]
    return Example(
        query=text,
        label="built-in example",
        doc_ids=ids,
        texts=[BUILTIN_PASSAGES[d] for d in ids],
        first_stage=[overlap[d] for d in ids],
        relevant=BUILTIN_RELEVANT if query is None else frozenset(),
        source="word overlap over built-in passages (no SciFact collection found)",
        first_stage_label="overlap",
    )


class _Progress(Forwarding):
    """Forwards to a backend and advances a progress bar per completed call."""

    def __init__(self, inner: Backend, bar: Any) -> None:
        super().__init__(inner)
        self.bar = bar

    async def generate(self, prompt: Prompt) -> Completion:
        answer = await self.inner.generate(prompt)
        self.bar.update(1)
        return answer

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        answers = await self.inner.generate_batch(prompts)
        self.bar.update(len(prompts))
        return answers

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        answers = await self.inner.continuation_logprobs(pairs)
        self.bar.update(len(pairs))
        return answers


def _bar(enabled: bool, **options: Any) -> Any:
    """A tqdm bar on stderr, or a stand-in that does nothing when tqdm is missing or bars are off."""
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(file=sys.stderr, leave=False, dynamic_ncols=True, **options)
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _short(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def side_by_side(example: Example, result: Any, rows: int, width: int = 34) -> str:
    """The retriever's order and the reranked order as two columns."""
    label = example.first_stage_label
    cell = max(6, len(label))
    left_head = f"{'#':>2}  {'doc':<9} {label:>{cell}}  {'text':<{width}}"
    right_head = f"{'#':>2}  {'doc':<9} {'score':>6}  text"
    lines = [f"{'Retriever order':<{len(left_head)}} │ Reranked ({result.strategy}, {result.score_kind} scores)"]
    lines.append(f"{left_head} │ {right_head}")
    lines.append("─" * len(left_head) + "─┼─" + "─" * (len(right_head) + width - 4))
    for r in range(min(rows, len(example.doc_ids))):
        d = example.doc_ids[r]
        mark = "✓" if d in example.relevant else " "
        first = f"{example.first_stage[r]:>{cell}.2f}"
        left = f"{r + 1:>2}{mark} {d:<9} {first}  {_short(example.texts[r], width):<{width}}"
        item = result.items[r] if r < len(result.items) else None
        if item is None:
            right = ""
        else:
            rd = example.doc_ids[item.index]
            score = "   n/a" if item.score is None else f"{item.score:>6.2f}"
            mark = "✓" if rd in example.relevant else " "
            right = f"{r + 1:>2}{mark} {rd:<9} {score}  {_short(example.texts[item.index], width)}"
        lines.append(f"{left} │ {right}")
    return "\n".join(lines)


def measure(reranker: Reranker, collection: Collection, count: int, depth: int, progress: bool) -> dict[str, Any]:
    """BM25 against ``reranker`` on the first ``count`` report-half queries (hits carry their BM25 score),
    with the 95% paired-bootstrap interval of the nDCG@10 difference
    (:func:`~llmrerank.evaluation.paired_difference`)."""
    from .evaluation import evaluate, paired_difference, split_halves

    _, report = split_halves(collection.queries)
    ids = report[:count]
    bm25 = evaluate(collection, None, depth=depth, queries=ids)
    reranked = evaluate(collection, reranker, depth=depth, queries=ids, with_scores=True, progress=progress)
    difference = paired_difference(reranked, bm25)
    return {
        "queries": len(ids),
        "depth": depth,
        "bm25": {k: bm25.metrics[k] for k in ("nDCG@10", "P@1")},
        "reranked": {k: reranked.metrics[k] for k in ("nDCG@10", "P@1")},
        "ΔnDCG@10 95% CI": [difference.low, difference.high],
        "seconds": reranked.wall_seconds,
    }


def setting(reranker: Reranker) -> str:
    """The strategy (and fusion) in words."""
    fusion = f" + BM25 fusion ({reranker.fusion.describe()})" if reranker.fusion is not None else ""
    return f"{reranker.strategy.name}{fusion}"


def figures(found: dict[str, Any], setting: str, source: str) -> str:
    """The many-query comparison as a few lines, ending with the nDCG@10 difference and its interval."""
    lines = [
        f"Over {found['queries']} SciFact test queries (report half), BM25 top {found['depth']}, reranked = {setting}"
    ]
    lines.append(f"  {source}")
    lines.append(f"  {'':<10} {'nDCG@10':>8} {'P@1':>6}")
    for name, key in (("BM25", "bm25"), ("reranked", "reranked")):
        lines.append(f"  {name:<10} {found[key]['nDCG@10']:>8.3f} {found[key]['P@1']:>6.3f}")
    delta = found["reranked"]["nDCG@10"] - found["bm25"]["nDCG@10"]
    low, high = found["ΔnDCG@10 95% CI"]
    lines.append(
        f"  reranked - BM25: nDCG@10 {delta:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] "
        f"(paired bootstrap over the {found['queries']} queries)"
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class Shown:
    """The demo's one reranked query: the example, its result and what it cost in time."""

    example: Example
    result: Any
    seconds: float
    load_seconds: float


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    if args.depth < 1 or (args.top_k is not None and args.top_k < 1) or (args.measure is not None and args.measure < 1):
        return "--depth, --top-k and --measure must be >= 1"
    return None


def load_backend(progress: bool) -> tuple[Backend, float]:
    """The default backend, its model loaded now (with a bar) when it has one; and the load's seconds."""
    backend = default_backend()
    load = getattr(backend, "load", None)
    if not callable(load):
        return backend, 0.0
    bar = _bar(progress, total=None, desc=f"loading {backend.model}", bar_format="{desc}: {elapsed}")
    try:
        return backend, float(load())
    finally:
        bar.close()


def make_reranker(backend: Backend, strategy: str | None) -> Reranker:
    """The demo's reranker: ``strategy`` or the backend's preferred one, with the default fusion."""
    name = (strategy or backend.preferred_strategy).strip().lower()
    # Pointwise reads each abstract once per call: cut them so the demo stays quick on a CPU.
    return Reranker(Pointwise(max_doc_chars=DEMO_DOC_CHARS) if name == "pointwise" else make_strategy(name), backend)


def rerank_example(reranker: Reranker, example: Example, progress: bool) -> tuple[Any, float]:
    """``example`` reranked with a bar counting the LLM calls; the result and its seconds."""
    bar = _bar(progress, total=None, desc=f"reranking ({reranker.strategy.name})", unit="call")
    try:
        shown = Reranker(reranker.strategy, _Progress(reranker.backend, bar), fusion=reranker.fusion)
        started = time.perf_counter()
        scores = example.first_stage if shown.fusion is not None else None
        result = shown.rerank(example.query, example.texts, first_stage_scores=scores)
        return result, time.perf_counter() - started
    finally:
        bar.close()


def print_shown(shown: Shown, backend: Backend, rows: int) -> None:
    """The query, both orders side by side, the cost and any degradation."""
    example, result = shown.example, shown.result
    print(f"{example.label}: {example.query}")
    print(f"{len(example.doc_ids)} candidates from {example.source}; backend {backend.name}, model {backend.model}")
    print()
    print(side_by_side(example, result, rows))
    print()
    usage = result.usage
    print(
        f"{usage.calls} LLM calls, {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"rerank {shown.seconds:.1f}s" + (f", model load {shown.load_seconds:.1f}s" if shown.load_seconds else "")
    )
    if result.degraded:
        fallbacks = sum(item.fallback for item in result)
        print(
            f"status: {result.status} ({', '.join(result.degraded_reasons)}): {fallbacks} documents kept "
            "their BM25 place, unjudged (see the warning above)"
        )
    if example.relevant:
        print("✓ = judged relevant")


def print_many_queries(
    measured: dict[str, Any] | None, collection: Collection | None, reranker: Reranker, depth: int
) -> None:
    """The many-query comparison: measured in this run, else PRECOMPUTED where it applies, else a hint."""
    print()
    if measured is not None and collection is not None:
        source = f"measured in this run on {data_label(collection)} ({measured['seconds']:.0f} s):"
        print(figures(measured, setting(reranker), source))
    elif (
        reranker.backend.name == "local"
        and setting(reranker) == PRECOMPUTED["setting"]
        and depth == PRECOMPUTED["depth"]
    ):
        here = f" (this run used {data_label(collection)})" if collection is not None and on_slice(collection) else ""
        source = (
            f"PRECOMPUTED on {PRECOMPUTED['measured']} on the full SciFact collection (300 judged test queries) "
            f"by `{PRECOMPUTED['command']}` ({PRECOMPUTED['seconds']:.0f} s), not measured in this run{here}; "
            "run it to measure here:"
        )
        print(figures(PRECOMPUTED, PRECOMPUTED["setting"], source))
    else:
        print(f"Add --measure 30 to compare BM25 with this reranker over 30 SciFact queries ({setting(reranker)}).")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    problem = usage_error(args)
    if problem:
        print(f"llmrerank demo: {problem}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    measured: dict[str, Any] | None = None
    try:
        collection = load_collection(args.data)  # loaded once: the shown query and --measure share its BM25 index
        example = load_example(args.query, args.depth, collection)
        backend, load_seconds = load_backend(progress)
        reranker = make_reranker(backend, args.strategy)
        result, seconds = rerank_example(reranker, example, progress)
        if args.measure:
            if collection is None:
                print("llmrerank demo: --measure needs the SciFact collection", file=sys.stderr)
                return 2
            measured = measure(reranker, collection, args.measure, args.depth, progress)
    except LLMRerankError as exc:
        print(f"llmrerank demo: error: {exc}", file=sys.stderr)
        return 2
    print_shown(Shown(example, result, seconds, load_seconds), backend, args.top_k or len(example.doc_ids))
    if example.first_stage_label == "BM25":  # built-in passages: no SciFact collection to measure on
        print_many_queries(measured, collection, reranker, args.depth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
