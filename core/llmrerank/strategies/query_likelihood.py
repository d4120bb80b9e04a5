"""Query likelihood: rank documents by how probable a language model finds the query after each one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..diagnostics import BASELINE_FAILED, CALL_FAILED, DOMAIN_IGNORED, TRUNCATED
from ..errors import ConfigurationError
from ..prompts import check_template, clip, render
from ..protocol import Context, LogLikelihood, Ranking
from ..types import Diagnostic, Document
from .base import Likelihood, Plan, Strategy, check_int, failure

QUESTION_TEMPLATE = "Passage: {document}\nPlease write a question based on this passage.\nQuestion:"
"""The context before the query (UPR's prompt); placeholder ``{document}``."""

Normalization = Literal["sum", "mean", "pmi"]
NORMALIZATIONS = ("sum", "mean", "pmi")


@dataclass(frozen=True)
class QueryLikelihood(Strategy):
    """Score each document by log P(query | document) under a causal language model.

    The model reads ``template`` with the document in place of ``{document}`` and the query is
    scored as what comes next (after one space): no instruction needs to be followed and nothing
    is generated, so even a small model ranks sensibly (UPR, Sachan et al. 2022; Zhuang et al.
    2023). Needs a backend with ``supports_likelihood`` (:class:`~llmrerank.LocalBackend`, or
    :class:`~llmrerank.OpenAIBackend` with ``likelihood=True`` against a server that echoes prompt
    log-probs, such as vLLM); choosing it with another backend raises
    :class:`~llmrerank.errors.ConfigurationError` when the :class:`~llmrerank.Reranker` is built.

    ``normalization`` says what the score (``score_kind="likelihood"``) means:

    - ``sum``: log P(query | document), the query tokens' summed log-probability;
    - ``mean``: the same per query token;
    - ``pmi``: log P(query | document) - log P(query | empty passage): how much the document raises
      the query's probability (> 0: more likely than with no passage); one more scoring per rerank.

    Within one rerank the three order the documents identically (the query's tokens and the
    baseline are the same for every document); they differ in how comparable scores are across
    queries, which matters for thresholds such as ``min_score``. Documents are cut to
    ``max_doc_chars``; N documents cost N scorings (N + 1 with ``pmi``), batched by the backend.
    A scoring that fails leaves its document unscored (``score=None``, after the scored ones).
    The ``domain`` instruction does not apply (there is no instruction), which a
    ``domain_ignored`` diagnostic says.
    """

    name: ClassVar[str] = "query_likelihood"
    yields_likelihood: ClassVar[bool] = True
    normalization: Normalization = "pmi"
    max_doc_chars: int = 800
    """Documents are cut to this many characters (title and the start of the text, for abstracts)."""
    template: str | None = None
    """Replaces :data:`QUESTION_TEMPLATE`; must contain ``{document}``; the query follows it after a space."""

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ConfigurationError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        check_int("max_doc_chars", self.max_doc_chars, 1)
        check_template(self.template, ("document",), "QueryLikelihood")

    def context(self, text: str) -> str:
        """The text the model reads before the query."""
        return render(self.template or QUESTION_TEMPLATE, document=text)

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """One step: a (context, query) pair per document, plus the empty-passage baseline for ``pmi``."""
        clipped = [clip(doc.text, self.max_doc_chars) for doc in docs]
        diagnostics = [
            Diagnostic(TRUNCATED, f"cut to {self.max_doc_chars} characters", i)
            for i, c in enumerate(clipped)
            if c.truncated
        ]
        if ctx.domain:
            diagnostics.append(Diagnostic(DOMAIN_IGNORED, "query likelihood has no instruction to add a domain to"))
        continuation = " " + query
        pairs = [(self.context(c.text), continuation) for c in clipped]
        if self.normalization == "pmi":
            pairs.append((self.context(""), continuation))
        answers = yield Likelihood(pairs)
        baseline = 0.0
        how = self.normalization
        if how == "pmi":
            last = answers[-1]
            answers = answers[:-1]
            if isinstance(last, LogLikelihood):
                baseline = last.logprob
            else:
                how = "sum"
                diagnostics.append(
                    Diagnostic(BASELINE_FAILED, f"empty-passage scoring failed ({last}); scores are sums instead")
                )
        scores: dict[int, float] = {}
        for i, answer in enumerate(answers):
            error = failure(answer)
            if error is not None:
                diagnostics.append(Diagnostic(CALL_FAILED, f"{type(error).__name__}: {error}", i))
                continue
            if how == "mean":
                scores[i] = answer.logprob / max(answer.tokens, 1)
            else:
                scores[i] = answer.logprob - baseline
        scored = sorted(scores, key=lambda i: (-scores[i], i))
        unscored = [i for i in range(len(docs)) if i not in scores]
        return Ranking(scored + unscored, "likelihood", scores, {}, diagnostics, set(unscored))
