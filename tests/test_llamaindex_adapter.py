"""LLMRerankPostprocessor in real LlamaIndex query engines over an in-memory VectorStoreIndex."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("openai")

from adapter_support import BAD_OPTIONS, QUERY, TEXTS, assert_builds_its_reranker_lazily
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llamaindex_llmrerank import LlamaIndexLLMBackend, LLMRerankPostprocessor
from llmrerank import Fusion, MemoryCache, Pointwise, Prompt
from llmrerank.testing import FakeBackend, overlap_judge, overlap_likelihood
from testkit.server import FakeLLMServer

BEST = ["doc1", "doc4", "doc2"]


class HashingEmbedding(BaseEmbedding):
    """A deterministic bag-of-words embedding: each word adds 1 to a hashed coordinate."""

    dim: int = 64

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        for word in re.findall(r"[a-z]+", text.lower()):
            vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return vector

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)


def make_index() -> VectorStoreIndex:
    nodes = [TextNode(text=t, id_=f"doc{i}") for i, t in enumerate(TEXTS)]
    return VectorStoreIndex(nodes, embed_model=HashingEmbedding())


def make_nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=t, id_=f"doc{i}"), score=0.5 - i / 10) for i, t in enumerate(TEXTS)]


@pytest.fixture
def server(openai_env_server: FakeLLMServer) -> FakeLLMServer:
    """The environment's OpenAI server (conftest), judging by word overlap."""
    return openai_env_server


class Collector(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Collector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def collector() -> Iterator[Collector]:
    handler = Collector()
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        yield handler
    finally:
        root.event_handlers.remove(handler)


def test_query_engine_with_no_argument_postprocessor(server: FakeLLMServer, collector: Collector) -> None:
    engine = make_index().as_query_engine(
        llm=MockLLM(), similarity_top_k=5, node_postprocessors=[LLMRerankPostprocessor()]
    )
    response = engine.query(QUERY)
    assert [n.node.node_id for n in response.source_nodes] == BEST  # top_n defaults to 3
    scores = [n.score for n in response.source_nodes]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    (request,) = [r for r in server.requests if r.method == "POST"]  # one listwise call; MockLLM answers
    assert request.model == "gpt-4o-mini" and QUERY in request.user

    starts = [e for e in collector.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in collector.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == len(ends) == 1
    assert starts[0].top_n == 3 and starts[0].model_name == "gpt-4o-mini" and len(starts[0].nodes) == 5
    assert isinstance(starts[0].query, QueryBundle) and starts[0].query.query_str == QUERY
    assert [n.node.node_id for n in ends[0].nodes] == BEST


def test_callback_manager_gets_a_reranking_event(server: FakeLLMServer) -> None:
    debug = LlamaDebugHandler()
    engine = RetrieverQueryEngine.from_args(
        make_index().as_retriever(similarity_top_k=5),
        llm=MockLLM(),
        node_postprocessors=[LLMRerankPostprocessor()],
        callback_manager=CallbackManager([debug]),
    )
    engine.query(QUERY)
    (pair,) = debug.get_event_pairs(CBEventType.RERANKING)
    assert pair[0].payload is not None and pair[0].payload[EventPayload.QUERY_STR] == QUERY
    assert pair[0].payload[EventPayload.TOP_K] == 3
    assert pair[1].payload is not None
    assert [n.node.node_id for n in pair[1].payload[EventPayload.NODES]] == BEST


async def test_retriever_query_engine_async_is_native(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, collector: Collector
) -> None:
    postprocessor = LLMRerankPostprocessor(top_n=2)

    def no_sync(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async path must not fall back to the blocking method")

    monkeypatch.setattr(LLMRerankPostprocessor, "_postprocess_nodes", no_sync)
    engine = RetrieverQueryEngine.from_args(
        make_index().as_retriever(similarity_top_k=5), llm=MockLLM(), node_postprocessors=[postprocessor]
    )
    response = await engine.aquery(QUERY)
    assert [n.node.node_id for n in response.source_nodes] == BEST[:2]
    ends = [e for e in collector.events if isinstance(e, ReRankEndEvent)]
    assert sum(isinstance(e, ReRankStartEvent) for e in collector.events) == len(ends) == 1
    assert [n.node.node_id for n in ends[0].nodes] == BEST[:2]


def test_sync_and_async_agree_and_inputs_are_not_mutated(server: FakeLLMServer) -> None:
    postprocessor = LLMRerankPostprocessor(strategy="pointwise", top_n=None)
    nodes = make_nodes()
    before = [(n.node.node_id, n.score) for n in nodes]
    sync = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    asynchronous = asyncio.run(postprocessor.apostprocess_nodes(nodes, query_str=QUERY))
    again = postprocessor.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [(n.node.node_id, n.score) for n in sync] == [(n.node.node_id, n.score) for n in asynchronous]
    assert [(n.node.node_id, n.score) for n in sync] == [(n.node.node_id, n.score) for n in again]
    assert [n.node.node_id for n in sync][:3] == BEST and len(sync) == len(TEXTS)
    assert [(n.node.node_id, n.score) for n in nodes] == before
    assert not any(out is original or out.node is original.node for out in sync for original in nodes)
    assert all(n.node.metadata == {} for n in nodes)  # the annotations go on copies
    assert sync[0].node.node_id == nodes[1].node.node_id and sync[0].node.text == nodes[1].node.text
    assert len(server.requests) == 3 * len(TEXTS)


def test_missing_query_is_a_value_error(server: FakeLLMServer) -> None:
    postprocessor = LLMRerankPostprocessor()
    with pytest.raises(ValueError, match="query"):
        postprocessor.postprocess_nodes(make_nodes())
    with pytest.raises(ValueError, match="query"):
        asyncio.run(postprocessor.apostprocess_nodes(make_nodes()))
    assert server.requests == []


def test_empty_input_makes_no_request(server: FakeLLMServer, collector: Collector) -> None:
    postprocessor = LLMRerankPostprocessor()
    assert postprocessor.postprocess_nodes([], query_str=QUERY) == []
    assert asyncio.run(postprocessor.apostprocess_nodes([], query_str=QUERY)) == []
    assert server.requests == []
    assert not [e for e in collector.events if isinstance(e, ReRankStartEvent | ReRankEndEvent)]


def test_llamaindex_llm_as_backend(server: FakeLLMServer) -> None:
    openai_llms = pytest.importorskip("llama_index.llms.openai")
    llm = openai_llms.OpenAI(model="gpt-4o-mini", api_base=server.base_url, api_key="test", max_retries=0)
    postprocessor = LLMRerankPostprocessor(backend=llm, strategy="pointwise", top_n=2)
    results = [postprocessor.postprocess_nodes(make_nodes(), query_str=QUERY) for _ in range(2)]
    results.append(asyncio.run(postprocessor.apostprocess_nodes(make_nodes(), query_str=QUERY)))
    assert all([n.node.node_id for n in r] == BEST[:2] for r in results)
    assert len(server.requests) == 3 * len(TEXTS)
    backend = postprocessor.reranker.backend
    assert isinstance(backend, LlamaIndexLLMBackend) and backend.model == "gpt-4o-mini"


def test_llm_backend_reads_usage(server: FakeLLMServer) -> None:
    openai_llms = pytest.importorskip("llama_index.llms.openai")
    llm = openai_llms.OpenAI(model="gpt-4o-mini", api_base=server.base_url, api_key="test")
    server.responder = "Relevant: 7"
    completion = asyncio.run(LlamaIndexLLMBackend(llm).generate(Prompt(system="sys", user="user text")))
    assert completion.text == "Relevant: 7"
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
    (request,) = server.requests
    assert (request.system, request.user) == ("sys", "user text")


def test_llmrerank_backend_and_options_pass_through() -> None:
    backend = FakeBackend(["Score: 3\nReason: no", "Score: 8\nReason: yes"])
    cache = MemoryCache()
    postprocessor = LLMRerankPostprocessor(
        backend=backend, strategy=Pointwise(with_reason=True), domain="medical", cache=cache, max_concurrency=1
    )
    got = postprocessor.postprocess_nodes(make_nodes()[:2], query_str=QUERY)
    assert [(n.node.node_id, n.score) for n in got] == [("doc1", 8.0), ("doc0", 3.0)]
    assert "biomedical" in backend.calls[0].system
    assert postprocessor.reranker.cache is cache
    assert LLMRerankPostprocessor.class_name() == "LLMRerankPostprocessor"


@pytest.mark.parametrize("options", BAD_OPTIONS)
def test_bad_options_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LLMRerankPostprocessor(**options)


@pytest.mark.parametrize(
    ("adapter", "other", "framework"),
    [
        ("langchain_llmrerank", "llamaindex_llmrerank", "llama_index"),
        ("llamaindex_llmrerank", "langchain_llmrerank", "langchain"),
    ],
)
def test_packages_import_only_what_they_should(adapter: str, other: str, framework: str) -> None:
    code = (
        "import sys, llmrerank, llmrerank.testing\n"
        "assert not any(m.startswith(('langchain', 'llama_index')) for m in sys.modules), 'core imports a framework'\n"
        f"import {adapter}\n"
        f"assert '{other}' not in sys.modules, 'imports the other adapter'\n"
        f"assert not any(m.startswith('{framework}') for m in sys.modules), 'imports the other framework'\n"
        "assert 'langchain_classic' not in sys.modules, 'the adapter needs langchain_core only'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_copies_pickles_and_field_changes_rebuild_the_reranker() -> None:
    assert assert_builds_its_reranker_lazily(LLMRerankPostprocessor).to_dict()["top_n"] == 2


def test_fusion_reads_the_node_scores() -> None:
    nodes = [NodeWithScore(node=TextNode(text=t), score=float(len(TEXTS) - i)) for i, t in enumerate(TEXTS)]
    backend = FakeBackend(likelihood=overlap_likelihood)
    alone = LLMRerankPostprocessor(backend=backend, strategy="query_likelihood", top_n=None, fusion=None)
    assert alone.postprocess_nodes(nodes, query_str=QUERY)[0].node.get_content() == TEXTS[1]
    fused = LLMRerankPostprocessor(
        backend=backend, strategy="query_likelihood", top_n=None, fusion=Fusion("zscore", weight=0.01)
    )
    ranked = fused.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.get_content() for n in ranked] == TEXTS  # the retriever's order wins at weight 0.01
    again = asyncio.run(fused.apostprocess_nodes(nodes, query_str=QUERY))
    assert [n.score for n in again] == [n.score for n in ranked]
    assert [n.score for n in nodes] == [float(len(TEXTS) - i) for i in range(len(TEXTS))]  # inputs untouched


def test_top_k_llmreranks_own_name_is_accepted_for_top_n() -> None:
    postprocessor = LLMRerankPostprocessor(backend=FakeBackend(respond=overlap_judge), strategy="listwise", top_k=2)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in TEXTS]
    assert postprocessor.top_n == 2 and len(postprocessor.postprocess_nodes(nodes, query_str=QUERY)) == 2


def test_the_offline_default_gives_fused_scores_in_0_1_with_or_without_node_scores() -> None:
    # The same scale as the LangChain adapter, whose retrievers give no score: min-max fusion with
    # the nodes' scores, or with their order when they carry none.
    from llmrerank import LocalBackend, Reranker
    from llmrerank.fusion import input_order_scores

    backend = FakeBackend(likelihood=overlap_likelihood, preferred_strategy="query_likelihood")
    backend.preferred_fusion = LocalBackend.preferred_fusion
    postprocessor = LLMRerankPostprocessor(backend=backend, top_n=None)
    scored = [NodeWithScore(node=TextNode(text=t), score=1.0 - i / 10) for i, t in enumerate(TEXTS)]
    unscored = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    for nodes in (scored, unscored):
        ranked = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
        assert {n.node.metadata["rerank_score_kind"] for n in ranked} == {"fused"}
        assert all(n.score is not None and 0 <= n.score <= 1 for n in ranked)
    core = Reranker(backend=backend).rerank(QUERY, TEXTS, first_stage_scores=input_order_scores(len(TEXTS)))
    assert [n.node.get_content() for n in ranked] == [TEXTS[i] for i in core.indices]


# --- what the rerank did reaches LlamaIndex users -------------------------------------------------------


def test_end_event_carries_usage_and_status(server: FakeLLMServer, collector: Collector) -> None:
    from llamaindex_llmrerank import LLMRerankEndEvent

    LLMRerankPostprocessor(strategy="pointwise", top_n=2).postprocess_nodes(make_nodes(), query_str=QUERY)
    (end,) = [e for e in collector.events if isinstance(e, ReRankEndEvent)]
    assert isinstance(end, LLMRerankEndEvent)
    assert end.result["usage"]["calls"] == len(TEXTS) and end.result["status"] == "reranked"
    assert [n.node.node_id for n in end.nodes] == BEST[:2]


def test_callback_payload_carries_the_result(server: FakeLLMServer) -> None:
    debug = LlamaDebugHandler()
    postprocessor = LLMRerankPostprocessor(strategy="pointwise", callback_manager=CallbackManager([debug]))
    postprocessor.postprocess_nodes(make_nodes(), query_str=QUERY)
    ((_, end),) = debug.get_event_pairs(CBEventType.RERANKING)
    assert end.payload["llmrerank_result"]["usage"]["calls"] == len(TEXTS)


def test_metadata_and_keep_retrieval_score_stay_out_of_the_llm_text(server: FakeLLMServer) -> None:
    from llama_index.core.schema import MetadataMode

    nodes = make_nodes()
    out = LLMRerankPostprocessor(strategy="pointwise", top_n=None, keep_retrieval_score=True).postprocess_nodes(
        nodes, query_str=QUERY
    )
    first = out[0]
    assert first.node.metadata["retrieval_score"] == nodes[1].score
    assert first.node.metadata["rerank_rank"] == 1 and first.node.metadata["rerank_score_kind"] == "logprob"
    assert first.score == first.node.metadata["relevance_score"]
    assert "rerank" not in first.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "retrieval_score" not in first.node.get_content(metadata_mode=MetadataMode.EMBED)


def test_a_fallback_keeps_the_retriever_scores_for_the_next_postprocessor(server: FakeLLMServer) -> None:
    from llama_index.core.postprocessor import SimilarityPostprocessor

    from testkit.server import Reply

    server.responder = Reply(status=503, text="down")
    reranker = LLMRerankPostprocessor(strategy="pointwise", top_n=None)
    reranker.reranker.backend.max_retries = 0  # type: ignore[attr-defined]
    nodes = make_nodes()
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.score for n in out] == [n.score for n in nodes]
    assert all(n.node.metadata["rerank_fallback"] for n in out)
    kept = SimilarityPostprocessor(similarity_cutoff=0.1).postprocess_nodes(out)
    assert len(kept) == sum(1 for n in nodes if (n.score or 0) >= 0.1) > 0


def test_listwise_keeps_retriever_scores_and_labels_the_rank(server: FakeLLMServer) -> None:
    nodes = make_nodes()
    out = LLMRerankPostprocessor(strategy="listwise", top_n=3).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in out] == BEST
    assert [n.score for n in out] == [nodes[int(n.node.node_id[-1])].score for n in out]
    assert all(n.node.metadata["relevance_score"] is None for n in out)
    assert [n.node.metadata["rerank_rank"] for n in out] == [1, 2, 3]


def test_min_score_on_nodes(server: FakeLLMServer) -> None:
    out = LLMRerankPostprocessor(strategy=Pointwise(method="generate"), top_n=None, min_score=5).postprocess_nodes(
        make_nodes(), query_str=QUERY
    )
    assert [n.node.node_id for n in out] == ["doc1", "doc4"]
    with pytest.raises(ValueError, match="min_score"):
        LLMRerankPostprocessor(strategy="pairwise", min_score=5)
