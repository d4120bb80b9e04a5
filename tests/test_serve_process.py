"""``llmrerank serve`` as a real process: the issue's done-when command answered by the cohere SDK,
SIGTERM draining a request in flight, and ``--workers 2``."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("cohere")
pytest.importorskip("openai")

import cohere
import httpx

from testkit.serve_process import PLANETS, child_pids, reverse_listwise, start_serve, stop_serve
from testkit.server import FakeLLMServer

DOCS = PLANETS


@pytest.fixture
def upstream() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(reverse_listwise) as srv:
        yield srv


def start(upstream: FakeLLMServer, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "test", "ANTHROPIC_API_KEY": None}
    return start_serve(*extra, env=env)


def test_done_when_command_and_sigterm_drains(upstream: FakeLLMServer) -> None:
    proc, url = start(
        upstream, "--backend", "openai", "--model", "gpt-4o-mini", "--api-key", "secret", "--grace-period", "10"
    )
    try:
        co = cohere.ClientV2("secret", base_url=url)
        answer = co.rerank(model="listwise", query="which planet has rings", documents=DOCS)
        assert [r.index for r in answer.results] == [3, 2, 1, 0]
        assert upstream.requests[-1].model == "gpt-4o-mini"
        slow: list[object] = []
        worker = threading.Thread(
            target=lambda: slow.append(co.rerank(model="listwise", query="slow rings", documents=DOCS))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while not any("slow" in r.user for r in upstream.requests) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=15)
        assert [r.index for r in slow[0].results] == [3, 2, 1, 0]  # type: ignore[attr-defined]
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert '"status": 200' in log and "secret" not in log and "Saturn" not in log


def test_two_workers(upstream: FakeLLMServer) -> None:
    proc, url = start(upstream, "--backend", "openai", "--model", "gpt-4o-mini", "--workers", "2")
    try:
        children = child_pids(proc.pid)
        assert len(children) >= 2
        body = {"model": "listwise", "query": "rings", "documents": DOCS}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{url}/v2/rerank", json=body, timeout=30), range(16)))
        assert all(a.status_code == 200 for a in answers)
        assert {tuple(r["index"] for r in a.json()["results"]) for a in answers} == {(3, 2, 1, 0)}
    finally:
        stop_serve(proc)


def test_two_workers_share_one_redis_cache(upstream: FakeLLMServer, redis_server: Any, tmp_path: Path) -> None:
    """Workers are stateless: a rerank one worker paid for is served from Redis by every worker."""
    config = tmp_path / "serve.toml"
    config.write_text(f'[presets.shared]\nstrategy = "listwise"\ncache = "{redis_server.url}"\n')
    proc, url = start(
        upstream, "--backend", "openai", "--model", "gpt-4o-mini", "--workers", "2", "--config", str(config)
    )
    try:
        body = {"model": "shared", "query": "rings shared", "documents": DOCS}
        first = httpx.post(f"{url}/v2/rerank", json=body, timeout=30)
        assert first.status_code == 200 and [r["index"] for r in first.json()["results"]] == [3, 2, 1, 0]
        sent = len(upstream.requests)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{url}/v2/rerank", json=body, timeout=30), range(24)))
        assert all(a.status_code == 200 for a in answers)
        assert {tuple(r["index"] for r in a.json()["results"]) for a in answers} == {(3, 2, 1, 0)}
        assert len(upstream.requests) == sent  # every worker found the answer in Redis
    finally:
        stop_serve(proc)
    log = proc.stdout.read().decode() if proc.stdout else ""
    answered_by = set(re.findall(r'"pid": (\d+)', log))
    assert len(answered_by) >= 2, f"one worker answered every request: {answered_by}"
