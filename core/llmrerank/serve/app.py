"""The ASGI app: :func:`create_app`.

Starlette rather than FastAPI: the app has six routes whose JSON is checked by hand so that bad
input gets the library's own :class:`~llmrerank.errors.InvalidInputError` message in each API's
error shape; FastAPI would add pydantic validation (its own 422 shape, per-document model
building on 1,000-document requests) and OpenAPI generation that these fixed, third-party API
shapes do not need. Starlette is what FastAPI runs on, so the app mounts in either.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from ..backends.base import Backend
from ..cache import open_cache
from ..errors import (
    BackendError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidInputError,
    LLMRerankError,
    ParseError,
    PermanentBackendError,
    RateLimitError,
    require,
)
from ..pricing import estimate_cost
from ..prompts import domain_instruction
from ..reranker import Reranker
from ..routing import make_backend, make_strategy_object
from ..strategies import STRATEGIES
from ..types import RerankResult
from .config import DEFAULT_MODEL, Preset, ServeConfig
from .metrics import Metrics
from .wire import (
    Api,
    RerankRequest,
    cohere_body,
    error_body,
    headers,
    model_list,
    parse_request,
    relevance_scores,
    tei_body,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

access_log = logging.getLogger("llmrerank.serve.access")
logger = logging.getLogger("llmrerank.serve")

SETTINGS_ENV = "LLMRERANK_SERVE_SETTINGS"
"""Where ``llmrerank serve --workers N`` hands its settings to each worker process (JSON)."""
LOG_LEVEL_ENV = "LLMRERANK_SERVE_LOG_LEVEL"
"""And its log level."""


def configure_logging(level: str) -> None:
    """One JSON line per request on ``llmrerank.serve.access`` at ``info``; the HTTP clients' own
    debug logs (which hold request bodies: documents) only at ``debug``."""
    logging.basicConfig(level=level.upper(), format="%(message)s")
    if level.lower() != "debug":
        for name in ("openai", "anthropic", "httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


class HTTPProblem(Exception):
    """An answer other than 200: its status, message and headers (written in the API's error shape)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class Service:
    """The rerankers behind the names a request's ``model`` can use, built on first use."""

    def __init__(self, config: ServeConfig, backend: Backend | None = None) -> None:
        self.config = config
        self._backend = backend
        self._rerankers: dict[str, Reranker] = {}
        self._refused: dict[str, str] = {}
        self.presets: dict[str, Preset] = {name: Preset(strategy=name) for name in STRATEGIES}
        self.presets[DEFAULT_MODEL] = Preset()
        self.presets.update(config.presets)

    def backend(self) -> Backend:
        """The server's LLM, from the same flags and environment as ``llmrerank eval``."""
        if self._backend is None:
            self._backend = make_backend(self.config.backend, self.config.model, self.config.base_url)
        return self._backend

    def reranker(self, name: str) -> Reranker:
        """The reranker ``name`` names; :class:`HTTPProblem` 404 for an unknown or unusable name."""
        found = self._rerankers.get(name)
        if found is not None:
            return found
        preset = self.presets.get(name)
        if preset is None:
            raise HTTPProblem(404, f"model {name!r} not found; this server serves: {', '.join(self.presets)}")
        if name in self._refused:
            raise HTTPProblem(404, self._refused[name])
        try:
            reranker = self._build(preset)
        except ConfigurationError as exc:
            self._refused[name] = f"model {name!r} is not available on this server: {exc}"
            raise HTTPProblem(404, self._refused[name]) from exc
        self._rerankers[name] = reranker
        return reranker

    def _build(self, preset: Preset) -> Reranker:
        backend = make_backend(preset.backend, preset.model, preset.base_url) if preset.own_llm else self.backend()
        strategy = make_strategy_object(preset.strategy or backend.preferred_strategy, preset)
        options: dict[str, Any] = {}
        if self.config.max_concurrency is not None:
            options["max_concurrency"] = self.config.max_concurrency
        fusion = None if preset.fusion in (None, "", "none", "off") else preset.fusion
        return Reranker(
            strategy,
            backend,
            domain=preset.domain,
            on_error=preset.on_error or self.config.on_error,  # type: ignore[arg-type]
            deadline=preset.deadline,
            cache=open_cache(self.config.cache if preset.cache is None else preset.cache),
            fusion=fusion,
            **options,
        )

    def models(self) -> list[dict[str, Any]]:
        """The names a request can use, with what each runs (the unusable ones left out)."""
        out = []
        for name, preset in self.presets.items():
            try:
                reranker = self.reranker(name)
            except HTTPProblem:
                continue
            out.append(
                {
                    "name": name,
                    "strategy": reranker.strategy.name,
                    "backend": reranker.backend.name,
                    "llm": reranker.backend.model,
                    "fusion": reranker.fusion.method if reranker.fusion is not None else None,
                    "allow_instruction": preset.allow_instruction,
                }
            )
        return out

    async def aclose(self) -> None:
        """Close every backend's connections."""
        seen: set[int] = set()
        for reranker in self._rerankers.values():
            if id(reranker.backend) not in seen:
                seen.add(id(reranker.backend))
                await reranker.aclose()


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_key(token: str | None, keys: tuple[str, ...]) -> bool:
    """Whether ``token`` is one of ``keys``, in time that does not depend on where they differ."""
    if not keys:
        return True
    given = (token or "").encode()
    matched = False
    for key in keys:  # every key is compared: no early exit tells which one came close
        matched |= hmac.compare_digest(given, key.encode())
    return matched and token is not None


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request's JSON body, read up to ``max_bytes`` (413 past it; 400 when it is not JSON)."""
    length = request.headers.get("content-length")
    too_big = f"request body over the server's limit of {max_bytes} bytes"
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise HTTPProblem(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPProblem(413, too_big)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError as exc:
        raise HTTPProblem(400, f"the request body is not valid JSON: {exc}") from exc


async def until_disconnect(request: Request) -> None:
    """Return when the client goes away (the body is read already: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its LLM calls were cancelled."""


async def run_unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """``work``'s result; cancelled, with its LLM calls, as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.cancelled() or not task.done():
        raise ClientGone
    return task.result()


def problem_from(error: LLMRerankError) -> HTTPProblem:
    """The HTTP answer for a library error raised by a rerank."""
    if isinstance(error, InvalidInputError | ConfigurationError):
        return HTTPProblem(400, str(error))
    if isinstance(error, RateLimitError):
        wait = error.retry_after
        retry = {"retry-after": str(max(1, round(wait)))} if wait else {}
        return HTTPProblem(503, f"the upstream LLM is rate limited: {error}", retry)
    if isinstance(error, PermanentBackendError | ParseError):
        return HTTPProblem(502, f"the upstream LLM failed: {type(error).__name__}: {error}")
    if isinstance(error, BackendError | DeadlineExceededError):
        return HTTPProblem(503, f"the upstream LLM is unavailable: {type(error).__name__}: {error}")
    return HTTPProblem(500, f"{type(error).__name__}: {error}")


def answer_problem(api: Api | None, problem: HTTPProblem) -> JSONResponse:
    """``problem`` as a response in ``api``'s error shape (the generic shape for ``None``)."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(api, problem.status, problem.message), problem.status, problem.headers)


class _Endpoints:
    """The app's request handlers and what they share: the service, the metrics and the in-flight count."""

    def __init__(self, config: ServeConfig, service: Service) -> None:
        self.config = config
        self.service = service
        self.metrics = Metrics()
        self.in_flight = 0
        self.ready_for_traffic = True
        self.pid = os.getpid()  # which worker answered, in the access log

    # Authorization, logging and error answers

    def authorize(self, request: Request) -> None:
        """:class:`HTTPProblem` 401 unless the request carries one of the server's keys."""
        if not check_key(_bearer(request), self.config.api_keys):
            raise HTTPProblem(401, "invalid or missing API key: send Authorization: Bearer <key>")

    def log(self, request: Request, endpoint: str, status: int, started: float, **fields: Any) -> None:
        """Count the request in the metrics and write its access-log line."""
        seconds = time.perf_counter() - started
        self.metrics.observe_request(endpoint, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            client = request.client.host if request.client else None
            record = {"method": request.method, "path": endpoint, "status": status, "ms": round(seconds * 1000, 2)}
            record.update({"client": client, "pid": self.pid, **fields})
            access_log.info(json.dumps(record, default=str))

    def refuse(self, api: Api, request: Request, started: float, problem: HTTPProblem, **fields: Any) -> Response:
        """Log ``problem`` and answer it in ``api``'s error shape."""
        self.log(request, request.url.path, problem.status, started, error=problem.message[:200], **fields)
        return answer_problem(api, problem)

    # The rerank routes: one per API shape

    def rerank_route(self, api: Api) -> Callable[[Request], Awaitable[Response]]:
        """The handler of ``api``'s rerank route."""

        async def endpoint(request: Request) -> Response:
            return await self.rerank(api, request)

        return endpoint

    async def rerank(self, api: Api, request: Request) -> Response:
        """Check, run and answer one rerank request; every outcome is logged."""
        from starlette.requests import ClientDisconnect
        from starlette.responses import Response

        started = time.perf_counter()
        fields: dict[str, Any] = {}
        try:
            parsed, reranker = await self.accept(api, request, fields)
            result = await self.run(request, parsed, reranker)
        except HTTPProblem as problem:
            return self.refuse(api, request, started, problem, **fields)
        except LLMRerankError as error:
            return self.refuse(api, request, started, problem_from(error), **fields)
        except (ClientGone, ClientDisconnect):
            self.metrics.cancelled.inc()
            self.log(request, request.url.path, 499, started, error="client disconnected", **fields)
            return Response(status_code=499)
        return self.answer(api, request, started, parsed, reranker, result, fields)

    async def accept(self, api: Api, request: Request, fields: dict[str, Any]) -> tuple[RerankRequest, Reranker]:
        """The parsed request and the reranker to run it, after the key, size and instruction checks.

        Fills ``fields`` (for the access log) as soon as the request names its model.
        """
        self.authorize(request)
        parsed = parse_request(api, await read_json(request, self.config.max_bytes), DEFAULT_MODEL)
        fields.update(name=parsed.model, documents=len(parsed.texts))
        if self.config.log_text:
            fields["query"] = parsed.query
        reranker = self.service.reranker(parsed.model)
        preset = self.service.presets[parsed.model]
        limit = preset.max_documents or self.config.max_documents
        if len(parsed.texts) > limit:
            raise HTTPProblem(413, f"{len(parsed.texts)} documents is over this model's limit of {limit}")
        if parsed.instruction is not None:
            if not preset.allow_instruction:
                raise HTTPProblem(400, f"model {parsed.model!r} does not accept an instruction")
            domain_instruction(parsed.instruction)
            reranker = copy.copy(reranker)  # shares the backend and the call bound
            reranker.domain = parsed.instruction
        return parsed, reranker

    async def run(self, request: Request, parsed: RerankRequest, reranker: Reranker) -> RerankResult[Any]:
        """The rerank's result, within the server's bound on reranks in flight (429 past it)."""
        n = len(parsed.texts)
        first_stage = None
        if reranker.fusion is not None and n:
            # The request's order is the retriever's: best first. Without scores of its own, fusion uses it.
            first_stage = parsed.first_stage or [float(n - i) for i in range(n)]
        config = self.config
        if self.in_flight >= config.max_in_flight:
            wait = str(max(1, round(config.retry_after)))
            raise HTTPProblem(429, f"server busy: {config.max_in_flight} reranks in flight", {"retry-after": wait})
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            work = reranker.arerank(parsed.query, parsed.texts, parsed.top_n, first_stage_scores=first_stage)
            return await run_unless_disconnected(request, work)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def answer(
        self,
        api: Api,
        request: Request,
        started: float,
        parsed: RerankRequest,
        reranker: Reranker,
        result: RerankResult[Any],
        fields: dict[str, Any],
    ) -> Response:
        """The 200 answer in ``api``'s shape, with the rerank's cost counted and logged."""
        from starlette.responses import JSONResponse

        backend = reranker.backend
        model = result.model or backend.model
        cost = estimate_cost(
            model,
            result.usage,
            self.config.prices,
            backend=backend.name,
            server_url=getattr(backend, "server_url", None),
        )
        self.metrics.observe_rerank(parsed.model, result, model, cost)
        normalization = getattr(reranker.strategy, "normalization", "pmi")
        scored = relevance_scores(result, len(parsed.texts), normalization)
        body: Any
        if api == "tei":
            body = tei_body(parsed, result, scored)
        else:
            body = cohere_body(parsed, result, parsed.model, cost, scored)
        answer = JSONResponse(body, headers=headers(result, parsed.model, scored[1]))
        self.log(
            request,
            request.url.path,
            200,
            started,
            strategy=result.strategy,
            rerank=result.status,
            degraded=list(result.degraded_reasons),
            calls=result.usage.calls,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            **fields,
        )
        return answer

    # The other routes and the lifespan

    async def health(self, request: Request) -> Response:
        """Liveness: the process answers."""
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """Readiness: not shutting down, and the LLM backend builds."""
        from starlette.responses import JSONResponse

        if not self.ready_for_traffic:
            return JSONResponse({"status": "shutting down"}, 503)
        try:
            self.service.backend()
        except LLMRerankError as exc:
            return JSONResponse({"status": "not ready", "reason": str(exc)}, 503)
        return JSONResponse({"status": "ready", "in_flight": self.in_flight})

    async def models(self, request: Request) -> Response:
        """The names a request's ``model`` can use (behind the API key)."""
        from starlette.responses import JSONResponse

        started = time.perf_counter()
        try:
            self.authorize(request)
        except HTTPProblem as problem:
            self.log(request, "/v1/models", 401, started)
            return answer_problem(None, problem)
        self.log(request, "/v1/models", 200, started)
        return JSONResponse(model_list(self.service.models()))

    async def prometheus(self, request: Request) -> Response:
        """The metrics in Prometheus' text format."""
        from starlette.responses import Response

        body, content_type = self.metrics.render()
        return Response(body, headers={"content-type": content_type})

    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Build the backend at start-up; close its connections at shutdown."""
        # Build the LLM backend before the first request (it may ask a server which model it serves):
        # a bad --backend / --model stops the server at start-up instead of failing every request.
        await asyncio.to_thread(self.service.backend)
        self.ready_for_traffic = True
        yield
        self.ready_for_traffic = False
        await self.service.aclose()

    def routes(self) -> list[Route]:
        """The app's routes: rerank in each API shape, then health, readiness, models and metrics."""
        from starlette.routing import Route

        return [
            Route("/v2/rerank", self.rerank_route("cohere-v2"), methods=["POST"]),
            Route("/v1/rerank", self.rerank_route("cohere-v1"), methods=["POST"]),
            Route("/rerank", self.rerank_route("tei"), methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/ready", self.ready, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]


def _middleware(config: ServeConfig) -> list[Middleware]:
    """CORS for ``config.cors_origins``, when it names any."""
    if not config.cors_origins:
        return []
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    ]


def create_app(config: ServeConfig | None = None, *, backend: Backend | None = None) -> Starlette:
    """The ASGI app serving Cohere v1/v2, Jina and TEI rerank requests with ``config``'s presets.

    ``backend`` replaces the LLM that ``config.backend``/``model``/``base_url`` would build (a
    :class:`~llmrerank.testing.FakeBackend`, a backend you configured). Mount it in your own
    Starlette or FastAPI app, or run it with uvicorn (``llmrerank serve`` does).
    """
    require("starlette", "serve")
    from starlette.applications import Starlette

    config = config or ServeConfig()
    service = Service(config, backend)
    endpoints = _Endpoints(config, service)
    app = Starlette(
        routes=endpoints.routes(),
        middleware=_middleware(config),
        lifespan=asynccontextmanager(endpoints.lifespan),
    )
    app.state.service = service
    app.state.metrics = endpoints.metrics
    return app


def settings_json(config: ServeConfig) -> str:
    """``config`` as the JSON :func:`app_from_environment` reads back (for worker processes)."""
    return json.dumps(asdict(config))


def config_from_json(text: str) -> ServeConfig:
    """The :class:`ServeConfig` written by :func:`settings_json`."""
    data = json.loads(text)
    presets = {name: Preset(**values) for name, values in data.pop("presets", {}).items()}
    for key in ("api_keys", "cors_origins"):
        data[key] = tuple(data.get(key) or ())
    return replace(ServeConfig(**data), presets=presets)


def app_from_environment() -> Starlette:
    """The app of one ``llmrerank serve --workers N`` worker: its settings come from the environment."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise ConfigurationError(f"${SETTINGS_ENV} is not set: start workers with `llmrerank serve --workers N`")
    configure_logging(os.environ.get(LOG_LEVEL_ENV, "info"))
    return create_app(config_from_json(text))
