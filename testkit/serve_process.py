"""``llmrerank serve`` from this checkout as a child process on a free loopback port (needs httpx)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from llmrerank.serve.runner import bound_socket
from testkit.server import Reply, ServerRequest

ROOT = Path(__file__).resolve().parents[1]

PLANETS = ["Mars is red.", "Saturn has rings.", "Venus is hot.", "Jupiter has faint rings."]
"""The documents the served-process tests rerank."""


def reverse_listwise(request: ServerRequest) -> Reply:
    """A loopback LLM's listwise answer: the prompt's documents reversed; queries with 'slow' take 2 s."""
    labels = re.findall(r'<document id="([^"]*)">', request.user)
    return Reply(text=" > ".join(reversed(labels)), delay=2.0 if "slow" in request.user else 0.0)


def start_serve(
    *args: str, env: Mapping[str, str | None] | None = None, log: bool = True, wait: float = 60.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``llmrerank serve ARGS``; return the process and its URL once ``/ready`` answers 200.

    ``env`` adds to the environment (a ``None`` value removes the name). With ``log`` the server's
    output (stdout and stderr) stays readable in ``proc.stdout``; without it only stderr is kept, to
    explain a failed start. Raises ``RuntimeError`` when the server exits or is not ready in ``wait`` seconds.
    """
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()  # the server binds it again; nothing else on loopback takes it in between
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT)])}
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    command = [sys.executable, "-m", "llmrerank.cli", "serve", "--port", str(port), *args]
    stdout, stderr = (subprocess.PIPE, subprocess.STDOUT) if log else (subprocess.DEVNULL, subprocess.PIPE)
    proc = subprocess.Popen(command, env=environ, stdout=stdout, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout if log else proc.stderr
            raise RuntimeError(f"llmrerank serve exited: {output.read().decode() if output else ''}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("llmrerank serve did not start")


def stop_serve(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM, then a kill if it has not exited within ``grace`` seconds (and the wait's TimeoutExpired)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``): a server's workers."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(p) == pid]


def _parent(pid: str) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])
