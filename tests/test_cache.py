"""Response caches end to end: a repeated rerank makes no LLM call (the server sees nothing new),
keys separate backends, models and prompts, DiskCache persists, bad entries are misses."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmrerank import DiskCache, MemoryCache, Pointwise, Reranker
from llmrerank.cache import cache_key, decode, encode
from llmrerank.protocol import Completion, Prompt
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.sample import QUERY
from testkit.sample import SHORT_DOCS as DOCS
from testkit.server import FakeLLMServer, Reply, overlap_responder

pytest.importorskip("openai")

from llmrerank.backends.openai import OpenAIBackend

judge = overlap_responder


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
            if cache is memory:
                (key,) = list(memory._data)
                memory._data[key] = (value, 0)
            else:
                assert disk._db is not None
                with disk._db:
                    (key,) = [k for (k,) in disk._db.execute("SELECT key FROM responses")]
                    disk._db.execute("UPDATE responses SET value = ?", (json.dumps(value),))
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
    with sqlite3.connect(tmp_path / "c" / DiskCache.FILENAME) as db:  # garble every stored answer
        changed = db.execute("UPDATE responses SET value = X'80FFFF00' WHERE rowid % 2 = 0").rowcount
        changed += db.execute("UPDATE responses SET value = '{\"text\": ' WHERE rowid % 2 = 1").rowcount
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


# --- safety and robustness of the caches ----------------------------------------------------------


class Planted:
    """A pickle payload that writes a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "owned"))


def sqlite_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.read_bytes()[:16] == b"SQLite format 3\x00"]


def test_a_planted_pickle_is_never_executed(server: FakeLLMServer, tmp_path: Path) -> None:
    folder = tmp_path / "c"
    disk = DiskCache(folder)
    Reranker("listwise", backend_for(server), cache=disk).rerank(QUERY, DOCS)
    disk.close()
    marker = tmp_path / "marker"
    payload = pickle.dumps(Planted(marker))
    planted = 0
    for path in sqlite_files(folder):  # whatever the schema: every value column gets the payload
        with sqlite3.connect(path) as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
                if "value" in columns:
                    planted += db.execute(f"UPDATE {table} SET value = ?", (payload,)).rowcount
                if "mode" in columns:  # diskcache's "this value is a pickle" flag
                    db.execute(f"UPDATE {table} SET mode = 4")
    assert planted == 1
    disk = DiskCache(folder)
    try:
        result = Reranker("listwise", backend_for(server), cache=disk).rerank(QUERY, DOCS)
    finally:
        disk.close()
    assert not marker.exists()
    assert result.usage.cached_calls == 0 and result.usage.calls == 1 and result.indices == [1, 0, 2]


@pytest.mark.parametrize("damage", ["garbage-files", "folder-is-a-file"])
def test_a_broken_cache_folder_warns_once_and_runs_uncached(
    server: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    folder = tmp_path / "c"
    if damage == "garbage-files":
        DiskCache(folder).close()
        for path in folder.iterdir():
            if path.is_file():
                path.write_bytes(b"\x00garbage, not a database\xff" * 64)
    else:
        folder.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="llmrerank"):
        disk = DiskCache(folder)
        reranker = Reranker("listwise", backend_for(server), cache=disk)
        first = reranker.rerank(QUERY, DOCS)
        second = reranker.rerank(QUERY, DOCS)
    disk.close()
    assert first.indices == second.indices == [1, 0, 2] and not second.degraded
    assert second.usage.calls == 1 and len(server.requests) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running without a cache" in warnings[0].getMessage()


def test_keys_differ_by_server_and_generation_settings() -> None:
    with FakeLLMServer(judge) as first, FakeLLMServer(judge) as second:
        cache = MemoryCache()
        Reranker("listwise", backend_for(first), cache=cache).rerank(QUERY, DOCS)
        Reranker("listwise", backend_for(second), cache=cache).rerank(QUERY, DOCS)
        assert len(second.requests) == 1  # same model name, another server: not its answer
        Reranker("listwise", backend_for(first, temperature=0.7), cache=cache).rerank(QUERY, DOCS)
        logprobs = OpenAIBackend("gpt-test", base_url=first.base_url, api_key="sk-test", max_retries=0)
        Reranker("listwise", logprobs, cache=cache).rerank(QUERY, DOCS)
        assert len(first.requests) == 3
        Reranker("listwise", backend_for(first, temperature=0.7), cache=cache).rerank(QUERY, DOCS)
        assert len(first.requests) == 3 and len(cache) == 4


def test_memory_cache_is_bounded_by_bytes() -> None:
    cache = MemoryCache(max_bytes=100_000)
    answer = {"text": "x" * 2_000_000, "prompt_tokens": 1, "completion_tokens": 1}
    cache.set("huge", answer)  # larger than the whole budget: not kept
    assert len(cache) == 0
    for i in range(200):
        cache.set(f"k{i}", {"text": "y" * 20_000, "prompt_tokens": 1, "completion_tokens": 1})
    assert cache.nbytes <= 100_000 and len(cache) == 4
    assert cache.get("k199") is not None and cache.get("k0") is None


def test_caches_survive_pickle(tmp_path: Path) -> None:
    memory = MemoryCache()
    memory.set("k", {"text": "a"})
    assert pickle.loads(pickle.dumps(memory)).get("k") == {"text": "a"}
    with DiskCache(tmp_path / "c") as disk:
        disk.set("k", {"text": "b"})
        with pickle.loads(pickle.dumps(disk)) as clone:
            assert clone.get("k") == {"text": "b"}


def test_disk_writes_leave_the_event_loop_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit can take tens of milliseconds (fsync): a rerank writes on a thread, not on the loop."""
    disk = DiskCache(tmp_path / "c")
    write = DiskCache.set

    def slow_write(self: DiskCache, key: str, value: dict[str, Any]) -> None:
        time.sleep(0.3)  # a slow disk
        write(self, key, value)

    monkeypatch.setattr(DiskCache, "set", slow_write)

    async def rerank_while_ticking() -> int:
        ticks = 0
        task = asyncio.ensure_future(
            Reranker("listwise", FakeBackend(respond=overlap_judge), cache=disk).arerank(QUERY, DOCS)
        )
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        assert (await task).indices == [1, 0, 2]
        return ticks

    try:
        ticks = asyncio.run(rerank_while_ticking())
        assert ticks >= 10 and len(disk) == 1
    finally:
        disk.close()


def test_a_slow_write_never_costs_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline passes while the answer is being written: the rerank keeps the answer (the write
    goes on beside it) instead of counting the call as cut by the deadline."""
    disk = DiskCache(tmp_path / "c")
    write = DiskCache.set

    def slow_write(self: DiskCache, key: str, value: dict[str, Any]) -> None:
        time.sleep(0.4)
        write(self, key, value)

    monkeypatch.setattr(DiskCache, "set", slow_write)
    try:
        reranker = Reranker(Pointwise(method="generate"), FakeBackend(respond=overlap_judge), cache=disk, deadline=0.2)
        result = reranker.rerank(QUERY, DOCS)
        assert result.status == "reranked" and not result.degraded and result.indices[0] == 1
        assert result.usage.calls == 3 and result.usage.failed_calls == 0
    finally:
        time.sleep(0.5)  # the writes' threads finish before the folder goes
        disk.close()
