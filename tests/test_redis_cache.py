"""RedisCache against a real redis-server on loopback (tests/redis_support.py): entries shared by
rerankers and processes, an unreachable server degrading to uncached with one warning (and
recovering), corrupted values rejected, the time-to-live, the event loop never blocked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer

from llmrerank import DiskCache, MemoryCache, Pointwise, RedisCache, Reranker
from llmrerank.cache import decode, open_cache
from llmrerank.errors import ConfigurationError
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.server import FakeLLMServer, overlap_responder

redis = pytest.importorskip("redis")

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]
ROOT = Path(__file__).resolve().parents[1]


def raw(server: RedisServer) -> Any:
    """A plain redis client, to look at and plant entries behind the cache's back."""
    return redis.Redis.from_url(server.url)


def pointwise() -> Pointwise:
    return Pointwise(method="generate")  # one call per document: several entries per rerank


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "Redis" in r.getMessage()]


@pytest.fixture
def cache(redis_server: RedisServer) -> Iterator[RedisCache]:
    with RedisCache(redis_server.url) as cache:
        yield cache


def test_two_rerankers_with_their_own_connections_share_entries(redis_server: RedisServer) -> None:
    pytest.importorskip("openai")
    from llmrerank.backends.openai import OpenAIBackend

    with FakeLLMServer(overlap_responder) as llm:

        def backend() -> OpenAIBackend:
            return OpenAIBackend("gpt-test", base_url=llm.base_url, api_key="sk-test", max_retries=0, logprobs=False)

        with RedisCache(redis_server.url) as one, RedisCache(redis_server.url) as two:
            first = Reranker(pointwise(), backend(), cache=one).rerank(QUERY, DOCS)
            sent = len(llm.requests)
            assert sent == first.usage.calls == 3 and first.usage.cached_calls == 0
            second = Reranker(pointwise(), backend(), cache=two).rerank(QUERY, DOCS)
            assert len(llm.requests) == sent  # the second reranker sent nothing
            assert second.usage.calls == 0 and second.usage.cached_calls == 3
            assert second.indices == first.indices == [1, 0, 2]
            assert [d.score for d in second] == [d.score for d in first]
            assert len(one) == len(two) == 3
    assert all(key.startswith(b"llmrerank:") for key in raw(redis_server).scan_iter())


WRITER = """
import sys
from llmrerank import Pointwise, RedisCache, Reranker
from llmrerank.testing import FakeBackend, overlap_judge
backend = FakeBackend(respond=overlap_judge)
with RedisCache(sys.argv[1]) as cache:
    result = Reranker(Pointwise(method="generate"), backend, cache=cache).rerank(sys.argv[2], sys.argv[3:])
print(result.usage.calls, result.indices)
"""


def test_entries_written_by_another_process_are_hits(redis_server: RedisServer) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, redis_server.url, QUERY, *DOCS],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": f"{ROOT / 'core'}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "3"
    backend = FakeBackend(respond=overlap_judge)
    with RedisCache(redis_server.url) as cache:
        result = Reranker(pointwise(), backend, cache=cache).rerank(QUERY, DOCS)
    assert backend.calls == [] and result.usage.cached_calls == 3 and result.indices == [1, 0, 2]


def test_a_killed_server_degrades_to_uncached_with_one_warning(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend(respond=overlap_judge)
    with RedisCache(redis_server.url, retry_after=60) as cache:
        reranker = Reranker(pointwise(), backend, cache=cache, on_error="raise")
        reranker.rerank(QUERY, DOCS)
        assert len(backend.calls) == 3 and cache.available
        redis_server.stop()
        with caplog.at_level(logging.INFO, logger="llmrerank"):
            results = [reranker.rerank(QUERY, DOCS) for _ in range(3)]
        assert [r.usage.calls for r in results] == [3, 3, 3] and len(backend.calls) == 12
        assert all(r.indices == [1, 0, 2] and not r.degraded for r in results)
        assert not cache.available
    (warning,) = redis_warnings(caplog)
    assert "running without a cache" in warning and redis_server.url.split("/0")[0] in warning


def test_a_server_that_comes_back_is_used_again(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(respond=overlap_judge)
    with RedisCache(redis_server.url, retry_after=0.05) as cache:
        reranker = Reranker(pointwise(), backend, cache=cache)
        redis_server.stop()
        with caplog.at_level(logging.INFO, logger="llmrerank"):
            reranker.rerank(QUERY, DOCS)
            time.sleep(0.1)
            reranker.rerank(QUERY, DOCS)  # tries again, still down: no second warning
            redis_server.start()  # same port, empty
            time.sleep(0.1)
            stored = reranker.rerank(QUERY, DOCS)
            hit = reranker.rerank(QUERY, DOCS)
    assert len(redis_warnings(caplog)) == 1
    assert "answers again" in caplog.text
    assert stored.usage.calls == 3 and hit.usage.calls == 0 and hit.usage.cached_calls == 3


def test_a_server_that_is_not_there_warns_once_at_creation(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        backend = FakeBackend(respond=overlap_judge)
        with caplog.at_level(logging.WARNING, logger="llmrerank"):
            cache = RedisCache(f"redis://user:sekret@127.0.0.1:{port}/0")
            results = [Reranker("listwise", backend, cache=cache).rerank(QUERY, DOCS) for _ in range(2)]
            cache.close()
    assert [r.indices for r in results] == [[1, 0, 2]] * 2 and len(backend.calls) == 2
    (warning,) = redis_warnings(caplog)
    assert "sekret" not in warning and "user:***@127.0.0.1" in warning
    assert "sekret" not in repr(cache)


def test_a_silent_server_times_out_off_the_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    """A server that accepts connections and never answers: each command waits ``timeout`` on the
    cache's threads while the event loop keeps running other tasks."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.05)
            while not stop.is_set():
                with contextlib.suppress(OSError):  # the accept timeout: look at stop again
                    accepted.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        with caplog.at_level(logging.WARNING, logger="llmrerank"):
            cache = RedisCache(url, timeout=0.3, retry_after=0)
            assert not cache.available

            async def rerank_while_ticking() -> tuple[Any, int]:
                ticks = 0
                reranker = Reranker("listwise", FakeBackend(respond=overlap_judge), cache=cache)
                task = asyncio.ensure_future(reranker.arerank(QUERY, DOCS))
                while not task.done():
                    await asyncio.sleep(0.01)
                    ticks += 1
                return await task, ticks

            result, ticks = asyncio.run(rerank_while_ticking())
        stop.set()
        thread.join(timeout=5)
        cache.close()
        for conn in accepted:
            conn.close()
    assert result.indices == [1, 0, 2] and result.usage.calls == 1
    assert ticks >= 20  # the lookup and the write each waited 0.3 s on a thread, not on the loop
    assert len(redis_warnings(caplog)) == 1


PLANTED = [
    pytest.param(b"\x80\xff\xff\x00", id="not-utf8"),
    pytest.param(b'{"text": ', id="truncated-json"),
    pytest.param(b'["a list"]', id="json-list"),
    pytest.param(b'{"answer": "7"}', id="dict-without-text"),
    pytest.param(b'{"text": "7", "prompt_tokens": -3}', id="bad-tokens"),
    pytest.param(pickle.dumps({"text": "7"}), id="a-pickle"),
]


@pytest.mark.parametrize("value", PLANTED)
def test_corrupted_values_are_rejected_and_rewritten(
    redis_server: RedisServer, cache: RedisCache, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend(respond=overlap_judge)
    Reranker(pointwise(), backend, cache=cache).rerank(QUERY, DOCS)
    client = raw(redis_server)
    keys = client.keys("llmrerank:*")
    assert len(keys) == 3
    for key in keys:
        client.set(key, value)
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        result = Reranker(pointwise(), backend, cache=cache).rerank(QUERY, DOCS)
    assert result.usage.calls == 3 and result.usage.cached_calls == 0 and not result.degraded
    assert result.indices == [1, 0, 2]
    assert "unusable cache entry" in caplog.text
    for key in keys:  # the fresh answers replaced the planted values
        assert decode(json.loads(client.get(key))).text


def test_an_empty_step_reads_nothing(cache: RedisCache, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        assert asyncio.run(cache.aget_many([])) == []
    assert cache.available and caplog.records == []


def test_a_key_of_another_type_is_a_miss(redis_server: RedisServer, cache: RedisCache) -> None:
    backend = FakeBackend(respond=overlap_judge)
    Reranker("listwise", backend, cache=cache).rerank(QUERY, DOCS)
    client = raw(redis_server)
    (key,) = client.keys("llmrerank:*")
    client.delete(key)
    client.rpush(key, "not", "a", "string")
    result = Reranker("listwise", backend, cache=cache).rerank(QUERY, DOCS)
    assert result.usage.calls == 1 and result.indices == [1, 0, 2] and len(backend.calls) == 2


def test_entries_expire_after_their_time_to_live(redis_server: RedisServer) -> None:
    backend = FakeBackend(respond=overlap_judge)
    with RedisCache(redis_server.url, expire=0.5) as cache:
        reranker = Reranker(pointwise(), backend, cache=cache)
        reranker.rerank(QUERY, DOCS)
        client = raw(redis_server)
        ttls = [client.pttl(key) for key in client.keys("llmrerank:*")]
        assert len(ttls) == 3 and all(0 < ttl <= 500 for ttl in ttls)
        assert reranker.rerank(QUERY, DOCS).usage.cached_calls == 3
        time.sleep(0.6)
        assert client.keys("llmrerank:*") == []
        again = reranker.rerank(QUERY, DOCS)
    assert again.usage.calls == 3 and again.usage.cached_calls == 0 and len(backend.calls) == 6


def test_without_expire_entries_are_kept(redis_server: RedisServer, cache: RedisCache) -> None:
    Reranker("listwise", FakeBackend(respond=overlap_judge), cache=cache).rerank(QUERY, DOCS)
    client = raw(redis_server)
    assert [client.pttl(key) for key in client.keys("llmrerank:*")] == [-1]


def test_prefixes_separate_caches_and_clear_deletes_only_its_own(redis_server: RedisServer) -> None:
    backend = FakeBackend(respond=overlap_judge)
    with RedisCache(redis_server.url, prefix="a:") as a, RedisCache(redis_server.url, prefix="b:") as b:
        Reranker("listwise", backend, cache=a).rerank(QUERY, DOCS)
        assert Reranker("listwise", backend, cache=b).rerank(QUERY, DOCS).usage.calls == 1
        assert len(a) == len(b) == 1
        assert a.clear() == 1 and len(a) == 0 and len(b) == 1


def test_pickled_cache_reconnects_to_the_same_server(redis_server: RedisServer, cache: RedisCache) -> None:
    Reranker("listwise", FakeBackend(respond=overlap_judge), cache=cache).rerank(QUERY, DOCS)
    copy = pickle.loads(pickle.dumps(cache))
    try:
        assert copy.url == cache.url and len(copy) == 1
        backend = FakeBackend(respond=overlap_judge)
        assert Reranker("listwise", backend, cache=copy).rerank(QUERY, DOCS).usage.cached_calls == 1
    finally:
        copy.close()


def test_open_cache_turns_a_setting_into_a_cache(redis_server: RedisServer, tmp_path: Path) -> None:
    assert isinstance(open_cache("memory"), MemoryCache)
    assert open_cache(None) is None and open_cache("none") is None and open_cache(" ") is None
    disk = open_cache(str(tmp_path / "c"), expire=60)
    assert isinstance(disk, DiskCache) and disk.expire == 60 and disk.directory == tmp_path / "c"
    disk.close()
    remote = open_cache(redis_server.url, expire=5)
    assert isinstance(remote, RedisCache) and remote.expire == 5 and remote.available
    remote.close()
    with pytest.raises(ConfigurationError, match="must be a string"):
        open_cache(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "options"),
    [("http://127.0.0.1:6379", {}), ("redis://127.0.0.1:1/0", {"expire": 0}), ("redis://x", {"expire": "1"})],
)
def test_bad_settings_raise_configuration_errors(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisCache(url, **options)


def test_the_readme_snippet_runs(redis_server: RedisServer, openai_env_server: FakeLLMServer) -> None:
    from test_readme import readme_snippet

    code = readme_snippet("from llmrerank import Reranker, RedisCache").replace(
        "redis://127.0.0.1:6379/0", redis_server.url
    )
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    reranker, cache = namespace["reranker"], namespace["cache"]
    try:
        first = reranker.rerank(QUERY, DOCS)
        second = reranker.rerank(QUERY, DOCS)
    finally:
        cache.close()
    assert first.usage.calls >= 1 and second.usage.calls == 0 and second.indices == first.indices
    assert first.indices[0] == 1
