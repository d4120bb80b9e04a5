"""What every batch engine shares: the job's settings, the input scan with resuming, writing outcomes.

An engine (local asyncio, Ray, a provider's batch API) takes the rows :class:`Job` lets through,
reranks them its own way, and hands each outcome back to :meth:`Job.record`; the job writes it,
counts it and moves the progress bar.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..errors import BadRequestError, ConfigurationError, InvalidInputError, PermanentBackendError
from ..pricing import PriceSource
from ..reranker import Reranker
from ..types import Usage
from .output import ERRORS, RESULTS, TREC, JobFolder, bad_row_line, error_line, result_line
from .progress import JobProgress
from .rows import BadRow, Item, Row, count_rows, read_rows

RerankerSource = Union[Reranker, Callable[[], Reranker], None]  # noqa: UP007 - a runtime alias, kept valid on 3.10
"""A :class:`Reranker`, a function of no arguments that builds one (what Ray needs), or None for the default."""


@dataclass(frozen=True)
class BatchSummary:
    """What one run of a batch job did.

    ``rows``: input rows read; ``skipped``: rows an earlier run had already written (to results
    or errors); ``results`` / ``errors``: lines this run wrote; ``degraded``: results whose rerank
    fell back (an LLM call failed); ``pending``: rows sent to a provider batch that has not ended
    (``wait=False``); ``usage`` and ``cost`` (estimated USD, None without a known price) cover this
    run's rows.
    """

    output_dir: Path
    engine: str
    rows: int
    skipped: int
    results: int
    errors: int
    degraded: int
    usage: Usage
    cost: float | None
    wall_seconds: float
    pending: int = 0
    provider_batches: tuple[str, ...] = ()
    cost_note: str = ""
    """Why ``cost`` is what it is (:func:`~llmrerank.pricing.cost_basis`): ``estimated, prices as of
    ...``, ``local backend: no charge``, or ``n/a: ...``."""

    @property
    def rows_per_second(self) -> float:
        """Rows written (results and errors) per second of this run."""
        return (self.results + self.errors) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def results_path(self) -> Path:
        """``results.jsonl``."""
        return self.output_dir / RESULTS

    @property
    def errors_path(self) -> Path:
        """``errors.jsonl``."""
        return self.output_dir / ERRORS

    @property
    def trec_path(self) -> Path:
        """``run.trec``."""
        return self.output_dir / TREC


@dataclass(frozen=True)
class Outcome:
    """One row's outcome: a ``results.jsonl`` or ``errors.jsonl`` record and the usage it cost."""

    kind: str
    """``result`` or ``error``."""
    record: dict[str, Any]
    usage: Usage


def documents(row: Row) -> list[dict[str, Any]]:
    """The row's candidates as the documents :meth:`Reranker.arerank` takes (with their first-stage
    ``score`` when the input had one, for a reranker's fusion)."""
    return [{"id": c.id, "text": c.text, **({} if c.score is None else {"score": c.score})} for c in row.candidates]


def stops_the_job(error: BaseException) -> bool:
    """Whether ``error`` would fail every row alike: a configuration problem (no API key, a missing
    package), a rejected key or an unknown model. A bad request is about its row and is recorded."""
    if isinstance(error, PermanentBackendError):
        return not isinstance(error, BadRequestError)
    return isinstance(error, ConfigurationError)


async def rerank_row(reranker: Reranker, row: Row, top_k: int | None) -> Outcome:
    """Rerank one row; an exception becomes an error outcome (the job goes on), except those that
    :func:`stops_the_job`, which are raised: the rows not done stay pending for a rerun."""
    try:
        result = await reranker.arerank(row.query, documents(row), top_k)
    except Exception as exc:
        if stops_the_job(exc):
            raise
        return Outcome("error", error_line(row.number, row.query_id, exc), Usage())
    return Outcome("result", result_line(row, result), result.usage)


def strategy_label(reranker: Reranker) -> str:
    """The strategy with its options, without memory addresses (the same job gives the same label)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(reranker.strategy))


def resolve_reranker(source: RerankerSource) -> Reranker:
    """The :class:`Reranker` ``source`` stands for: itself, what the factory returns (checked), or
    the default ``Reranker()`` for None."""
    if source is None:
        return Reranker()
    if isinstance(source, Reranker):
        return source
    if callable(source):
        reranker = source()
        if not isinstance(reranker, Reranker):
            raise ConfigurationError(f"the reranker factory returned {type(reranker).__name__}, not a Reranker")
        return reranker
    raise ConfigurationError(f"reranker must be a Reranker or a function that builds one, got {type(source).__name__}")


class Job:
    """The input, the output folder, the counters and the progress of one run of a batch job."""

    def __init__(
        self,
        input_path: str | Path,
        output_dir: str | Path,
        reranker: Reranker,
        *,
        engine: str,
        top_k: int | None,
        retry_errors: bool,
        run_name: str | None,
        progress: bool,
        prices: PriceSource,
        discount: float = 1.0,
    ) -> None:
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigurationError(f"top_k must be a positive int or None, got {top_k!r}")
        self.input_path = Path(input_path)
        self.folder = JobFolder(output_dir)
        self.engine = engine
        self.top_k = top_k
        self.run_name = run_name or f"llmrerank-{reranker.strategy.name}"
        if not self.run_name or any(c.isspace() for c in self.run_name):
            raise ConfigurationError(f"run_name {self.run_name!r} must be non-empty without whitespace (TREC format)")
        self.settings = {
            "strategy": strategy_label(reranker),
            "backend": reranker.backend.name,
            "model": reranker.backend.model,
            "top_k": top_k,
        }
        if not self.input_path.is_file():
            raise ConfigurationError(f"input file {self.input_path} does not exist")
        self.done = self.folder.open(
            self.settings, info={"input": str(self.input_path.resolve())}, retry_errors=retry_errors
        )
        self.started = time.perf_counter()
        self.rows = self.skipped = self.results = self.errors = self.degraded = 0
        total = count_rows(self.input_path) if progress else None
        self.progress = JobProgress(
            total=None if total is None else max(total - len(self.done.result_ids) - len(self.done.error_rows), 0),
            enabled=progress,
            model=reranker.backend.model,
            backend=reranker.backend.name,
            prices=prices,
            discount=discount,
            desc=f"{engine} {reranker.strategy.name}",
            server_url=getattr(reranker.backend, "server_url", None),
        )

    def items(self) -> Iterator[Item]:
        """The input rows still to do, in file order: rows to rerank and rows that failed their checks.

        Skipped: rows whose number is in the errors file, and rows whose query id is in the results.
        A query id seen on an earlier row makes this row a duplicate.
        """
        seen: dict[str, int] = {}
        for item in read_rows(self.input_path):
            self.rows += 1
            if item.number in self.done.error_rows:
                self.skipped += 1
                continue
            qid = item.query_id
            if qid is not None:
                first = seen.setdefault(qid, item.number)
                if first != item.number:
                    error = InvalidInputError(f"duplicate query_id {qid!r}: row {first} has it already")
                    yield BadRow(item.number, qid, error)
                    continue
                if qid in self.done.result_ids:
                    self.skipped += 1
                    continue
            yield item

    def rows_to_rerank(self) -> Iterator[Row]:
        """:meth:`items`, with the rows that failed their checks written to the errors file."""
        for item in self.items():
            if isinstance(item, BadRow):
                self.record(Outcome("error", bad_row_line(item), Usage()))
            else:
                yield item

    def record(self, outcome: Outcome) -> None:
        """Write one outcome and count it."""
        if outcome.kind == "result":
            self.folder.write_result(outcome.record)
            self.results += 1
            self.degraded += bool(outcome.record.get("degraded"))
        else:
            self.folder.write_error(outcome.record)
            self.errors += 1
        self.progress.add(1, outcome.usage)

    def finish(self, *, pending: int = 0, provider_batches: tuple[str, ...] = ()) -> BatchSummary:
        """Close the files, rebuild the TREC run and summarise."""
        self.progress.close()
        self.folder.close(self.run_name)
        counts = {name: getattr(self, name) for name in ("rows", "skipped", "results", "errors", "degraded")}
        progress = self.progress
        return BatchSummary(
            output_dir=self.folder.path,
            engine=self.engine,
            usage=progress.usage,
            cost=progress.cost,
            cost_note=progress.cost_note,
            wall_seconds=time.perf_counter() - self.started,
            pending=pending,
            provider_batches=provider_batches,
            **counts,
        )


async def run_local(job: Job, reranker: Reranker, concurrency: int) -> None:
    """Rerank the job's rows on this event loop, ``concurrency`` rows at a time."""
    limiter = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    fatal: list[BaseException] = []

    async def one(row: Row) -> None:
        try:
            job.record(await rerank_row(reranker, row, job.top_k))
        except Exception as exc:
            fatal.append(exc)
            raise
        finally:
            limiter.release()

    try:
        for row in job.rows_to_rerank():
            await limiter.acquire()
            if fatal:
                raise fatal[0]
            task = asyncio.ensure_future(one(row))
            running.add(task)
            task.add_done_callback(running.discard)
        while running:
            await asyncio.gather(*running)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


__all__ = ["BatchSummary", "Job", "Outcome", "RerankerSource", "rerank_row", "resolve_reranker", "run_local"]
