"""Batch jobs: rerank a file of (query, candidates) rows into results, errors and a TREC run.

>>> from llmrerank.batch import run_batch, RerankerSpec
>>> summary = run_batch("rows.jsonl", "out/", RerankerSpec("openai", "pointwise"))  # doctest: +SKIP
>>> summary.results, summary.errors, summary.cost                                   # doctest: +SKIP

Engines: ``local`` (asyncio in this process), ``ray`` (a Ray Data pipeline; ``pip install
"llmrerank[ray]"``), ``openai-batch`` and ``anthropic-batch`` (the providers' batch APIs, half
price, for strategies whose calls are known up front). The input format is described in
:mod:`llmrerank.batch.rows`, the output folder in :mod:`llmrerank.batch.output`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..pricing import PriceSource
from ..reranker import Reranker
from ..runner import run_blocking
from ..strategies import Strategy
from .job import BatchSummary, Job, RerankerSource, build_reranker, run_local
from .rows import BadRow, Candidate, Row, read_rows

ENGINES = ("local", "ray", "openai-batch", "anthropic-batch")


@dataclass(frozen=True)
class RerankerSpec:
    """A picklable recipe for a :class:`Reranker`: what the Ray engine ships to each actor.

    ``backend`` and ``model``/``base_url`` as on the command line (``openai``, ``anthropic``,
    ``local``, ``fake``; keys come from the environment); ``strategy`` a name or a strategy
    object; ``options`` the Reranker's keyword options (``domain``, ``max_concurrency``,
    ``on_error``, ``strict``, ``deadline``).
    """

    backend: str = "openai"
    strategy: str | Strategy | None = None
    model: str | None = None
    base_url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self) -> Reranker:
        """Build the Reranker."""
        from ..cli import make_backend

        return Reranker(self.strategy, make_backend(self.backend, self.model, self.base_url), **dict(self.options))


def _check(engine: str, concurrency: int) -> None:
    if engine not in ENGINES:
        raise ConfigurationError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")


async def arun_batch(
    input: str | Path,
    output_dir: str | Path,
    reranker: RerankerSource = None,
    *,
    engine: str = "local",
    top_k: int | None = None,
    concurrency: int = 8,
    retry_errors: bool = False,
    run_name: str | None = None,
    progress: bool = False,
    prices: PriceSource = None,
    ray_actors: int | None = None,
    poll_interval: float = 30.0,
    wait: bool = True,
    cancel: bool = False,
) -> BatchSummary:
    """Rerank every row of ``input`` (JSONL or Parquet) into ``output_dir``; see :func:`run_batch`."""
    _check(engine, concurrency)
    if engine == "ray":
        return await asyncio.to_thread(
            run_batch,
            input,
            output_dir,
            reranker,
            engine=engine,
            top_k=top_k,
            concurrency=concurrency,
            retry_errors=retry_errors,
            run_name=run_name,
            progress=progress,
            prices=prices,
            ray_actors=ray_actors,
        )
    built = build_reranker(reranker)
    provider = engine.endswith("-batch")
    if provider:
        from .provider import DISCOUNT, provider_for

        provider_for(engine, built.backend)  # refuse a mismatched backend before touching the folder
    job = Job(
        input,
        output_dir,
        built,
        engine=engine,
        top_k=top_k,
        retry_errors=retry_errors,
        run_name=run_name,
        progress=progress,
        prices=prices,
        discount=DISCOUNT if provider else 1.0,
    )
    pending: int = 0
    batches: tuple[str, ...] = ()
    try:
        if provider:
            from .provider import run_provider

            pending, batches = await run_provider(
                job, built, engine, poll_interval=poll_interval, wait=wait, cancel=cancel
            )
        else:
            await run_local(job, built, concurrency)
    finally:
        summary = job.finish(pending=pending, provider_batches=batches)
        await built.backend.aclose()
    return summary


def run_batch(
    input: str | Path,
    output_dir: str | Path,
    reranker: RerankerSource = None,
    *,
    engine: str = "local",
    top_k: int | None = None,
    concurrency: int = 8,
    retry_errors: bool = False,
    run_name: str | None = None,
    progress: bool = False,
    prices: PriceSource = None,
    ray_actors: int | None = None,
    poll_interval: float = 30.0,
    wait: bool = True,
    cancel: bool = False,
) -> BatchSummary:
    """Rerank every row of ``input`` (JSONL or Parquet) into ``output_dir`` and summarise the run.

    ``reranker``: a :class:`Reranker`, a function that builds one (:class:`RerankerSpec`; the
    ``ray`` engine needs this form), or None for :class:`Reranker`'s default. ``engine``: one of
    :data:`ENGINES`. ``concurrency``: rows in flight (over all actors for ``ray``); LLM calls in
    flight stay bounded by the Reranker's ``max_concurrency`` (per actor for ``ray``).
    ``top_k``: keep the best k candidates per row. A rerun with the same ``output_dir`` skips the
    rows already written; ``retry_errors`` tries the rows in ``errors.jsonl`` again.
    ``run_name``: the TREC run's last column (default ``llmrerank-<strategy>``). ``progress``: a
    progress bar on stderr. ``prices``: see :mod:`llmrerank.pricing`.

    ``ray_actors``: actors in the pool (default: the cluster's CPUs, at most ``concurrency``).
    Provider batch engines: ``poll_interval`` seconds between status checks; ``wait=False``
    submits and returns (``summary.pending`` rows wait; rerun to collect); ``cancel`` cancels the
    folder's open provider batches and collects what they finished.
    """
    _check(engine, concurrency)
    if engine != "ray":
        return run_blocking(
            arun_batch(
                input,
                output_dir,
                reranker,
                engine=engine,
                top_k=top_k,
                concurrency=concurrency,
                retry_errors=retry_errors,
                run_name=run_name,
                progress=progress,
                prices=prices,
                poll_interval=poll_interval,
                wait=wait,
                cancel=cancel,
            )
        )
    from .ray_engine import check_factory, run_ray

    factory = check_factory(reranker)
    probe = build_reranker(factory)  # the job's settings (strategy, model) come from one built here
    job = Job(
        input,
        output_dir,
        probe,
        engine=engine,
        top_k=top_k,
        retry_errors=retry_errors,
        run_name=run_name,
        progress=progress,
        prices=prices,
    )
    try:
        run_ray(job, factory, concurrency=concurrency, actors=ray_actors)
    finally:
        summary = job.finish()
    return summary


__all__ = [
    "ENGINES",
    "BadRow",
    "BatchSummary",
    "Candidate",
    "RerankerSpec",
    "Row",
    "arun_batch",
    "read_rows",
    "run_batch",
]
