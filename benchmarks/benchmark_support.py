"""What the benchmark scripts share: their SciFact options and how they publish a table.

Not a benchmark itself. ``python benchmarks/NAME.py`` puts this folder first on ``sys.path``, which
is how the scripts import it (``tests/test_benchmarks.py`` puts the folder on the path too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_options(
    parser: argparse.ArgumentParser,
    *,
    queries: int | None = None,
    depth: int | None = None,
    latency: float | None = None,
) -> None:
    """``--data``, and ``--queries``, ``--depth``, ``--latency`` for those given a default."""
    parser.add_argument("--data", help="BEIR folder (default: $LLMRERANK_DATA or shared/data/scifact)")
    given = (
        ("--queries", int, queries, "the first N judged test queries"),
        ("--depth", int, depth, "BM25 documents per query"),
        ("--latency", float, latency, "seconds the server waits per call"),
    )
    for flag, kind, default, meaning in given:
        if default is not None:
            parser.add_argument(flag, type=kind, default=default, help=f"{meaning} (default: %(default)s)")


def machine(*, cores: bool = False) -> str:
    """Python version and processor architecture (and, with ``cores``, the CPU count) for a table's note."""
    text = f"Python {platform.python_version()} on {platform.machine()}"
    return f"{text}, {os.cpu_count()} CPU cores" if cores else text


def publish(name: str, table: str, note: str, out: str | None, argv: Sequence[str] | None, **fields: Any) -> None:
    """Print ``table`` and ``note``; with ``out``, write ``NAME.json`` (the command that ran, the note,
    then ``fields``) and ``NAME.md`` (table, note and command) into that folder."""
    print(f"{table}\n\n{note}")
    if not out:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    command = ["python", f"benchmarks/{name}.py", *(argv if argv is not None else sys.argv[1:])]
    payload = {"command": command, "note": note, **fields}
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    (folder / f"{name}.md").write_text(f"{table}\n\n{note}\n\nCommand: `{' '.join(command)}`\n", encoding="utf-8")
