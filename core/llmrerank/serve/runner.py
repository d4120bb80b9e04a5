"""Running the app: on uvicorn in the foreground (``llmrerank serve``) or in a thread (tests, notebooks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import require


def _uvicorn() -> Any:
    return require("uvicorn", "serve")


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one the system picks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[str]:
    """Run ``app`` on a real uvicorn server in a daemon thread; yield its base URL
    (``http://127.0.0.1:PORT``), and stop it (draining requests) on exit. ``options`` go to
    ``uvicorn.Config`` (``log_level``, ``timeout_graceful_shutdown``, ...)."""
    uvicorn = _uvicorn()
    sock = bound_socket(host, port)
    options.setdefault("log_level", "warning")
    options.setdefault("access_log", False)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="llmrerank-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
