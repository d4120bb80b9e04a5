"""Whatever an LLM says, a rerank returns a permutation of the input (or its first ``top_k``).

Property tests feed arbitrary text (and arbitrary log-probs) to every strategy through
:class:`FakeBackend` and check the never-lose-a-document promise: no duplicates, nothing lost,
no exception escapes (with ``strict=True`` only :class:`ParseError`). Example tests pin the
documented diagnostic for each kind of bad output.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmrerank import (
    BatchScore,
    Hybrid,
    Listwise,
    Pairwise,
    ParseError,
    Pointwise,
    Reranker,
    RerankResult,
    Setwise,
    Strategy,
    TopDown,
)
from llmrerank.parsing import parse_choice, parse_permutation, parse_reason, parse_score
from llmrerank.protocol import Completion, Prompt
from llmrerank.testing import FakeBackend

QUERY = "why do dogs bark at night"
DOCS = [
    "The cat sat on the mat.",
    "Dogs bark at strangers.",
    "A bird sings in the morning.",
    "Why do dogs bark at night? Because they hear noises.",
    "Night trains run late.",
]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class CountScorer:
    """Cross-encoder stand-in: prefers later documents."""

    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(i) for i in range(len(pairs))]


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "pointwise": lambda: Pointwise(method="generate"),
    "pointwise_reason": lambda: Pointwise(method="generate", with_reason=True),
    "pointwise_expected": lambda: Pointwise(method="expected"),
    "pointwise_yes_no": lambda: Pointwise(method="yes_no"),
    "batch_score": lambda: BatchScore(batch_size=2),
    "pairwise_all": lambda: Pairwise(mode="all_pairs"),
    "pairwise_sort": lambda: Pairwise(mode="sort"),
    "setwise": lambda: Setwise(set_size=3),
    "setwise_pairs": lambda: Setwise(set_size=2),
    "listwise": lambda: Listwise(),
    "listwise_sliding": lambda: Listwise(window=3, step=1),
    "listwise_consistent": lambda: Listwise(window=3, step=1, self_consistency=3),
    "topdown": lambda: TopDown(window=3, top_k=1),
    "hybrid": lambda: Hybrid(cross_encoder=CountScorer(), keep=3, llm=Listwise(window=2, step=1)),
    "hybrid_pointwise": lambda: Hybrid(cross_encoder=CountScorer(), keep=4, llm="pointwise"),
}

# Pieces an LLM (or a broken one) might say, glued together at random.
PIECES = [
    "[1]",
    "[2]",
    "[3]",
    "[5]",
    "[9]",
    "[0]",
    "[-1]",
    "[ 2 ]",
    "[",
    "]",
    ">",
    " > ",
    ",",
    " ",
    "\n",
    "Score:",
    "Score: 15",
    "Rating: -3",
    "/10",
    " out of ",
    "/0",
    "7.5",
    "8,5",
    "10",
    "-3",
    "15",
    "A",
    "B",
    "Yes",
    "No",
    "Reason:",
    '{"score": 8}',
    '{"ranking": [2, 1, 3]}',
    "[3, 1, 2]",
    "null",
    "NaN",
    "inf",
    "1e999",
    "9" * 40,
    "9" * 5000,
    "<think>x" * 2000,
    "٣",
    "<think>",
    "</think>",
    "</document>",
    "I'm sorry, but I can't help with that.",
    "As an AI language model",
    "```json",
    "```",
]
LLM_TEXT = st.one_of(
    st.text(max_size=200),
    st.just(""),
    st.lists(st.sampled_from(PIECES) | st.integers(-20, 30).map(str), max_size=15).map("".join),
)
LOGPROBS = st.none() | st.dictionaries(
    st.sampled_from(["Yes", "No", "A", "B", *map(str, range(11)), "maybe"]),
    st.floats(allow_nan=True, allow_infinity=True) | st.floats(-50, 0),
    max_size=6,
)


class Script:
    """A respond function that cycles through drawn answers (text and log-probs). Thread-safe."""

    def __init__(self, answers: Sequence[tuple[str, dict[str, float] | None]]) -> None:
        self._cycle = itertools.cycle(answers)
        self._lock = threading.Lock()

    def __call__(self, prompt: Prompt) -> Completion:
        with self._lock:
            text, logprobs = next(self._cycle)
        return Completion(text=text, choice_logprobs=logprobs if prompt.choices else None)


def check_permutation(result: RerankResult, docs: Sequence[Any], top_k: int | None) -> None:
    n = len(docs)
    expected = n if top_k is None else min(top_k, n)
    indices = result.indices
    assert len(indices) == expected
    assert len(set(indices)) == len(indices), f"duplicates in {indices}"
    assert set(indices) <= set(range(n))
    if top_k is None:
        assert sorted(indices) == list(range(n)), f"lost documents: {indices}"
    assert [item.rank for item in result] == list(range(1, expected + 1))
    for item in result:
        assert item.document is docs[item.index]
        assert item.score is None or math.isfinite(item.score), f"score {item.score!r}"
    check_honest(result)


def check_honest(result: RerankResult) -> None:
    """The result says whether it was reranked, and shows no score nobody judged."""
    assert result.degraded == (result.status != "reranked")
    assert bool(result.degraded_reasons) == result.degraded
    if not result.degraded:
        assert not any(item.fallback for item in result)
    if result.status == "fallback":
        assert all(item.fallback for item in result)
    for item in result:
        if item.fallback and result.score_kind != "cross_encoder":
            assert item.score is None, f"made-up score {item.score} for a fallback document"
    if result.score_kind in ("rank", "input_order"):
        assert all(item.score is None for item in result)


def backend_for(answers: Sequence[tuple[str, dict[str, float] | None]], logprobs: bool) -> FakeBackend:
    backend = FakeBackend(respond=Script(answers))
    backend.supports_logprobs = logprobs
    return backend


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@SETTINGS
@given(
    answers=st.lists(st.tuples(LLM_TEXT, LOGPROBS), min_size=1, max_size=6),
    n=st.integers(0, 5),
    top_k=st.none() | st.integers(1, 7),
    logprobs=st.booleans(),
)
@example(answers=[("9" * 5000, None)], n=5, top_k=None, logprobs=False)
@example(answers=[("9" * 400 + "/" + "9" * 400, None)], n=3, top_k=None, logprobs=False)
@example(answers=[("", {"Yes": 1000.0, "No": 0.0, "A": 1000.0, "5": 800.0})], n=3, top_k=1, logprobs=True)
def test_any_output_gives_a_permutation(
    name: str, answers: list[tuple[str, dict[str, float] | None]], n: int, top_k: int | None, logprobs: bool
) -> None:
    docs = DOCS[:n]
    result = Reranker(STRATEGIES[name](), backend_for(answers, logprobs)).rerank(QUERY, docs, top_k)
    check_permutation(result, docs, top_k)
    # Bad output is not a failed call; it degrades the result only where documents were left unplaced.
    assert set(result.degraded_reasons) <= {"unreadable_answer", "incomplete_answer"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@SETTINGS
@given(answers=st.lists(st.tuples(LLM_TEXT, LOGPROBS), min_size=1, max_size=4), logprobs=st.booleans())
def test_strict_mode_only_raises_parse_error(
    name: str, answers: list[tuple[str, dict[str, float] | None]], logprobs: bool
) -> None:
    reranker = Reranker(STRATEGIES[name](), backend_for(answers, logprobs), strict=True)
    try:
        result = reranker.rerank(QUERY, DOCS[:4])
    except ParseError as exc:
        assert isinstance(exc.output, str)
        return
    check_permutation(result, DOCS[:4], None)


@SETTINGS
@given(text=LLM_TEXT, n=st.integers(0, 30))
def test_parse_permutation_is_always_a_permutation(text: str, n: int) -> None:
    perm = parse_permutation(text, n)
    assert sorted(perm.order) == list(range(n))
    assert perm.parsed + len(perm.missing) == n


@SETTINGS
@given(text=LLM_TEXT)
def test_parse_score_is_in_range_or_none(text: str) -> None:
    score = parse_score(text)
    assert score is None or (math.isfinite(score) and 0.0 <= score <= 10.0)


# --- documented diagnostics for each kind of bad output --------------------------------------------

FOUR = DOCS[:4]


def codes(result: RerankResult) -> list[str]:
    return [d.code for d in result.diagnostics]


@pytest.mark.parametrize(
    ("text", "order", "diagnostics"),
    [
        pytest.param("", [0, 1, 2, 3], ["fallback_input_order"], id="empty"),
        pytest.param("These documents are about animals.", [0, 1, 2, 3], ["fallback_input_order"], id="prose"),
        pytest.param("I'm sorry, but I can't help with that.", [0, 1, 2, 3], ["fallback_input_order"], id="refusal"),
        pytest.param("Score: 77", [0, 1, 2, 3], ["fallback_input_order"], id="score-where-list-asked"),
        pytest.param("[9] > [0] > [-2]", [0, 1, 2, 3], ["fallback_input_order"], id="all-out-of-range"),
        pytest.param(
            "[2] > [1]",
            [1, 0, 2, 3],
            ["permutation_repaired", "missing_appended", "missing_appended"],
            id="partial",
        ),
        pytest.param(
            "[2] > [1] > [4]", [1, 0, 3, 2], ["permutation_repaired", "missing_appended"], id="one-left-out-is-last"
        ),
        pytest.param("[2] > [2] > [1] > [4] > [3]", [1, 0, 3, 2], ["permutation_repaired"], id="duplicate"),
        pytest.param(
            "[9] > [3] > [0] > [1] > [2] > [4]", [2, 0, 1, 3], ["permutation_repaired"], id="out-of-range-mixed"
        ),
        pytest.param('{"ranking": [4, 3, 2, 1]}', [3, 2, 1, 0], [], id="json-where-text-asked"),
        pytest.param("4, 1, 3, 2", [3, 0, 2, 1], [], id="bare-numbers"),
        pytest.param("<think>[1] > [2] > [3] > [4]</think>\n[4] > [3] > [2] > [1]", [3, 2, 1, 0], [], id="thinking"),
    ],
)
def test_listwise_bad_output(text: str, order: list[int], diagnostics: list[str]) -> None:
    result = Reranker("listwise", FakeBackend([text])).rerank(QUERY, FOUR)
    assert result.indices == order
    assert codes(result) == diagnostics
    unreadable = diagnostics == ["fallback_input_order"]
    # Two or more left out: the model placed only what it named; one left out is implied last.
    left_out = diagnostics.count("missing_appended") if diagnostics.count("missing_appended") > 1 else 0
    assert result.degraded == (unreadable or left_out > 0)
    assert result.status == ("fallback" if unreadable else "partial" if left_out else "reranked")
    reasons = ("unreadable_answer",) if unreadable else ("incomplete_answer",) if left_out else ()
    assert result.degraded_reasons == reasons
    placed = 0 if unreadable else 4 - left_out
    assert [item.fallback for item in result] == [False] * placed + [True] * (4 - placed)
    assert result.score_kind == ("input_order" if unreadable else "rank")
    assert all(item.score is None for item in result)
    if diagnostics and diagnostics != ["fallback_input_order"]:
        with pytest.raises(ParseError):
            Reranker("listwise", FakeBackend([text]), strict=True).rerank(QUERY, FOUR)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        pytest.param("", None, id="empty"),
        pytest.param("The document mentions dogs.", None, id="prose"),
        pytest.param("I cannot rate this document.", None, id="refusal"),
        pytest.param("15", None, id="above-range"),
        pytest.param("-3", None, id="below-range"),
        pytest.param("Score: 15", None, id="labelled-above-range"),
        pytest.param("15/10", None, id="scaled-above-range"),
        pytest.param("9" * 400 + "/" + "9" * 400, None, id="overflowing-scale"),
        pytest.param("Score: 8", 8.0, id="labelled"),
        pytest.param("8/10", 8.0, id="scaled"),
        pytest.param("80/100", 8.0, id="percent-scale"),
        pytest.param("7 out of 10", 7.0, id="out-of"),
        pytest.param("7,5", 7.5, id="decimal-comma"),
        pytest.param('{"score": 6}', 6.0, id="json-where-text-asked"),
        pytest.param("<think>maybe 2</think> 9", 9.0, id="thinking"),
    ],
)
def test_pointwise_bad_output(text: str, score: float | None) -> None:
    result = Reranker(Pointwise(method="generate"), FakeBackend([text])).rerank(QUERY, DOCS[:1])
    (item,) = result
    assert item.score == score
    assert [d.code for d in item.diagnostics] == (["score_unparsed"] if score is None else ["score_parsed"])
    if score is None:
        with pytest.raises(ParseError):
            Reranker(Pointwise(method="generate"), FakeBackend([text]), strict=True).rerank(QUERY, DOCS[:1])


def test_pointwise_unparsed_documents_follow_scored_ones_in_input_order() -> None:
    backend = FakeBackend(respond=lambda p: "3" if "bird" in p.user else "no idea")
    result = Reranker(Pointwise(method="generate"), backend).rerank(QUERY, FOUR)
    assert result.indices == [2, 0, 1, 3]
    assert [item.score for item in result] == [3.0, None, None, None]


@pytest.mark.parametrize(
    ("text", "order", "unparsed"),
    [
        pytest.param("A", [0, 1], False, id="A"),
        pytest.param("B", [0, 1], False, id="B-both-orders-cancel"),
        pytest.param("Neither", [0, 1], True, id="neither"),
        pytest.param("", [0, 1], True, id="empty"),
        pytest.param('{"answer": "A"}', [0, 1], False, id="json"),
        pytest.param("Document A is better", [0, 1], False, id="prose-with-choice"),
    ],
)
def test_pairwise_bad_output(text: str, order: list[int], unparsed: bool) -> None:
    result = Reranker("pairwise", FakeBackend(respond=lambda p: text)).rerank(QUERY, DOCS[:2])
    assert result.indices == order
    assert ("choice_unparsed" in codes(result)) is unparsed
    # An unreadable comparison is no judgment: no score, and the result says it fell back.
    assert [item.score for item in result] == ([None, None] if unparsed else [0.5, 0.5])
    assert result.degraded is unparsed and [item.fallback for item in result] == [unparsed] * 2
    if unparsed:
        with pytest.raises(ParseError):
            Reranker("pairwise", FakeBackend(respond=lambda p: text), strict=True).rerank(QUERY, DOCS[:2])


def test_pairwise_consistent_preference_wins() -> None:
    # Always "the document about dogs": A when it is in slot A, else B.
    def prefer_dogs(prompt: Prompt) -> str:
        slot_a = prompt.user.split('<document id="B">')[0]
        return "A" if "Dogs" in slot_a else "B"

    result = Reranker("pairwise", FakeBackend(respond=prefer_dogs)).rerank(QUERY, DOCS[:2])
    assert result.indices == [1, 0] and [item.score for item in result] == [1.0, 0.0]


@pytest.mark.parametrize(
    ("text", "score"), [("Yes.", 10.0), ("no", 0.0), ("Maybe", None), ("", None), ('{"answer": "Yes"}', None)]
)
def test_yes_no_bad_output(text: str, score: float | None) -> None:
    result = Reranker(Pointwise(method="yes_no"), FakeBackend([text])).rerank(QUERY, DOCS[:1])
    assert result[0].score == score
    assert [d.code for d in result[0].diagnostics] == (["score_unparsed"] if score is None else ["score_parsed"])


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("9" * 100_000, id="digit-run"),
        pytest.param("<think>x" * 20_000, id="unclosed-thinking"),
        pytest.param("<think>a</think>" + "<reasoning>x" * 20_000 + "</think>", id="mixed-thinking"),
        pytest.param("Score: " + "9." * 50_000, id="dotted-digits"),
        pytest.param("[1" * 50_000, id="unclosed-brackets"),
    ],
)
def test_parsing_stays_linear_on_pathological_output(text: str) -> None:
    """Parsing runs on the event loop: a long adversarial answer must not stall it (was quadratic)."""
    started = time.perf_counter()
    parse_score(text)
    parse_reason(text)
    parse_permutation(text, 20)
    parse_choice(text, ("A", "B"))
    assert time.perf_counter() - started < 1.0


def test_huge_logprobs_do_not_overflow() -> None:
    """Positive log-probs are no probabilities: the answer's text is read instead (never an overflow)."""

    def respond(prompt: Prompt) -> str:
        return "Yes" if prompt.choices == ("Yes", "No") else "7"

    backend = FakeBackend(respond=respond, logprobs=lambda p: {"Yes": 900.0, "No": 10.0, "9": 1000.0})
    result = Reranker(Pointwise(method="yes_no"), backend).rerank(QUERY, DOCS[:2])
    assert [item.score for item in result] == [10.0, 10.0]
    assert "logprobs_unusable" in {d.code for d in result.diagnostics}
    result = Reranker(Pointwise(method="expected"), backend).rerank(QUERY, DOCS[:2])
    assert [item.score for item in result] == [7.0, 7.0] and result.score_kind == "relevance"
