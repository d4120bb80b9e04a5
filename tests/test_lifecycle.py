"""Event loops and lifecycle: clients closed with their loops, close() and context managers, a
background loop that survives SystemExit, one concurrency bound across threads and loops, copies.

Scripts that could hang or that inspect what a process prints at exit run in a subprocess.
"""

from __future__ import annotations

import asyncio
import copy
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import pytest

from llmrerank import Hybrid, Listwise, MemoryCache, Reranker
from llmrerank.limits import Limiter
from testkit.sample import QUERY
from testkit.sample import SHORT_DOCS as DOCS
from testkit.server import FakeLLMServer, Reply, overlap_responder

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend

judge = overlap_responder


def run_script(body: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter (a hang fails the test instead of the suite)."""
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


# --- clients of closed loops are closed, not dropped ---------------------------------------------

REPEATED_RUNS = """
    import asyncio, gc, os, sys
    from llmrerank import Reranker
    from llmrerank.backends.openai import OpenAIBackend
    from llmrerank.backends.anthropic import AnthropicBackend
    from testkit.server import FakeLLMServer

    def sockets():
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        return count

    with FakeLLMServer("[2] > [1]") as srv:
        if sys.argv[1] == "openai":
            backend = OpenAIBackend("m", base_url=srv.base_url, api_key="x", logprobs=False)
        else:
            backend = AnthropicBackend("m", base_url=srv.anthropic_base_url, api_key="x")
        reranker = Reranker("listwise", backend)
        reranker.rerank("q", ["a", "b"])
        asyncio.run(reranker.arerank("q", ["a", "b"]))
        gc.collect()
        before = sockets()
        for i in range(20):
            assert asyncio.run(reranker.arerank("q", ["a", "b"])).indices == [1, 0]
            if i % 5 == 0:
                reranker.rerank("q", ["a", "b"])
        print("growth", sockets() - before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_repeated_asyncio_run_closes_each_loops_client(api: str) -> None:
    done = run_script(REPEATED_RUNS.replace("sys.argv[1]", repr(api)))
    assert done.returncode == 0, done.stderr
    assert "Task exception was never retrieved" not in done.stderr
    assert "Event loop is closed" not in done.stderr
    growth = int(done.stdout.split()[-1])
    assert growth <= 0, done.stdout


async def test_a_client_closes_when_its_loop_shuts_down(server: FakeLLMServer) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url, api_key="x", logprobs=False)
    reranker = Reranker("listwise", backend)
    clients = []

    async def one() -> None:
        await reranker.arerank(QUERY, DOCS)
        clients.append(backend._current_client())

    for _ in range(3):
        await asyncio.to_thread(asyncio.run, one())
    assert len(clients) == 3 and len({id(c) for c in clients}) == 3
    assert all(c.is_closed() for c in clients)
    assert len(backend._clients) == 0


# --- close(), aclose() and context managers -------------------------------------------------------

DEV_MODE_EXIT = """
    import asyncio
    from llmrerank import Reranker
    from llmrerank.backends.openai import OpenAIBackend
    from llmrerank.backends.anthropic import AnthropicBackend
    from testkit.server import FakeLLMServer

    with FakeLLMServer("[2] > [1]") as srv:
        openai = OpenAIBackend("m", base_url=srv.base_url, api_key="x", logprobs=False)
        with Reranker("listwise", openai) as reranker:
            reranker.rerank("q", ["a", "b"])
            asyncio.run(reranker.arerank("q", ["a", "b"]))

        async def main():
            anthropic = AnthropicBackend("m", base_url=srv.anthropic_base_url, api_key="x")
            async with Reranker("listwise", anthropic) as reranker:
                await reranker.arerank("q", ["a", "b"])
                reranker.rerank("q", ["a", "b"])
            async with OpenAIBackend("m", base_url=srv.base_url, api_key="x", logprobs=False) as backend:
                await Reranker("listwise", backend).arerank("q", ["a", "b"])

        asyncio.run(main())
        with OpenAIBackend("m", base_url=srv.base_url, api_key="x", logprobs=False) as backend:
            Reranker("listwise", backend).rerank("q", ["a", "b"])
        # no close at all: the blocking API's loop closes its clients at exit
        unclosed = OpenAIBackend("m", base_url=srv.base_url, api_key="x", logprobs=False)
        Reranker("listwise", unclosed).rerank("q", ["a", "b"])
    print("done")
"""


def test_dev_mode_reports_nothing_at_exit() -> None:
    done = run_script(DEV_MODE_EXIT, "-W", "error::ResourceWarning", env={"PYTHONDEVMODE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    for sign in ("ResourceWarning", "unclosed", "Exception ignored", "never retrieved"):
        assert sign not in done.stderr, done.stderr


def test_close_from_another_thread_closes_the_background_loops_client(server: FakeLLMServer) -> None:
    backend = OpenAIBackend("m", base_url=server.base_url, api_key="x", logprobs=False)
    reranker = Reranker("listwise", backend)
    assert reranker.rerank(QUERY, DOCS).indices == [1, 0, 2]
    (entry,) = backend._clients._clients.values()
    client = entry.client
    worker = threading.Thread(target=reranker.close)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and client.is_closed()
    assert reranker.rerank(QUERY, DOCS).indices == [1, 0, 2]  # usable again: a new client
    reranker.close()


# --- SystemExit / KeyboardInterrupt inside a backend ----------------------------------------------

ESCAPE = """
    from llmrerank import Reranker
    from llmrerank.testing import FakeBackend

    class Escaping(FakeBackend):
        async def generate(self, prompt):
            raise {error}

    for strategy in ("listwise", "pointwise"):
        try:
            Reranker(strategy, Escaping(), deadline=30).rerank("q", ["a", "b"])
        except BaseException as exc:
            print("caller got", type(exc).__name__)
    ok = Reranker("listwise", FakeBackend(["[2] > [1]"]), deadline=30)
    print("next", ok.rerank("q", ["a", "b"]).indices)
"""


@pytest.mark.parametrize("error", ["SystemExit(3)", "KeyboardInterrupt()"])
def test_an_escaping_base_exception_reaches_its_caller_and_the_loop_serves_on(error: str) -> None:
    done = run_script(ESCAPE.replace("{error}", error))
    name = error.split("(")[0]
    assert done.stdout.splitlines() == [f"caller got {name}", f"caller got {name}", "next [1, 0]"], done.stderr


# --- max_concurrency bounds one Reranker across threads and event loops ---------------------------


def test_max_concurrency_holds_across_threads_and_loops(server: FakeLLMServer) -> None:
    server.responder = lambda request: Reply(text=judge(request).text, delay=0.15)
    backend = OpenAIBackend("m", base_url=server.base_url, api_key="x", logprobs=False)
    reranker = Reranker("pointwise", backend, max_concurrency=4)
    results: list[bool] = []

    def in_own_loop() -> None:
        results.append(asyncio.run(reranker.arerank(QUERY, DOCS)).degraded)

    threads = [threading.Thread(target=in_own_loop) for _ in range(8)]
    threads.append(threading.Thread(target=lambda: results.append(reranker.rerank(QUERY, DOCS).degraded)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    reranker.close()
    assert results == [False] * 9
    assert len(server.requests) == 9 * len(DOCS)
    assert 2 <= server.max_in_flight <= 4


async def test_limiter_is_fair_and_survives_cancellation() -> None:
    limiter = Limiter(2)
    order: list[int] = []
    release = asyncio.Event()

    async def hold(i: int) -> None:
        async with limiter:
            order.append(i)
            await release.wait()

    tasks = [asyncio.ensure_future(hold(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert order == [0, 1] and limiter.held == 2
    tasks[2].cancel()  # a waiter gives up: its place is not lost, nor is a slot
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4] and limiter.held == 0
    limiter.limit = 1
    async with limiter:
        assert limiter.held == 1
    assert repr(copy.deepcopy(limiter)) == "Limiter(limit=1, held=0, waiting=0)"


def test_limiter_hands_slots_between_loops() -> None:
    limiter = Limiter(1)
    inside = 0
    most = 0
    lock = threading.Lock()

    async def work() -> None:
        nonlocal inside, most
        for _ in range(5):
            async with limiter:
                with lock:
                    inside += 1
                    most = max(most, inside)
                await asyncio.sleep(0.002)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=asyncio.run, args=(work(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most == 1 and limiter.held == 0


# --- copy.deepcopy and pickle ---------------------------------------------------------------------


def test_backends_and_rerankers_survive_deepcopy_and_pickle(server: FakeLLMServer) -> None:
    backends = [
        OpenAIBackend("m", base_url=server.base_url, api_key="x", logprobs=False),
        AnthropicBackend("m", base_url=server.anthropic_base_url, api_key="x"),
    ]
    for backend in backends:
        reranker = Reranker(Hybrid(cross_encoder=None, keep=3, llm=Listwise()), backend, cache=MemoryCache())
        assert reranker.rerank(QUERY, DOCS).indices[0] == 1  # clients made, model loaded
        for clone in (copy.deepcopy(reranker), pickle.loads(pickle.dumps(reranker))):
            assert clone.backend is not backend and clone.backend.base_url == backend.base_url
            assert clone.max_concurrency == reranker.max_concurrency
            assert clone.rerank(QUERY, DOCS).indices[0] == 1
            clone.close()
        reranker.close()


def test_a_caller_client_is_shared_by_copies_and_refused_by_pickle(server: FakeLLMServer) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")
    backend = OpenAIBackend("m", client=client, logprobs=False)
    assert copy.deepcopy(backend)._client is client
    with pytest.raises(TypeError, match="client="):
        pickle.dumps(backend)
