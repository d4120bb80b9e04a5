"""Typed errors. Every error llmrerank raises derives from :class:`LLMRerankError`."""

from __future__ import annotations


class LLMRerankError(Exception):
    """Base class of every error raised by llmrerank."""


class ConfigurationError(LLMRerankError, ValueError):
    """The reranker, a strategy or a backend was configured with invalid options."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the install line."""

    def __init__(self, package: str, extra: str, install: str | None = None) -> None:
        self.package = package
        self.extra = extra
        self.install = install or f'pip install "llmrerank[{extra}]"'
        super().__init__(f"{package} is not installed; run: {self.install}")


def require(module: str, extra: str, package: str | None = None) -> object:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module, extra) from exc


class InvalidInputError(LLMRerankError, ValueError):
    """The query, the documents or ``top_k`` given to a rerank call are invalid."""


class BackendError(LLMRerankError):
    """The LLM backend failed (transport error, HTTP error, SDK error) after the SDK's own retries."""

    def __init__(self, message: str, *, status_code: int | None = None, backend: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.backend = backend


class RateLimitError(BackendError):
    """The backend answered 429 (or 529 overloaded) after the SDK's retries ran out."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 429,
        backend: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, backend=backend)
        self.retry_after = retry_after


class BackendTimeoutError(BackendError, TimeoutError):
    """One LLM call took longer than the backend's ``timeout``."""


class DeadlineExceededError(LLMRerankError, TimeoutError):
    """A whole rerank took longer than its ``deadline``."""


class ParseError(LLMRerankError, ValueError):
    """LLM output could not be parsed and ``strict=True`` was asked for."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(f"{message}: {output[:200]!r}")
        self.output = output
