"""A batch job's progress: a tqdm bar with rows per second, LLM calls, tokens and estimated cost.

Without tqdm (``pip install "llmrerank[batch]"``) the same figures go to stderr as a plain line
every :data:`LOG_SECONDS` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ..pricing import FREE_BACKENDS, PriceSource, cost_basis, estimate_cost
from ..types import Usage

LOG_SECONDS = 10.0


def _tokens(n: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


class JobProgress:
    """Counts rows and usage; shows them on a tqdm bar, or logs them without tqdm.

    ``discount`` scales the estimated cost (0.5 for the providers' batch APIs).
    """

    def __init__(
        self,
        *,
        total: int | None,
        enabled: bool,
        model: str | None,
        backend: str | None,
        prices: PriceSource = None,
        discount: float = 1.0,
        desc: str = "rerank",
        stream: TextIO | None = None,
        server_url: str | None = None,
    ) -> None:
        self.total = total
        self.model = model
        self.backend = backend
        self.server_url = server_url
        """The backend's server: a server of your own gets no price (see :func:`~llmrerank.pricing.cost_basis`)."""
        self.prices = prices
        self.discount = discount
        self.usage = Usage()
        self.rows = 0
        self.status = ""
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._logged = self.started
        self._bar: Any = None
        self._log = False
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self._log = True
            else:
                self._bar = tqdm(total=total, desc=desc, unit="row", file=self.stream, dynamic_ncols=True)

    @property
    def cost(self) -> float | None:
        """Estimated USD so far (None for a model without a known price)."""
        cost = estimate_cost(self.model, self.usage, self.prices, backend=self.backend, server_url=self.server_url)
        return None if cost is None else cost * self.discount

    @property
    def cost_note(self) -> str:
        """Why :attr:`cost` is what it is (see :func:`~llmrerank.pricing.cost_basis`)."""
        return cost_basis(self.model, self.prices, backend=self.backend, server_url=self.server_url)[1]

    def summary(self) -> str:
        """``calls=…, tokens=…, cost≈$…`` (plus the status line of a provider batch); ``cost n/a``
        where no price applies or the backend runs on this machine."""
        cost = self.cost
        money = "cost n/a" if cost is None or self.backend in FREE_BACKENDS else f"~${cost:.4f}"
        text = f"calls={self.usage.calls} tokens={_tokens(self.usage.total_tokens)} {money}"
        return f"{text} {self.status}".rstrip()

    def add(self, rows: int, usage: Usage | None = None) -> None:
        """Count ``rows`` finished rows and their usage."""
        self.rows += rows
        if usage is not None:
            self.usage = self.usage + usage
        self._show(rows)

    def note(self, status: str) -> None:
        """Show a status (e.g. a provider batch's request counts) beside the figures."""
        self.status = status
        self._show(0)

    def _show(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self.summary(), refresh=False)
            self._bar.update(rows)
        elif self._log and time.monotonic() - self._logged >= LOG_SECONDS:
            self._write()

    def _write(self) -> None:
        self._logged = time.monotonic()
        elapsed = max(self._logged - self.started, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        print(
            f"llmrerank batch: {self.rows}{total} rows, {self.rows / elapsed:.2f} rows/s, {self.summary()}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        """Close the bar (or write the last line)."""
        if self._bar is not None:
            self._bar.set_postfix_str(self.summary(), refresh=False)
            self._bar.close()
        elif self._log:
            self._write()


__all__ = ["LOG_SECONDS", "JobProgress"]
