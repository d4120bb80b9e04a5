"""Typed errors. Every error llmrerank raises derives from :class:`LLMRerankError`."""

from __future__ import annotations

import re


class LLMRerankError(Exception):
    """Base class of every error raised by llmrerank."""


class ConfigurationError(LLMRerankError, ValueError):
    """The reranker, a strategy or a backend was configured with invalid options."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the install line (or lines, one
    per line of :attr:`install`). ``message`` replaces the whole text (it should name them too)."""

    def __init__(self, package: str, extra: str, install: str | None = None, *, message: str | None = None) -> None:
        self.package = package
        self.extra = extra
        self.install = install or f'pip install "llmrerank[{extra}]"'
        lines = self.install.splitlines()
        how = lines[0] if len(lines) == 1 else "".join(f"\n    {line}" for line in lines)
        verb = "are" if ", " in package else "is"
        super().__init__(message or f"{package} {verb} not installed; run: {how}")


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
    """The LLM backend failed (transport error, HTTP error, SDK error) after its retries.

    A plain ``BackendError`` is *transient*: the same request may succeed later (a 5xx, a reset
    connection, a timeout, a response that was not a completion). :class:`PermanentBackendError`
    and its subclasses are not: the request will fail again unchanged.
    """

    permanent: bool = False
    """True for errors that retrying cannot fix (bad key, unknown model, bad request)."""
    earlier: BackendError | None = None
    """The failure this call was a retry of, when it was one (a context-length error before a
    shorter prompt was resent): the first cause, named in the message too."""

    def __init__(self, message: str, *, status_code: int | None = None, backend: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.backend = backend

    def __str__(self) -> str:
        text = super().__str__()
        if self.earlier is None:
            return text
        status = f" (HTTP {self.earlier.status_code})" if self.earlier.status_code else ""
        return f"{text} [after {type(self.earlier).__name__}{status}: {self.earlier}]"


class RateLimitError(BackendError):
    """The backend answered 429 (or 529 overloaded) after its retries ran out."""

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


class InvalidResponseError(BackendError):
    """The server answered 200 with something that is not a completion (an HTML page, an event stream,
    a JSON array, no choices). Never cached; transient, since a proxy or a maintenance page may be
    in the way."""


class PermanentBackendError(BackendError):
    """The backend rejected the request in a way retrying cannot fix.

    Raised even with ``on_error="degrade"`` (a broken deployment must not serve unreranked results
    forever); ``on_error="degrade_all"`` degrades on these too.
    """

    permanent = True


class AuthenticationError(PermanentBackendError):
    """401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(PermanentBackendError):
    """403 (or 402): the key may not use this model or endpoint, or the account cannot pay for it."""


class ModelNotFoundError(PermanentBackendError):
    """404: the model name is unknown to the server (or ``base_url`` points at the wrong path)."""


class BadRequestError(PermanentBackendError):
    """400 / 413 / 422: the server refused the request as sent (an unsupported parameter, say)."""


class ContextLengthError(BadRequestError):
    """The prompt does not fit the model's context window.

    Every prompt holding documents is sent once more with each document cut to half before the
    error counts (the driver does it, for every strategy).
    """


class ServerUnreachableError(PermanentBackendError):
    """No connection could be made to a server that has not answered any call yet (connection
    refused, no such host, connect timeout): most often a wrong ``base_url`` or a server that is
    not running. ``url`` is the address tried. Once a server has answered, a failure to connect is
    a transient :class:`BackendError` (it may be restarting)."""

    def __init__(self, message: str, *, backend: str | None = None, url: str | None = None) -> None:
        super().__init__(message, backend=backend)
        self.url = url


_CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(length|size|window)|maximum context|prompt is too long|too many (input )?tokens"
    r"|longer than the maximum model length|exceeds? the (available )?context",
    re.IGNORECASE,
)


def is_context_length_message(message: str) -> bool:
    """Whether an error message says the prompt did not fit the model's context.

    Covers OpenAI (``context_length_exceeded``), vLLM ("maximum context length", "longer than the
    maximum model length"), llama.cpp ("exceeds the available context size", "Context size has been
    exceeded") and Anthropic ("prompt is too long").
    """
    return bool(_CONTEXT_LENGTH.search(message or ""))


def error_from_status(
    status: int | None,
    message: str,
    *,
    backend: str | None = None,
    retry_after: float | None = None,
) -> BackendError:
    """The typed error for an HTTP error ``status`` with the server's ``message``.

    401 :class:`AuthenticationError`; 402 and 403 :class:`PermissionDeniedError`; 404
    :class:`ModelNotFoundError`; 400, 413 and 422 :class:`BadRequestError`, or
    :class:`ContextLengthError` when the message says the prompt was too long; 429 and 529
    :class:`RateLimitError`; anything else (5xx, 408, 409, unknown) a transient :class:`BackendError`.
    """
    if status in (429, 529):
        return RateLimitError(message, status_code=status, backend=backend, retry_after=retry_after)
    if status in (400, 413, 422) and is_context_length_message(message):
        return ContextLengthError(message, status_code=status, backend=backend)
    permanent: dict[int | None, type[PermanentBackendError]] = {
        400: BadRequestError,
        401: AuthenticationError,
        402: PermissionDeniedError,
        403: PermissionDeniedError,
        404: ModelNotFoundError,
        413: BadRequestError,
        422: BadRequestError,
    }
    kind = permanent.get(status)
    if kind is not None:
        return kind(message, status_code=status, backend=backend)
    return BackendError(message, status_code=status, backend=backend)


class DeadlineExceededError(LLMRerankError, TimeoutError):
    """A whole rerank took longer than its ``deadline``."""


class ParseError(LLMRerankError, ValueError):
    """LLM output could not be parsed and ``strict=True`` was asked for."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(f"{message}: {output[:200]!r}")
        self.output = output
