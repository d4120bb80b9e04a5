"""Optional response caches: a repeated prompt to the same backend and model makes no LLM call.

Keys are a SHA-256 of the backend name, model, :meth:`Backend.cache_identity` (server address and
generation settings), the full prompt (system, user, token budget and choices) and
``Backend.cache_salt``; values are the completion (text, token counts, log-probs), stored as plain
JSON. A likelihood request is keyed as the prompt :func:`likelihood_prompt` makes of it, and its
answer stored as :meth:`~llmrerank.protocol.LogLikelihood.as_completion`. Failed calls are never
cached. Entries that cannot be read back (corrupted, or written by something else under the same
key) count as misses, and a cache that fails to open, read or write never fails a rerank (see
:func:`lookup`, :func:`store`, :class:`DiskCache` and :class:`RedisCache`).
:func:`open_cache` turns a setting (``memory``, a folder, a ``redis://`` URL) into a cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from .backends.base import Backend
from .errors import ConfigurationError, require
from .inputs import is_number
from .protocol import Completion, Prompt

T = TypeVar("T")

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


LIKELIHOOD_SYSTEM = "\x00continuation-logprob"
"""Marks the :class:`Prompt` that stands for a likelihood request in the response cache's keys."""


def likelihood_prompt(context: str, continuation: str) -> Prompt:
    """The cache-key form of a likelihood request (never sent to a model as a prompt)."""
    return Prompt(LIKELIHOOD_SYSTEM, context, max_tokens=0, choices=(continuation,))


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

    A rerank reads entries on the event loop (microseconds) and writes them on a thread
    (:meth:`aset`: each write is a committed transaction).

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

    async def aset(self, key: str, value: dict[str, Any]) -> None:
        """:meth:`set` on a thread: a write commits to disk (milliseconds of fsync) off the event loop."""
        await asyncio.to_thread(self.set, key, value)

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


def _redacted(url: str) -> str:
    """``url`` without its password (``redis://user:secret@host`` -> ``redis://user:***@host``)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


class RedisCache:
    """A cache on a Redis server at ``url`` (``redis://host:6379/0``, ``rediss://``, ``unix://``),
    shared by every process and machine that uses the same server: the workers of ``llmrerank serve``.

    Values are plain JSON strings under ``prefix`` + the key :func:`cache_key` builds, never pickled,
    and checked when read (:func:`decode`). ``expire`` is a time-to-live in seconds (None keeps
    entries). The size bound is the server's: set ``maxmemory`` and ``maxmemory-policy allkeys-lru``
    (or ``volatile-ttl`` with ``expire``) in redis.conf; a write the server refuses (out of memory
    under ``noeviction``) is skipped like an unreachable server.

    Calls from a rerank run on a few threads of this cache (one ``MGET`` per step of a plan, one
    ``SET`` per answer), so a slow server never blocks the event loop; ``timeout`` (seconds) bounds
    each command. A server that cannot be reached (or that refuses, or whose answer times out) does
    not fail a rerank: one warning is logged, every lookup is a miss and writes are skipped; after
    ``retry_after`` seconds the next call tries again, and once the server answers the cache is used
    again (logged at INFO). A new outage after that warns again: one warning per outage.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        expire: float | None = None,
        prefix: str = "llmrerank:",
        timeout: float = 1.0,
        retry_after: float = 30.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(REDIS_SCHEMES):
            raise ConfigurationError(f"RedisCache needs a redis://, rediss:// or unix:// URL, got {url!r}")
        if expire is not None and not (is_number(expire) and expire > 0):
            raise ConfigurationError(f"expire must be a number of seconds > 0 (or None), got {expire!r}")
        redis: Any = require("redis", "redis")
        self.url = url
        self.expire = expire
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._lock = threading.Lock()
        self._down_until: float | None = None  # set while an outage lasts: monotonic time of the next try
        self._threads: ThreadPoolExecutor | None = None
        self._try(lambda: self._client.ping(), None)  # warn now, not at the first rerank

    def __repr__(self) -> str:
        return f"RedisCache({_redacted(self.url)!r})"

    def _try(self, command: Callable[[], T], default: T) -> T:
        """``command()``, or ``default`` while the server is down (one warning per outage)."""
        with self._lock:
            if self._down_until is not None and time.monotonic() < self._down_until:
                return default
        try:
            result = command()
        except self._errors as exc:
            with self._lock:
                first = self._down_until is None
                self._down_until = time.monotonic() + self.retry_after
            if first:
                logger.warning(
                    "llmrerank: cannot use the Redis cache %s (%s: %s); running without a cache, "
                    "trying again every %gs",
                    _redacted(self.url),
                    type(exc).__name__,
                    exc,
                    self.retry_after,
                )
            return default
        with self._lock:
            was_down, self._down_until = self._down_until is not None, None
        if was_down:
            logger.info("llmrerank: the Redis cache %s answers again", _redacted(self.url))
        return result

    @property
    def available(self) -> bool:
        """False while an outage lasts (lookups are misses, writes skipped)."""
        return self._down_until is None

    def get_many(self, keys: Sequence[str]) -> list[dict[str, Any] | ValueError | None]:
        """The stored values (one ``MGET``), None for a miss, a ``ValueError`` for an entry that is
        not a JSON object (corrupted or foreign)."""
        if not keys:
            return []  # MGET needs a key: the server would answer an error
        raw = self._try(lambda: self._client.mget([self.prefix + key for key in keys]), None)
        if raw is None:
            return [None] * len(keys)
        return [None if value is None else _json_object(value) for value in raw]

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None. Raises ``ValueError`` for an entry that is not a JSON object."""
        (value,) = self.get_many([key])
        if isinstance(value, ValueError):
            raise value
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store a value (with the ``expire`` time-to-live); skipped while the server is down."""
        text = json.dumps(value)
        ttl = None if self.expire is None else max(1, round(self.expire * 1000))
        self._try(lambda: self._client.set(self.prefix + key, text, px=ttl), None)

    async def aget_many(self, keys: Sequence[str]) -> list[dict[str, Any] | ValueError | None]:
        """:meth:`get_many` on this cache's threads, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(), self.get_many, keys)

    async def aset(self, key: str, value: dict[str, Any]) -> None:
        """:meth:`set` on this cache's threads, off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._pool(), self.set, key, value)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="llmrerank-redis")
            return self._threads

    def clear(self) -> int:
        """Delete this cache's entries (the keys under ``prefix``); return how many."""
        keys: list[bytes] = self._try(lambda: list(self._client.scan_iter(match=self.prefix + "*", count=1000)), [])
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            self._try(lambda: self._client.unlink(*batch), 0)  # noqa: B023 (called at once)
        return len(keys)

    def __len__(self) -> int:
        """The entries under ``prefix`` (a full ``SCAN``: for inspection, not for hot paths)."""
        return sum(1 for _ in self._try(lambda: list(self._client.scan_iter(match=self.prefix + "*")), []))

    def close(self) -> None:
        """Close the connections and threads; a later call opens them again."""
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False)
        self._client.close()

    def __enter__(self) -> RedisCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("url", "expire", "prefix", "timeout", "retry_after")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        url = state.pop("url")
        self.__init__(url, **state)  # type: ignore[misc]


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""The URL schemes :class:`RedisCache` (and :func:`open_cache`) accept."""


def _json_object(raw: bytes | str) -> dict[str, Any] | ValueError:
    try:
        value = json.loads(raw)
    except ValueError as exc:  # not UTF-8, not JSON
        return ValueError(f"a cache entry that is not JSON ({exc})")
    return value if isinstance(value, dict) else ValueError("a cache entry that is not a JSON object")


async def alookup_many(cache: ResponseCache, backend: Backend, prompts: Sequence[Prompt]) -> list[Completion | None]:
    """The cached completions of ``prompts`` (None for each miss), as :func:`lookup` reads them.

    A cache with ``aget_many`` (:class:`RedisCache`) is read in one round trip off the event loop;
    any other one key by key.
    """
    read = getattr(cache, "aget_many", None)
    if not prompts:
        return []
    if read is None:
        return [lookup(cache, backend, prompt) for prompt in prompts]
    try:
        values = await read([cache_key(backend, prompt) for prompt in prompts])
    except Exception as exc:
        logger.warning("llmrerank: could not read the response cache (%s: %s)", type(exc).__name__, exc)
        return [None] * len(prompts)
    hits: list[Completion | None] = []
    for value in values:
        try:
            if isinstance(value, BaseException):
                raise value
            hits.append(None if value is None else decode(value))
        except Exception as exc:
            logger.warning("llmrerank: ignoring an unusable cache entry (%s: %s)", type(exc).__name__, exc)
            hits.append(None)
    return hits


async def astore(cache: ResponseCache, backend: Backend, prompt: Prompt, completion: Completion) -> None:
    """:func:`store`, off the event loop for a cache with ``aset`` (:class:`RedisCache`)."""
    write = getattr(cache, "aset", None)
    if write is None:
        store(cache, backend, prompt, completion)
        return
    try:
        await write(cache_key(backend, prompt), encode(completion))
    except Exception as exc:
        logger.warning("llmrerank: could not write to the response cache (%s: %s)", type(exc).__name__, exc)


def open_cache(spec: str | None, *, expire: float | None = None) -> ResponseCache | None:
    """The cache a setting names: ``"memory"`` (:class:`MemoryCache`), a ``redis://``,
    ``rediss://`` or ``unix://`` URL (:class:`RedisCache`), any other text a folder
    (:class:`DiskCache`, ``~`` expanded); None, ``""`` or ``"none"``: no cache. ``expire`` (seconds)
    applies to the disk and Redis caches."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ConfigurationError(f"a cache setting must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("", "none"):
        return None
    if text.lower() == "memory":
        return MemoryCache()
    if text.startswith(REDIS_SCHEMES):
        return RedisCache(text, expire=expire)
    return DiskCache(text, expire=expire)
