"""What the SDK backends know about the server they talk to: OpenAI's own API or one you host.

Self-hosted servers (vLLM, Ollama, llama.cpp's ``llama-server``) differ from the APIs in ways a
reranker feels: a CPU server takes tens of seconds per listwise window, retrying a call it timed out on
doubles its load, their context is often a few thousand tokens, and several report that
context size. This module holds those rules in one place: which addresses are local, the timeout
and retry defaults for each kind of server (the retry rule itself is
:func:`~llmrerank.backends.sdk.retry_wait`), which model names are reasoning models, and the
time-boxed discovery of a server's context size.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import urllib.request
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("llmrerank")

API_TIMEOUT = 60.0
"""Seconds per call to a hosted API (OpenAI, Anthropic, any non-local address)."""
API_RETRIES = 2
"""Retries per call to a hosted API, of what a retry can fix (:func:`~llmrerank.backends.sdk.retry_wait`)."""
LOCAL_TIMEOUT = 300.0
"""Seconds per call to a server on this machine or a private network: a CPU server took 51 s for
one default listwise window of 20 documents (SmolLM2-135M, llama.cpp, 2 cores)."""
LOCAL_RETRIES = 2
"""Retries per call to a local server: as many as for an API, of what a retry can fix (429, 5xx, a
connection refused or closed before the request was sent). A timed-out call is never retried
there: the server keeps working on a request the client gave up on, so a retry doubles its load."""
DISCOVERY_TIMEOUT = 2.0
"""Seconds the context-size discovery may take, all requests together."""


def is_local_url(url: str | None) -> bool:
    """Whether ``url`` points at this machine or a private network (a self-hosted server).

    ``localhost`` (and ``*.localhost``, ``*.local``, ``host.docker.internal``), loopback, private
    (10/8, 172.16/12, 192.168/16, fc00::/7) and link-local addresses count; names that need DNS do not.
    """
    if not url:
        return False
    try:
        host = urlsplit(url if "//" in url else f"//{url}").hostname or ""
    except ValueError:
        return False
    host = host.lower()
    if host == "localhost" or host.endswith((".localhost", ".local")) or host == "host.docker.internal":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def call_defaults(url: str | None, timeout: float | None, max_retries: int | None) -> tuple[float, int]:
    """``timeout`` and ``max_retries`` with None replaced by the defaults for the server at ``url``:
    :data:`LOCAL_TIMEOUT` / :data:`LOCAL_RETRIES` for a local one, else :data:`API_TIMEOUT` / :data:`API_RETRIES`."""
    local = is_local_url(url)
    if timeout is None:
        timeout = LOCAL_TIMEOUT if local else API_TIMEOUT
    if max_retries is None:
        max_retries = LOCAL_RETRIES if local else API_RETRIES
    return timeout, max_retries


_OPENAI_REASONING = re.compile(r"(^|/)(o[1-9](-|$)|gpt-5(?!-chat))")
_REASONING = re.compile(r"(^|/)(gpt-oss|deepseek-r1|deepseek-reasoner|qwq)")


def is_openai_reasoning_model(model: str) -> bool:
    """Whether ``model`` names one of OpenAI's reasoning models: the o-series (``o1``, ``o3``,
    ``o4-mini``, ...) and the gpt-5 family (not ``gpt-5-chat``). They reject ``max_tokens`` and a
    temperature other than 1, wherever they are served."""
    return bool(_OPENAI_REASONING.search(model.strip().lower()))


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` names a reasoning model by its prefix: OpenAI's (:func:`is_openai_reasoning_model`),
    ``gpt-oss``, DeepSeek-R1 and QwQ.

    Backends take ``reasoning=True/False`` for any other name (a thinking model on vLLM, say).
    """
    return is_openai_reasoning_model(model) or bool(_REASONING.search(model.strip().lower()))


PROVIDER_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}
"""Each provider's own API host (the one whose list prices the built-in price table holds)."""


def is_provider_api(provider: str, url: str | None) -> bool:
    """Whether ``url`` is ``provider``'s own API (None: the SDK's default, which is)."""
    return not url or (urlsplit(url).hostname or "").lower() == PROVIDER_HOSTS[provider]


def is_openai_api(url: str | None) -> bool:
    """Whether ``url`` is OpenAI's own API (None: the SDK's default, which is)."""
    return is_provider_api("openai", url)


def _get_json(url: str, api_key: str | None, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _post_json(url: str, body: Any, api_key: str | None, timeout: float) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def served_models(base_url: str, api_key: str | None, timeout: float = DISCOVERY_TIMEOUT) -> list[str] | None:
    """The model ids an OpenAI-compatible server lists at ``GET /v1/models``, or None when it cannot say."""
    try:
        listing = _get_json(f"{base_url.rstrip('/')}/models", api_key, timeout)
    except Exception as exc:  # a server without the endpoint, or down: the caller decides
        logger.debug("llmrerank: no model list at %s: %s: %s", base_url, type(exc).__name__, exc)
        return None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]


_STATED_CONTEXT = re.compile(
    r"available context size \((\d+) tokens\)|n_ctx\W{1,4}(\d+)|maximum context length is (\d+)"
    r"|maximum model length of (\d+)|tokens > (\d+) maximum",
    re.IGNORECASE,
)


def stated_context(message: str) -> int | None:
    """The context size a context-length error states, or None: llama.cpp ("exceeds the available
    context size (4096 tokens)", ``n_ctx``), OpenAI and vLLM ("maximum context length is 4096
    tokens", "maximum model length of 4096"), Anthropic ("210000 tokens > 200000 maximum")."""
    found = _STATED_CONTEXT.search(message or "")
    if found is None:
        return None
    value = int(next(group for group in found.groups() if group))
    return value if value > 0 else None


def context_from_props(props: Any) -> int | None:
    """``n_ctx`` from llama.cpp's ``GET /props`` (top level, or under ``default_generation_settings``)."""
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings")
    for value in (props.get("n_ctx"), settings.get("n_ctx") if isinstance(settings, dict) else None):
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_from_models(models: Any, model: str) -> int | None:
    """``max_model_len`` of ``model`` (else of the only model) in vLLM's ``GET /v1/models``."""
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        return None
    entries = [m for m in data if isinstance(m, dict)]
    chosen = [m for m in entries if m.get("id") == model] or (entries if len(entries) == 1 else [])
    value = chosen[0].get("max_model_len") if chosen else None
    return value if isinstance(value, int) and value > 0 else None


async def discover_context(base_url: str, model: str, api_key: str | None) -> int | None:
    """The context size the OpenAI-compatible server at ``base_url`` reports, or None.

    Asks llama.cpp's ``GET /props`` and vLLM's ``GET /v1/models`` at once, for at most
    :data:`DISCOVERY_TIMEOUT` seconds; any failure (404, a timeout, another server) is None.
    """
    base = base_url.rstrip("/")
    root = base[: -len("/v1")] if base.endswith("/v1") else base

    async def ask(url: str) -> Any:
        try:
            return await asyncio.to_thread(_get_json, url, api_key, DISCOVERY_TIMEOUT)
        except Exception as exc:  # discovery is a courtesy: a server without the endpoint is normal
            logger.debug("llmrerank: no context size at %s: %s: %s", url, type(exc).__name__, exc)
            return None

    try:
        props, models = await asyncio.wait_for(
            asyncio.gather(ask(f"{root}/props"), ask(f"{base}/models")), DISCOVERY_TIMEOUT + 0.5
        )
    except asyncio.TimeoutError:
        return None
    return context_from_props(props) or context_from_models(models, model)


def tokens_from(answer: Any) -> int | None:
    """The token count in a ``/tokenize`` answer: vLLM's ``count``, else the length of ``tokens``
    (llama.cpp); None for anything else."""
    if not isinstance(answer, dict):
        return None
    count, tokens = answer.get("count"), answer.get("tokens")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return len(tokens) if isinstance(tokens, list) else None


async def count_tokens(base_url: str, model: str, api_key: str | None, text: str) -> int | None:
    """How many tokens the server at ``base_url`` makes of ``text`` with its own tokenizer, or None
    when it cannot say (no ``/tokenize``, down, slow: at most :data:`DISCOVERY_TIMEOUT` seconds).

    One ``POST /tokenize`` at the server's root that both servers read: llama.cpp takes
    ``{"content": text}`` and answers ``{"tokens": [...]}``; vLLM takes ``{"model", "prompt"}`` and
    answers ``{"count": N, "max_model_len": M, "tokens": [...]}``. Neither adds special tokens.
    """
    base = base_url.rstrip("/")
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    body = {"content": text, "model": model, "prompt": text, "add_special": False, "add_special_tokens": False}
    try:
        answer = await asyncio.wait_for(
            asyncio.to_thread(_post_json, f"{root}/tokenize", body, api_key, DISCOVERY_TIMEOUT),
            DISCOVERY_TIMEOUT + 0.5,
        )
    except Exception as exc:  # a server without a tokenizer endpoint is normal
        logger.debug("llmrerank: no tokenizer at %s/tokenize: %s: %s", root, type(exc).__name__, exc)
        return None
    return tokens_from(answer)


__all__ = [
    "API_RETRIES",
    "API_TIMEOUT",
    "LOCAL_RETRIES",
    "LOCAL_TIMEOUT",
    "PROVIDER_HOSTS",
    "call_defaults",
    "context_from_models",
    "context_from_props",
    "count_tokens",
    "discover_context",
    "is_local_url",
    "is_openai_api",
    "is_openai_reasoning_model",
    "is_provider_api",
    "is_reasoning_model",
    "served_models",
    "stated_context",
    "tokens_from",
]
