"""Listwise: the LLM orders a whole window of documents in one answer (RankGPT-style).

Lists longer than ``window`` are ranked with sliding windows from the bottom of the first-stage
order to the top, moving up ``step`` at a time, so strong documents bubble up:
``1 + ceil((n - window) / step)`` sequential calls. The first ``window - step`` places are final
after one pass; ask for ``top_k`` within that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..backends.base import Prompt
from ..errors import ConfigurationError, ParseError
from ..parsing import parse_permutation
from ..prompts import check_template, clip, document_block, render, system_prompt
from ..types import Diagnostic, Document
from .base import Context, Plan, Ranking, Strategy, failure

LIST_TEMPLATE = (
    "Query: {query}\n\nHere are {count} documents, each with an id in brackets.\n\n{documents}\n\n"
    "Rank all {count} documents by how well they answer the query, most relevant first. "
    "Answer with the ids only, in the form [2] > [1] > [3], and nothing else."
)
"""User prompt; placeholders ``{query}``, ``{count}``, ``{documents}``."""


@dataclass(frozen=True)
class Listwise(Strategy):
    """Rank documents in windows of ``window``, sliding up by ``step``.

    Output like ``[3] > [1] > [2]``, ``3, 1, 2`` or JSON lists is understood; duplicate and unknown
    ids are dropped and missing documents keep their relative order after the ranked ones, each
    repair recorded in the diagnostics. A failed or unreadable window keeps its previous order.
    Scores are rank-derived (``score_kind="rank"``).
    """

    name: ClassVar[str] = "listwise"
    window: int = 20
    step: int = 10
    max_doc_chars: int = 1200
    system_prompt: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        if self.window < 2 or not 1 <= self.step <= self.window:
            raise ConfigurationError(f"need window >= 2 and 1 <= step <= window (got {self.window}, {self.step})")
        if self.max_doc_chars < 1:
            raise ConfigurationError("max_doc_chars must be >= 1")
        check_template(self.template, ("query", "documents"), "Listwise")

    def calls(self, n: int) -> int:
        """How many LLM calls ranking ``n`` documents takes."""
        if n < 2:
            return 0
        return 1 + max(0, math.ceil((n - self.window) / self.step))

    def prompt(self, query: str, texts: Sequence[str], ctx: Context) -> Prompt:
        """The prompt ranking ``texts`` labelled [1]..[len(texts)]."""
        blocks = "\n".join(document_block(f"[{i + 1}]", t) for i, t in enumerate(texts))
        user = render(self.template or LIST_TEMPLATE, query=query, count=str(len(texts)), documents=blocks)
        return Prompt(system_prompt(self.system_prompt, ctx.domain), user, max_tokens=6 * len(texts) + 16)

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """Sliding windows from the bottom up; one call per window."""
        n = len(docs)
        order = list(range(n))
        clipped = [clip(d.text, self.max_doc_chars) for d in docs]
        diagnostics = [Diagnostic("truncated", "", i) for i, c in enumerate(clipped) if c.truncated]
        end = n
        while n >= 2:
            start = max(0, end - self.window)
            ids = order[start:end]
            (answer,) = yield [self.prompt(query, [clipped[i].text for i in ids], ctx)]
            error = failure(answer)
            if error is not None:
                diagnostics.append(Diagnostic("call_failed", f"window {start}-{end}: {type(error).__name__}: {error}"))
            else:
                perm = parse_permutation(answer.text, len(ids))
                if ctx.strict and not perm.clean:
                    raise ParseError("not a full ranking of the window", output=answer.text)
                if perm.parsed == 0:
                    diagnostics.append(
                        Diagnostic("fallback_input_order", f"window {start}-{end}: {answer.text[:80]!r}")
                    )
                elif not perm.clean:
                    diagnostics.append(
                        Diagnostic(
                            "permutation_repaired",
                            f"window {start}-{end}: {perm.duplicates} duplicate, {perm.out_of_range} unknown ids",
                        )
                    )
                    diagnostics += [Diagnostic("missing_appended", "", ids[m]) for m in perm.missing]
                order[start:end] = [ids[p] for p in perm.order]
            if start == 0:
                break
            end -= self.step
        scores = {i: (n - r) / n for r, i in enumerate(order)}
        return Ranking(order, "rank", scores, diagnostics=diagnostics)
