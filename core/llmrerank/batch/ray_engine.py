"""The Ray engine: a batch job as a Ray Data pipeline, from a laptop to a cluster.

The driver reads and checks the input (malformed rows, duplicates and rows already done never
reach Ray), ships the rows to rerank through the object store, and Ray Data runs ``map_batches``
over an actor pool: each actor builds its own :class:`~llmrerank.reranker.Reranker` from a
picklable factory and reranks its rows concurrently on the actor's event loop
(:class:`RowReranker`). The outcomes stream back to the driver, which writes them with the same
writer as the local engine, so the output files are the same and resuming works the same way.

``ray.init()`` is called when Ray is not initialised yet: it starts a local instance, or joins the
cluster ``RAY_ADDRESS`` names (``ray://head:10001``); ``OPENAI_*`` / ``ANTHROPIC_*`` variables are
passed to the workers.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from ..errors import ConfigurationError, require
from ..reranker import Reranker
from ..types import Usage
from .job import Job, Outcome, RerankerSource, rerank_row, resolve_reranker
from .rows import Row

FORWARDED_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
"""Environment variables the workers get when llmrerank starts or joins Ray itself."""
CHUNK_ROWS = 10_000
"""Rows per Ray dataset: the driver holds at most this many rows to ship at once."""
BLOCK_BATCHES = 4
"""Batches per block: an actor task brings several, so the next rows start as soon as a row ends
(Ray Data runs up to 4 batches of an async UDF at once; the actor's limiter keeps the bound)."""


class RowReranker:
    """A Ray Data actor: one Reranker, ``rows_in_flight`` rows reranked at once on the actor's loop."""

    def __init__(self, factory: RerankerSource, rows_in_flight: int, top_k: int | None) -> None:
        self.reranker: Reranker = resolve_reranker(factory)
        self.rows_in_flight = rows_in_flight
        self.top_k = top_k
        self._limiter: asyncio.Semaphore | None = None

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        """Rerank a batch of rows (column ``row``: JSON rows) into ``kind``, ``record``, ``usage`` columns."""
        if self._limiter is None:  # made on the actor's event loop, shared by its concurrent batches
            self._limiter = asyncio.Semaphore(self.rows_in_flight)
        limiter = self._limiter

        async def one(payload: str) -> Outcome:
            async with limiter:
                return await rerank_row(self.reranker, Row.from_json(json.loads(payload)), self.top_k)

        outcomes = await asyncio.gather(*(one(str(p)) for p in batch["row"]))
        return {
            "kind": [o.kind for o in outcomes],
            "record": [json.dumps(o.record, ensure_ascii=False) for o in outcomes],
            "usage": [json.dumps(asdict(o.usage)) for o in outcomes],
        }


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_factory(source: RerankerSource) -> Callable[[], Reranker]:
    """The function the actors build their Reranker with; a Reranker itself is refused."""
    if source is None:
        return Reranker
    if isinstance(source, Reranker) or not callable(source):
        raise ConfigurationError(
            "the ray engine needs the reranker as a function that builds it (a Reranker holds open "
            "connections and cannot be shipped to Ray workers): pass RerankerSpec(...) or a function"
        )
    return source


def run_ray(job: Job, factory: Callable[[], Reranker], *, concurrency: int, actors: int | None) -> None:
    """Run the job's rows through Ray Data; ``concurrency`` rows in flight over ``actors`` actors."""
    ray: Any = require("ray", "ray", "ray[data]")
    require("ray.data", "ray", "ray[data]")
    started = False
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=False)
        started = True
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        if actors is None:
            actors = max(1, min(concurrency, int(ray.cluster_resources().get("CPU", 1))))
        if actors < 1:
            raise ConfigurationError("ray actors must be >= 1")
        per_actor = max(1, math.ceil(concurrency / actors))
        for chunk in _chunks(job.rows_to_rerank(), CHUNK_ROWS):
            items = [{"row": json.dumps(row.to_json(), ensure_ascii=False)} for row in chunk]
            dataset = ray.data.from_items(
                items, override_num_blocks=max(1, math.ceil(len(items) / (per_actor * BLOCK_BATCHES)))
            )
            reranked = dataset.map_batches(
                RowReranker,
                fn_constructor_args=(factory, per_actor, job.top_k),
                batch_size=per_actor,
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
                batch_format="numpy",
            )
            for batch in reranked.iter_batches(batch_size=None, batch_format="numpy"):
                for kind, record, usage in zip(batch["kind"], batch["record"], batch["usage"], strict=True):
                    job.record(Outcome(str(kind), json.loads(str(record)), Usage(**json.loads(str(usage)))))
    finally:
        if started:
            ray.shutdown()


__all__ = ["CHUNK_ROWS", "FORWARDED_ENV", "RowReranker", "check_factory", "run_ray"]
