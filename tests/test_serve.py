"""``llmrerank serve``: the app on a real uvicorn on loopback, called by the real clients (the cohere
SDK v1 and v2, LangChain CohereRerank, plain HTTP for Jina and TEI), reranking with an LLM on loopback."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("cohere")
pytest.importorskip("openai")

import cohere
import httpx

from llmrerank.backends.openai import OpenAIBackend
from llmrerank.errors import BackendError, ModelNotFoundError, RateLimitError
from llmrerank.serve import Preset, ServeConfig, create_app, load_config, serve_in_thread
from llmrerank.serve.wire import to_unit
from llmrerank.testing import FakeBackend, overlap_judge
from testkit.server import FakeLLMServer, Reply, ServerRequest

KEY = "s3cret-key"
AUTH = {"authorization": f"Bearer {KEY}"}
QUERY = "which planet has rings"
DOCS = [
    "Mars is red. rating 2",
    "Saturn has bright rings. rating 9",
    "Venus is hot. rating 1",
    "Jupiter has faint rings. rating 6",
]
LLM_ORDER = [3, 2, 1, 0]
"""The reverse of the input order: what the loopback LLM answers to a listwise prompt."""
RATED_ORDER = [1, 3, 0, 2]
"""The order of the ratings written in DOCS: what the loopback LLM's pointwise answers give."""


def llm(request: ServerRequest) -> Reply:
    """A loopback LLM with an order of its own: listwise prompts get their documents reversed, a
    single document its written 'rating N'."""
    labels = re.findall(r'<document id="([^"]*)">', request.user)
    if len(labels) == 1:
        return Reply(text=re.search(r"rating (\d+)", request.user).group(1))  # type: ignore[union-attr]
    return Reply(text=" > ".join(reversed(labels)))


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(llm) as srv:
        yield srv


@pytest.fixture(scope="module")
def url(upstream: FakeLLMServer) -> Iterator[str]:
    backend = OpenAIBackend("fake-model", base_url=upstream.base_url, api_key="test")
    app = create_app(ServeConfig(api_keys=(KEY,), max_documents=50, max_bytes=20_000), backend=backend)
    with serve_in_thread(app) as base:
        yield base


def test_cohere_v2_client_gets_the_llms_order(url: str) -> None:
    co = cohere.ClientV2(KEY, base_url=url)
    answer = co.rerank(model="listwise", query=QUERY, documents=DOCS)
    assert [r.index for r in answer.results] == LLM_ORDER
    scores = [r.relevance_score for r in answer.results]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    meta = answer.meta.llmrerank  # type: ignore[union-attr]
    assert meta["score_source"] == "rank" and meta["score_kind"] == "rank" and meta["status"] == "reranked"
    assert answer.meta.tokens.input_tokens > 0 and answer.meta.tokens.output_tokens > 0  # type: ignore[union-attr]
    assert answer.meta.billed_units.input_tokens == answer.meta.tokens.input_tokens  # type: ignore[union-attr]


def test_cohere_v2_top_n_and_model_scores(url: str) -> None:
    answer = cohere.ClientV2(KEY, base_url=url).rerank(model="pointwise", query=QUERY, documents=DOCS, top_n=2)
    assert [r.index for r in answer.results] == RATED_ORDER[:2]
    assert [r.relevance_score for r in answer.results] == [0.9, 0.6]  # the 0-10 ratings over 10
    assert answer.meta.llmrerank["score_source"] == "model"  # type: ignore[union-attr]


def test_cohere_v1_client_with_text_objects_and_documents(url: str) -> None:
    co = cohere.Client(api_key=KEY, base_url=url)
    answer = co.rerank(
        model="listwise", query=QUERY, documents=[{"text": d} for d in DOCS], return_documents=True, top_n=3
    )
    assert [r.index for r in answer.results] == LLM_ORDER[:3]
    assert [r.document.text for r in answer.results] == [DOCS[i] for i in LLM_ORDER[:3]]  # type: ignore[union-attr]
    plain = co.rerank(model="listwise", query=QUERY, documents=DOCS)
    assert all(r.document is None for r in plain.results)


def test_wrong_or_missing_key_is_the_sdks_unauthorized_error(url: str) -> None:
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2("wrong", base_url=url).rerank(model="listwise", query=QUERY, documents=DOCS)
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.Client(api_key="wrong", base_url=url).rerank(model="listwise", query=QUERY, documents=DOCS)
    answer = httpx.post(f"{url}/v2/rerank", json={"model": "listwise", "query": QUERY, "documents": DOCS})
    assert answer.status_code == 401 and "API key" in answer.json()["message"]
    tei = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCS})
    assert tei.status_code == 401 and set(tei.json()) == {"error", "error_type"}


def test_unknown_model_is_404_in_each_shape(url: str) -> None:
    with pytest.raises(cohere.errors.NotFoundError) as caught:
        cohere.ClientV2(KEY, base_url=url).rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    assert "listwise" in caught.value.body["message"]  # names what is served
    # query likelihood needs prompt log-probs this backend cannot give: not served, said why
    refused = httpx.post(
        f"{url}/v1/rerank", json={"model": "query_likelihood", "query": QUERY, "documents": DOCS}, headers=AUTH
    )
    assert refused.status_code == 404 and "log P(query" in refused.json()["detail"]


def test_bad_input_is_400_with_the_librarys_message(url: str) -> None:
    with pytest.raises(cohere.errors.BadRequestError) as caught:
        cohere.ClientV2(KEY, base_url=url).rerank(model="listwise", query="   ", documents=DOCS)
    assert caught.value.body == {"message": "query is empty"}
    for body in (
        {"query": QUERY},
        {"query": QUERY, "documents": [1, 2]},
        {"query": QUERY, "documents": DOCS, "top_n": 0},
    ):
        answer = httpx.post(f"{url}/v1/rerank", json=body, headers=AUTH)
        assert answer.status_code == 400, body
    garbled = httpx.post(f"{url}/v2/rerank", content=b"{not json", headers=AUTH)
    assert garbled.status_code == 400 and "JSON" in garbled.json()["message"]


def test_limits_are_413(url: str) -> None:
    many = httpx.post(
        f"{url}/v2/rerank", json={"model": "listwise", "query": QUERY, "documents": ["d"] * 51}, headers=AUTH
    )
    assert many.status_code == 413 and "limit of 50" in many.json()["message"]
    big = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": ["x" * 30_000]}, headers=AUTH)
    assert big.status_code == 413 and big.json()["error_type"] == "Validation"


def test_tei_plain_http(url: str) -> None:
    body = {"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": False, "truncate": True}
    answer = httpx.post(f"{url}/rerank", json=body, headers=AUTH)
    assert answer.status_code == 200
    rows = answer.json()
    assert [r["index"] for r in rows] == LLM_ORDER  # default: listwise, the backend's preferred strategy
    assert [r["text"] for r in rows] == [DOCS[i] for i in LLM_ORDER]
    assert answer.headers["x-llmrerank-score-source"] == "rank"
    assert answer.headers["x-llmrerank-status"] == "reranked"


def test_jina_plain_http(url: str) -> None:
    body = {"model": "pointwise", "query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": True}
    answer = httpx.post(f"{url}/v1/rerank", json=body, headers=AUTH).json()
    assert [r["index"] for r in answer["results"]] == RATED_ORDER[:2]
    assert answer["results"][0]["document"] == {"text": DOCS[1]}
    assert answer["model"] == "pointwise" and answer["usage"]["total_tokens"] > 0


def test_langchain_cohere_rerank_on_the_sdk_client(url: str) -> None:
    pytest.importorskip("langchain_cohere")
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(client=cohere.ClientV2(KEY, base_url=url), model="listwise", top_n=3)
    out = reranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    assert [d.page_content for d in out] == [DOCS[i] for i in LLM_ORDER[:3]]
    assert out[0].metadata["relevance_score"] == 1.0


def test_health_ready_models(url: str) -> None:
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/ready").json()["status"] == "ready"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    names = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"]]
    assert {"default", "listwise", "pointwise", "pairwise", "setwise", "batch_score"} <= set(names)
    assert "query_likelihood" not in names


def test_scores_map_to_unit_interval() -> None:
    assert to_unit("relevance", 7) == 0.7 and to_unit("logprob", 10.0) == 1.0
    assert to_unit("win_rate", 0.25) == 0.25 and to_unit("first_token", 0.6) == 0.6
    assert to_unit("likelihood", 0.0) == 0.5 and to_unit("likelihood", 3.0) > 0.95  # sigmoid of the PMI
    assert to_unit("likelihood", -1.0, "mean") == pytest.approx(0.3679, abs=1e-4)


def serve(backend: Any, **config: Any) -> Any:
    return serve_in_thread(create_app(ServeConfig(**config), backend=backend))


def test_degraded_rerank_says_so_in_meta_and_headers() -> None:
    backend = FakeBackend([BackendError("upstream 500", status_code=500)], respond=overlap_judge)
    with serve(backend) as base:
        answer = httpx.post(f"{base}/v2/rerank", json={"model": "listwise", "query": QUERY, "documents": DOCS})
        assert answer.status_code == 200
        meta = answer.json()["meta"]
        assert meta["llmrerank"]["status"] == "fallback" and meta["llmrerank"]["degraded_reasons"] == ["call_failed"]
        assert meta["llmrerank"]["fallback"] == [0, 1, 2, 3] and meta["warnings"]
        assert answer.headers["x-llmrerank-degraded"] == "call_failed"
        assert answer.headers["x-llmrerank-score-source"] == "rank"
        metrics = httpx.get(f"{base}/metrics").text
        assert 'llmrerank_degraded_reranks_total{reason="call_failed"} 1.0' in metrics


def test_upstream_failures_are_502_and_503_when_the_preset_raises() -> None:
    script = [
        ModelNotFoundError("no such model", status_code=404),
        BackendError("upstream 500", status_code=500),
        RateLimitError("slow down", retry_after=7.0),  # last: it pauses this reranker's later calls
    ]
    presets = {"strict": Preset(strategy="pointwise", on_error="raise")}
    with serve(FakeBackend(script), presets=presets) as base:
        post = lambda: httpx.post(f"{base}/v2/rerank", json={"model": "strict", "query": QUERY, "documents": DOCS[:1]})  # noqa: E731
        assert post().status_code == 502
        assert post().status_code == 503
        limited = post()
        assert limited.status_code == 503 and limited.headers["retry-after"] == "7"


def test_a_preset_without_its_own_on_error_or_cache_follows_the_server() -> None:
    """[server] on_error = "raise" must hold for a [presets.X] table that does not say otherwise,
    or a preset answers degraded 200s where the server promised 502/503."""
    from llmrerank.serve.app import Service

    presets = {
        "plain": Preset(strategy="pointwise"),
        "own": Preset(strategy="pointwise", on_error="degrade", cache="none"),
    }
    service = Service(
        ServeConfig(presets=presets, on_error="raise", cache="memory"), FakeBackend(respond=overlap_judge)
    )
    plain, own = service.reranker("plain"), service.reranker("own")
    assert plain.on_error == "raise" and plain.cache is not None
    assert own.on_error == "degrade" and own.cache is None


def test_admission_limit_is_429_with_retry_after() -> None:
    backend = FakeBackend(respond=overlap_judge, delay=1.0)
    with serve(backend, max_in_flight=1, retry_after=3) as base:
        body = {"model": "pointwise", "query": QUERY, "documents": DOCS[:1]}
        first: list[int] = []
        worker = threading.Thread(target=lambda: first.append(httpx.post(f"{base}/v2/rerank", json=body).status_code))
        worker.start()
        deadline = time.monotonic() + 5
        while backend.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = httpx.post(f"{base}/v2/rerank", json=body)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "3"
        with pytest.raises(cohere.errors.TooManyRequestsError):
            cohere.ClientV2("k", base_url=base).rerank(
                model="pointwise", query=QUERY, documents=DOCS[:1], request_options={"max_retries": 0}
            )
        worker.join()
        assert first == [200]


def test_client_disconnect_cancels_the_llm_calls() -> None:
    backend = FakeBackend(respond=overlap_judge, delay=30.0)
    with serve(backend) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v2/rerank", json={"model": "pointwise", "query": QUERY, "documents": DOCS}, timeout=0.5)
        deadline = time.monotonic() + 5
        while backend.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert backend.max_in_flight == len(DOCS) and backend.in_flight == 0  # cancelled, not left running 30 s
        assert "llmrerank_cancelled_reranks_total 1.0" in httpx.get(f"{base}/metrics").text


def test_presets_from_toml_domain_instruction_and_cache(tmp_path: Path, upstream: FakeLLMServer) -> None:
    config_file = tmp_path / "serve.toml"
    config_file.write_text(
        """
[server]
max_documents = 3

[presets.legal]
strategy = "pointwise"
domain = "legal"
cache = "memory"

[presets.open]
strategy = "pointwise"
allow_instruction = true
max_documents = 10
""",
        encoding="utf-8",
    )
    config = load_config(config_file, ServeConfig())
    backend = OpenAIBackend("fake-model", base_url=upstream.base_url, api_key="test")
    with serve_in_thread(create_app(config, backend=backend)) as base:
        upstream.clear()
        body = {"model": "legal", "query": QUERY, "documents": DOCS[:3]}
        assert httpx.post(f"{base}/v2/rerank", json=body).json()["results"][0]["index"] == 1
        assert all("legal" in r.system.lower() or "legal" in r.user.lower() for r in upstream.requests)
        again = httpx.post(f"{base}/v2/rerank", json=body).json()["meta"]["llmrerank"]
        assert again["cached_calls"] == 3 and again["calls"] == 0
        assert "llmrerank_cache_hits_total 3.0" in httpx.get(f"{base}/metrics").text
        assert httpx.post(f"{base}/v2/rerank", json={**body, "documents": DOCS}).status_code == 413
        refused = httpx.post(f"{base}/v2/rerank", json={**body, "instruction": "Prefer gas giants."})
        assert refused.status_code == 400 and "instruction" in refused.json()["message"]
        upstream.clear()
        allowed = httpx.post(
            f"{base}/v2/rerank", json={**body, "model": "open", "documents": DOCS, "instruction": "Prefer gas giants."}
        )
        assert allowed.status_code == 200
        assert all("Prefer gas giants." in r.system + r.user for r in upstream.requests)


def test_unknown_config_key_is_a_configuration_error(tmp_path: Path) -> None:
    from llmrerank.errors import ConfigurationError

    bad = tmp_path / "bad.toml"
    bad.write_text("[presets.x]\nstrategy = 'pointwise'\ntemplate = '{query}'\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="template"):
        load_config(bad)


def test_no_key_or_document_text_in_logs(caplog: pytest.LogCaptureFixture, url: str) -> None:
    secret_doc = "UNIQUEDOCTEXT rating 3"
    with caplog.at_level(logging.INFO):  # the serve default (at DEBUG the OpenAI SDK logs its request bodies)
        httpx.post(
            f"{url}/v2/rerank",
            json={"model": "listwise", "query": "UNIQUEQUERY", "documents": [secret_doc, "other rating 1"]},
            headers=AUTH,
        )
        httpx.post(
            f"{url}/v2/rerank",
            json={"model": "listwise", "query": "q", "documents": ["a"]},
            headers={"authorization": "Bearer WRONGKEY"},
        )
    access = [r for r in caplog.records if r.name == "llmrerank.serve.access"]
    assert [json.loads(r.getMessage())["status"] for r in access] == [200, 401]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("UNIQUEDOCTEXT", "UNIQUEQUERY", KEY, "WRONGKEY"):
        assert secret not in text


def test_cors_is_off_unless_configured() -> None:
    preflight = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
    with serve(FakeBackend(respond=overlap_judge)) as base:
        assert "access-control-allow-origin" not in httpx.options(f"{base}/v2/rerank", headers=preflight).headers
    with serve(FakeBackend(respond=overlap_judge), cors_origins=("https://app.example.com",)) as base:
        answer = httpx.options(f"{base}/v2/rerank", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"


def test_max_tokens_per_doc_cuts_what_the_llm_reads(upstream: FakeLLMServer) -> None:
    backend = OpenAIBackend("fake-model", base_url=upstream.base_url, api_key="test")
    with serve(backend) as base:
        upstream.clear()
        long_doc = "Saturn rating 8 " + "TAILWORD " * 200
        answer = httpx.post(
            f"{base}/v2/rerank",
            json={"model": "pointwise", "query": QUERY, "documents": [long_doc, DOCS[0]], "max_tokens_per_doc": 10},
        ).json()
        assert answer["meta"]["llmrerank"]["documents_cut"] == 1
        assert [r["index"] for r in answer["results"]] == [0, 1]
        assert upstream.requests and not any("TAILWORD " * 4 in r.user for r in upstream.requests)  # 40 characters


def test_service_keys_from_flag_file_and_environment(tmp_path: Path) -> None:
    from llmrerank.errors import ConfigurationError
    from llmrerank.serve import API_KEY_ENV, read_api_keys
    from llmrerank.serve.app import check_key

    keys_file = tmp_path / "keys"
    keys_file.write_text("# service keys\nfile-key\n\n", encoding="utf-8")
    keys = read_api_keys("flag-key", str(keys_file), {API_KEY_ENV: "env-a, env-b"})
    assert keys == ("flag-key", "file-key", "env-a", "env-b")
    assert all(check_key(k, keys) for k in keys)
    assert not check_key("flag-ke", keys) and not check_key(None, keys) and not check_key("", keys)
    assert check_key(None, ())  # no keys configured: no auth
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="no key"):
        read_api_keys(None, str(empty), {})


def readme_block(*lines: str) -> str:
    """The one ```python block of README.md that holds all of ``lines``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    (found,) = [b for b in blocks if all(line in b for line in lines)]
    return found


def test_readme_service_snippets_run(upstream: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain_cohere")
    from langchain_core.documents import Document

    backend = OpenAIBackend("fake-model", base_url=upstream.base_url, api_key="test")
    with serve_in_thread(create_app(ServeConfig(api_keys=("secret",)), backend=backend)) as base:
        sdk = readme_block("cohere.ClientV2(", "answer.meta.llmrerank").replace("http://127.0.0.1:8080", base)
        exec(compile(sdk, "README.md", "exec"), {})
        assert capsys.readouterr().out.strip() == "[(1, 1.0), (0, 0.5)] reranked"  # the LLM's order: reversed
        chain = readme_block("from langchain_cohere import CohereRerank").replace("http://127.0.0.1:8080", base)
        names: dict[str, Any] = {"documents": [Document(page_content=d) for d in DOCS]}
        exec(compile(chain, "README.md", "exec"), names)
        assert [d.page_content for d in names["best"]] == [DOCS[i] for i in RATED_ORDER[:3]]
    app_block = readme_block("from llmrerank.serve import Preset, ServeConfig, create_app")
    names = {}
    exec(compile(app_block, "README.md", "exec"), names)
    assert "fast" in names["app"].state.service.presets


def test_litellm_rerank_with_api_base(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM's rerank() (provider cohere, api_base: the service) gets the LLM's order back."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch of its price list
    litellm = pytest.importorskip("litellm")
    for model in ("cohere/listwise", "jina_ai/listwise"):
        answer = litellm.rerank(model=model, query=QUERY, documents=DOCS, api_base=url, api_key=KEY)
        assert [r["index"] for r in answer.results] == LLM_ORDER, model
    with pytest.raises(litellm.AuthenticationError):
        litellm.rerank(model="cohere/listwise", query=QUERY, documents=DOCS, api_base=url, api_key="wrong")
