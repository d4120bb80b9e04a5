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
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ..errors import ConfigurationError
from ..pricing import PriceSource
from ..reranker import Reranker
from ..routing import make_backend
from ..runner import run_blocking
from ..strategies import Strategy
from .job import BatchSummary, Job, RerankerSource, resolve_reranker, run_local
from .rows import BadRow, Candidate, Row, read_rows

if TYPE_CHECKING:
    from typing_extensions import Unpack

ENGINES = ("local", "ray", "openai-batch", "anthropic-batch")


class BatchOptions(TypedDict, total=False):
    """The keyword options of :func:`run_batch` and :func:`arun_batch` (defaults in :func:`run_batch`)."""

    engine: str
    top_k: int | None
    concurrency: int
    retry_errors: bool
    run_name: str | None
    progress: bool
    prices: PriceSource
    ray_actors: int | None
    poll_interval: float
    wait: bool
    cancel: bool


@dataclass(frozen=True)
class RerankerSpec:
    """A picklable recipe for a :class:`Reranker`: what the Ray engine ships to each actor.

    ``backend`` and ``model``/``base_url`` as on the command line (``openai``, ``anthropic``,
    ``local``, ``fake``, or None: the provider the model names; keys come from the environment);
    ``strategy`` a name or a strategy object; ``options`` the Reranker's keyword options
    (``domain``, ``max_concurrency``, ``on_error``, ``strict``, ``deadline``).
    """

    backend: str | None = "openai"
    strategy: str | Strategy | None = None
    model: str | None = None
    base_url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)
    """The ``--api-key`` (None: from the environment; a server of your own needs none)."""

    def __call__(self) -> Reranker:
        """Build the Reranker."""
        backend = make_backend(self.backend, self.model, self.base_url, self.api_key)
        return Reranker(self.strategy, backend, **dict(self.options))


@dataclass(frozen=True)
class _Call:
    """The arguments of one :func:`run_batch` / :func:`arun_batch` call, with their defaults, checked."""

    input: str | Path
    output_dir: str | Path
    reranker: RerankerSource = None
    _: KW_ONLY
    engine: str = "local"
    top_k: int | None = None
    concurrency: int = 8
    retry_errors: bool = False
    run_name: str | None = None
    progress: bool = False
    prices: PriceSource = None
    ray_actors: int | None = None
    poll_interval: float = 30.0
    wait: bool = True
    cancel: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigurationError(f"unknown engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        concurrency = self.concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")

    def job(self, reranker: Reranker, discount: float = 1.0) -> Job:
        """Open the output folder for ``reranker``'s settings."""
        settings = {name: getattr(self, name) for name in _JOB_SETTINGS}
        return Job(self.input, self.output_dir, reranker, discount=discount, **settings)


_JOB_SETTINGS = ("engine", "top_k", "retry_errors", "run_name", "progress", "prices")
"""The :class:`_Call` settings a :class:`~llmrerank.batch.job.Job` takes by the same names."""


async def _run(call: _Call) -> BatchSummary:
    """The local and provider batch engines, on the running event loop."""
    reranker = resolve_reranker(call.reranker)
    provider = call.engine.endswith("-batch")
    if provider:
        from .provider import DISCOUNT, provider_for, run_provider

        provider_for(call.engine, reranker.backend)  # refuse a mismatched backend before touching the folder
    job = call.job(reranker, DISCOUNT if provider else 1.0)
    pending: int = 0
    batches: tuple[str, ...] = ()
    try:
        if provider:
            pending, batches = await run_provider(
                job, reranker, call.engine, poll_interval=call.poll_interval, wait=call.wait, cancel=call.cancel
            )
        else:
            await run_local(job, reranker, call.concurrency)
    finally:
        summary = job.finish(pending=pending, provider_batches=batches)
        await reranker.backend.aclose()
    return summary


def _run_on_ray(call: _Call) -> BatchSummary:
    """The Ray engine (blocking: the driver reads Ray's output stream)."""
    from .ray_engine import check_factory, run_ray

    factory = check_factory(call.reranker)
    job = call.job(resolve_reranker(factory))  # the job's settings (strategy, model) from one built here
    try:
        run_ray(job, factory, concurrency=call.concurrency, actors=call.ray_actors)
    finally:
        summary = job.finish()
    return summary


async def arun_batch(
    input: str | Path, output_dir: str | Path, reranker: RerankerSource = None, **options: Unpack[BatchOptions]
) -> BatchSummary:
    """Rerank every row of ``input`` (JSONL or Parquet) into ``output_dir``; the same keyword
    ``options`` as :func:`run_batch`."""
    call = _Call(input, output_dir, reranker, **options)
    if call.engine == "ray":
        return await asyncio.to_thread(_run_on_ray, call)
    return await _run(call)


def run_batch(
    input: str | Path, output_dir: str | Path, reranker: RerankerSource = None, **options: Unpack[BatchOptions]
) -> BatchSummary:
    """Rerank every row of ``input`` (JSONL or Parquet) into ``output_dir`` and summarise the run.

    ``reranker``: a :class:`Reranker`, a function that builds one (:class:`RerankerSpec`; the
    ``ray`` engine needs this form), or None for :class:`Reranker`'s default.

    Keyword ``options`` (defaults in brackets): ``engine`` (``"local"``): one of :data:`ENGINES`.
    ``concurrency`` (8): rows in flight (over all actors for ``ray``); LLM calls in flight stay
    bounded by the Reranker's ``max_concurrency`` (per actor for ``ray``). ``top_k`` (None): keep
    the best k candidates per row. A rerun with the same ``output_dir`` skips the rows already
    written; ``retry_errors`` (False) tries the rows in ``errors.jsonl`` again. ``run_name``
    (None): the TREC run's last column (default ``llmrerank-<strategy>``). ``progress`` (False): a
    progress bar on stderr. ``prices`` (None): see :mod:`llmrerank.pricing`.

    ``ray_actors`` (None): actors in the pool (default: the cluster's CPUs, at most ``concurrency``).
    Provider batch engines: ``poll_interval`` (30.0) seconds between status checks; ``wait`` (True):
    False submits and returns (``summary.pending`` rows wait; rerun to collect); ``cancel`` (False)
    cancels the folder's open provider batches and collects what they finished.
    """
    call = _Call(input, output_dir, reranker, **options)
    if call.engine == "ray":
        return _run_on_ray(call)
    return run_blocking(_run(call))


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
