"""Adaptive concurrency: cut on 429, pause for retry-after, grow back on success, within 1..ceiling."""

from __future__ import annotations

import asyncio

import pytest

from llmrerank import Reranker
from llmrerank.adaptive import DEFAULT_MAX_CONCURRENCY, AdaptiveLimiter, Slot
from llmrerank.errors import RateLimitError
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.server import FakeLLMServer, Reply, ScriptedResponder, overlap_responder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def slot(limiter: AdaptiveLimiter, in_flight: int | None = None) -> Slot:
    return Slot(limiter.epoch, limiter.limit if in_flight is None else in_flight)


def test_a_rate_limit_halves_the_limit_once_per_epoch() -> None:
    limiter = AdaptiveLimiter(32, clock=Clock())
    burst = [slot(limiter) for _ in range(10)]  # ten calls sent before any answer
    for s in burst:
        limiter.rate_limited(s)
    assert (limiter.limit, limiter.cuts, limiter.rate_limits) == (16, 1, 10)
    limiter.rate_limited(slot(limiter))  # a call sent after the cut: cuts again
    assert (limiter.limit, limiter.cuts) == (8, 2)


def test_the_limit_never_stays_above_what_was_in_flight_when_the_server_refused() -> None:
    limiter = AdaptiveLimiter(32, clock=Clock())
    old = limiter.epoch
    limiter.rate_limited(Slot(old, in_flight=20))
    assert limiter.limit == 16  # halved
    limiter.rate_limited(Slot(old, in_flight=5))  # same burst: no second halving, but 5 were too many
    assert limiter.limit == 4 and limiter.cuts == 1


def test_never_below_one() -> None:
    limiter = AdaptiveLimiter(4, clock=Clock())
    for _ in range(10):
        limiter.rate_limited(slot(limiter, in_flight=1))
    assert limiter.limit == 1 and limiter.window == 1.0


def test_retry_after_pauses_new_calls() -> None:
    clock = Clock()
    limiter = AdaptiveLimiter(8, clock=clock)
    limiter.rate_limited(slot(limiter), retry_after=2.5)
    assert limiter.paused_until == 102.5
    limiter.rate_limited(slot(limiter), retry_after=1.0)  # a shorter one does not shorten the pause
    assert limiter.paused_until == 102.5
    limiter.rate_limited(slot(limiter), retry_after=float("inf"))  # nonsense is ignored
    assert limiter.paused_until == 102.5


async def test_take_waits_out_the_pause() -> None:
    limiter = AdaptiveLimiter(8)
    limiter.rate_limited(slot(limiter), retry_after=0.05)
    pause_ends = limiter.paused_until
    taken = await limiter.take()
    assert limiter.clock() >= pause_ends
    assert taken.held and taken.epoch == limiter.epoch
    limiter.give(taken)
    limiter.give(taken)  # once only
    assert limiter.held == 0


def test_successes_grow_the_limit_by_one_per_round_up_to_the_ceiling() -> None:
    limiter = AdaptiveLimiter(8, clock=Clock())
    limiter.rate_limited(slot(limiter))  # 8 -> 4
    limiter.cut_at = None  # no probing rule: plain additive increase
    before_cut = Slot(limiter.epoch - 1)
    limiter.succeeded(before_cut)  # answered, but sent before the cut: no growth
    assert limiter.window == 4.0
    for _ in range(4):
        limiter.succeeded(slot(limiter))
    assert limiter.limit == 5  # four successes at limit 4: one more
    for _ in range(200):
        limiter.succeeded(slot(limiter))
    assert limiter.limit == 8 and limiter.window == 8.0  # the ceiling holds


def test_probing_the_limit_that_was_cut_backs_off() -> None:
    limiter = AdaptiveLimiter(16, clock=Clock())
    limiter.window = 5.0
    limiter._set(5)

    def successes_to_probe() -> int:
        count = 0
        while limiter.limit < 5:
            limiter.succeeded(slot(limiter))
            count += 1
        return count

    rounds = []
    for _ in range(4):
        limiter.rate_limited(slot(limiter))  # a probe at 5 is refused: halve to 2
        assert limiter.limit == 2 and limiter.cut_at == 5
        rounds.append(successes_to_probe())
    # Each refusal at the same limit doubles the rounds spent at 4 before trying 5 again.
    assert rounds[0] < rounds[1] < rounds[2] < rounds[3]
    assert [limiter.probe_every] == [8]


def test_a_cut_hands_freed_slots_only_under_the_new_limit() -> None:
    limiter = AdaptiveLimiter(2, clock=Clock())
    first = asyncio.run(limiter.take())
    second = asyncio.run(limiter.take())
    limiter.rate_limited(second, retrying=True)  # the SDK will retry it: slot given back, limit 1
    assert (limiter.limit, limiter.held, second.held) == (1, 1, False)
    limiter.give(first)
    assert limiter.held == 0


def test_copies_start_fresh_with_the_same_ceiling() -> None:
    import copy
    import pickle

    limiter = AdaptiveLimiter(12)
    limiter.rate_limited(slot(limiter))
    for clone in (copy.deepcopy(limiter), pickle.loads(pickle.dumps(limiter))):
        assert (clone.ceiling, clone.limit, clone.cuts) == (12, 12, 0)


def test_the_default_ceiling_takes_twenty_documents_in_one_round() -> None:
    backend = FakeBackend(respond=overlap_judge, delay=0.01)
    reranker = Reranker("pointwise", backend)
    assert reranker.max_concurrency == DEFAULT_MAX_CONCURRENCY >= 20
    reranker.rerank("why do dogs bark", [f"dogs bark {i}" for i in range(20)])
    assert backend.max_in_flight == 20


def test_a_backend_rate_limit_error_cuts_the_rerankers_limit() -> None:
    backend = FakeBackend([RateLimitError("slow down", retry_after=0.01)], respond=overlap_judge)
    reranker = Reranker("listwise", backend, max_concurrency=10)
    result = reranker.rerank("why do dogs bark", ["dogs bark", "cats sleep"])
    assert result.status == "fallback"
    limiter = reranker._limiter()
    # Refused with one call in flight: one is all the server takes for now.
    assert (limiter.limit, limiter.cuts, limiter.rate_limits) == (1, 1, 1)


# --- through the real SDKs: the HTTP hook sees the 429s the SDK retries --------------------------------

openai = pytest.importorskip("openai")

from llmrerank.backends.openai import OpenAIBackend  # noqa: E402


def test_a_429_the_sdk_retries_cuts_the_limit_and_the_call_still_succeeds() -> None:
    replies = ScriptedResponder(
        [Reply(text="slow down", status=429, headers={"retry-after-ms": "1"}), "[2] > [1]"], repeat_last=True
    )
    with FakeLLMServer(replies) as srv:
        backend = OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=2)
        reranker = Reranker("listwise", backend, max_concurrency=10)
        result = reranker.rerank("why do dogs bark", ["cats sleep", "dogs bark"])
        assert len(srv.requests) == 2  # the SDK's retry
    assert result.status == "reranked" and result.indices == [1, 0]
    limiter = reranker._limiter()
    # Cut to 1 (refused with one call in flight), then one success at limit 1 adds one.
    assert (limiter.limit, limiter.cuts, limiter.rate_limits, limiter.held) == (2, 1, 1, 0)


def test_against_a_server_that_admits_two_at_once_every_429_is_seen_and_the_limit_comes_down() -> None:
    with FakeLLMServer(overlap_responder, latency=0.02, admit=2, retry_after=0.01) as srv:
        backend = OpenAIBackend("gpt-test", base_url=srv.base_url, api_key="sk-test", max_retries=5)
        reranker = Reranker("pointwise", backend, max_concurrency=16)
        results = [reranker.rerank("why do dogs bark", [f"dogs bark {i}" for i in range(16)]) for _ in range(2)]
        rejected, most = srv.rejected, srv.max_in_flight
    limiter = reranker._limiter()
    assert rejected > 0 and most <= 2
    assert limiter.rate_limits == rejected  # every 429, the ones the SDK retried included
    assert limiter.cuts >= 1 and limiter.limit < 16
    assert all(r.usage.calls == 16 for r in results)
