"""Tolerant parsing of LLM output."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmrerank import BatchScore, Listwise, Reranker
from llmrerank.parsing import (
    choice_distribution,
    parse_choice,
    parse_labelled_scores,
    parse_permutation,
    parse_reason,
    parse_score,
    strip_thinking,
)
from llmrerank.testing import FakeBackend


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", 7.0),
        ("Score: 7.5", 7.5),
        ("relevance score: 3", 3.0),
        ("8/10", 8.0),
        ("I'd say 8 out of 10.", 8.0),
        ("80/100", 8.0),
        ('{"score": 9}', 9.0),
        ("<think>maybe 2? no</think> 6", 6.0),
        ("6,5", 6.5),
        ("11", None),
        ("-3", None),
        ("15/10", None),
        ("no idea", None),
        ("", None),
        ("Relevance (0-10): 7", 7.0),
        ("7 (on a 0-10 scale)", 7.0),
        ("Score: 8 / 10", 8.0),
        ("10/10", 10.0),
        # No rating, only the scale: never the scale's 10 or 0.
        ("Score: X/10", None),
        ("N/10", None),
        ("?/10", None),
        ("nan/10", None),
        ("Score: ? out of 10", None),
        ("I cannot rate this (N/A). Scale: 0-10", None),
        ("rating: none (0-10 scale)", None),
    ],
)
def test_parse_score(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


def test_parse_reason_labelled_and_second_line() -> None:
    assert parse_reason("Score: 8\nReason: it names the statute.") == "it names the statute."
    assert parse_reason("8\nIt names the statute.") == "It names the statute."
    assert parse_reason("8") is None


@pytest.mark.parametrize(
    ("text", "n", "order", "dups", "bad", "missing"),
    [
        ("[3] > [1] > [2]", 3, (2, 0, 1), 0, 0, ()),
        ("3, 1, 2", 3, (2, 0, 1), 0, 0, ()),
        ('{"ranking": [2, 3, 1]}', 3, (1, 2, 0), 0, 0, ()),
        ("[2] > [2] > [1]", 3, (1, 0, 2), 1, 0, (2,)),
        ("[0] > [4] > [-1] > [2]", 3, (1, 0, 2), 0, 3, (0, 2)),
        ("Doc: 0, Doc: 3", 3, (2, 0, 1), 0, 1, (0, 1)),
        ("I cannot rank these.", 3, (0, 1, 2), 0, 0, (0, 1, 2)),
        ("Passage [2] is best; it cites 2019 data. Then [1].", 2, (1, 0), 0, 0, ()),
        ("<think>[1] > [2]? no</think>[2] > [1]", 2, (1, 0), 0, 0, ()),
        ("2.5, 1", 2, (0, 1), 0, 0, (1,)),
    ],
)
def test_parse_permutation_repairs(
    text: str, n: int, order: tuple[int, ...], dups: int, bad: int, missing: tuple[int, ...]
) -> None:
    perm = parse_permutation(text, n)
    assert perm.order == order
    assert sorted(perm.order) == list(range(n))
    assert (perm.duplicates, perm.out_of_range, perm.missing) == (dups, bad, missing)
    assert perm.clean == (not dups and not bad and not missing)


def test_parse_choice_whole_words() -> None:
    assert parse_choice("A", ("A", "B")) == "A"
    assert parse_choice("Document B is better", ("A", "B")) == "B"
    assert parse_choice("Answer: b", ("A", "B")) == "B"
    assert parse_choice("Neither", ("A", "B")) is None
    assert parse_choice("yes.", ("Yes", "No")) == "Yes"


def test_strip_thinking_handles_stray_closer() -> None:
    assert strip_thinking("<think>x</think>answer") == "answer"
    assert strip_thinking("reasoning here</think> 5") == "5"


def test_choice_distribution_normalises_seen_choices() -> None:
    probs = choice_distribution({"Yes": -0.1, "No": -2.0, "Maybe": -0.01}, ("Yes", "No"))
    assert set(probs) == {"Yes", "No"}
    assert abs(sum(probs.values()) - 1) < 1e-9
    assert probs["Yes"] > probs["No"]
    assert choice_distribution(None, ("Yes", "No")) == {}


# --- cases from peers' suites (LlamaIndex, rank_llm, RankGPT) -----------------------------------


def test_llamaindex_choice_select_lines_read_the_id_not_the_relevance() -> None:
    """LlamaIndex's parser reads "<label>: N, <label>: R" whatever the labels; models copy its field names."""
    answer = "answer_num: 2, answer_relevance: 8\nanswer_num: 4, answer_relevance: 6"
    perm = parse_permutation(answer, 10)
    assert perm.order[:2] == (1, 3) and perm.parsed == 2 and perm.out_of_range == 0
    assert parse_labelled_scores(answer, 5).scores == {1: 8.0, 3: 6.0}
    listwise = Reranker(Listwise(), FakeBackend([answer])).rerank("q", list("abcde"))
    assert listwise.indices[:2] == [1, 3] and "permutation_repaired" in {d.code for d in listwise.diagnostics}
    scored = Reranker(BatchScore(), FakeBackend([answer])).rerank("q", list("abcde"))
    assert [(d.index, d.score) for d in scored][:2] == [(1, 8.0), (3, 6.0)]


@pytest.mark.parametrize(
    ("text", "order"),
    [
        ("Passage 3 is the most relevant since it explains the cause.\n3, 1, 2, 4", (2, 0, 1, 3)),
        ("Ranking:\n3 > 1 > 2 > 4\n\nDoc 3 directly answers the question.", (2, 0, 1, 3)),
        ("The most relevant is document 2.\n2 > 4 > 1 > 3", (1, 3, 0, 2)),
        ("Here is the ranking: 4, 2, 1, 3. Document 4 mentions dogs.", (3, 1, 0, 2)),
    ],
)
def test_a_bare_ranking_wins_over_prose_that_names_fewer_documents(text: str, order: tuple[int, ...]) -> None:
    perm = parse_permutation(text, 4)
    assert perm.order == order and perm.clean, perm


def test_labelled_ids_win_over_other_numbers() -> None:
    perm = parse_permutation("Doc: 2, Relevance: 8\nDoc: 4, Relevance: 6", 10)
    assert perm.order[:2] == (1, 3)
    assert perm.parsed == 2 and perm.out_of_range == 0
    assert parse_permutation("Document #3 first, then passage 1 (score 9)", 10).order[:2] == (2, 0)


@pytest.mark.parametrize(
    ("text", "order"),
    [
        ("[③] > [①] > [②]", (2, 0, 1)),
        ("③ > ① > ②", (2, 0, 1)),
        ("➌ > ➊ > ➋", (2, 0, 1)),
        ("[³] > [¹] > [²]", (2, 0, 1)),
        ("[₃] > [₁] > [₂]", (2, 0, 1)),
        ("［３］ > ［１］ > ［２］", (2, 0, 1)),
        ("③①②", (2, 0, 1)),
    ],
)
def test_unicode_digit_forms_are_read_as_ids(text: str, order: tuple[int, ...]) -> None:
    perm = parse_permutation(text, 3)
    assert perm.order == order and perm.clean


def test_answer_cut_inside_the_last_id_keeps_it() -> None:
    perm = parse_permutation("[3] > [1] > [5", 6)
    assert perm.order[:3] == (2, 0, 4)
    assert perm.parsed == 3
    assert parse_permutation("[2] > [1] > [  3 ", 3).clean


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(2, 20))
def test_a_ranking_cut_anywhere_keeps_its_complete_ids_in_order(data: st.DataObject, n: int) -> None:
    ranking = data.draw(st.permutations(range(n)))
    text = " > ".join(f"[{i + 1}]" for i in ranking)
    cut = data.draw(st.integers(0, len(text)))
    complete = len(re.findall(r"\[\d+\]", text[:cut]))
    perm = parse_permutation(text[:cut], n)
    assert perm.order[:complete] == tuple(ranking[:complete])
    assert sorted(perm.order) == list(range(n))


@pytest.mark.parametrize("answer", ["Score: X/10", "?/10", "nan/10", "I cannot rate this (N/A). Scale: 0-10"])
def test_a_pointwise_answer_without_a_rating_leaves_the_document_unscored(answer: str) -> None:
    from llmrerank import Pointwise

    backend = FakeBackend(["3", answer, "8"])
    result = Reranker(Pointwise(method="generate"), backend, max_concurrency=1).rerank("q", ["a", "b", "c"])
    assert result.status == "partial" and result.degraded_reasons == ("unreadable_answer",)
    assert result.indices == [2, 0, 1] and result[2].score is None and result[2].fallback
    assert "score_unparsed" in {d.code for d in result[2].diagnostics}
