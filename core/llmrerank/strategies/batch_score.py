"""Batch scoring: one call rates a batch of documents 0-10 each (the query is sent once per batch).

``n`` documents cost ``ceil(n / batch_size)`` concurrent calls instead of pointwise's ``n``, and the
prompt tokens of the system prompt, instructions and query are paid once per batch. The scores
are the model's own 0-10 ratings, comparable across batches and queries (``score_kind="relevance"``),
so ``min_score`` works as with pointwise. LlamaIndex's ``LLMRerank`` scores 10 documents a call
the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..diagnostics import CALL_FAILED, SCORE_PARSED, SCORE_UNPARSED, SCORES_POSITIONAL, SCORES_REPAIRED, TRUNCATED
from ..errors import ConfigurationError, ParseError
from ..parsing import parse_labelled_scores
from ..prompts import check_template, clip, document_block, render, system_prompt
from ..protocol import Completion, Context, Prompt, Ranking
from ..types import Diagnostic, Document
from .base import Plan, Strategy, check_int, failure, fit_documents

BATCH_TEMPLATE = (
    "Rate how relevant each document below is to the query, from 0 (unrelated) to 10 (answers it fully). "
    "Judge each document on its own.\n\n"
    "Query: {query}\n\n"
    "{documents}\n\n"
    "Answer with {count} lines, one per document: the document's id in brackets, then its score from 0 "
    "to 10. Write nothing else."
)
"""User prompt; placeholders ``{query}``, ``{documents}`` and ``{count}``.

What every call of one rerank shares (instructions, query) comes before the documents, so a
provider's prefix cache can reuse it. The answer's form is described, not shown: a small model
copies an example's scores."""


@dataclass(frozen=True)
class BatchScore(Strategy):
    """Score ``batch_size`` documents 0-10 per call; rank by score (ties keep input order).

    The documents are split into ``ceil(n / batch_size)`` batches of near-equal size, in input
    order, labelled ``[1]..[m]`` within each batch, and all batches are asked concurrently. An
    answer like ``[3] 7`` per line, ``[1] 7, [2] 3``, ``3: 7`` or JSON ``{"3": 7}`` is understood
    (:func:`~llmrerank.parsing.parse_labelled_scores`). A document the answer gives no readable
    score (left out, or out of 0-10), and every document of a failed call, is not judged: it
    follows the scored ones in input order with ``score=None`` and ``fallback=True``
    (diagnostic ``score_unparsed`` or ``call_failed``). Unknown and repeated labels are dropped
    (diagnostic ``scores_repaired``; a repeated label keeps its first score).
    """

    name: ClassVar[str] = "batch_score"
    batch_size: int = 10
    max_doc_chars: int = 1200
    """Documents are cut to this many characters."""
    system_prompt: str | None = None
    """Replaces the built-in system prompt (the domain instruction is still appended)."""
    template: str | None = None
    """Replaces the user prompt; placeholders ``{query}``, ``{documents}``, ``{count}``."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        check_int("max_doc_chars", self.max_doc_chars, 1)
        check_template(self.template, ("query", "documents"), "BatchScore")

    def absolute_scores(self, ctx: Context) -> bool:
        """Batch scores are 0-10 ratings: yes."""
        return True

    def batches(self, n: int) -> list[range]:
        """The batches of ``n`` documents: ``ceil(n / batch_size)`` runs of near-equal size, in order."""
        if n == 0:
            return []
        count = math.ceil(n / self.batch_size)
        bounds = [round(k * n / count) for k in range(count + 1)]
        return [range(bounds[k], bounds[k + 1]) for k in range(count)]

    def prompt(self, query: str, texts: Sequence[str], ctx: Context) -> Prompt:
        """The prompt scoring ``texts``."""
        return self._prompt(query, texts, ctx)

    def _prompt(self, query: str, texts: Sequence[str], ctx: Context) -> Prompt:
        blocks = "\n".join(document_block(f"[{k + 1}]", t) for k, t in enumerate(texts))
        user = render(self.template or BATCH_TEMPLATE, query=query, documents=blocks, count=str(len(texts)))
        # About 5 tokens a line ("[10] 7\n"), with room for a preamble.
        return Prompt(system_prompt(self.system_prompt, ctx.domain), user, max_tokens=6 * len(texts) + 16)

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """One step: a prompt per batch, all concurrent."""
        batches = self.batches(len(docs))
        clipped = [clip(d.text, self.max_doc_chars) for d in docs]
        widest = max((len(b) for b in batches), default=0)
        clipped, diagnostics = fit_documents(clipped, lambda texts: self._prompt(query, texts, ctx), widest, ctx)
        diagnostics += [Diagnostic(TRUNCATED, "", i) for i, c in enumerate(clipped) if c.truncated]
        answers = yield [self.prompt(query, [clipped[i].text for i in batch], ctx) for batch in batches]
        scores: dict[int, float] = {}
        for batch, answer in zip(batches, answers, strict=True):
            where = f"batch {batch.start + 1}-{batch.stop}"
            error = failure(answer)
            if error is not None:
                diagnostics += [Diagnostic(CALL_FAILED, f"{where}: {type(error).__name__}: {error}", i) for i in batch]
                continue
            assert isinstance(answer, Completion)
            self.read(answer, batch, where, ctx, scores, diagnostics)
        scored = sorted(scores, key=lambda i: (-scores[i], i))
        unscored = [i for i in range(len(docs)) if i not in scores]
        return Ranking(scored + unscored, "relevance", scores, {}, diagnostics, set(unscored))

    def read(
        self,
        answer: Completion,
        batch: range,
        where: str,
        ctx: Context,
        scores: dict[int, float],
        diagnostics: list[Diagnostic],
    ) -> None:
        """Fill ``scores`` for the documents of ``batch`` that ``answer`` scores; record what it left out."""
        read = parse_labelled_scores(answer.text, len(batch))
        missing = [k for k in range(len(batch)) if k not in read.scores]
        if ctx.strict and (missing or read.duplicates or read.out_of_range):
            raise ParseError(f"{where}: not one 0-10 score per document", output=answer.text)
        if read.duplicates or read.out_of_range:
            diagnostics.append(
                Diagnostic(SCORES_REPAIRED, f"{where}: {read.duplicates} repeated, {read.out_of_range} unknown labels")
            )
        if read.positional:
            diagnostics.append(Diagnostic(SCORES_POSITIONAL, f"{where}: scores without labels, read in order"))
        for k, score in read.scores.items():
            scores[batch[k]] = score
            diagnostics.append(Diagnostic(SCORE_PARSED, f"{score:.3g}", batch[k]))
        unread = f"no score for it in {answer.text[:80]!r}"
        diagnostics += [Diagnostic(SCORE_UNPARSED, f"{where}: {unread}", batch[k]) for k in missing]
