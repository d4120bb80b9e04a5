"""What the batch tests share: input rows from the SciFact slice, and reading a job's output folder back."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "scifact-slice"


def good_rows(count: int = 20, docs: int = 6) -> list[dict[str, Any]]:
    """``count`` rows of a SciFact query and ``docs`` abstracts each (the query's own ones among others)."""
    queries = [json.loads(line) for line in (DATA / "queries.jsonl").open()]
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open()]
    rows = []
    for i in range(count):
        query = queries[i % len(queries)]
        chosen = [corpus[(i * 7 + j * 3) % len(corpus)] for j in range(docs)]
        rows.append(
            {
                "query_id": f"q{i}",
                "query": query["text"],
                "candidates": [
                    {"id": d["_id"], "text": f"{d.get('title', '')} {d['text']}"[:600], "score": float(docs - j)}
                    for j, d in enumerate(chosen)
                ],
            }
        )
    return rows


BAD_LINES = [
    ("not json", "{not json"),
    ("non-string query", json.dumps({"query_id": "b1", "query": 7, "candidates": [{"id": "a", "text": "x"}]})),
    ("missing text", json.dumps({"query_id": "b2", "query": "q", "candidates": [{"id": "a"}]})),
    ("empty candidates", json.dumps({"query_id": "b3", "query": "q", "candidates": []})),
    ("candidate without id", json.dumps({"query_id": "b4", "query": "q", "candidates": [{"text": "x"}]})),
    ("no query id", json.dumps({"query": "q", "candidates": [{"id": "a", "text": "x"}]})),
    ("duplicate query id", json.dumps({"query_id": "q0", "query": "again", "candidates": [{"id": "a", "text": "x"}]})),
    ("a list, not an object", json.dumps([1, 2])),
]
"""(what is wrong, the JSONL line)."""


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """Rows as JSONL (strings are written as they are, for broken lines)."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def mixed_input(path: Path, count: int = 12, rows: list[dict[str, Any]] | None = None) -> tuple[Path, int]:
    """Good rows (``rows`` or ``count`` of :func:`good_rows`) with every kind of bad line among them.

    Returns the file and its number of rows.
    """
    lines: list[Any] = list(good_rows(count) if rows is None else rows)
    for n, (_, line) in enumerate(BAD_LINES):
        lines.insert(2 + 2 * n, line)
    write_jsonl(path, lines)
    return path, len(lines)


def records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (every line must be whole JSON)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def comparable(path: Path) -> list[dict[str, Any]]:
    """The records of results.jsonl in input order, without their timings (which differ from run to run)."""
    out = []
    for record in sorted(records(path), key=lambda r: r["row"]):
        out.append({**record, "usage": {k: v for k, v in record["usage"].items() if not k.endswith("_seconds")}})
    return out


def assert_each_row_once(out: Path, total: int) -> None:
    """Every input row is in exactly one of results.jsonl and errors.jsonl."""
    rows = [r["row"] for r in records(out / "results.jsonl")] + [r["row"] for r in records(out / "errors.jsonl")]
    assert sorted(rows) == list(range(1, total + 1)), sorted(rows)
