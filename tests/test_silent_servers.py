"""Servers that stop answering, reranks abandoned by their caller, and servers of your own without a
key: what llama-server showed (issue 25, section 5).

A server that accepts connections and never answers (llama-server after SIGTERM) must cost a rerank
about one ``timeout`` (plus a short check), not one per call; the failed call names the server's
address. A rerank whose coroutine is closed outside its own context (an orphaned task collected at
exit) must not print a ContextVar traceback. ``llmrerank eval --base-url`` on this machine needs no key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrerank import Listwise, Pointwise, Reranker
from testkit.server import FakeLLMServer, Reply, overlap_responder

pytest.importorskip("openai")

from llmrerank.backends.openai import OpenAIBackend

QUERY = "why do dogs bark at night"
DOCS = [f"document {i}: dogs bark at night" for i in range(6)]
GUARD = 60.0


class SilentServer:
    """Accepts every connection and reads what is sent, but never answers (as llama-server after SIGTERM)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.received: list[bytes] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                self._held.append(conn)
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.received.append(data)

    def requests(self, method: str) -> int:
        return sum(data.count(f"{method} /".encode()) for data in self.received)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


async def rerank(reranker: Reranker) -> object:
    try:
        return await asyncio.wait_for(reranker.arerank(QUERY, DOCS), GUARD)
    finally:
        await reranker.aclose()


async def test_a_silent_server_costs_one_timeout_not_one_per_call(silent: SilentServer) -> None:
    backend = OpenAIBackend("m", base_url=f"{silent.url}/v1", api_key="k", timeout=0.5, logprobs=False)
    result = await rerank(Reranker(Listwise(window=2, step=1), backend))  # 5 windows, one after another
    assert result.status == "fallback"  # type: ignore[attr-defined]
    assert silent.requests("GET") == 1  # the check, after the first timeout
    assert silent.requests("POST") <= 1  # it found the server silent: nothing more was sent
    messages = [(d.code, d.message) for d in result.diagnostics]  # type: ignore[attr-defined]
    assert any(code == "circuit_open" and "did not answer a check" in text for code, text in messages)
    failed = next(text for code, text in messages if code == "call_failed" and "Timeout" in text)
    assert silent.url.removeprefix("http://") in failed  # the failed call names host and port


async def test_calls_in_flight_wait_for_the_check_and_are_not_sent(silent: SilentServer) -> None:
    backend = OpenAIBackend("m", base_url=f"{silent.url}/v1", api_key="k", timeout=0.5, logprobs=False)
    result = await rerank(Reranker(Pointwise(), backend, max_concurrency=2))
    assert silent.requests("POST") == 2  # the two sent before the first timeout; the other four wait, then stay
    assert result.status == "fallback" and result.usage.failed_calls == 2  # type: ignore[attr-defined]


async def test_a_slow_server_that_answers_the_check_keeps_its_calls() -> None:
    answers = iter([Reply(delay=30.0), "[2] > [1]", "[2] > [1]", "[2] > [1]", "[2] > [1]"])
    with FakeLLMServer(lambda request: next(answers)) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, api_key="k", timeout=0.5, logprobs=False)
        result = await rerank(Reranker(Listwise(window=2, step=1), backend))
        posts = [r for r in server.requests if r.method == "POST"]
    assert len(posts) == 5
    assert not any(d.code == "circuit_open" for d in result.diagnostics)  # type: ignore[attr-defined]


def test_an_abandoned_rerank_closed_in_another_context_raises_nothing() -> None:
    """What ``Exception ignored in: <coroutine ...> ValueError: <Token var=<ContextVar
    name='llmrerank_rerank_ends'> ...> was created in a different Context`` came from."""
    with FakeLLMServer(Reply(text="[1] > [2]", delay=5.0)) as server:
        backend = OpenAIBackend("m", base_url=server.base_url, api_key="k", logprobs=False)
        reranker = Reranker("listwise", backend, deadline=30.0)
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(reranker.arerank(QUERY, DOCS))  # runs in a copy of this context
            loop.run_until_complete(asyncio.sleep(0.5))  # the rerank is waiting on the server
            assert not task.done()
            coroutine = task.get_coro()
            coroutine.close()  # as the collector does with an orphaned task, in another context
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
            loop.run_until_complete(backend.aclose())
            loop.close()


def test_eval_against_a_server_of_your_own_needs_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmrerank.cli import main

    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True)
    docs = {f"d{i}": f"dogs bark at night {i}" if i % 2 else f"cats sleep {i}" for i in range(4)}
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items()))
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "why do dogs bark at night"}) + "\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t1\n")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeLLMServer(overlap_responder) as server:
        argv = ["eval", "--data", str(data), "--base-url", server.base_url, "--strategy", "listwise"]
        assert main([*argv, "--depth", "4", "--no-progress"]) == 0
        assert main([*argv, "--depth", "4", "--no-progress", "--api-key", "sk-mine"]) == 0
        keys = [r.headers.get("authorization") for r in server.requests if r.method == "POST"]
    assert keys == ["Bearer no-key", "Bearer sk-mine"]
    captured = capsys.readouterr()
    assert "different Context" not in captured.err and "Traceback" not in captured.err
