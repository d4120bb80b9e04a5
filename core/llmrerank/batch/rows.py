"""Reading a batch job's input: JSONL or Parquet rows of a query and its candidates, checked one by one.

A row is ``{"query_id": ..., "query": "...", "candidates": [{"id": ..., "text": "...", "score": 1.5}, ...]}``
(also accepted: ``qid`` for ``query_id``; ``documents`` or ``docs`` for ``candidates``; ``doc_id`` or
``docid`` for a candidate's ``id``; ``content`` for its ``text``). Candidates come in first-stage
order; ``score`` (optional) is the first-stage score, carried to the output. Rows are numbered from
1: the line number in a JSONL file (blank lines count but are skipped), the row number in Parquet.

Reading never raises on a bad row: :func:`read_rows` yields a :class:`BadRow` naming what is wrong,
and the job records it in its errors file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..errors import ConfigurationError, InvalidInputError, require

QUERY_ID_KEYS = ("query_id", "qid")
CANDIDATES_KEYS = ("candidates", "documents", "docs")
DOC_ID_KEYS = ("id", "doc_id", "docid")
TEXT_KEYS = ("text", "content")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Candidate:
    """One candidate document of a row."""

    id: str
    text: str
    score: float | None = None
    """The first-stage score, if the input had one."""


@dataclass(frozen=True)
class Row:
    """A valid input row."""

    number: int
    query_id: str
    query: str
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON form (for shipping to Ray workers); :meth:`from_json` reverses it."""
        return {
            "number": self.number,
            "query_id": self.query_id,
            "query": self.query,
            "candidates": [[c.id, c.text, c.score] for c in self.candidates],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Row:
        """The row :meth:`to_json` wrote."""
        return cls(
            int(data["number"]),
            str(data["query_id"]),
            str(data["query"]),
            tuple(Candidate(str(i), str(t), s) for i, t, s in data["candidates"]),
        )


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be reranked, with why."""

    number: int
    query_id: str | None
    error: InvalidInputError


Item = Union[Row, BadRow]  # noqa: UP007 - a runtime alias, kept valid on 3.10


def input_format(path: str | Path) -> str:
    """``"parquet"`` for ``.parquet`` / ``.pq`` files, else ``"jsonl"``."""
    return "parquet" if Path(path).suffix.lower() in PARQUET_SUFFIXES else "jsonl"


def count_rows(path: str | Path) -> int | None:
    """How many rows the input has (JSONL: non-blank lines), for a progress bar; None if unreadable."""
    try:
        if input_format(path) == "parquet":
            parquet: Any = require("pyarrow.parquet", "batch", "pyarrow")
            return int(parquet.ParquetFile(str(path)).metadata.num_rows)
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except (OSError, ValueError):
        return None


def read_rows(path: str | Path) -> Iterator[Item]:
    """Yield every row of the input file as a :class:`Row` or a :class:`BadRow`, in file order.

    Raises :class:`~llmrerank.errors.ConfigurationError` only when the file itself cannot be read
    (missing, not Parquet); :class:`~llmrerank.errors.MissingDependencyError` for Parquet without
    pyarrow.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"input file {path} does not exist")
    raws = _parquet_rows(path) if input_format(path) == "parquet" else _jsonl_rows(path)
    for number, raw in raws:
        yield parse_row(number, raw)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except ValueError as exc:  # also a UnicodeDecodeError
                yield number, InvalidInputError(f"line {number} is not valid JSON: {exc}")


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    parquet: Any = require("pyarrow.parquet", "batch", "pyarrow")
    try:
        reader = parquet.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError types
        raise ConfigurationError(f"cannot read the Parquet file {path}: {exc}") from exc
    number = 0
    for batch in reader.iter_batches(batch_size=1024):
        for raw in batch.to_pylist():
            number += 1
            yield number, raw


def _first(mapping: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            return key, mapping[key]
    return None, None


def _identifier(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInputError(f"{what} must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text or any(c.isspace() for c in text):
        # The TREC run format separates columns by whitespace.
        raise InvalidInputError(f"{what} {text!r} is empty or contains whitespace")
    return text


def parse_row(number: int, raw: Any) -> Item:
    """Check one decoded row; a :class:`Row`, or a :class:`BadRow` saying what is wrong."""
    if isinstance(raw, InvalidInputError):
        return BadRow(number, None, raw)
    if not isinstance(raw, Mapping):
        return BadRow(number, None, InvalidInputError(f"row is a JSON {type(raw).__name__}, expected an object"))
    key, value = _first(raw, QUERY_ID_KEYS)
    if key is None:
        return BadRow(number, None, InvalidInputError("row has no query_id (or qid)"))
    try:
        query_id = _identifier(value, "query_id")
    except InvalidInputError as exc:
        return BadRow(number, None, exc)
    try:
        return Row(number, query_id, _query(raw), _candidates(raw))
    except InvalidInputError as exc:
        return BadRow(number, query_id, exc)


def _query(raw: Mapping[str, Any]) -> str:
    query = raw.get("query")
    if query is None:
        raise InvalidInputError("row has no query")
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query is blank")
    return query


def _candidates(raw: Mapping[str, Any]) -> tuple[Candidate, ...]:
    key, items = _first(raw, CANDIDATES_KEYS)
    if key is None:
        raise InvalidInputError("row has no candidates (or documents, docs)")
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, list | tuple):
        raise InvalidInputError(f"{key} must be a list, got {type(items).__name__}")
    if not items:
        raise InvalidInputError(f"{key} is empty: nothing to rerank")
    out: list[Candidate] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"{key}[{i}] is a {type(item).__name__}, expected an object with id and text")
        id_key, doc_id = _first(item, DOC_ID_KEYS)
        if id_key is None:
            raise InvalidInputError(f"{key}[{i}] has no id (or doc_id, docid)")
        doc_id = _identifier(doc_id, f"{key}[{i}].{id_key}")
        if doc_id in seen:
            raise InvalidInputError(f"{key}[{i}]: candidate id {doc_id!r} appears twice")
        seen.add(doc_id)
        text_key, text = _first(item, TEXT_KEYS)
        if text_key is None:
            raise InvalidInputError(f"{key}[{i}] ({doc_id}) has no text (or content)")
        if not isinstance(text, str):
            raise InvalidInputError(f"{key}[{i}] ({doc_id}) {text_key} must be a string, got {type(text).__name__}")
        out.append(Candidate(doc_id, text, _score(item.get("score"), f"{key}[{i}] ({doc_id}) score")))
    return tuple(out)


def _score(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


__all__ = ["BadRow", "Candidate", "Item", "Row", "count_rows", "input_format", "parse_row", "read_rows"]
