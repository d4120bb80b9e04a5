"""Adaptive concurrency: the bound on LLM calls in flight backs off on rate limits and grows back.

One :class:`AdaptiveLimiter` serves every rerank of one :class:`~llmrerank.Reranker`, from any
thread and event loop (it is a :class:`~llmrerank.limits.Limiter`). Its limit follows AIMD, as TCP
congestion control does:

- a rate-limit answer (HTTP 429, or Anthropic's 529) halves the limit (multiplicative decrease),
  once per *epoch*: answers to calls sent before the last cut do not cut again, so one burst of
  rejections is one cut. Each rejection also caps the limit at the number of calls that were in
  flight when the rejected one was sent, less one: a burst of 32 against a server that takes 4
  comes down to about 4 at once, not in five halvings;
- its ``retry-after`` pauses every new call of the limiter until it has passed;
- each call that succeeds adds ``1 / limit`` (additive increase: about one more call in flight per
  round of calls), never above the ceiling (the caller's ``max_concurrency``) and never below 1.
  Growing back to the limit that was last cut probes the server again; each probe refused at the
  same limit doubles the rounds spent just below it before the next one, so rate limits become rare.

For the OpenAI and Anthropic SDK backends, the limiter also sees the 429s that the backend retries
(an ``httpx`` hook, :func:`on_request` / :func:`on_response`): a rejected request gives its slot
back while the backend waits to retry it, and its retry queues for a slot again under the lower limit.
So a burst beyond what the server admits turns into a smaller one, not into a storm of retries.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .limits import Limiter

DEFAULT_MAX_CONCURRENCY = 32
"""Default ceiling of LLM calls in flight per reranker: one round for pointwise over 20 documents."""

RATE_LIMITED = frozenset({429, 529})
"""HTTP statuses that ask the caller to slow down."""


@dataclass
class Slot:
    """One call's hold on the limiter."""

    epoch: int
    """The limiter's epoch when the slot was taken: a rate limit on it cuts only if no cut came since."""
    in_flight: int = 1
    """Calls of the limiter in flight when the slot was taken, this one included."""
    held: bool = True
    rate_limited: bool = False
    """The call met a rate limit (seen by the HTTP hook or as the call's error)."""


class AdaptiveLimiter(Limiter):
    """A :class:`~llmrerank.limits.Limiter` whose limit adapts between 1 and ``ceiling``; see the module docstring.

    ``clock`` (seconds, monotonic) is for tests.
    """

    def __init__(self, ceiling: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ceiling)
        self.ceiling = ceiling
        self.clock = clock
        self.window = float(ceiling)
        """The limit before rounding down (additive increase adds fractions)."""
        self.epoch = 0
        """How many cuts so far."""
        self.paused_until = 0.0
        """No new call starts before this time (``clock``), after a ``retry-after``."""
        self.cuts = 0
        self.rate_limits = 0
        """Rate-limit answers seen, cutting or not."""
        self.cut_at: int | None = None
        """The limit at which the last cut came: growing back to it probes the server's limit."""
        self.probe_every = 1
        """Rounds of calls (of ``limit`` successes) to wait below :attr:`cut_at` before probing it again;
        doubles each time a probe is cut at the same limit, so rate limits become rare."""
        self.waited = 0
        """Successes since the limit reached ``cut_at - 1``."""

    async def take(self) -> Slot:
        """Wait out a pause, then for a slot; the slot remembers the epoch and how many were in flight."""
        # A sleep, not an Event: the pause is a time shared by callers on different event loops.
        while (wait := self.paused_until - self.clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        await self.acquire()
        return Slot(self.epoch, self.held)

    def give(self, slot: Slot) -> None:
        """Give the slot back (once)."""
        if slot.held:
            slot.held = False
            self.release()

    def rate_limited(self, slot: Slot, retry_after: float | None = None, *, retrying: bool = False) -> None:
        """A call met a rate limit: pause new calls for ``retry_after`` seconds; halve the limit
        unless a cut came since its slot was taken; and never leave it above the calls that were in
        flight when this one was sent, less one (the server refused that many).

        ``retrying``: the backend may send it again, so its slot is given back meanwhile
        (:func:`on_request` takes a new one)."""
        slot.rate_limited = True
        with self._lock:
            self.rate_limits += 1
            if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
                self.paused_until = max(self.paused_until, self.clock() + retry_after)
            window = min(self.window, max(1.0, slot.in_flight - 1.0))
            if slot.epoch == self.epoch:
                level = int(self.window)
                self.probe_every = min(64, self.probe_every * 2) if level == self.cut_at else 1
                self.cut_at, self.waited = level, 0
                self.epoch += 1
                self.cuts += 1
                window = min(window, self.window / 2)
            self.window = max(1.0, window)
            self._set(int(self.window))
        if retrying:  # after the cut, so that the slot goes to a waiter only under the new limit
            self.give(slot)

    def succeeded(self, slot: Slot) -> None:
        """A call answered: grow the limit by ``1 / limit`` (calls sent before the last cut do not
        count); just below the limit of the last cut, wait :attr:`probe_every` rounds first."""
        with self._lock:
            if slot.epoch != self.epoch or self.window >= self.ceiling:
                return
            limit = max(1, int(self.window))
            if self.cut_at is not None and limit + 1 >= self.cut_at:
                self.waited += 1
                if self.waited < self.probe_every * limit:
                    return
            self.window = min(float(self.ceiling), self.window + 1 / limit)
            self._set(int(self.window))

    def _set(self, limit: int) -> None:
        # With the lock held: the Limiter's own setter would take it again.
        self._limit = max(1, min(self.ceiling, limit))
        self._wake()

    def __reduce__(self) -> tuple[type[AdaptiveLimiter], tuple[int]]:
        return (AdaptiveLimiter, (self.ceiling,))

    def __deepcopy__(self, memo: dict[int, Any]) -> AdaptiveLimiter:
        return AdaptiveLimiter(self.ceiling, clock=self.clock)

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimiter(limit={self.limit}, ceiling={self.ceiling}, held={self.held}, "
            f"cuts={self.cuts}, rate_limits={self.rate_limits})"
        )


CALL: contextvars.ContextVar[tuple[AdaptiveLimiter, Slot] | None] = contextvars.ContextVar(
    "llmrerank_call_slot", default=None
)
"""The limiter and slot of the LLM call running in this task, for the HTTP hooks."""


async def on_request(request: Any) -> None:
    """``httpx`` request hook: a retry whose slot was given back (after a 429) waits for a new one."""
    current = CALL.get()
    if current is not None and not current[1].held:
        limiter, slot = current
        fresh = await limiter.take()
        slot.epoch, slot.held = fresh.epoch, True


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date), if present."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    date = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(date) if date else None
    return max(email.utils.mktime_tz(parsed) - time.time(), 0.0) if parsed else None


async def on_response(response: Any) -> None:
    """``httpx`` response hook: a 429/529 cuts the limit, pauses for its ``retry-after`` and gives the
    slot back while the backend waits to retry."""
    current = CALL.get()
    if current is None or response.status_code not in RATE_LIMITED:
        return
    limiter, slot = current
    limiter.rate_limited(slot, retry_after(response.headers), retrying=True)


__all__ = ["CALL", "DEFAULT_MAX_CONCURRENCY", "AdaptiveLimiter", "Slot", "on_request", "on_response"]
