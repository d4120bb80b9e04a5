"""What a server serves: :class:`ServeConfig` (limits, keys, the LLM) and its named :class:`Preset` s.

A request's ``model`` names a preset. With no configuration the names are the strategies
(``listwise``, ``pointwise``, ...) and ``default`` (the backend's preferred strategy), all on the LLM
that ``--backend``/``--model``/``--base-url`` (or the environment) name, as ``llmrerank eval`` does.
A TOML file (``--config``) adds presets and server settings::

    [server]
    max_documents = 500          # per request (413 past it)
    max_bytes = 2_000_000        # request body (413 past it)
    max_in_flight = 64           # reranks at once in one worker (429 + retry-after past it)
    cors_origins = ["https://app.example.com"]

    [presets.legal-fast]
    strategy = "pointwise"
    backend = "openai"
    model = "gpt-4o-mini"
    domain = "legal"
    fusion = "rrf"               # with the retriever's order (the request's document order)
    on_error = "raise"           # 502/503 when the LLM fails, instead of a degraded 200
    deadline = 20
    cache = "memory"             # or a folder (DiskCache), or redis://host:6379/0
    max_documents = 100
    allow_instruction = true     # requests may send "instruction" (used as the domain instruction)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

API_KEY_ENV = "LLMRERANK_SERVE_API_KEY"
"""The environment variable holding the service's own key (the one clients send), not the LLM's."""

DEFAULT_MODEL = "default"
"""The name of the backend's preferred strategy."""


@dataclass(frozen=True)
class Preset:
    """One name a request's ``model`` can use: a strategy on an LLM, with its reranker settings.

    ``backend``, ``model`` and ``base_url`` left None use the server's LLM (its flags and
    environment). ``strategy`` None is the backend's preferred one. ``fusion``: ``"auto"`` (the
    backend's preferred fusion for its preferred strategy), None, ``"rrf"``, ``"zscore"``,
    ``"minmax"``; fused with the request's document order (or each document's ``score``).
    ``on_error``: ``degrade`` (a degraded 200 that says so), ``degrade_all`` or ``raise`` (502/503);
    None: the server's. ``cache``: ``"memory"``, a folder for a :class:`~llmrerank.cache.DiskCache`,
    a ``redis://`` URL or ``"none"``; None: the server's. ``max_documents`` overrides the server's
    per-request limit for this name.
    ``allow_instruction`` lets a request send its own ``instruction`` (the domain sentence added to
    the prompt); off by default, so no request can change a prompt.
    """

    strategy: str | None = None
    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    fusion: str | None = "auto"
    domain: str | None = None
    on_error: str | None = None
    deadline: float | None = None
    cache: str | None = None
    max_documents: int | None = None
    window: int | None = None
    step: int | None = None
    allow_instruction: bool = False

    @property
    def own_llm(self) -> bool:
        """True when the preset names its own LLM instead of the server's."""
        return any(v is not None for v in (self.backend, self.model, self.base_url))


@dataclass(frozen=True)
class ServeConfig:
    """The settings of one server (see the module docstring for the TOML form).

    ``api_keys``: the bearer tokens accepted (empty: no auth, for loopback use). ``max_documents``
    and ``max_bytes`` bound a request (413); ``max_in_flight`` bounds the reranks running at once
    in this worker (past it: 429 with ``retry-after``). ``backend``/``model``/``base_url``: the LLM
    of the strategy names, as ``llmrerank eval``'s flags. ``max_concurrency``: LLM calls in flight
    per reranker. ``prices``: a price file for the cost metric. ``log_text``: put query and document
    text in the logs (off: they never are). ``cors_origins``: allowed origins (none: CORS off).
    """

    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    presets: Mapping[str, Preset] = field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    max_documents: int = 1000
    max_bytes: int = 5 * 2**20
    max_in_flight: int = 64
    retry_after: float = 1.0
    max_concurrency: int | None = None
    on_error: str = "degrade"
    cache: str | None = None
    prices: str | None = None
    cors_origins: tuple[str, ...] = ()
    log_text: bool = False

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_bytes", "max_in_flight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")


def _read_toml(path: str | Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        from ..errors import require

        tomllib: Any = require("tomli", "serve")
    try:
        with open(path, "rb") as handle:
            return dict(tomllib.load(handle))
    except OSError as exc:
        raise ConfigurationError(f"cannot read config {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"config {path} is not valid TOML: {exc}") from exc


def _known(table: Mapping[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
    return dict(table)


def load_config(path: str | Path | None, base: ServeConfig | None = None) -> ServeConfig:
    """``base`` (default settings) updated from the TOML file at ``path``: its ``[server]`` table and
    its ``[presets.NAME]`` tables. Unknown keys raise :class:`~llmrerank.errors.ConfigurationError`."""
    config = base or ServeConfig()
    if path is None:
        return config
    data = _known(_read_toml(path), {"server", "presets"}, str(path))
    server_keys = {f.name for f in fields(ServeConfig)} - {"presets", "api_keys"}
    server = _known(data.get("server", {}), server_keys, f"{path} [server]")
    if "cors_origins" in server:
        server["cors_origins"] = tuple(server["cors_origins"])
    preset_keys = {f.name for f in fields(Preset)}
    presets = dict(config.presets)
    for name, table in data.get("presets", {}).items():
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{path}: presets.{name} must be a table")
        presets[str(name)] = Preset(**_known(table, preset_keys, f"{path} [presets.{name}]"))
    return replace(config, presets=presets, **server)


def read_api_keys(
    value: str | None = None, file: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The service keys from ``--api-key``, ``--api-key-file`` (one key a line) and
    ``$LLMRERANK_SERVE_API_KEY`` (comma-separated), in that order; empty means no auth."""
    environ = os.environ if env is None else env
    keys: list[str] = []
    if value:
        keys.append(value)
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read --api-key-file {file}: {exc}") from exc
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not keys:
            raise ConfigurationError(f"--api-key-file {file} holds no key")
    if environ.get(API_KEY_ENV):
        keys += [k.strip() for k in environ[API_KEY_ENV].split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))
