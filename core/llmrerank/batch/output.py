"""A batch job's output folder: results, errors, the TREC run, the job's settings, and resuming.

Files (``DIR`` is the output folder):

- ``results.jsonl``: one line per reranked row (:func:`result_line`).
- ``errors.jsonl``: one line per row that could not be reranked (:func:`error_line`).
- ``run.trec``: ``qid Q0 docid rank score run_name`` for every result, rebuilt from
  ``results.jsonl`` in input order at the end of each run (:func:`trec_lines` says how scores are chosen).
- ``job.json``: the settings the results were made with; a rerun with other settings is refused.

Each line is appended with one ``write()`` to a file opened in append mode, so a killed process
leaves whole lines (at worst one torn last line, which the next run drops); the files are fsynced
at most once a second and when the run ends.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import PROBLEM_CODES, ROUTINE_CODES
from ..errors import ConfigurationError, InvalidInputError, LLMRerankError
from ..types import RerankResult, Usage
from .rows import BadRow, Row

logger = logging.getLogger("llmrerank")

RESULTS = "results.jsonl"
ERRORS = "errors.jsonl"
TREC = "run.trec"
MANIFEST = "job.json"
SYNC_SECONDS = 1.0


class AppendLog:
    """A JSONL file that only grows by whole lines, each with one ``write()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._synced = time.monotonic()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line."""
        data = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode()
        written = os.write(self._fd, data)
        while written < len(data):  # a short write: only on a full disk or a signal
            written += os.write(self._fd, data[written:])
        if time.monotonic() - self._synced >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """fsync the file."""
        os.fsync(self._fd)
        self._synced = time.monotonic()

    def close(self) -> None:
        """fsync and close."""
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1


def read_jsonl(path: Path, *, repair: bool = False) -> Iterator[dict[str, Any]]:
    """The records of a job file written by :class:`AppendLog`, read line by line.

    A last line without its newline is torn (the process died while writing it): it is dropped,
    and with ``repair=True`` cut off the file so that the next append starts a fresh line. A
    broken line elsewhere is skipped with a warning.
    """
    if not path.exists():
        return
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                logger.warning("llmrerank batch: %s ends in a torn line (%d bytes); dropped", path, len(line))
                break
            offset += len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                logger.warning("llmrerank batch: %s line %d is not JSON; ignored", path, number)
                continue
            if isinstance(record, dict):
                yield record
    if repair and offset < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(offset)
            os.fsync(f.fileno())


@dataclass
class Progress:
    """What is already done in an output folder."""

    result_ids: set[str] = field(default_factory=set)
    error_rows: set[int] = field(default_factory=set)


class JobFolder:
    """The output folder of one job: open it, learn what is done, append lines, finish the TREC run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.results_path = self.path / RESULTS
        self.errors_path = self.path / ERRORS
        self.trec_path = self.path / TREC
        self.manifest_path = self.path / MANIFEST
        self._results: AppendLog | None = None
        self._errors: AppendLog | None = None

    def open(
        self, settings: Mapping[str, Any], *, info: Mapping[str, Any] | None = None, retry_errors: bool = False
    ) -> Progress:
        """Create the folder or check that it holds a job of the same ``settings``; return what is done.

        ``info`` is saved beside the settings but not compared. ``retry_errors`` empties the errors
        file so that those rows are tried again.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            try:
                saved = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ConfigurationError(f"{self.manifest_path} is not JSON: {exc}") from exc
            changed = [k for k in settings if k in saved and saved[k] != settings[k]]
            if changed:
                detail = "; ".join(f"{k}: {saved[k]!r} then, {settings[k]!r} now" for k in changed)
                raise ConfigurationError(
                    f"{self.path} holds a job made with other settings ({detail}); use another output folder"
                )
        else:
            write_atomic(self.manifest_path, json.dumps({**settings, **(info or {})}, indent=1) + "\n")
        done = Progress()
        for record in read_jsonl(self.results_path, repair=True):
            done.result_ids.add(str(record.get("query_id")))
        if retry_errors and self.errors_path.exists():
            write_atomic(self.errors_path, "")
        for record in read_jsonl(self.errors_path, repair=True):
            if isinstance(record.get("row"), int):
                done.error_rows.add(record["row"])
        self._results = AppendLog(self.results_path)
        self._errors = AppendLog(self.errors_path)
        return done

    def write_result(self, record: Mapping[str, Any]) -> None:
        """Append a :func:`result_line`."""
        assert self._results is not None, "open() first"
        self._results.append(record)

    def write_error(self, record: Mapping[str, Any]) -> None:
        """Append an :func:`error_line`."""
        assert self._errors is not None, "open() first"
        self._errors.append(record)

    def close(self, run_name: str) -> None:
        """Sync and close the logs, then rebuild ``run.trec`` from ``results.jsonl``."""
        for log in (self._results, self._errors):
            if log is not None:
                log.close()
        self._results = self._errors = None
        runs = sorted((r.get("row", 0), "".join(trec_lines(r, run_name))) for r in read_jsonl(self.results_path))
        write_atomic(self.trec_path, "".join(lines for _, lines in runs))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a crash leaves the old or the new file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def usage_dict(usage: Usage) -> dict[str, Any]:
    """The usage fields written per row."""
    return {
        "calls": usage.calls,
        "cached_calls": usage.cached_calls,
        "failed_calls": usage.failed_calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "llm_seconds": round(usage.llm_seconds, 4),
        "wall_seconds": round(usage.wall_seconds, 4),
    }


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def result_line(row: Row, result: RerankResult) -> dict[str, Any]:
    """The ``results.jsonl`` record of a reranked row.

    ``candidates`` are best first: ``id``, ``rank``, ``score`` (None when the reranker had none;
    ``score_kind`` says what it means), ``input_rank`` (1-based position in the input),
    ``input_score`` when the input had one, ``reason`` when the strategy gave one, and
    ``diagnostics`` (codes other than :data:`~llmrerank.diagnostics.ROUTINE_CODES`: those are
    counted per row, not listed per candidate) when there are any. ``diagnostics``
    at the top counts every code. ``status``, ``degraded`` and ``degraded_reasons`` are the result's
    (:attr:`~llmrerank.RerankResult.status`); ``degraded_reason`` is the first failure's diagnostic
    (:data:`~llmrerank.diagnostics.PROBLEM_CODES`, most telling first);
    a candidate no model answer placed has ``"fallback": true``.
    """
    counts: dict[str, int] = {}
    for d in result.diagnostics:
        counts[d.code] = counts.get(d.code, 0) + 1
    reason = None
    if result.degraded:
        failures = [d for code in PROBLEM_CODES for d in result.diagnostics if d.code == code]
        reason = (failures[0].code + (f": {failures[0].message}" if failures[0].message else "")) if failures else None
    candidates = []
    for item in result:
        doc = row.candidates[item.index]
        entry: dict[str, Any] = {
            "id": doc.id,
            "rank": item.rank,
            "score": _finite(item.score),
            "input_rank": item.index + 1,
        }
        if item.fallback:
            entry["fallback"] = True
        if doc.score is not None:
            entry["input_score"] = doc.score
        if item.reason:
            entry["reason"] = item.reason
        codes = sorted({d.code for d in item.diagnostics} - ROUTINE_CODES)
        if codes:
            entry["diagnostics"] = codes
        candidates.append(entry)
    return {
        "row": row.number,
        "query_id": row.query_id,
        "strategy": result.strategy,
        "score_kind": result.score_kind,
        "status": result.status,
        "degraded": result.degraded,
        "degraded_reasons": list(result.degraded_reasons),
        "degraded_reason": reason,
        "diagnostics": counts,
        "usage": usage_dict(result.usage),
        "candidates": candidates,
    }


def error_line(number: int, query_id: str | None, error: BaseException, stage: str | None = None) -> dict[str, Any]:
    """The ``errors.jsonl`` record: row number, query id, ``stage`` (``input`` or ``rerank``), type and message."""
    if stage is None:
        stage = "input" if isinstance(error, InvalidInputError) else "rerank"
    message = str(error) if isinstance(error, LLMRerankError) else f"{type(error).__name__}: {error}"
    return {"row": number, "query_id": query_id, "stage": stage, "error": type(error).__name__, "message": message}


def bad_row_line(bad: BadRow) -> dict[str, Any]:
    """The ``errors.jsonl`` record of a row that failed its checks."""
    return error_line(bad.number, bad.query_id, bad.error, "input")


def trec_lines(record: Mapping[str, Any], run_name: str) -> Iterable[str]:
    """The TREC run lines (``qid Q0 docid rank score run``) of one ``results.jsonl`` record.

    The score column is the reranker's score when the scores fall strictly down the ranking;
    otherwise (ties, or documents without a score, e.g. unparsed pointwise answers) the whole
    query gets the pseudo-score ``n - rank + 1`` (n = its number of candidates), so that tools
    which sort by score, such as trec_eval, see exactly the reranked order.
    """
    candidates: Sequence[Mapping[str, Any]] = record.get("candidates") or ()
    scores = [c.get("score") for c in candidates]
    numbers = [float(s) for s in scores if isinstance(s, int | float)]
    real = len(numbers) == len(scores) and all(a > b for a, b in itertools.pairwise(numbers))
    n = len(candidates)
    qid = record.get("query_id")
    for c in candidates:
        score = repr(float(c["score"])) if real else str(n - c["rank"] + 1)
        yield f"{qid} Q0 {c['id']} {c['rank']} {score} {run_name}\n"


__all__ = [
    "ERRORS",
    "MANIFEST",
    "RESULTS",
    "TREC",
    "AppendLog",
    "JobFolder",
    "Progress",
    "bad_row_line",
    "error_line",
    "read_jsonl",
    "result_line",
    "trec_lines",
    "usage_dict",
    "write_atomic",
]
