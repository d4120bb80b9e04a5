"""Optional response caches: a repeated prompt to the same backend and model makes no LLM call.

Keys are a SHA-256 of the backend name, model, the full prompt (system, user, token budget and
choices) and ``Backend.cache_salt``; values are the completion (text, token counts, log-probs).
Failed calls are never cached. Entries that cannot be read back (corrupted, or written by something
else under the same key) count as misses, and a cache that fails to read or write never fails a
rerank (see :func:`lookup` and :func:`store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .backends.base import Backend, Completion, Prompt
from .errors import require

logger = logging.getLogger("llmrerank")


@runtime_checkable
class ResponseCache(Protocol):
    """Anything with ``get(key)`` and ``set(key, value)`` over JSON-able dicts."""

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None."""

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store a value."""


def cache_key(backend: Backend, prompt: Prompt) -> str:
    """The cache key of ``prompt`` sent to ``backend``."""
    payload = [
        backend.name,
        backend.model,
        getattr(backend, "cache_salt", ""),
        prompt.system,
        prompt.user,
        prompt.max_tokens,
        list(prompt.choices or ()),
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def encode(completion: Completion) -> dict[str, Any]:
    """A completion as a JSON-able dict."""
    data = asdict(completion)
    data["choice_logprobs"] = dict(completion.choice_logprobs) if completion.choice_logprobs else None
    data.pop("cached", None)
    return data


def decode(data: Any) -> Completion:
    """The completion stored by :func:`encode`, marked ``cached``.

    Raises ``ValueError`` when ``data`` is not such a value (a foreign or corrupted entry).
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("text"), str):
        raise ValueError("not a cached completion")
    tokens = [data.get(name, 0) for name in ("prompt_tokens", "completion_tokens")]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        raise ValueError("bad token counts in a cached completion")
    logprobs = data.get("choice_logprobs")
    if logprobs is not None and not (
        isinstance(logprobs, Mapping) and all(isinstance(k, str) and _is_number(v) for k, v in logprobs.items())
    ):
        raise ValueError("bad choice_logprobs in a cached completion")
    return Completion(
        text=data["text"],
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        choice_logprobs=None if logprobs is None else {k: float(v) for k, v in logprobs.items()},
        cached=True,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def lookup(cache: ResponseCache, backend: Backend, prompt: Prompt) -> Completion | None:
    """The cached completion of ``prompt``, or None on a miss.

    A cache that raises (a corrupted or unreadable entry, a locked database) and a value that is
    not a stored completion (a foreign entry) count as misses, logged as a warning: a broken
    cache costs an LLM call, never the rerank.
    """
    try:
        value = cache.get(cache_key(backend, prompt))
        return None if value is None else decode(value)
    except Exception as exc:
        logger.warning("llmrerank: ignoring an unusable cache entry (%s: %s)", type(exc).__name__, exc)
        return None


def store(cache: ResponseCache, backend: Backend, prompt: Prompt, completion: Completion) -> None:
    """Store a completion; a cache that fails to write (disk full, read-only) is logged and skipped."""
    try:
        cache.set(cache_key(backend, prompt), encode(completion))
    except Exception as exc:
        logger.warning("llmrerank: could not write to the response cache (%s: %s)", type(exc).__name__, exc)


class MemoryCache:
    """An in-process LRU cache of at most ``maxsize`` responses; thread-safe."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None; marks it recently used."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store a value, evicting the least recently used beyond ``maxsize``."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class DiskCache:
    """A persistent cache in ``directory``, backed by the ``diskcache`` library (SQLite; process-safe).

    ``expire`` is a time-to-live in seconds (None keeps entries until ``size_limit`` evicts them).
    Needs ``pip install "llmrerank[cache]"``.
    """

    def __init__(self, directory: str | Path, *, expire: float | None = None, size_limit: int = 2**30) -> None:
        diskcache: Any = require("diskcache", "cache")
        self.directory = Path(directory)
        self.expire = expire
        self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None."""
        value = self._cache.get(key)
        return value if isinstance(value, dict) else None

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store a value."""
        self._cache.set(key, value, expire=self.expire)

    def close(self) -> None:
        """Close the underlying database."""
        self._cache.close()

    def __len__(self) -> int:
        return len(self._cache)
