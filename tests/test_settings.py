"""Inputs and settings that other rerankers' suites probe: settings of the wrong type, templates
without their placeholders, data frames as document lists, and cross-encoders that return odd shapes."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from llmrerank import (
    BatchScore,
    ConfigurationError,
    Hybrid,
    InvalidInputError,
    Listwise,
    MissingDependencyError,
    Pairwise,
    Pointwise,
    QueryLikelihood,
    Reranker,
    Setwise,
)
from llmrerank.options import build_reranker
from llmrerank.testing import FakeBackend, overlap_judge

QUERY = "why do dogs bark at night"
DOCS = ["The cat sat on the mat.", "Dogs bark at night.", "Birds sing at dawn."]


# --- settings of the wrong type -------------------------------------------------------------------

BAD_SETTINGS = [
    pytest.param({"max_concurrency": "8"}, "max_concurrency", id="concurrency-str"),
    pytest.param({"max_concurrency": True}, "max_concurrency", id="concurrency-bool"),
    pytest.param({"max_concurrency": 2.5}, "max_concurrency", id="concurrency-float"),
    pytest.param({"max_concurrency": 0}, "max_concurrency", id="concurrency-zero"),
    pytest.param({"domain": 5}, "domain", id="domain-int"),
    pytest.param({"deadline": float("nan")}, "deadline", id="deadline-nan"),
    pytest.param({"deadline": float("inf")}, "deadline", id="deadline-inf"),
    pytest.param({"deadline": "10"}, "deadline", id="deadline-str"),
    pytest.param({"deadline": True}, "deadline", id="deadline-bool"),
    pytest.param({"on_error": ["raise"]}, "on_error", id="on-error-list"),
    pytest.param({"strict": "yes"}, "strict", id="strict-str"),
    pytest.param({"cache": {}}, "cache", id="cache-dict"),
]


@pytest.mark.parametrize(("settings", "name"), BAD_SETTINGS)
def test_settings_of_the_wrong_type_raise_configuration_error(settings: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Reranker("listwise", FakeBackend(), **settings)
    if name != "strict":  # the adapters' flat settings go through the same check
        with pytest.raises(ConfigurationError, match=name):
            build_reranker(FakeBackend(), strategy="listwise", **settings)


BAD_SIZES = [
    *(pytest.param(BatchScore, "batch_size", size, id=f"batch_size={size!r}") for size in (0, -1, 2.5, True)),
    *(pytest.param(Setwise, "set_size", size, id=f"set_size={size!r}") for size in (1, 21, 3.5, True)),
]


@pytest.mark.parametrize(("make", "name", "size"), BAD_SIZES)
def test_bad_batch_and_set_sizes_are_configuration_errors(make: Any, name: str, size: object) -> None:
    with pytest.raises(ConfigurationError):
        make(**{name: size})


def test_good_settings_still_pass() -> None:
    reranker = Reranker("listwise", FakeBackend(respond=overlap_judge), max_concurrency=3, deadline=5, domain="legal")
    assert reranker.rerank(QUERY, DOCS).indices == [1, 0, 2]


# --- templates must hold their placeholders -------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "template", "missing"),
    [
        pytest.param(Listwise, "Rank the passages for {query}.", "{documents}", id="listwise"),
        pytest.param(Pointwise, "Rate it for {query}.", "{document}", id="pointwise"),
        pytest.param(Pairwise, "{query}: {document_a} or the other?", "{document_b}", id="pairwise"),
        pytest.param(Listwise, "Rank {documents}", "{query}", id="listwise-no-query"),
    ],
)
def test_a_template_without_its_placeholders_is_refused(make: Any, template: str, missing: str) -> None:
    with pytest.raises(ConfigurationError, match=missing):
        make(template=template)
    with pytest.raises(ConfigurationError, match=missing):
        build_reranker(FakeBackend(), strategy=make.name, template=template)


def test_a_complete_template_is_used() -> None:
    backend = FakeBackend(["[2] > [1]"])
    Reranker(Listwise(template="Q: {query}\n{documents}\nOrder them."), backend).rerank(QUERY, DOCS[:2])
    assert backend.calls[0].user.startswith(f"Q: {QUERY}\n<document")


# --- data frames and arrays as the document list --------------------------------------------------


class DataFrame:
    """The part of pandas' DataFrame that matters here: iterating it yields the column names."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.columns = list(rows[0])

    def __iter__(self) -> Any:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self, orient: str) -> list[dict[str, Any]]:
        assert orient == "records"
        return [dict(r) for r in self.rows]


def test_a_data_frame_is_read_row_by_row() -> None:
    frame = DataFrame([{"id": f"d{i}", "text": text, "year": 2000 + i} for i, text in enumerate(DOCS)])
    result = Reranker("listwise", FakeBackend(respond=overlap_judge)).rerank(QUERY, frame)
    assert len(result) == 3 and result.indices == [1, 0, 2]
    assert result.documents[0] == {"id": "d1", "text": DOCS[1], "year": 2001}


def test_a_data_frame_without_a_text_column_is_refused() -> None:
    frame = DataFrame([{"body": text} for text in DOCS])
    backend = FakeBackend(respond=overlap_judge)
    with pytest.raises(InvalidInputError, match="text column"):
        Reranker("listwise", backend).rerank(QUERY, frame)
    assert backend.calls == []


def test_numpy_arrays_of_strings() -> None:
    reranker = Reranker("listwise", FakeBackend(respond=overlap_judge))
    assert reranker.rerank(QUERY, np.array(DOCS)).indices == [1, 0, 2]
    with pytest.raises(InvalidInputError, match="one-dimensional"):
        reranker.rerank(QUERY, np.array([DOCS, DOCS]))


# --- hybrid: what a cross-encoder may return ------------------------------------------------------


class Returns:
    def __init__(self, output: Any) -> None:
        self.output = output

    def predict(self, pairs: list[tuple[str, str]]) -> Any:
        return self.output


def hybrid(output: Any, **options: Any) -> Reranker:
    return Reranker(
        Hybrid(cross_encoder=Returns(output), keep=2, llm="listwise"), FakeBackend(["[1] > [2]"]), **options
    )


@pytest.mark.parametrize(
    "output",
    [
        pytest.param([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]], id="two-columns-list"),
        pytest.param(np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]], dtype=np.float32), id="two-columns-numpy"),
        pytest.param(np.array([0.1, 0.2, 0.9]), id="numpy"),
        pytest.param(np.array([[0.1], [0.2], [0.9]]), id="one-column"),
        pytest.param([np.float32(0.1), np.float32(0.2), np.float32(0.9)], id="numpy-scalars"),
    ],
)
def test_numeric_cross_encoder_outputs_are_read(output: Any) -> None:
    result = hybrid(output).rerank(QUERY, DOCS)
    assert result.indices == [2, 1, 0] and not result.degraded


def test_a_torch_tensor_output_is_read() -> None:
    torch = pytest.importorskip("torch")
    result = hybrid(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])).rerank(QUERY, DOCS)
    assert result.indices == [2, 1, 0] and not result.degraded


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(["high", "low", "mid"], id="strings"),
        pytest.param(None, id="none"),
        pytest.param("0.1 0.2 0.9", id="one-string"),
        pytest.param([0.1, float("nan"), 0.9], id="nan"),
        pytest.param([[0.1, 0.2, 0.7]] * 3, id="three-columns"),
        pytest.param([0.5], id="too-few"),
    ],
)
def test_unusable_cross_encoder_output_is_a_failed_prefilter(output: Any) -> None:
    result = hybrid(output).rerank(QUERY, DOCS)
    assert result.degraded and sorted(result.indices) == [0, 1, 2]
    assert any(d.code == "prefilter_failed" for d in result.diagnostics)


def test_a_missing_sentence_transformers_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    reranker = Reranker(Hybrid(cross_encoder="cross-encoder/ms-marco-MiniLM-L-6-v2"), FakeBackend(["[1] > [2]"]))
    with pytest.raises(MissingDependencyError, match="sentence-transformers"):
        reranker.rerank(QUERY, DOCS)


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]], dtype=np.float32), id="two-labels"),
        pytest.param(np.array([0.1, 0.2, 0.9], dtype=np.float32), id="one-label"),
    ],
)
def test_a_cross_encoder_loaded_by_name_reads_two_label_output(monkeypatch: pytest.MonkeyPatch, output: Any) -> None:
    """``Hybrid(cross_encoder="name")`` loads a sentence-transformers CrossEncoder; a 2-label model
    predicts ``(n, 2)``, read as the generic ``predict(pairs)`` path reads it (column 1)."""
    loaded: list[str] = []

    class CrossEncoder:
        def __init__(self, name: str, **options: Any) -> None:
            loaded.append(name)

        def predict(self, pairs: list[tuple[str, str]], **options: Any) -> Any:
            assert len(pairs) == len(output)
            return output

    monkeypatch.setitem(sys.modules, "sentence_transformers", types.SimpleNamespace(CrossEncoder=CrossEncoder))
    reranker = Reranker(
        Hybrid(cross_encoder="org/two-label-reranker", keep=2, llm="listwise"), FakeBackend(["[1] > [2]"])
    )
    result = reranker.rerank(QUERY, DOCS)
    assert loaded == ["org/two-label-reranker"]
    assert result.status == "reranked" and "prefilter_failed" not in {d.code for d in result.diagnostics}
    assert result.indices == [2, 1, 0]


@pytest.mark.parametrize(
    ("make", "settings", "name"),
    [
        pytest.param(Listwise, {"window": "20"}, "window", id="listwise-window-str"),
        pytest.param(Listwise, {"step": "5"}, "step", id="listwise-step-str"),
        pytest.param(Listwise, {"window": 2.5}, "window", id="listwise-window-float"),
        pytest.param(Listwise, {"max_doc_chars": "1200"}, "max_doc_chars", id="listwise-chars-str"),
        pytest.param(Pointwise, {"max_doc_chars": None}, "max_doc_chars", id="pointwise-chars-none"),
        pytest.param(Pairwise, {"all_pairs_max": "8"}, "all_pairs_max", id="pairwise-all-pairs-str"),
        pytest.param(Pairwise, {"max_doc_chars": True}, "max_doc_chars", id="pairwise-chars-bool"),
        pytest.param(Setwise, {"max_doc_chars": "900"}, "max_doc_chars", id="setwise-chars-str"),
        pytest.param(BatchScore, {"max_doc_chars": 1.5}, "max_doc_chars", id="batch-chars-float"),
        pytest.param(QueryLikelihood, {"max_doc_chars": "800"}, "max_doc_chars", id="likelihood-chars-str"),
        pytest.param(Hybrid, {"keep": "10"}, "keep", id="hybrid-keep-str"),
        pytest.param(Hybrid, {"max_doc_chars": "2000"}, "max_doc_chars", id="hybrid-chars-str"),
    ],
)
def test_a_strategys_numeric_setting_of_the_wrong_type_raises_configuration_error(
    make: Any, settings: dict[str, Any], name: str
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        make(**settings)
