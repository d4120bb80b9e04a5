"""Optional response caches: a repeated prompt to the same backend and model makes no LLM call.

Keys are a SHA-256 of the backend name, model, the full prompt (system, user, token budget and
choices) and ``Backend.cache_salt``; values are the completion (text, token counts, log-probs).
Failed calls are never cached.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .backends.base import Backend, Completion, Prompt
from .errors import require


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


def decode(data: dict[str, Any]) -> Completion:
    """The completion stored by :func:`encode`, marked ``cached``."""
    return Completion(
        text=data["text"],
        prompt_tokens=data.get("prompt_tokens", 0),
        completion_tokens=data.get("completion_tokens", 0),
        choice_logprobs=data.get("choice_logprobs"),
        cached=True,
    )


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
