"""Input normalisation: the caller's documents, query and ``top_k`` checked and turned into
:class:`~llmrerank.types.Document` views, with a typed :class:`~llmrerank.errors.InvalidInputError`
for anything that cannot be read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidInputError
from .types import Document


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


def is_number(value: object) -> bool:
    """True for an int or a float (a bool is neither here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_text(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if is_number(value):
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
