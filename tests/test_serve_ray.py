"""The rerank service as a Ray Serve deployment, once, on a local Ray: two replicas behind Ray's
own HTTP proxy answer the cohere SDK with the LLM's order, and share one Redis cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("starlette")
pytest.importorskip("cohere")
pytest.importorskip("openai")

import cohere
import httpx

from llmrerank.serve import ServeConfig
from llmrerank.serve.ray_serve import deployment
from llmrerank.serve.runner import bound_socket
from testkit.serve_process import PLANETS, reverse_listwise
from testkit.server import FakeLLMServer

DOCS = PLANETS


@pytest.fixture
def upstream() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(reverse_listwise) as srv:
        yield srv


def test_a_ray_serve_deployment_answers_cohere_clients(upstream: FakeLLMServer, redis_server: Any) -> None:
    import ray
    from ray import serve

    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    config = ServeConfig(
        backend="openai", model="gpt-4o-mini", base_url=upstream.base_url, api_keys=("secret",), cache=redis_server.url
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(config, num_replicas=2, max_ongoing_requests=16), route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        co = cohere.ClientV2("secret", base_url=url)
        for _ in range(6):  # spread over both replicas; the first pays the LLM, Redis serves the rest
            answer = co.rerank(model="listwise", query="which planet has rings", documents=DOCS)
            assert [r.index for r in answer.results] == [3, 2, 1, 0]
        assert sum(1 for r in upstream.requests if r.path.endswith("/chat/completions")) == 1
        with pytest.raises(cohere.errors.UnauthorizedError):
            cohere.ClientV2("wrong", base_url=url).rerank(model="listwise", query="q", documents=DOCS)
        replicas = serve.status().applications["default"].deployments["llmrerank"].replica_states
        assert replicas.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()
