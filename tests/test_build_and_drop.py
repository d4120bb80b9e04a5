"""A reranker and its backend built per request and dropped without ``close()``, the way a web
handler uses them: every request must finish, from one event loop and from threads alike.

A dropped backend's clients used to be closed by a guard that the garbage collector resurrected
after it had already finalised the clients' transports (closing their sockets behind the loop's
back); that late close then unregistered the socket numbers from the loop's selector, which live
connections had reused, and those connections never saw their answer (until the 300 s timeout).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

from llmrerank import Reranker
from llmrerank.protocol import Prompt
from testkit.server import FakeLLMServer, overlap_responder

pytest.importorskip("openai")

from llmrerank.backends.openai import OpenAIBackend

QUERY = "why do dogs bark at night"
DOCS = [
    "Dogs bark at night when they hear noises.",
    "The cat sat on the mat.",
    "Birds sing at dawn.",
    "Night-time barking is how dogs guard their home.",
]
REQUESTS = 64
AT_ONCE = 16
BOUND = 120.0
"""Seconds all the requests may take together: far more than a loaded 2-core machine needs (a few
seconds), far less than the 300 s a stuck call waits for a local server."""


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(overlap_responder) as srv:
        yield srv


def handler(server: FakeLLMServer) -> Reranker:
    """What a web handler builds for one request (and then drops)."""
    return Reranker("pointwise", OpenAIBackend("fake-model", base_url=server.base_url, api_key="test"))


async def test_build_and_drop_per_request_on_one_event_loop(server: FakeLLMServer) -> None:
    gate = asyncio.Semaphore(AT_ONCE)

    async def request() -> str:
        async with gate:
            result = await handler(server).arerank(QUERY, DOCS)
            return result.status

    statuses = await asyncio.wait_for(asyncio.gather(*(request() for _ in range(REQUESTS))), BOUND)
    assert statuses == ["reranked"] * REQUESTS


def test_build_and_drop_per_request_from_threads(server: FakeLLMServer) -> None:
    statuses: list[str] = []
    lock = threading.Lock()
    todo = iter(range(REQUESTS))

    def worker() -> None:
        while True:
            with lock:
                if next(todo, None) is None:
                    return
            status = handler(server).rerank(QUERY, DOCS).status
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(AT_ONCE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    assert not any(thread.is_alive() for thread in threads), f"only {len(statuses)} of {REQUESTS} done"
    assert statuses == ["reranked"] * REQUESTS


async def test_a_dropped_backend_never_unregisters_a_socket_number_in_use(server: FakeLLMServer) -> None:
    """The mechanism, deterministically: a backend dropped (and collected) while another lives on
    the same loop; a new socket that takes the lowest free number must keep its reader."""
    loop = asyncio.get_running_loop()
    prompt = Prompt("Answer.", "Say OK.")
    alive = OpenAIBackend("fake-model", base_url=server.base_url, api_key="test", logprobs=False)
    await alive.generate(prompt)
    dropped = OpenAIBackend("fake-model", base_url=server.base_url, api_key="test", logprobs=False)
    await dropped.generate(prompt)
    del dropped
    gc.collect()
    ours, theirs = socket.socketpair()
    try:
        heard = asyncio.Event()
        loop.add_reader(ours, heard.set)
        for _ in range(50):  # let whatever the collection scheduled run
            await asyncio.sleep(0)
        theirs.send(b"x")
        await asyncio.wait_for(heard.wait(), 10)
    finally:
        loop.remove_reader(ours)
        ours.close()
        theirs.close()
        await alive.aclose()


DROPPED_AT_EXIT = """
    import asyncio, gc
    from llmrerank.backends import sdk
    from llmrerank.backends.openai import OpenAIBackend
    from llmrerank.runner import run_blocking

    close = sdk._close

    async def slow_close(client):  # a client with connections to shut takes a few loop turns
        await asyncio.sleep(0.05)
        await close(client)
        print("closed", client.is_closed())

    sdk._close = slow_close
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key="x")

    async def first_use():  # makes the backend's client on the blocking API's loop, as a rerank would
        backend._current_client()

    run_blocking(first_use())
    del backend
    gc.collect()  # its client's close is under way on the background loop as the interpreter exits
"""


def test_a_backend_dropped_just_before_exit_is_closed_without_an_asyncio_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DROPPED_AT_EXIT)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "already running" not in done.stderr and "Task was destroyed" not in done.stderr, done.stderr
    assert done.stdout.split() == ["closed", "True"], (done.stdout, done.stderr)
