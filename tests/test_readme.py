"""The README's code for the core, LangChain and LlamaIndex runs as written against FakeLLMServer.

Each snippet is taken from README.md by its import line and executed with the names it assumes
(``documents``, ``vectorstore``, ``index``) defined here; the LLM is the environment's
(``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``), pointed at the loopback server. CI also runs this file
against the built wheel (.ci/wheel), with the README shipped in the sdist.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from testkit.server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

DOCUMENTS = [
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "Solar panels work by turning sunlight into electricity in photovoltaic cells.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "What causes the northern lights: charged particles from the sun strike gases in the upper atmosphere.",
    "Wind turbines convert the kinetic energy of moving air into electricity.",
    "How do heat pumps work? They move heat instead of burning fuel.",
]
SOLAR, AURORA = DOCUMENTS[1], DOCUMENTS[3]


def readme_snippet(*lines: str) -> str:
    """The one ```python block of the README that contains all of ``lines``."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
    found = [block for block in blocks if all(line in block for line in lines)]
    assert len(found) == 1, f"README.md: {len(found)} python blocks contain {lines!r}, expected one"
    return found[0]


def run_snippet(*lines: str, **names: Any) -> dict[str, Any]:
    """Execute the README block found by ``lines`` with ``names`` predefined; return its namespace."""
    namespace: dict[str, Any] = {"__name__": "readme", **names}
    exec(compile(readme_snippet(*lines), str(README), "exec"), namespace)
    return namespace


def load_example(name: str) -> ModuleType:
    """The module of ``examples/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # pydantic resolves names through it
    folder = str(ROOT / "examples")
    sys.path.insert(0, folder)  # as `python examples/<name>.py` has it: its imports of example_report
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


@pytest.fixture
def no_answer_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    """LlamaIndex's ``Settings`` with no LLM set, restored afterwards (a snippet may set ``Settings.llm``)."""
    pytest.importorskip("llama_index.core")
    from llama_index.core import Settings

    monkeypatch.setattr(Settings, "_llm", None)


def documents_index() -> Any:
    """A LlamaIndex vector index of DOCUMENTS (node ids doc0, doc1, ...) with mock embeddings."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    nodes = [TextNode(text=text, id_=f"doc{i}") for i, text in enumerate(DOCUMENTS)]
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


def llm_calls(server: FakeLLMServer) -> list[str]:
    return [r.user for r in server.requests if r.method == "POST"]


def test_use_snippet_reranks_with_the_openai_backend(
    openai_env_server: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    use = run_snippet("from llmrerank import Reranker, OpenAIBackend", "result = reranker.rerank(", documents=DOCUMENTS)
    result = use["result"]
    assert not result.degraded and result.strategy == "listwise"
    assert len(result.items) == 5 and result.items[0].document == AURORA
    assert [item.rank for item in result.items] == [1, 2, 3, 4, 5]
    (call,) = llm_calls(openai_env_server)
    assert "what causes the northern lights?" in call
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"1 {DOCUMENTS.index(AURORA)} ") and printed[0].endswith(AURORA)


def test_langchain_snippet_reranks_a_retriever(openai_env_server: FakeLLMServer) -> None:
    pytest.importorskip("langchain_classic")
    from langchain_core.documents import Document

    # The snippet's vector store: anything with as_retriever(); the example's numpy-free retriever serves.
    retriever = load_example("langchain_retriever").StoredOrderRetriever
    documents = [Document(page_content=text) for text in DOCUMENTS]
    vectorstore = SimpleNamespace(as_retriever=lambda search_kwargs: retriever(documents=documents, **search_kwargs))
    docs = run_snippet("from langchain_llmrerank import LLMRerankCompressor", vectorstore=vectorstore)["docs"]
    assert len(docs) == 3 and docs[0].page_content == SOLAR
    assert [d.metadata["rerank_rank"] for d in docs] == [1, 2, 3]
    assert not any(d.metadata["rerank_fallback"] for d in docs)  # placed by the model, not by a fallback
    (call,) = llm_calls(openai_env_server)
    assert "how do solar panels work?" in call and all(text in call for text in DOCUMENTS)


def test_llamaindex_snippet_reranks_retrieved_nodes_without_an_answer_llm(
    openai_env_server: FakeLLMServer, no_answer_llm: None
) -> None:
    from llama_index.core import Settings

    # No answer-writing LLM is configured: the postprocessor must not need one.
    ranked = run_snippet("from llamaindex_llmrerank import LLMRerankPostprocessor", index=documents_index())["nodes"]
    assert ranked[0].node.get_content() == SOLAR and len(ranked) == 5
    assert Settings._llm is None
    (call,) = llm_calls(openai_env_server)
    assert "How do solar panels work?" in call and all(text in call for text in DOCUMENTS)


def test_llamaindex_query_engine_snippet_sets_the_answer_llm_first(
    openai_env_server: FakeLLMServer, no_answer_llm: None
) -> None:
    from llama_index.core.llms import MockLLM

    from llamaindex_llmrerank import LLMRerankPostprocessor

    names = {"index": documents_index(), "answer_llm": MockLLM(), "LLMRerankPostprocessor": LLMRerankPostprocessor}
    response = run_snippet("Settings.llm = answer_llm", **names)["response"]
    ranked = [n.node.get_content() for n in response.source_nodes]
    assert ranked[0] == SOLAR and len(ranked) == 5
    (call,) = llm_calls(openai_env_server)
    assert "How do solar panels work?" in call and all(text in call for text in DOCUMENTS)
