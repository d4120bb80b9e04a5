"""What the LangChain and LlamaIndex adapter tests share: the query, the documents, the options
both adapters must refuse at construction."""

from __future__ import annotations

import copy
import pickle
from typing import Any

from llmrerank import Pointwise
from llmrerank.testing import FakeBackend, overlap_judge

QUERY = "how do solar panels convert sunlight into electricity"
TEXTS = [
    "The history of the printing press in Europe.",
    "Solar panels convert sunlight into electricity with photovoltaic cells.",
    "Wind turbines turn moving air into electricity.",
    "Judges sit on panels to hear appeals.",
    "How solar panels work: sunlight frees electrons, producing electricity.",
]
"""Documents 1 and 4 answer QUERY; 3 shares its words without answering it."""

BAD_OPTIONS: list[dict[str, Any]] = [
    {"strategy": "bogus"},
    {"top_n": 0},
    {"max_concurrency": 0},
    {"deadline": 0},
    {"deadline": -1},
    {"on_error": "ignore"},
    {"domain": "legall"},
    {"model": "x", "backend": FakeBackend()},
    {"strategy": Pointwise(), "system_prompt": "x"},
    {"template": "{query}"},
    {"cache": object()},
    {"cache": 3},
    {"unknown_option": 1},
]
"""Options each adapter refuses with a ``ValueError`` when it is made."""


def assert_builds_its_reranker_lazily(adapter: type[Any]) -> Any:
    """``adapter`` builds its reranker once; copies, deep copies and pickles get their own settings
    (and a reranker of their own); changing a field rebuilds it. Returns one built with ``top_n=2``."""
    made = adapter(backend=FakeBackend(respond=overlap_judge), strategy="pointwise")
    first = made.reranker
    assert made.reranker is first  # built once
    assert copy.copy(made).reranker is not first
    assert copy.deepcopy(adapter(top_n=2)).top_n == 2
    assert pickle.loads(pickle.dumps(adapter(top_n=2))).top_n == 2
    made.strategy = "listwise"
    assert made.reranker is not first and made.reranker.strategy.name == "listwise"
    return adapter(top_n=2)
