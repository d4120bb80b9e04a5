"""What the SDK backends' HTTP tests share: an OpenAI or Anthropic backend pointed at a loopback server,
and a rerank bounded in time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llmrerank import Reranker
from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.backends.sdk import SDKBackend


def backend_for(api: str, server: Any, **options: Any) -> SDKBackend:
    """The ``api`` ("openai" or "anthropic") backend of a loopback server (anything with a ``url``,
    or its root URL, no ``/v1``) with test keys and default settings unless ``options`` say
    otherwise; OpenAI's asks for no log-probs."""
    url = server if isinstance(server, str) else server.url
    if api == "openai":
        return OpenAIBackend("gpt-test", base_url=f"{url}/v1", api_key="sk-test", logprobs=False, **options)
    return AnthropicBackend("claude-test", base_url=url, api_key="sk-ant-test", **options)


async def rerank_and_close(reranker: Reranker, query: str, documents: Sequence[str], guard: float) -> Any:
    """``await reranker.arerank(query, documents)``, given up after ``guard`` seconds (behaviour that
    fails its test must not hang the suite), then the reranker closed."""
    try:
        return await asyncio.wait_for(reranker.arerank(query, documents), guard)
    finally:
        await reranker.aclose()
