"""The adapter examples run as written, against FakeLLMServer through OPENAI_API_KEY / OPENAI_BASE_URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.server import FakeLLMServer, Reply, overlap_responder

ROOT = Path(__file__).resolve().parents[1]


judge = overlap_responder


def run_example(example: str, server: FakeLLMServer) -> subprocess.CompletedProcess[str]:
    """Run an example as a user would, its LLM taken from the environment: the loopback server."""
    env = {**os.environ, "OPENAI_API_KEY": "test", "OPENAI_BASE_URL": server.base_url}
    env.pop("ANTHROPIC_API_KEY", None)
    command = [sys.executable, str(ROOT / "examples" / example)]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("example", "framework"),
    [("langchain_retriever.py", "langchain_classic"), ("llamaindex_query_engine.py", "llama_index.core")],
)
def test_example_runs_against_an_openai_compatible_server(example: str, framework: str) -> None:
    pytest.importorskip(framework)
    pytest.importorskip("openai")
    with FakeLLMServer(judge) as server:
        done = run_example(example, server)
        requests = [r for r in server.requests if r.method == "POST"]
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Reranked by OpenAIBackend(model='gpt-4o-mini') with the listwise strategy" in out
    ranked = re.findall(r"^\s+(\d)\. no score \(rank\)\s+\[doc ?(\d)\]", out, re.MULTILINE)
    assert [int(rank) for rank, _ in ranked] == [1, 2, 3]
    assert ranked[0][1] == "1"  # the photovoltaic-panel document comes first
    assert "FALLBACK" not in out
    (request,) = requests  # one listwise call
    assert "How do solar panels turn sunlight into electricity?" in request.user
    assert re.search(r"^Status: reranked; 1 LLM calls, \d+ tokens$", out, re.MULTILINE), out


@pytest.mark.parametrize(
    ("example", "framework"),
    [("langchain_retriever.py", "langchain_classic"), ("llamaindex_query_engine.py", "llama_index.core")],
)
def test_example_shows_a_fallback_as_a_fallback(example: str, framework: str) -> None:
    pytest.importorskip(framework)
    with FakeLLMServer(Reply(status=503, text="upstream down")) as server:
        done = run_example(example, server)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("FALLBACK: not placed by the model") == 3
    assert "Status: fallback (call_failed)" in done.stdout
    assert "503" in done.stderr  # the warning names the status code
