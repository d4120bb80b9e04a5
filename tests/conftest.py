"""Fixtures shared by test modules (a module that scripts its own server defines its own ``server``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_examples import judge

from testkit.server import FakeLLMServer, overlap_responder


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    """A FakeLLMServer on loopback that judges every built-in prompt by word overlap (overlap_responder)."""
    with FakeLLMServer(overlap_responder) as srv:
        yield srv


@pytest.fixture
def openai_env_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """A word-overlap FakeLLMServer set as the environment's OpenAI server (OPENAI_API_KEY, OPENAI_BASE_URL)."""
    pytest.importorskip("openai")
    with FakeLLMServer(judge) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
        yield srv


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A real redis-server on a free loopback port (tests/redis_support.py), stopped afterwards."""
    from redis_support import RedisServer

    with RedisServer() as server:
        yield server
