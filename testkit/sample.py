"""The small rerank case many tests share: a query about barking dogs, documents that overlap it more or less."""

from __future__ import annotations

from collections.abc import Sequence

from llmrerank.testing import overlap

QUERY = "why do dogs bark at night"

DOCS = [
    "The cat sat on the mat.",
    "Dogs bark at strangers.",
    "A bird sings in the morning.",
    "Why do dogs bark at night? Dogs bark at night because they hear noises.",
    "Night trains run late.",
]
"""Five documents; the fourth answers :data:`QUERY`, two more share some of its words."""

SHORT_DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]
"""Three one-line documents, the second the best for :data:`QUERY`."""


def best_first(query: str, docs: Sequence[str]) -> list[int]:
    """Indices of ``docs`` in the word-overlap judge's order: most overlap with ``query`` first, ties by position."""
    return sorted(range(len(docs)), key=lambda i: (-overlap(query, docs[i]), i))


BEST_FIRST = best_first(QUERY, DOCS)
""":data:`DOCS` in the word-overlap judge's order."""
