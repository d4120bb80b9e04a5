"""LlamaIndex adapter for llmrerank: :class:`LLMRerankPostprocessor`, a node postprocessor.

>>> from llamaindex_llmrerank import LLMRerankPostprocessor                       # doctest: +SKIP
>>> engine = index.as_query_engine(
...     similarity_top_k=20, node_postprocessors=[LLMRerankPostprocessor(top_n=5)]
... )                                                                              # doctest: +SKIP

Install with ``pip install "llmrerank[llamaindex]"``. This package imports ``llama_index.core`` and
``llmrerank`` only.
"""

from __future__ import annotations

from llmrerank.errors import require

require("llama_index.core", "llamaindex", "llama-index-core")  # first: a missing framework names its install line

from .llm_backend import LlamaIndexLLMBackend  # noqa: E402
from .postprocessor import LLMRerankEndEvent, LLMRerankPostprocessor  # noqa: E402

__all__ = ["LLMRerankEndEvent", "LLMRerankPostprocessor", "LlamaIndexLLMBackend"]
