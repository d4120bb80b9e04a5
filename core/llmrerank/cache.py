"""Optional response caches: a repeated prompt to the same backend and model makes no LLM call.

Keys are a SHA-256 of the backend name, model, :meth:`Backend.cache_identity` (server address and
generation settings), the full prompt (system, user, token budget and choices) and
``Backend.cache_salt``; values are the completion (text, token counts, log-probs), stored as plain
JSON. Failed calls are never cached. Entries that cannot be read back (corrupted, or written by
something else under the same key) count as misses, and a cache that fails to open, read or write
never fails a rerank (see :func:`lookup`, :func:`store` and :class:`DiskCache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .backends.base import Backend, Completion, Prompt
from .types import is_number

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
        backend.cache_identity(),
        prompt.system,
        prompt.user,
        prompt.max_tokens,
        list(prompt.choices or ()),
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


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
        isinstance(logprobs, Mapping) and all(isinstance(k, str) and is_number(v) for k, v in logprobs.items())
    ):
        raise ValueError("bad choice_logprobs in a cached completion")
    model, unresolved = data.get("model"), data.get("unresolved") or ()
    return Completion(
        text=data["text"],
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        choice_logprobs=None if logprobs is None else {k: float(v) for k, v in logprobs.items()},
        cached=True,
        model=model if isinstance(model, str) else None,
        unresolved=tuple(c for c in unresolved if isinstance(c, str)) if isinstance(unresolved, list | tuple) else (),
    )


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
    """An in-process LRU cache of at most ``maxsize`` responses and ``max_bytes`` of JSON; thread-safe.

    An entry's size is the length of its JSON text; one larger than ``max_bytes`` is not kept.
    Copies and unpickled caches hold the same entries.
    """

    def __init__(self, maxsize: int = 10_000, *, max_bytes: int = 64 * 2**20) -> None:
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None; marks it recently used."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry[0]

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store a value, evicting the least recently used beyond ``maxsize`` entries or ``max_bytes``."""
        size = len(json.dumps(value))
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.maxsize or self._bytes > self.max_bytes:
                _, (_, freed) = self._data.popitem(last=False)
                self._bytes -= freed

    @property
    def nbytes(self) -> int:
        """The JSON size of the entries held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {**self.__dict__, "_data": OrderedDict(self._data), "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class DiskCache:
    """A persistent cache in ``directory``: one SQLite file of JSON text (process- and thread-safe).

    Values are stored and read back as plain JSON, never pickled, so whoever can write the folder
    can at worst plant wrong answers (which :func:`decode` still checks), not run code. ``expire``
    is a time-to-live in seconds (None keeps entries); beyond ``size_limit`` bytes of values the
    oldest entries are evicted.

    A folder that cannot be opened (corrupted database, unwritable or missing path) does not fail:
    one warning is logged and the cache stays empty (every lookup a miss). A failed write is logged
    once too, and later writes are skipped.
    """

    FILENAME = "llmrerank-cache.sqlite3"

    def __init__(self, directory: str | Path, *, expire: float | None = None, size_limit: int = 2**30) -> None:
        self.directory = Path(directory).expanduser()
        self.expire = expire
        self.size_limit = size_limit
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._writable = True
        self._open()

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.directory / self.FILENAME, timeout=30, check_same_thread=False)
            try:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                    "size INTEGER NOT NULL, stored REAL NOT NULL, expires REAL)"
                )
                # Writes total the sizes and evict the oldest: indexes keep that off the values themselves.
                db.execute("CREATE INDEX IF NOT EXISTS responses_by_age ON responses (stored, size)")
                db.execute(
                    "CREATE INDEX IF NOT EXISTS responses_expiring ON responses (expires) WHERE expires IS NOT NULL"
                )
                db.execute("SELECT key, value, size, stored, expires FROM responses LIMIT 1").fetchall()
                db.commit()
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            logger.warning(
                "llmrerank: cannot use the cache folder %s (%s: %s); running without a cache",
                self.directory,
                type(exc).__name__,
                exc,
            )
            return
        self._db = db

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None. Raises ``ValueError`` for an entry that is not a JSON object."""
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT value, expires FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] < time.time()):
            return None
        value = json.loads(row[0]) if isinstance(row[0], str) else None
        if not isinstance(value, dict):
            raise ValueError("a cache entry that is not a JSON object")
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store a value (skipped once a write has failed)."""
        if self._db is None or not self._writable:
            return
        text = json.dumps(value)
        now = time.time()
        expires = None if self.expire is None else now + self.expire
        try:
            with self._lock, self._db:
                self._db.execute(
                    "REPLACE INTO responses (key, value, size, stored, expires) VALUES (?, ?, ?, ?, ?)",
                    (key, text, len(text), now, expires),  # ASCII JSON: characters are bytes
                )
                self._db.execute("DELETE FROM responses WHERE expires IS NOT NULL AND expires < ?", (now,))
                (total,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()
                if total > self.size_limit:
                    self._evict(total)
        except sqlite3.Error as exc:
            self._writable = False
            logger.warning("llmrerank: cannot write to the cache %s (%s); not writing to it again", self.directory, exc)

    def _evict(self, total: int) -> None:
        assert self._db is not None
        doomed = []
        for key, size in self._db.execute(
            "SELECT key, size FROM responses ORDER BY stored"
        ):  # read only as far as needed
            if total <= self.size_limit:
                break
            doomed.append((key,))
            total -= size
        self._db.executemany("DELETE FROM responses WHERE key = ?", doomed)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> DiskCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        if self._db is None:
            return 0
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(count)

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "expire": self.expire, "size_limit": self.size_limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], expire=state["expire"], size_limit=state["size_limit"])  # type: ignore[misc]
