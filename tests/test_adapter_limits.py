"""The adapters under load and with odd options: blocking calls through a framework model are not
capped by the default thread pool; the LlamaIndex postprocessor keeps node text in the prompt,
refuses unknown options and takes ``llm=``; adapters holding a backend copy and pickle."""

from __future__ import annotations

import copy
import os
import pickle
import threading
from typing import Any, ClassVar

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
pytest.importorskip("openai")

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from langchain_llmrerank import LLMRerankCompressor
from llamaindex_llmrerank import LLMRerankPostprocessor
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.testing import FakeBackend
from testkit.server import FakeLLMServer

QUERY = "why do dogs bark at night"
TEXTS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]
# More parallel reranks than the default executor has threads on this machine.
PARALLEL = min(32, (os.cpu_count() or 1) + 4) + 4


class InFlight:
    """Counts blocking model calls running at once; each holds until enough have started (or 5 s)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()
        self.reached = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.now >= self.target:
                self.reached.set()
        self.reached.wait(5.0)
        with self.lock:
            self.now -= 1


class CountingChatModel(FakeListChatModel):
    counter: Any = None

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> BaseMessage:
        self.counter.enter()
        return super().invoke(input, config, **kwargs)


class CountingLLM(MockLLM):
    counter: ClassVar[InFlight | None] = None  # MockLLM's __init__ takes no extra fields

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        assert self.counter is not None
        self.counter.enter()
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content="[2] > [1] > [3]"))


def run_in_threads(jobs: list[Any]) -> None:
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_parallel_blocking_compressions_are_not_capped_by_the_default_pool() -> None:
    counter = InFlight(PARALLEL)
    compressors = [
        LLMRerankCompressor(backend=CountingChatModel(responses=["[2] > [1] > [3]"], counter=counter), top_n=1)
        for _ in range(PARALLEL)
    ]
    docs = [Document(page_content=t) for t in TEXTS]
    out: list[str] = []
    run_in_threads([lambda c=c: out.append(c.compress_documents(docs, QUERY)[0].page_content) for c in compressors])
    assert out == [TEXTS[1]] * PARALLEL
    assert counter.most == PARALLEL > 6


def test_parallel_blocking_postprocessors_are_not_capped_by_the_default_pool() -> None:
    counter = CountingLLM.counter = InFlight(PARALLEL)
    postprocessors = [LLMRerankPostprocessor(llm=CountingLLM(), top_n=1) for _ in range(PARALLEL)]
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    out: list[str] = []
    run_in_threads(
        [lambda p=p: out.append(p.postprocess_nodes(nodes, query_str=QUERY)[0].node.text) for p in postprocessors]
    )
    assert out == [TEXTS[1]] * PARALLEL
    assert counter.most == PARALLEL


# --- LlamaIndex options ---------------------------------------------------------------------------


def test_long_metadata_never_pushes_the_node_text_out() -> None:
    backend = FakeBackend(respond=lambda p: "[2] > [1] > [3]")
    postprocessor = LLMRerankPostprocessor(backend=backend, strategy="listwise", top_n=3)
    long = {"summary": "background " * 500, "source": "archive"}
    nodes = [NodeWithScore(node=TextNode(text=t, metadata=long)) for t in TEXTS]
    result = postprocessor.postprocess_nodes(nodes, QueryBundle(QUERY))
    (prompt,) = backend.calls
    assert all(t in prompt.user for t in TEXTS)
    assert "summary: background" in prompt.user  # metadata is cut, not dropped, when there is room
    assert [n.node.text for n in result] == [TEXTS[1], TEXTS[0], TEXTS[2]]
    short = NodeWithScore(node=TextNode(text="Dogs bark.", metadata={"source": "a"}))
    postprocessor.postprocess_nodes([short, *nodes[:1]], QueryBundle(QUERY))
    assert "source: a\n\nDogs bark." in backend.calls[-1].user  # short metadata stays whole
    bare = LLMRerankPostprocessor(backend=backend, strategy="listwise", metadata_mode=MetadataMode.NONE)
    bare.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert "background" not in backend.calls[-1].user


def test_metadata_is_cut_to_the_limit_of_the_strategy_a_hybrid_runs() -> None:
    # Hybrid without llm= runs the backend's preferred strategy (listwise: 1200 characters a document),
    # not its own prefilter cut of 2000: the node text must still fit whole.
    from llmrerank import Hybrid
    from llmrerank.testing import FakeCrossEncoder

    backend = FakeBackend(respond=lambda p: "[2] > [1] > [3]")
    postprocessor = LLMRerankPostprocessor(
        backend=backend, strategy=Hybrid(cross_encoder=FakeCrossEncoder(lambda query, text: 0.0), keep=3)
    )
    text = "Dogs bark at night. " * 54 + "THE END"  # 1087 characters
    nodes = [NodeWithScore(node=TextNode(text=t, metadata={"summary": "background " * 60})) for t in [text, *TEXTS[:2]]]
    postprocessor.postprocess_nodes(nodes, QueryBundle(QUERY))
    (prompt,) = backend.calls
    assert "THE END" in prompt.user and "summary: background" in prompt.user


def test_unknown_options_are_refused_and_llm_is_the_backend() -> None:
    with pytest.raises(ValueError, match="topk"):
        LLMRerankPostprocessor(topk=5)  # top_k is accepted as the other framework's name for top_n
    llm = MockLLM()
    postprocessor = LLMRerankPostprocessor(llm=llm, top_n=2)
    assert postprocessor.reranker.backend.llm is llm  # type: ignore[attr-defined]
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    assert len(postprocessor.postprocess_nodes(nodes, query_str=QUERY)) == 2
    with pytest.raises(ValueError):
        LLMRerankPostprocessor(llm=llm, model="gpt-4o-mini")


# --- copies of adapters holding a backend ---------------------------------------------------------


def test_adapters_holding_a_backend_copy_and_pickle() -> None:
    with FakeLLMServer("[2] > [1] > [3]") as server:
        backend = OpenAIBackend("m", base_url=server.base_url, api_key="x", logprobs=False)
        docs = [Document(page_content=t) for t in TEXTS]
        nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
        compressor = LLMRerankCompressor(backend=backend, top_n=1)
        postprocessor = LLMRerankPostprocessor(backend=backend, top_n=1)
        assert compressor.compress_documents(docs, QUERY)[0].page_content == TEXTS[1]
        for clone in (copy.deepcopy(compressor), pickle.loads(pickle.dumps(compressor))):
            assert clone.compress_documents(docs, QUERY)[0].page_content == TEXTS[1]
            clone.close()
        assert postprocessor.postprocess_nodes(nodes, query_str=QUERY)[0].node.text == TEXTS[1]
        for other in (copy.deepcopy(postprocessor), pickle.loads(pickle.dumps(postprocessor))):
            assert other.postprocess_nodes(nodes, query_str=QUERY)[0].node.text == TEXTS[1]
            other.close()
        compressor.close()
        postprocessor.close()
        assert len(server.requests) == 6


# --- the settings both adapters declare ---------------------------------------------------------


def test_both_adapters_declare_every_shared_setting_alike() -> None:
    from llmrerank.adapter_options import OPTIONS
    from llmrerank.options import FIELDS
    from llmrerank.strategies import STRATEGIES

    assert set(OPTIONS) == {*FIELDS, "top_n"}
    for name, option in OPTIONS.items():
        ours, theirs = LLMRerankCompressor.model_fields[name], LLMRerankPostprocessor.model_fields[name]
        assert ours.default == theirs.default == option.default, name
        assert ours.description == theirs.description == option.doc, name
        assert repr(ours.annotation) == repr(theirs.annotation), name
        assert ours.metadata == theirs.metadata, name  # the same bounds
    assert all(f'``"{strategy}"``' in OPTIONS["strategy"].doc for strategy in STRATEGIES)
    assert LLMRerankCompressor(top_k=2).top_n == LLMRerankPostprocessor(top_k=2).top_n == 2
    for bad in ({"top_n": 0}, {"max_concurrency": 0}, {"deadline": 0}, {"min_score": 11}, {"min_probability": 2}):
        for adapter in (LLMRerankCompressor, LLMRerankPostprocessor):
            with pytest.raises(ValueError, match=next(iter(bad))):
                adapter(**bad)
