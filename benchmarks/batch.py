"""Benchmark: rows per second of a batch job, local asyncio engine against Ray, at the same total concurrency.

Every cell runs :func:`llmrerank.batch.run_batch` over ``--rows`` generated rows of ``--docs``
candidates with ``OpenAIBackend`` (the real SDK) against one :class:`~testkit.server.FakeLLMServer`
on loopback that waits ``--latency`` seconds per call. At total concurrency C (rows in flight),
the local engine runs C rows at once on one Reranker with ``max_concurrency`` = C x calls per
row; Ray runs ``--actors`` actors, each with C / actors rows in flight and its own Reranker bounded
to its share. ``ideal`` is the rate the latency allows: C / latency (one round of calls a row). Ray is
started once before the cells (``ray.init`` is not timed); its cells include starting the actor
pool, which the ``+startup`` column shows apart (a one-row job).

    python benchmarks/batch.py                                   # 2000 listwise rows, C = 8 and 32
    python benchmarks/batch.py --strategy pointwise --rows 500 --docs 10 --concurrency 16
    python benchmarks/batch.py --engines local --rows 50          # without Ray
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from llmrerank.batch import RerankerSpec, run_batch
from testkit.server import FakeLLMServer, overlap_responder

WORDS = ["aurora", "solar", "wind", "magnetic", "field", "charged", "particles", "light", "green", "oxygen", "sky"]


def write_rows(path: Path, rows: int, docs: int) -> None:
    """``rows`` rows of ``docs`` candidates, words drawn deterministically from a small vocabulary."""
    with path.open("w") as f:
        for r in range(rows):
            query = " ".join(WORDS[(r + k) % len(WORDS)] for k in range(4))
            candidates = [
                {"id": f"d{r}-{j}", "text": " ".join(WORDS[(r * 7 + j * 3 + k) % len(WORDS)] for k in range(30))}
                for j in range(docs)
            ]
            f.write(json.dumps({"query_id": f"q{r}", "query": query, "candidates": candidates}) + "\n")


def cell(
    engine: str, path: Path, server: FakeLLMServer, strategy: str, concurrency: int, actors: int, calls: int
) -> dict[str, Any]:
    """One run into a fresh folder."""
    share = actors if engine == "ray" else 1
    spec = RerankerSpec(
        "openai", strategy, "gpt-4o-mini", server.base_url, {"max_concurrency": max(1, concurrency * calls // share)}
    )
    with tempfile.TemporaryDirectory() as out:
        options: dict[str, Any] = {"ray_actors": actors} if engine == "ray" else {}
        summary = run_batch(path, out, spec, engine=engine, concurrency=concurrency, **options)
    assert summary.errors == 0 and summary.degraded == 0, summary
    return {
        "engine": engine,
        "actors": actors if engine == "ray" else 1,
        "concurrency": concurrency,
        "rows": summary.results,
        "calls": summary.usage.calls,
        "seconds": round(summary.wall_seconds, 2),
        "rows/s": round(summary.rows_per_second, 1),
        "calls/s": round(summary.usage.calls / summary.wall_seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cells and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument("--strategy", default="listwise", choices=("listwise", "pointwise"))
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server waits per call")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32], help="rows in flight, in total")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (the local instance has --cpus CPUs)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=("local", "ray"))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark")
    calls = 1 if args.strategy == "listwise" else args.docs
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, FakeLLMServer(overlap_responder, latency=args.latency) as server:
        path = Path(tmp) / "rows.jsonl"
        write_rows(path, args.rows, args.docs)
        write_rows(Path(tmp) / "one.jsonl", 1, args.docs)
        if "ray" in args.engines:
            import ray

            started = time.perf_counter()
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            print(f"ray.init: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        try:
            for concurrency in args.concurrency:
                for engine in args.engines:
                    startup = cell(engine, Path(tmp) / "one.jsonl", server, args.strategy, 1, args.actors, calls)
                    row = cell(engine, path, server, args.strategy, concurrency, args.actors, calls)
                    row["+startup s"] = startup["seconds"]
                    row["ideal rows/s"] = round(concurrency / args.latency, 1)  # one round of calls per row
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
        finally:
            if "ray" in args.engines:
                ray.shutdown()
    heads = ["engine", "actors", "concurrency", "rows", "calls", "seconds", "+startup s", "rows/s", "ideal rows/s"]
    print(f"{args.rows} {args.strategy} rows x {args.docs} candidates, {args.latency * 1000:.0f} ms per call\n")
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join("---" if h == "engine" else "---:" for h in heads) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in heads) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
