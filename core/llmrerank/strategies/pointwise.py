"""Pointwise: every document gets a 0-10 relevance score, independently and concurrently."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..diagnostics import (
    CALL_FAILED,
    SCORE_FROM_LOGPROBS,
    SCORE_MASS_LOW,
    SCORE_PARSED,
    SCORE_PREFIX_UNRESOLVED,
    SCORE_UNPARSED,
    TRUNCATED,
)
from ..errors import ConfigurationError, ParseError
from ..parsing import choice_distribution, choice_mass, parse_reason, parse_score
from ..prompts import check_template, clip, document_block, render, system_prompt
from ..protocol import Completion, Context, Prompt, Ranking
from ..types import Diagnostic, Document, ScoreKind
from .base import Plan, Strategy, check_int, cut_to_fit, failure, fitted_cap, logprobs_note

SCORE_TEMPLATE = (
    "Judge how relevant a document is to a query.\n\n"
    "Query: {query}\n\n{document}\n\n"
    "How relevant is the document to the query, from 0 (unrelated) to 10 (answers it fully)?\n"
    "{answer_format}"
)
"""User prompt; placeholders ``{query}``, ``{document}``, ``{answer_format}``.

A short instruction and the query come before the document, so the calls of one rerank share their
prompt's start (see :mod:`llmrerank.prompts` on prefix caching); the question follows the document."""

YES_NO_TEMPLATE = (
    "Judge whether a document answers a query.\n\n"
    "Query: {query}\n\n{document}\n\n"
    "Does the document answer the query? Answer Yes or No."
)
"""User prompt for the Yes/No log-probability method."""

NUMBER_ONLY = "Answer with the number only."
WITH_REASON = "Answer in exactly two lines:\nScore: <0-10>\nReason: <one sentence>"
SCALE = tuple(str(i) for i in range(11))

Method = Literal["auto", "generate", "expected", "yes_no"]


@dataclass(frozen=True)
class Pointwise(Strategy):
    """Score each document 0-10 on its own; rank by score (ties keep input order).

    ``method``:
    - ``generate``: the LLM writes the score (and a reason with ``with_reason=True``).
    - ``expected``: the expected value of the 0..10 rating under the next-token log-probabilities
      (finer, fewer ties); needs a backend with log-probs.
    - ``yes_no``: 10 x P(Yes) / (P(Yes) + P(No)); needs log-probs.
    - ``auto`` (default): the backend's preferred log-prob method when it has log-probs and no
      reason is asked for, else ``generate``.

    A score that cannot be read is recorded as ``score_unparsed``; such documents (and those whose
    call failed) follow every scored document, in input order, with ``score=None``.
    N documents cost N calls.
    """

    name: ClassVar[str] = "pointwise"
    method: Method = "auto"
    with_reason: bool = False
    max_doc_chars: int = 2000
    """Documents are cut to this many characters (roughly a quarter as many tokens)."""
    system_prompt: str | None = None
    """Replaces the built-in system prompt (the domain instruction is still appended)."""
    template: str | None = None
    """Replaces the user prompt; placeholders ``{query}``, ``{document}``, ``{answer_format}``."""

    def __post_init__(self) -> None:
        if self.method not in ("auto", "generate", "expected", "yes_no"):
            raise ConfigurationError(f"unknown pointwise method {self.method!r}")
        check_int("max_doc_chars", self.max_doc_chars, 1)
        check_template(self.template, ("query", "document"), "Pointwise")

    def resolve_method(self, ctx: Context) -> str:
        """The method this plan will use given the backend's capabilities."""
        if self.method != "auto":
            return self.method
        if ctx.supports_logprobs and not self.with_reason:
            return ctx.pointwise_method
        return "generate"

    def absolute_scores(self, ctx: Context) -> bool:
        """Pointwise scores are 0-10 ratings: yes."""
        return True

    def prompt(
        self, query: str, doc: Document, method: str, ctx: Context, max_chars: int | None = None
    ) -> tuple[Prompt, bool]:
        """Build the prompt for one document (cut to ``max_chars``, default :attr:`max_doc_chars`);
        also says whether the document was truncated."""
        clipped = clip(doc.text, max_chars or self.max_doc_chars)
        return self._prompt(query, clipped.text, method, ctx), clipped.truncated

    def _prompt(self, query: str, text: str, method: str, ctx: Context) -> Prompt:
        block = document_block("1", text)
        system = system_prompt(self.system_prompt, ctx.domain)
        if method == "yes_no":
            user = render(self.template or YES_NO_TEMPLATE, query=query, document=block, answer_format="")
            return Prompt(system, user, max_tokens=2, choices=("Yes", "No"))
        answer_format = WITH_REASON if self.with_reason else NUMBER_ONLY
        user = render(self.template or SCORE_TEMPLATE, query=query, document=block, answer_format=answer_format)
        if method == "expected":
            return Prompt(system, user, max_tokens=2, choices=SCALE)
        return Prompt(system, user, max_tokens=64 if self.with_reason else 8)

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """One step: a prompt per document."""
        method = self.resolve_method(ctx)
        limit = self.max_doc_chars
        diagnostics: list[Diagnostic] = []
        if ctx.context_tokens is not None:
            texts = [clip(d.text, limit).text for d in docs]
            cap = fitted_cap(lambda one: self._prompt(query, one[0], method, ctx), texts, 1, ctx)
            if cap is not None:
                limit = cap
                diagnostics += cut_to_fit(cap, ctx)
        built = [self.prompt(query, doc, method, ctx, limit) for doc in docs]
        diagnostics += [
            Diagnostic(TRUNCATED, f"cut to {limit} characters", i)
            for i, (_, truncated) in enumerate(built)
            if truncated
        ]
        answers = yield [p for p, _ in built]
        scores: dict[int, float] = {}
        reasons: dict[int, str] = {}
        from_logprobs = 0
        for i, answer in enumerate(answers):
            error = failure(answer)
            if error is not None:
                diagnostics.append(Diagnostic(CALL_FAILED, f"{type(error).__name__}: {error}", i))
                continue
            score, how = read_score(answer, method)
            if method in ("expected", "yes_no"):
                diagnostics += logprobs_note(answer, SCALE if method == "expected" else ("Yes", "No"), i)
            if score is None:
                if ctx.strict:
                    raise ParseError("no 0-10 score in the answer", output=answer.text)
                diagnostics.append(Diagnostic(SCORE_UNPARSED, f"could not read a score from {answer.text[:80]!r}", i))
                continue
            scores[i] = score
            diagnostics.append(Diagnostic(how, f"{score:.3g}", i))
            if how == SCORE_FROM_LOGPROBS:
                from_logprobs += 1
                diagnostics += logprob_doubts(answer, method, i)
            if self.with_reason:
                reason = parse_reason(answer.text)
                if reason:
                    reasons[i] = reason
        scored = sorted(scores, key=lambda i: (-scores[i], i))
        unscored = [i for i in range(len(docs)) if i not in scores]
        # Labelled by what was read: a yes/no or 0-10 answer read from the text is a relevance rating.
        kind: ScoreKind = "logprob" if from_logprobs else "relevance"
        return Ranking(scored + unscored, kind, scores, reasons, diagnostics, set(unscored))


MASS_LOW = 0.5
"""Below this share of the probability on valid answers, a log-prob score gets ``score_mass_low``."""
UNRESOLVED_NOTABLE = 0.1
"""From this probability on, a first token whose continuation was unseen gets ``score_prefix_unresolved``."""


def logprob_doubts(answer: Completion, method: str, index: int) -> list[Diagnostic]:
    """What makes a log-prob score less sure: little probability on valid answers (``score_mass_low``;
    the score is renormalised over what there was) and a ``"1"`` that may have been ``"10"``
    (``score_prefix_unresolved``; counted as 1, see :func:`~llmrerank.backends.openai.chained_logprobs`)."""
    choices = SCALE if method == "expected" else ("Yes", "No")
    doubts = []
    mass = choice_mass(answer.choice_logprobs, choices)
    if mass < MASS_LOW:
        doubts.append(
            Diagnostic(SCORE_MASS_LOW, f"valid answers hold {mass:.0%} of the probability; renormalised", index)
        )
    logprobs = answer.choice_logprobs or {}
    if method == "expected" and "10" in answer.unresolved and "1" in logprobs:
        share = math.exp(min(logprobs["1"], 0.0))
        if share >= UNRESOLVED_NOTABLE:
            message = f"P('1') = {share:.2f} may include '10' (the server showed no continuation); counted as 1"
            doubts.append(Diagnostic(SCORE_PREFIX_UNRESOLVED, message, index))
    return doubts


def read_score(answer: Completion, method: str) -> tuple[float | None, str]:
    """Score from log-probs when present, else parsed from the text; with the diagnostic code."""
    if method == "expected":
        probs = choice_distribution(answer.choice_logprobs, SCALE)
        if probs:
            # P(first token "1") also covers "10"; count "1" only for what "10" leaves.
            if "1" in probs and "10" in probs:
                probs["1"] = max(probs["1"] - probs["10"], 0.0)
            total = sum(probs.values())
            if total > 0:
                return sum(int(c) * p for c, p in probs.items()) / total, SCORE_FROM_LOGPROBS
    elif method == "yes_no":
        probs = choice_distribution(answer.choice_logprobs, ("Yes", "No"))
        if probs:
            return 10.0 * probs.get("Yes", 0.0), SCORE_FROM_LOGPROBS
        text = answer.text.strip().lower()
        if text.startswith(("yes", "no")):
            return (10.0 if text.startswith("yes") else 0.0), SCORE_PARSED
        return None, SCORE_UNPARSED
    return parse_score(answer.text), SCORE_PARSED
