"""What the benchmarks print: markdown tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, left: int = 1) -> str:
    """A markdown table with ``columns`` as its header and one line per row of cells; the first
    ``left`` columns are aligned left, the others (figures) right."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
