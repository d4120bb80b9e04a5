"""Building backends and strategies by name: the one factory the CLI, the server, batch jobs and the
framework adapters share.

:func:`backend_for` builds the backend a model name names, :func:`make_backend` the one the CLI's
``--backend``/``--model``/``--base-url``/``--api-key`` name, :func:`default_backend` the one the
environment gives when nothing is named; all three construct it in one place. :func:`make_strategy_object`
builds a strategy by name with the listwise window options.

Names may carry their provider, as LangChain's ``init_chat_model`` writes them:
``"openai:gpt-4.1-mini"``, ``"anthropic:claude-haiku-4-5"``, ``"local:/path/model.gguf"``. A bare
name goes to the provider its prefix belongs to (``gpt-``, ``chatgpt-``, ``o1``/``o3``/``o4``... to
OpenAI, ``claude-`` to Anthropic); any other name goes to an OpenAI-compatible server when
``OPENAI_BASE_URL`` is set, else to the one provider whose key is set. Nothing is guessed past that:
a missing key or an undecidable name is a :class:`~llmrerank.errors.ConfigurationError` that says
what to set or write.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

from .backends.base import Backend
from .errors import ConfigurationError, MissingDependencyError
from .strategies import Strategy, make_strategy

logger = logging.getLogger("llmrerank")

KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
"""The environment variable holding each API provider's key."""
PROVIDERS = (*KEYS, "local")
"""Provider names accepted before a colon."""

_OPENAI = re.compile(r"^(gpt-|chatgpt-|ft:gpt-|o[1-9](-|$))")
_ANTHROPIC = re.compile(r"^claude-")


def split_model(model: str) -> tuple[str | None, str]:
    """``("openai", "gpt-4.1-mini")`` for ``"openai:gpt-4.1-mini"``; ``(None, model)`` when no
    known provider is named (``"qwen2.5:7b"``, ``"ft:gpt-4o:org::id"`` keep their colons).

    A provider's bare name (``"local"``, ``"openai"``, ``"anthropic"``, as the CLI's ``--backend``
    takes them) is that provider with its default model: ``("local", "")``.
    """
    head, colon, rest = model.partition(":")
    provider = head.strip().lower()
    if not colon and provider in PROVIDERS:
        return provider, ""
    if colon and provider in PROVIDERS and (rest.strip() or provider == "local"):
        return provider, rest.strip()
    return None, model.strip()


def provider_of(model: str) -> str | None:
    """The provider a bare model name belongs to by its prefix (``openai``, ``anthropic``), or None."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    if _ANTHROPIC.match(name):
        return "anthropic"
    if _OPENAI.match(name):
        return "openai"
    return None


def resolve_provider(model: str) -> tuple[str, str]:
    """The provider serving ``model`` and the name to send it, by the rules of this module."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError(f"a model name must be a non-empty string, got {model!r}")
    provider, name = split_model(model)
    if provider is not None:
        return provider, name
    provider = provider_of(name)
    if provider is not None:
        return provider, name
    if os.environ.get("OPENAI_BASE_URL"):
        return "openai", name  # an OpenAI-compatible server serves names of its own
    keyed = [p for p, env in KEYS.items() if os.environ.get(env)]
    if len(keyed) == 1:
        return keyed[0], name
    choices = f"'openai:{name}' or 'anthropic:{name}'"
    if keyed:
        raise ConfigurationError(
            f"cannot tell which provider serves model {name!r}: both OPENAI_API_KEY and ANTHROPIC_API_KEY are set; "
            f"write {choices}"
        )
    raise ConfigurationError(
        f"model {name!r} needs a provider: set OPENAI_API_KEY or ANTHROPIC_API_KEY (or OPENAI_BASE_URL for an "
        f"OpenAI-compatible server), or write {choices}"
    )


def backend_for(model: str, **options: Any) -> Backend:
    """The backend for ``model``: ``"openai:gpt-4.1-mini"``, ``"anthropic:claude-haiku-4-5"``,
    ``"local:..."``, a provider alone (``"local"``, ``"openai"``, ``"anthropic"``: its default model)
    or a bare name (see the module docstring). ``options`` go to the backend (``base_url=``,
    ``timeout=``, ``reasoning_effort=``, ...).

    Raises :class:`~llmrerank.errors.ConfigurationError` naming the environment variable when the
    provider's key is missing: ``backend_for("claude-haiku-4-5")`` with only ``OPENAI_API_KEY`` set
    never builds an OpenAI backend for a Claude model.
    """
    provider, name = resolve_provider(model)
    if provider == "local":
        return _construct("local", {"model": name or None, **options})
    has_key = options.get("api_key") or options.get("client") is not None or os.environ.get(KEYS[provider])
    if name:
        options = {"model": name, **options}
    what = f"model {name!r}" if name else f"backend {provider!r}"
    if provider == "openai" and not has_key:
        raise ConfigurationError(
            f"{what} is served by OpenAI: set OPENAI_API_KEY (or pass api_key=; a server of your "
            "own started without a key takes any)"
        )
    if provider == "anthropic" and not has_key and not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        raise ConfigurationError(
            f"{what} is served by Anthropic: set ANTHROPIC_API_KEY (or pass api_key=)"
            + (f"; for an OpenAI-compatible server that serves it, write 'openai:{name}'" if name else "")
        )
    return _construct(provider, options)


def _construct(provider: str, options: dict[str, Any]) -> Backend:
    """The backend class of ``provider`` (``local``, ``openai``, ``anthropic``) built with ``options``:
    the one place that imports them (each needs its optional SDK)."""
    if provider == "local":
        from .backends.local import LocalBackend

        return LocalBackend(**options)
    if provider == "openai":
        from .backends.openai import OpenAIBackend

        return OpenAIBackend(**options)
    from .backends.anthropic import AnthropicBackend

    return AnthropicBackend(**options)


def default_backend() -> Backend:
    """The backend used when none is given.

    ``OPENAI_API_KEY`` set: OpenAI ``gpt-4o-mini`` (``OPENAI_BASE_URL`` honoured by the SDK);
    else ``ANTHROPIC_API_KEY``: Anthropic Haiku; else the local demo model, with one log line.
    Without a key and without the local model's pieces, a
    :class:`~llmrerank.errors.MissingDependencyError` names both ways out: the keys, and the
    install lines of what is missing (``llmrerank doctor`` says the same).
    """
    for provider, env in KEYS.items():
        if os.environ.get(env):
            return _construct(provider, {})
    from .backends.local import install_lines, missing_pieces

    missing = [name for name, _ in missing_pieces()]
    if missing:
        lines = install_lines(missing)
        raise MissingDependencyError(
            ", ".join(missing),
            "local",
            lines,
            message=no_backend_message(missing, lines),
        )
    logger.warning(
        "llmrerank: no OPENAI_API_KEY or ANTHROPIC_API_KEY; using the small local model "
        "SmolLM2-135M-Instruct (query likelihood fused with the retriever's scores, or its order when "
        "it gives none: a small gain on SciFact)"
    )
    return _construct("local", {})


def no_backend_message(missing: Sequence[str], lines: str) -> str:
    """Why no default backend can be built, and the two ways out (an API key, or the local pieces)."""
    indented = "".join(f"\n    {line}" for line in lines.splitlines())
    return (
        "no LLM to rerank with: set OPENAI_API_KEY or ANTHROPIC_API_KEY to use an API model, or install the "
        f"local model (offline, CPU; missing: {', '.join(missing)}):{indented}\n"
        "(`llmrerank doctor` shows what the default backend would use and what is missing)"
    )


BACKENDS = ("local", "openai", "anthropic", "fake")


def backend_kind(kind: str | None, model: str | None, base_url: str | None) -> tuple[str, str | None]:
    """The backend to build and the model name to give it, from ``--backend``, ``--model`` and ``--base-url``.

    A provider written in the model name (``openai:gpt-4.1-mini``) must agree with ``--backend``;
    with no ``--backend`` it decides, else the model's prefix does (``claude-`` is Anthropic), else
    ``--base-url`` means an OpenAI-compatible server, else a bare unknown name goes where
    :func:`~llmrerank.routing.resolve_provider` sends it, and no model at all means local.
    """
    provider, name = split_model(model) if model else (None, None)
    if kind is not None and provider is not None and provider != kind:
        raise ConfigurationError(f"--model {model} names provider {provider!r} but --backend is {kind!r}")
    if kind is None:
        if provider is not None:
            kind = provider
        elif name:
            kind = provider_of(name) or ("openai" if base_url else resolve_provider(name)[0])
        else:
            kind = "openai" if base_url else "local"
    return kind, name or None


def make_backend(
    kind: str | None, model: str | None = None, base_url: str | None = None, api_key: str | None = None
) -> Backend:
    """The backend ``--backend`` names (or ``--model`` implies: :func:`backend_kind`); ``api_key``
    None leaves the key to the environment (a server on this machine or a private network needs none)."""
    kind, model = backend_kind(kind, model, base_url)
    options: dict[str, Any] = {}
    if model:
        options["model"] = model
    if kind == "fake":
        from .testing import FakeBackend, overlap_judge, overlap_likelihood

        return FakeBackend(respond=overlap_judge, likelihood=overlap_likelihood, model=model or "fake")
    if kind == "local":
        if base_url or api_key:
            raise ConfigurationError("--base-url and --api-key are for the openai and anthropic backends")
        return _construct("local", options)
    if kind not in KEYS:
        raise ConfigurationError(f"unknown backend {kind!r}: use one of {', '.join(BACKENDS)}")
    if base_url:
        options["base_url"] = base_url
    if api_key:
        options["api_key"] = api_key
    if kind == "openai" and base_url and not model:
        served = server_model(base_url, api_key)
        if served:
            options["model"] = served
    return _construct(kind, options)


def server_model(base_url: str, api_key: str | None = None) -> str | None:
    """The model a server of your own serves, for ``--base-url`` without ``--model``: the one it lists
    at ``GET /v1/models``. Several are a :class:`ConfigurationError` naming them; None when it lists
    none (the backend's default name is sent; llama.cpp answers with its own model whatever is asked)."""
    from .backends.servers import served_models

    names = served_models(base_url, api_key or os.environ.get("OPENAI_API_KEY")) or []
    if len(names) > 1:
        shown = ", ".join(names[:10])
        raise ConfigurationError(f"the server at {base_url} serves several models ({shown}): pass --model")
    return names[0] if names else None


class WindowOptions(Protocol):
    """The listwise window options :func:`make_strategy_object` reads: the CLI's parsed arguments, a
    server preset. None leaves the strategy's default."""

    @property
    def window(self) -> int | None: ...
    @property
    def step(self) -> int | None: ...


def make_strategy_object(name: str, settings: WindowOptions) -> Strategy:
    """The strategy ``name`` with ``settings``' window options applied (``window`` and
    ``self_consistency`` to listwise and topdown, ``step`` to listwise only)."""
    options: dict[str, Any] = {}
    if name in ("listwise", "topdown"):
        if settings.window is not None:
            options["window"] = settings.window
        if settings.step is not None and name == "listwise":
            options["step"] = settings.step
        # Only the CLI has --self-consistency; a server preset does not.
        self_consistency = getattr(settings, "self_consistency", None)
        if self_consistency is not None:
            options["self_consistency"] = self_consistency
    return make_strategy(name, **options)


__all__ = [
    "BACKENDS",
    "KEYS",
    "PROVIDERS",
    "WindowOptions",
    "backend_for",
    "backend_kind",
    "default_backend",
    "make_backend",
    "make_strategy_object",
    "no_backend_message",
    "provider_of",
    "resolve_provider",
    "server_model",
    "split_model",
]
