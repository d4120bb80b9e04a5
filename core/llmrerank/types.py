"""Input normalisation and the frozen result types."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from .errors import InvalidInputError

ScoreKind = Literal["relevance", "logprob", "win_rate", "rank", "cross_encoder", "input_order"]
"""What :attr:`RankedDocument.score` means.

- ``relevance``: the LLM's 0-10 rating, parsed from text.
- ``logprob``: expected 0-10 rating (or 10 x P(yes)) from token log-probabilities.
- ``win_rate``: pairwise preference share in [0, 1].
- ``rank``: listwise strategies give no score; ``(n - rank + 1) / n``, derived from the position.
- ``cross_encoder``: the cross-encoder's raw score (hybrid, when the LLM stage failed).
- ``input_order``: nothing could be ranked; derived from the input position.
"""


@dataclass(frozen=True)
class Document:
    """A caller's document as the strategies see it: its input position and its text."""

    index: int
    text: str
    id: str | None = None


def _text_of(doc: Any, index: int) -> tuple[str, str | None]:
    if doc is None:
        raise InvalidInputError(f"documents[{index}] is None")
    if isinstance(doc, str):
        return doc, None
    if isinstance(doc, Mapping):
        for key in ("content", "text", "page_content"):
            if key in doc:
                value = doc[key]
                break
        else:
            raise InvalidInputError(
                f"documents[{index}] is a mapping without 'content' or 'text' (keys: {sorted(map(str, doc))})"
            )
        doc_id = doc.get("id")
        return _as_text(value, index), None if doc_id is None else str(doc_id)
    for attr in ("page_content", "text", "content"):
        value = getattr(doc, attr, None)
        if value is not None:
            doc_id = getattr(doc, "id", None) or getattr(doc, "id_", None)
            return _as_text(value, index), None if doc_id is None else str(doc_id)
    raise InvalidInputError(
        f"documents[{index}] has unsupported type {type(doc).__name__}: "
        "pass a str, a dict with 'content' or 'text', or an object with 'page_content' or 'text'"
    )


def _as_text(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise InvalidInputError(f"documents[{index}] content is {type(value).__name__}, expected str")


def document_list(documents: Any) -> Sequence[Any]:
    """The caller's documents as a sequence (a list is returned as is; other iterables are listed).

    None, a ``str``/``bytes`` (one document, not a list of them), a mapping (a single dict document
    passed by mistake) and non-iterables raise :class:`InvalidInputError`.
    """
    if documents is None:
        raise InvalidInputError("documents is None: pass a list of documents (an empty list gives an empty result)")
    rows = _table_rows(documents)
    if rows is not None:
        return rows
    if isinstance(documents, str | bytes | bytearray | Mapping) or not isinstance(documents, Iterable):
        raise InvalidInputError(f"documents must be a list, got {type(documents).__name__}")
    ndim = getattr(documents, "ndim", 1)
    if ndim != 1:  # a numpy array of rows would iterate its rows as arrays
        raise InvalidInputError(f"documents must be one-dimensional, got {ndim} dimensions")
    return documents if isinstance(documents, Sequence) else list(documents)


TEXT_COLUMNS = ("content", "text", "page_content")


def _table_rows(documents: Any) -> list[dict[str, Any]] | None:
    """The rows of a data frame (pandas, polars) as dicts, or None for anything else.

    Iterating a data frame yields its column names, not its rows: it is read row by row instead,
    and one without a ``content``, ``text`` or ``page_content`` column raises.
    """
    columns = getattr(documents, "columns", None)
    if columns is None or not type(documents).__name__.endswith("DataFrame"):
        return None
    names = [str(c) for c in columns]
    if not any(name in names for name in TEXT_COLUMNS):
        raise InvalidInputError(
            f"documents is a {type(documents).__name__} without a text column: name one of {TEXT_COLUMNS} "
            f"(columns: {names[:10]})"
        )
    if callable(getattr(documents, "to_dicts", None)):  # polars
        return list(documents.to_dicts())
    return list(documents.to_dict("records"))


def normalize_documents(documents: Sequence[Any]) -> list[Document]:
    """Turn the caller's documents into :class:`Document` views, raising :class:`InvalidInputError`.

    Each item may be a ``str``, a mapping with ``content``, ``text`` or ``page_content`` (a string,
    or a number, which is written out), or an object with ``page_content``, ``text`` or ``content``.
    None, a mapping without those keys, a bare number and other types raise. Empty or blank text is
    allowed (the prompt shows ``(empty document)``); duplicates are kept as separate documents.
    """
    documents = document_list(documents)
    out = []
    for i, doc in enumerate(documents):
        text, doc_id = _text_of(doc, i)
        out.append(Document(index=i, text=text, id=doc_id))
    return out


def check_query(query: Any) -> str:
    """Return the query, or raise :class:`InvalidInputError` when it is not a non-blank string."""
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query is empty")
    return query


def check_top_k(top_k: Any) -> int | None:
    """Return ``top_k`` (None means all), or raise :class:`InvalidInputError` when it is not >= 1."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise InvalidInputError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_k <= 0:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
    return top_k


@dataclass(frozen=True)
class Diagnostic:
    """One thing worth knowing about how a result was produced.

    ``code`` is stable and machine-readable (e.g. ``score_parsed``, ``score_unparsed``,
    ``permutation_repaired``, ``missing_appended``, ``call_failed``, ``fallback_input_order``,
    ``truncated``, ``deadline_exceeded``); ``index`` names the document it is about, if any.
    """

    code: str
    message: str = ""
    index: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a rerank spent: LLM calls, tokens and time."""

    calls: int = 0
    """LLM calls that reached the backend (cache hits excluded); calls cut off by the deadline count
    here once, and once in :attr:`failed_calls`, so ``failed_calls <= calls``."""
    cached_calls: int = 0
    """Calls answered from the response cache."""
    failed_calls: int = 0
    """Calls that ended in an error after the SDK's retries, or were cut off by the deadline."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    """Sum of the latencies of the LLM calls (overlapping calls count in full)."""
    wall_seconds: float = 0.0
    """Wall-clock time of the whole rerank."""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            cached_calls=self.cached_calls + other.cached_calls,
            failed_calls=self.failed_calls + other.failed_calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            llm_seconds=self.llm_seconds + other.llm_seconds,
            wall_seconds=self.wall_seconds + other.wall_seconds,
        )


@dataclass(frozen=True)
class RankedDocument:
    """One document in a rerank result."""

    index: int
    """Position of the document in the input list."""
    document: Any
    """The caller's own object, unchanged."""
    score: float | None
    """Higher is better; what it means is :attr:`RerankResult.score_kind`. None: no score could be had."""
    rank: int
    """1-based position in the result."""
    reason: str | None = None
    """The LLM's one-line reason, when the strategy asked for one."""
    diagnostics: tuple[Diagnostic, ...] = ()
    """Diagnostics about this document (``score_parsed``, ``missing_appended``, ...)."""


@dataclass(frozen=True)
class RerankResult(Sequence[RankedDocument]):
    """The reranked documents, best first, with what it cost and what went wrong.

    Iterating yields :class:`RankedDocument` items; ``len(result)`` is the number returned
    (``top_k`` or all).
    """

    items: tuple[RankedDocument, ...]
    query: str
    strategy: str
    score_kind: ScoreKind
    usage: Usage = field(default_factory=Usage)
    diagnostics: tuple[Diagnostic, ...] = ()
    degraded: bool = False
    """True when an LLM call failed or the deadline passed and a fallback order was used."""

    @overload
    def __getitem__(self, i: int) -> RankedDocument: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[RankedDocument]: ...
    def __getitem__(self, i: int | slice) -> RankedDocument | Sequence[RankedDocument]:
        return self.items[i]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RankedDocument]:
        return iter(self.items)

    @property
    def documents(self) -> list[Any]:
        """The caller's documents in the new order."""
        return [item.document for item in self.items]

    @property
    def indices(self) -> list[int]:
        """Input positions in the new order."""
        return [item.index for item in self.items]
