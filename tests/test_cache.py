"""Response caches end to end: a repeated rerank makes no LLM call (the server sees nothing new),
keys separate backends, models and prompts, DiskCache persists, bad entries are misses."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmrerank import DiskCache, MemoryCache, Pointwise, Reranker
from llmrerank.backends.base import Completion, Prompt
from llmrerank.cache import cache_key, decode, encode
from llmrerank.testing import FakeBackend, overlap_judge
from llmrerank.testing.server import FakeLLMServer, Reply, ServerRequest

pytest.importorskip("openai")
pytest.importorskip("diskcache")

from llmrerank.backends.openai import OpenAIBackend

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]


def judge(request: ServerRequest) -> str:
    return overlap_judge(Prompt(request.system, request.user))


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(judge) as srv:
        yield srv


@pytest.fixture(params=["memory", "disk"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryCache()
    else:
        disk = DiskCache(tmp_path / "cache")
        yield disk
        disk.close()


def backend_for(srv: FakeLLMServer, model: str = "gpt-test", **options: Any) -> OpenAIBackend:
    return OpenAIBackend(model, base_url=srv.base_url, api_key="sk-test", max_retries=0, logprobs=False, **options)


@pytest.mark.parametrize("strategy", ["pointwise", "pairwise", "listwise"])
def test_repeated_rerank_makes_no_call(server: FakeLLMServer, cache: Any, strategy: str) -> None:
    reranker = Reranker(strategy, backend_for(server), cache=cache)
    first = reranker.rerank(QUERY, DOCS)
    sent = len(server.requests)
    assert sent == first.usage.calls > 0 and first.usage.cached_calls == 0
    second = reranker.rerank(QUERY, DOCS)
    assert len(server.requests) == sent  # nothing new reached the server
    assert second.indices == first.indices and [i.score for i in second] == [i.score for i in first]
    assert second.usage.calls == 0 and second.usage.cached_calls == sent
    assert second.usage.prompt_tokens == 0 and not second.degraded
    assert len(cache) == sent


def test_partial_hits_only_send_the_new_prompts(server: FakeLLMServer, cache: Any) -> None:
    reranker = Reranker(Pointwise(method="generate"), backend_for(server), cache=cache)
    reranker.rerank(QUERY, DOCS[:2])
    result = reranker.rerank(QUERY, DOCS)
    assert len(server.requests) == 3
    assert result.usage.calls == 1 and result.usage.cached_calls == 2


def test_keys_differ_by_backend_model_and_prompt(server: FakeLLMServer) -> None:
    cache = MemoryCache()
    Reranker("listwise", backend_for(server), cache=cache).rerank(QUERY, DOCS)
    Reranker("listwise", backend_for(server, model="gpt-other"), cache=cache).rerank(QUERY, DOCS)
    Reranker("listwise", backend_for(server), cache=cache, domain="legal").rerank(QUERY, DOCS)
    Reranker("listwise", backend_for(server), cache=cache).rerank(QUERY + "?", DOCS)
    Reranker("listwise", backend_for(server), cache=cache).rerank(QUERY, list(reversed(DOCS)))
    Reranker("listwise", FakeBackend(respond=overlap_judge, model="gpt-test"), cache=cache).rerank(QUERY, DOCS)
    assert len(server.requests) == 5 and len(cache) == 6
    Reranker("listwise", backend_for(server, model="gpt-other"), cache=cache).rerank(QUERY, DOCS)
    assert len(server.requests) == 5


def test_cache_key_covers_every_part_of_the_prompt() -> None:
    a, b = FakeBackend(model="m"), FakeBackend(model="n")
    base = Prompt("system", "user", max_tokens=8)
    variants = [
        Prompt("system!", "user", max_tokens=8),
        Prompt("system", "user!", max_tokens=8),
        Prompt("system", "user", max_tokens=9),
        Prompt("system", "user", max_tokens=8, choices=("A", "B")),
    ]
    keys = {cache_key(a, base), cache_key(b, base), *(cache_key(a, p) for p in variants)}
    assert len(keys) == 6
    salted = FakeBackend(model="m")
    salted.cache_salt = "v2"  # type: ignore[attr-defined]
    assert cache_key(salted, base) != cache_key(a, base)
    assert cache_key(FakeBackend(model="m"), base) == cache_key(a, base)


def test_failed_calls_are_not_cached(server: FakeLLMServer, cache: Any) -> None:
    server.responder = Reply(status=500)
    reranker = Reranker("listwise", backend_for(server), cache=cache)
    assert reranker.rerank(QUERY, DOCS).degraded
    assert len(cache) == 0
    server.responder = judge
    result = reranker.rerank(QUERY, DOCS)
    assert not result.degraded and result.usage.calls == 1 and len(server.requests) == 2


def test_disk_cache_survives_a_new_reranker_and_process_objects(server: FakeLLMServer, tmp_path: Path) -> None:
    first_cache = DiskCache(tmp_path / "c")
    first = Reranker("pairwise", backend_for(server), cache=first_cache).rerank(QUERY, DOCS)
    first_cache.close()
    sent = len(server.requests)
    second_cache = DiskCache(tmp_path / "c")
    try:
        second = Reranker("pairwise", backend_for(server), cache=second_cache).rerank(QUERY, DOCS)
    finally:
        second_cache.close()
    assert len(server.requests) == sent
    assert second.indices == first.indices and second.usage.cached_calls == sent


def test_logprobs_round_trip_through_the_cache() -> None:
    backend = FakeBackend(respond=lambda p: "7", logprobs=lambda p: {"7": -0.1, "8": -2.5})
    cache = MemoryCache()
    reranker = Reranker(Pointwise(method="expected"), backend, cache=cache)
    first = reranker.rerank(QUERY, DOCS[:1])
    second = reranker.rerank(QUERY, DOCS[:1])
    assert len(backend.calls) == 1 and second[0].score == first[0].score
    assert decode(encode(Completion("x", 1, 2, {"A": -0.5}))) == Completion("x", 1, 2, {"A": -0.5}, cached=True)


FOREIGN = [
    pytest.param("a string", id="str"),
    pytest.param(["list"], id="list"),
    pytest.param({"answer": "[1] > [2]"}, id="dict-without-text"),
    pytest.param({"text": 42}, id="text-not-str"),
    pytest.param({"text": "[3] > [2] > [1]", "prompt_tokens": "many"}, id="bad-tokens"),
    pytest.param({"text": "[3] > [2] > [1]", "choice_logprobs": ["A"]}, id="bad-logprobs"),
    pytest.param({"text": "[3] > [2] > [1]", "choice_logprobs": {"A": "high"}}, id="bad-logprob-value"),
]


@pytest.mark.parametrize("value", FOREIGN)
def test_foreign_entries_are_misses(server: FakeLLMServer, tmp_path: Path, value: Any) -> None:
    backend = backend_for(server)
    disk = DiskCache(tmp_path / "c")
    memory = MemoryCache()
    try:
        for cache in (memory, disk):
            Reranker("listwise", backend, cache=cache).rerank(QUERY, DOCS)
            (key,) = list(cache._data) if cache is memory else list(disk._cache)
            if cache is memory:
                memory._data[key] = value
            else:
                disk._cache.set(key, value)
            result = Reranker("listwise", backend, cache=cache).rerank(QUERY, DOCS)
            assert result.usage.cached_calls == 0 and result.usage.calls == 1
            assert result.indices == [1, 0, 2] and not result.degraded
            assert cache.get(key) is not None and decode(cache.get(key)).text  # rewritten by the fresh answer
    finally:
        disk.close()
    assert len(server.requests) == 4


def test_corrupted_disk_entries_are_misses(
    server: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = DiskCache(tmp_path / "c")
    Reranker(Pointwise(method="generate"), backend_for(server), cache=disk).rerank(QUERY, DOCS)
    disk.close()
    with sqlite3.connect(tmp_path / "c" / "cache.db") as db:  # garble every stored pickle
        changed = db.execute("UPDATE Cache SET value = X'80FFFF00', mode = 4 WHERE value IS NOT NULL").rowcount
    assert changed == 3
    disk = DiskCache(tmp_path / "c")
    try:
        with caplog.at_level(logging.WARNING, logger="llmrerank"):
            result = Reranker(Pointwise(method="generate"), backend_for(server), cache=disk).rerank(QUERY, DOCS)
    finally:
        disk.close()
    assert result.usage.calls == 3 and result.usage.cached_calls == 0 and not result.degraded
    assert result.indices[0] == 1
    assert "unusable cache entry" in caplog.text


def test_a_failing_cache_never_fails_the_rerank(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def get(self, key: str) -> dict[str, Any] | None:
            raise OSError("disk I/O error")

        def set(self, key: str, value: dict[str, Any]) -> None:
            raise OSError("disk full")

    backend = FakeBackend(respond=overlap_judge)
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = Reranker("listwise", backend, cache=Broken(), on_error="raise").rerank(QUERY, DOCS)
    assert result.indices == [1, 0, 2] and len(backend.calls) == 1
    assert "disk I/O error" in caplog.text and "disk full" in caplog.text


def test_memory_cache_is_bounded_lru() -> None:
    cache = MemoryCache(maxsize=2)
    backend = FakeBackend(respond=lambda p: "5")
    reranker = Reranker(Pointwise(method="generate"), backend, cache=cache)
    reranker.rerank(QUERY, DOCS)
    assert len(cache) == 2 and len(backend.calls) == 3
    reranker.rerank(QUERY, DOCS[2:])  # the most recent entry is still there
    assert len(backend.calls) == 3
    reranker.rerank(QUERY, DOCS[:1])  # the oldest was evicted
    assert len(backend.calls) == 4
