"""LangChain adapter for llmrerank: :class:`LLMRerankCompressor`, a document compressor.

>>> from langchain_classic.retrievers import ContextualCompressionRetriever      # doctest: +SKIP
>>> from langchain_llmrerank import LLMRerankCompressor                           # doctest: +SKIP
>>> retriever = ContextualCompressionRetriever(
...     base_compressor=LLMRerankCompressor(top_n=5), base_retriever=base_retriever
... )                                                                              # doctest: +SKIP

Install with ``pip install "llmrerank[langchain]"``. This package imports ``langchain_core`` and
``llmrerank`` only.
"""

from __future__ import annotations

from llmrerank.errors import require

require("langchain_core", "langchain", "langchain-core")  # first: a missing framework names its install line

from .chat_backend import ChatModelBackend  # noqa: E402
from .compressor import LLMRerankCompressor  # noqa: E402

__all__ = ["ChatModelBackend", "LLMRerankCompressor"]
