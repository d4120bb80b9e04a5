"""How long a new environment waits for its first offline rerank once the converted model is shared.

The local model is converted once per machine into ``~/.cache/llmrerank/models`` (keyed by the
GGUF's content). This runs ``--runs`` fresh Python processes of the interpreter ``--python``
(default: this one; give another virtual environment's ``bin/python`` to measure a second
environment) and times, in each: ``import llmrerank``, ``Reranker()`` (the offline default), the
model load (import of torch and transformers included) and the first rerank of 10 passages.
The conversion, when the cache lacks it, is made first and timed on its own.

    python benchmarks/first_rerank.py --runs 3
    python benchmarks/first_rerank.py --python /tmp/other-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = """
import json, time
started = time.perf_counter()
import llmrerank
from llmrerank import Reranker
imported = time.perf_counter()
reranker = Reranker()
built = time.perf_counter()
reranker.backend.load()
loaded = time.perf_counter()
passages = [f"Passage {i} about topic {i % 3}: " + "words that fill a short abstract. " * 8 for i in range(9)]
passages.insert(4, "Paris is the capital and largest city of France, on the Seine.")
result = reranker.rerank("What is the capital of France?", passages)
done = time.perf_counter()
assert result.status == "reranked", result.summary()
print(json.dumps({"import": imported - started, "construct": built - imported, "load": loaded - built,
                  "rerank": done - loaded, "total": done - started}))
"""
PARTS = ("import", "construct", "load", "rerank", "total")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes to time (default: 3)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the environment to time")
    parser.add_argument("--out", help="folder for first_rerank.json")
    args = parser.parse_args(argv)

    from llmrerank.backends.local import converted_dir, default_gguf, resolve_model

    folder = converted_dir(default_gguf())
    conversion = None
    if not (folder / "config.json").is_file():
        started = time.perf_counter()
        resolve_model(None)
        conversion = time.perf_counter() - started
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    runs = []
    for _ in range(args.runs):
        done = subprocess.run([args.python, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {part: statistics.median(r[part] for r in runs) for part in PARTS}
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(
        f"converted model {folder} ({size / 1e6:.0f} MB)"
        + (f", converted now in {conversion:.1f} s" if conversion else "")
    )
    print(f"\n{args.runs} fresh processes of {args.python}, median seconds:\n")
    print("| " + " | ".join(PARTS) + " |")
    print("|" + "---:|" * len(PARTS))
    print("| " + " | ".join(f"{median[p]:.2f}" for p in PARTS) + " |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "python": args.python,
            "converted": str(folder),
            "converted_mb": round(size / 1e6),
            "conversion_seconds": conversion,
            "runs": runs,
            "median": median,
        }
        (out / "first_rerank.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
