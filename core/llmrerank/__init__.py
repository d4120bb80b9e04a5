"""llmrerank: rerank retrieved documents with large language models.

>>> from llmrerank import Reranker
>>> result = Reranker().rerank("query", ["doc one", "doc two"], top_k=1)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends.base import Backend
from .cache import DiskCache, MemoryCache, RedisCache, ResponseCache
from .diversity import MMR, Dedup
from .errors import (
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidInputError,
    LLMRerankError,
    MissingDependencyError,
    ParseError,
    RateLimitError,
)
from .fusion import Fusion
from .prompts import DOMAINS
from .protocol import Completion, Prompt
from .reranker import Reranker
from .routing import backend_for, default_backend
from .strategies import (
    BatchScore,
    Hybrid,
    Listwise,
    Pairwise,
    Pointwise,
    QueryLikelihood,
    Setwise,
    Strategy,
    TopDown,
    make_strategy,
)
from .types import Diagnostic, RankedDocument, RerankResult, Usage

if TYPE_CHECKING:
    from .backends.anthropic import AnthropicBackend
    from .backends.cross_encoder import BiEncoderScorer, CrossEncoderScorer
    from .backends.local import LocalBackend
    from .backends.openai import OpenAIBackend
    from .evaluation import EvalReport, evaluate, evaluate_reranking, load_beir

_LAZY = {
    "OpenAIBackend": ".backends.openai",
    "AnthropicBackend": ".backends.anthropic",
    "LocalBackend": ".backends.local",
    "CrossEncoderScorer": ".backends.cross_encoder",
    "BiEncoderScorer": ".backends.cross_encoder",
    "evaluate": ".evaluation",
    "evaluate_reranking": ".evaluation",
    "load_beir": ".evaluation",
    "EvalReport": ".evaluation",
}


def __getattr__(name: str) -> Any:
    # Backends and evaluation load on first use so `import llmrerank` stays free of optional SDKs.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'llmrerank' has no attribute {name!r}")


__version__ = "0.2.0.dev0"

__all__ = [
    "DOMAINS",
    "MMR",
    "AnthropicBackend",
    "Backend",
    "BackendError",
    "BackendTimeoutError",
    "BatchScore",
    "BiEncoderScorer",
    "Completion",
    "ConfigurationError",
    "CrossEncoderScorer",
    "DeadlineExceededError",
    "Dedup",
    "Diagnostic",
    "DiskCache",
    "EvalReport",
    "Fusion",
    "Hybrid",
    "InvalidInputError",
    "LLMRerankError",
    "Listwise",
    "LocalBackend",
    "MemoryCache",
    "MissingDependencyError",
    "OpenAIBackend",
    "Pairwise",
    "ParseError",
    "Pointwise",
    "Prompt",
    "QueryLikelihood",
    "RankedDocument",
    "RateLimitError",
    "RedisCache",
    "RerankResult",
    "Reranker",
    "ResponseCache",
    "Setwise",
    "Strategy",
    "TopDown",
    "Usage",
    "backend_for",
    "default_backend",
    "evaluate",
    "evaluate_reranking",
    "load_beir",
    "make_strategy",
]
