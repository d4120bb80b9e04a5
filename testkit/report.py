"""What the benchmarks print and save: markdown tables, JSON rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, left: int = 1) -> str:
    """A markdown table with ``columns`` as its header and one line per row of cells; the first
    ``left`` columns are aligned left, the others (figures) right."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, rows: object) -> None:
    """Write ``rows`` to ``path`` as indented JSON when a path is given (a benchmark's ``--json``)."""
    if path:
        Path(path).write_text(json.dumps(rows, indent=2))
