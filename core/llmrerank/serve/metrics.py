"""Prometheus metrics of one server process (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from typing import Any

from ..errors import require
from ..types import RerankResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Requests by endpoint and status, request latency, reranks by name and status, LLM calls,
    tokens and estimated cost by model, degraded reranks by reason, cache hits, cancelled reranks
    and the reranks in flight."""

    def __init__(self) -> None:
        prometheus: Any = require("prometheus_client", "serve", "prometheus-client")
        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        counter, reg = prometheus.Counter, {"registry": self.registry}
        self.requests = counter(
            "llmrerank_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], **reg
        )
        self.latency = prometheus.Histogram(
            "llmrerank_http_request_duration_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.reranks = counter("llmrerank_reranks", "reranks by model name and status", ["name", "status"], **reg)
        self.llm_calls = counter(
            "llmrerank_llm_calls", "LLM calls by model and outcome (ok, failed)", ["model", "outcome"], **reg
        )
        self.tokens = counter("llmrerank_llm_tokens", "LLM tokens by model and kind", ["model", "kind"], **reg)
        self.cost = counter("llmrerank_llm_estimated_cost_usd", "estimated LLM cost in USD", ["model"], **reg)
        self.degraded = counter("llmrerank_degraded_reranks", "degraded reranks by reason", ["reason"], **reg)
        self.cache_hits = counter("llmrerank_cache_hits", "LLM calls answered from the response cache", **reg)
        self.cancelled = counter("llmrerank_cancelled_reranks", "reranks cancelled by a client disconnect", **reg)
        self.in_flight = prometheus.Gauge("llmrerank_reranks_in_flight", "reranks running now", **reg)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one HTTP request."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_rerank(self, name: str, result: RerankResult[Any], model: str, cost: float | None) -> None:
        """Count what one rerank spent and whether it degraded."""
        usage = result.usage
        self.reranks.labels(name, result.status).inc()
        ok = usage.calls - usage.failed_calls
        if ok:
            self.llm_calls.labels(model, "ok").inc(ok)
        if usage.failed_calls:
            self.llm_calls.labels(model, "failed").inc(usage.failed_calls)
        if usage.prompt_tokens:
            self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.tokens.labels(model, "completion").inc(usage.completion_tokens)
        if cost:
            self.cost.labels(model).inc(cost)
        if usage.cached_calls:
            self.cache_hits.inc(usage.cached_calls)
        for reason in result.degraded_reasons:
            self.degraded.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._prometheus.generate_latest(self.registry), self._prometheus.CONTENT_TYPE_LATEST
