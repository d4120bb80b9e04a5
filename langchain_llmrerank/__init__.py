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

from .chat_backend import ChatModelBackend
from .compressor import LLMRerankCompressor

__all__ = ["ChatModelBackend", "LLMRerankCompressor"]
