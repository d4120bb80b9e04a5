"""Listwise: the LLM orders a whole window of documents in one answer (RankGPT-style).

Lists longer than ``window`` are ranked with sliding windows from the bottom of the first-stage
order to the top, moving up ``step`` at a time, so strong documents bubble up:
``1 + ceil((n - window) / step)`` sequential calls. The first ``window - step`` places are final
after one pass; ask for ``top_k`` within that.

Two methods:

- ``generate``: the model writes the whole order (``[2] > [1] > [3]``). It gives no score
  (``score_kind="rank"``): the order is the judgment.
- ``first_token`` (needs log-probabilities): the model is asked for the same order with letter
  labels, but only its first token is read, as in FIRST (Reddy et al., 2024): the probability of
  each label being written first orders the window and is the document's score
  (``score_kind="first_token"``). One output token per window instead of about 6 per document.

Permutation self-consistency (Tang et al., NAACL 2024, "Found in the Middle"): with
``self_consistency=k`` each window is ranked k times, once as it stands and k - 1 times shuffled
(seeded by ``seed``, so the prompts are the same on every run and a response cache serves them),
and the k orders are aggregated by **Borda count** (a document gets ``m - 1 - position`` points
from each order of a window of ``m``; ties keep the window's current order). A model's bias for
what it is shown first or last then mostly cancels out. The k calls of a window are one step,
sent at once: about the latency of one call, k times the calls and tokens. Each document's score
is its Borda points over the most it could get, in [0, 1] (``score_kind="borda"``), relative to
the other documents of the last window that placed it, like ``first_token``'s.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

from ..diagnostics import (
    CALL_FAILED,
    CONTEXT_FITTED,
    CONTEXT_TOO_SMALL,
    FALLBACK_INPUT_ORDER,
    LABEL_UNSEEN,
    MISSING_APPENDED,
    NO_LOGPROBS,
    PERMUTATION_REPAIRED,
    TRUNCATED,
)
from ..errors import ConfigurationError, ParseError
from ..parsing import choice_distribution, parse_permutation
from ..prompts import Clip, check_template, clip, document_block, fits, render, system_prompt
from ..protocol import Completion, Context, Prompt, Ranking
from ..types import Diagnostic, Document, ScoreKind
from .base import USEFUL_WINDOW, Answer, Plan, Strategy, check_int, cut_clips, failure, fitted_cap, logprobs_note

LIST_TEMPLATE = (
    "Rank documents by how well they answer a query.\n\n"
    "Query: {query}\n\nHere are {count} documents, each with an id in brackets.\n\n{documents}\n\n"
    "Rank all {count} documents by how well they answer the query, most relevant first. "
    "Answer with the ids only, in the form {example}, and nothing else."
)
"""User prompt; placeholders ``{query}``, ``{count}``, ``{documents}`` (and ``{example}``, the answer's form).

A short instruction and the query come before the documents, so the windows of one rerank share
their prompt's start; the full instruction follows the documents."""

LETTERS = tuple(string.ascii_uppercase)
"""Labels of the ``first_token`` method: one token each in common tokenizers."""

Method = Literal["generate", "first_token"]


@dataclass(frozen=True)
class Listwise(Strategy):
    """Rank documents in windows of ``window``, sliding up by ``step`` (default: half the window).

    Output like ``[3] > [1] > [2]``, ``3, 1, 2`` or JSON lists is understood; duplicate and unknown
    ids are dropped and documents the answer leaves out follow the ranked ones in their previous
    order (RankGPT's reading), each repair recorded in the diagnostics. The model placed only the
    documents it named (one left out is implied last): the others are marked ``fallback`` unless
    another window placed them, and the result is ``partial`` (``incomplete_answer``). A window
    whose call failed or whose answer names no id keeps its previous order, its documents marked
    ``fallback`` the same way. With ``method="first_token"`` the
    window (at most 26 documents) is ordered by the first-token probability of each label.
    """

    name: ClassVar[str] = "listwise"
    window: int = 20
    step: int | None = None
    """How far each window moves up; None: half the window (set when the strategy is made, so it
    is an int afterwards: :attr:`stride` reads it as one)."""
    max_doc_chars: int = 1200
    system_prompt: str | None = None
    template: str | None = None
    method: Method = "generate"
    """``generate`` (the model writes the order) or ``first_token`` (log-prob scores; see the module docstring)."""
    self_consistency: int = 1
    """How many times each window is ranked, shown in a different seeded order each time; the
    orders are aggregated by Borda count (see the module docstring). 1: once, as shown."""
    seed: int = 0
    """Seeds the shuffles of ``self_consistency``: the same seed gives the same prompts (cacheable)."""

    def __post_init__(self) -> None:
        check_int("window", self.window, 2)
        if self.step is None:
            object.__setattr__(self, "step", max(1, self.window // 2))
        check_int("step", self.step, 1)
        check_int("max_doc_chars", self.max_doc_chars, 1)
        if self.stride > self.window:
            raise ConfigurationError(f"need window >= 2 and 1 <= step <= window (got {self.window}, {self.step})")
        if self.method not in ("generate", "first_token"):
            raise ConfigurationError(f"unknown listwise method {self.method!r}: use 'generate' or 'first_token'")
        if self.method == "first_token" and self.window > len(LETTERS):
            raise ConfigurationError(f"method='first_token' labels documents A-Z: window must be <= {len(LETTERS)}")
        check_template(self.template, ("query", "documents"), "Listwise")
        check_int("self_consistency", self.self_consistency, 1)

    @property
    def stride(self) -> int:
        """:attr:`step` typed as the int it is once the strategy is made (an alias, not a second setting)."""
        return cast(int, self.step)

    def calls(self, n: int) -> int:
        """How many LLM calls ranking ``n`` documents takes (context retries not counted); the
        ``self_consistency`` calls of a window run at once, so sequential rounds are ``calls / self_consistency``."""
        return self.self_consistency * self.calls_for(n, self.window, self.stride)

    @staticmethod
    def calls_for(n: int, window: int, step: int) -> int:
        """How many windows of ``window`` documents, moving up ``step``, rank ``n`` documents."""
        if n < 2:
            return 0
        return 1 + max(0, math.ceil((n - window) / step))

    def labels(self, count: int) -> list[str]:
        """The labels of ``count`` documents: ``[1]..[count]``, or ``[A]..`` for ``first_token``."""
        if self.method == "first_token":
            return list(LETTERS[:count])
        return [str(i + 1) for i in range(count)]

    def prompt(self, query: str, texts: Sequence[str], ctx: Context) -> Prompt:
        """The prompt ranking ``texts``."""
        return self._prompt(query, texts, ctx)

    def _prompt(self, query: str, texts: Sequence[str], ctx: Context) -> Prompt:
        labels = self.labels(len(texts))
        blocks = "\n".join(document_block(f"[{label}]", t) for label, t in zip(labels, texts, strict=True))
        example = " > ".join(f"[{label}]" for label in (labels[1:2] + labels[:1] + labels[2:3]))
        user = render(
            self.template or LIST_TEMPLATE, query=query, count=str(len(texts)), documents=blocks, example=example
        )
        system = system_prompt(self.system_prompt, ctx.domain)
        if self.method == "first_token" and ctx.supports_logprobs:
            return Prompt(system, user, max_tokens=1, choices=tuple(labels))
        return Prompt(system, user, max_tokens=6 * len(texts) + 16)

    def fitted(self, query: str, texts: Sequence[str], ctx: Context) -> tuple[int, int, int | None]:
        """The window, step and per-document character cap (None: uncut) that fit ``ctx.context_tokens``.

        With a known context a window holds as many documents as fit (its longest ones counted, by
        :func:`~llmrerank.prompts.fits`), at least two, with the step shrunk in proportion: more
        windows, never a prompt the server refuses. When two documents do not fit, they are cut.
        """
        room = ctx.context_tokens
        if room is None or len(texts) < 2:
            return self.window, self.stride, None
        longest = sorted(texts, key=len, reverse=True)
        full = window = min(self.window, len(texts))
        while window > 2 and not fits(self._prompt(query, longest[:window], ctx), room, ctx.chars_per_token):
            window -= 1
        step = self.stride if window == full else max(1, round(self.stride * window / self.window))
        return window, min(step, window), fitted_cap(lambda cut: self._prompt(query, cut, ctx), texts, window, ctx)

    def fit_texts(
        self, query: str, docs: Sequence[Document], ctx: Context
    ) -> tuple[list[Clip], int, int, list[Diagnostic]]:
        """The documents clipped (and cut to fit a known context), the window and step that fit it,
        and the diagnostics of both (``context_too_small`` below a useful window or document)."""
        n = len(docs)
        clipped = [clip(d.text, self.max_doc_chars) for d in docs]
        window, step, cap = self.fitted(query, [c.text for c in clipped], ctx)
        diagnostics: list[Diagnostic] = []
        if window < min(self.window, n):  # fewer documents per window: more windows
            note = f"window of {window} documents, step {step}, to fit {ctx.context_tokens} tokens of context"
            diagnostics.append(Diagnostic(CONTEXT_FITTED, note))
            if window < min(self.window, n, USEFUL_WINDOW):
                windows = self.calls_for(n, window, step)
                small = f"{note}: {windows} windows for {n} documents, under the {USEFUL_WINDOW} a window needs"
                diagnostics.append(Diagnostic(CONTEXT_TOO_SMALL, small))
        clipped, cut = cut_clips(clipped, cap, ctx)
        diagnostics += cut
        diagnostics += [Diagnostic(TRUNCATED, "", i) for i, c in enumerate(clipped) if c.truncated]
        return clipped, window, step, diagnostics

    def plan(self, query: str, docs: Sequence[Document], ctx: Context) -> Plan:
        """Sliding windows from the bottom up; one call per window (windows fitted to a known context)."""
        n = len(docs)
        order = list(range(n))
        clipped, window, step, diagnostics = self.fit_texts(query, docs, ctx)
        judged: set[int] = set()
        scores: dict[int, float] = {}
        if self.method == "first_token" and not ctx.supports_logprobs:
            diagnostics.append(Diagnostic(NO_LOGPROBS, "no log-probabilities from the backend: generated order used"))
        end = n
        while n >= 2:
            start = max(0, end - window)
            ids = order[start:end]
            where = f"window {start + 1}-{end}"
            shown = self.shown(ids, start)
            answers = yield [self.prompt(query, [clipped[i].text for i in s], ctx) for s in shown]
            read = self.aggregate(answers, shown, diagnostics, where, ctx, scores)
            if read is not None:
                order[start:end], named = read
                judged.update(named)
            if start == 0:
                break
            end -= step
        kind: ScoreKind = "rank"
        if scores:
            kind = "borda" if self.self_consistency > 1 else "first_token"
        unjudged = set(range(n)) - judged if n >= 2 else set()
        return Ranking(order, kind, {i: s for i, s in scores.items() if i in judged}, {}, diagnostics, unjudged)

    def shown(self, ids: list[int], salt: int = 0) -> list[list[int]]:
        """The orders a window of ``ids`` is shown in: as it stands, then ``self_consistency - 1``
        shuffles seeded by ``seed``, ``salt`` (the window's place) and the pass, so reruns send
        the same prompts."""
        orders = [list(ids)]
        for k in range(1, self.self_consistency):
            shuffled = list(ids)
            random.Random(f"{self.seed}:{salt}:{len(ids)}:{k}").shuffle(shuffled)
            orders.append(shuffled)
        return orders

    def aggregate(
        self,
        answers: Sequence[Answer],
        shown: list[list[int]],
        diagnostics: list[Diagnostic],
        where: str,
        ctx: Context,
        scores: dict[int, float],
    ) -> tuple[list[int], list[int]] | None:
        """The window's new order from the answers to its passes, and the documents they placed
        (None when no answer was readable).

        One pass: its order (first-token scores filled in ``scores``). Several: Borda count, each
        pass giving a document ``m - 1 - position`` points in a window of ``m`` (documents a pass
        left out share its remaining points equally; a failed or unreadable pass is left out),
        ties kept in the window's current order; ``scores`` get the points over their most,
        in [0, 1].
        """
        ids = shown[0]
        reads: list[tuple[list[int], list[int]]] = []
        for k, (answer, seen) in enumerate(zip(answers, shown, strict=True)):
            here = where if len(shown) == 1 else f"{where}, pass {k + 1}"
            error = failure(answer)
            if error is not None:
                diagnostics.append(Diagnostic(CALL_FAILED, f"{here}: {type(error).__name__}: {error}"))
                continue
            assert isinstance(answer, Completion)
            read = self.read(answer, seen, diagnostics, here, ctx, scores if len(shown) == 1 else {})
            if read is not None:
                reads.append(read)
        if len(shown) == 1 or not reads:
            return reads[0] if reads else None
        m = len(ids)
        points = dict.fromkeys(ids, 0.0)
        named: set[int] = set()
        for order, placed in reads:
            for position, i in enumerate(placed):
                points[i] += m - 1 - position
            rest = [i for i in order if i not in set(placed)]
            for i in rest:  # positions len(placed)..m-1, shared
                points[i] += sum(m - 1 - p for p in range(len(placed), m)) / len(rest)
            named.update(placed)
        place = {i: p for p, i in enumerate(ids)}
        merged = sorted(ids, key=lambda i: (-points[i], place[i]))
        most = len(reads) * (m - 1)
        for i in ids:
            scores[i] = points[i] / most
        return merged, [i for i in merged if i in named]

    def read(
        self,
        answer: Completion,
        ids: list[int],
        diagnostics: list[Diagnostic],
        where: str,
        ctx: Context,
        scores: dict[int, float],
    ) -> tuple[list[int], list[int]] | None:
        """The window's new order from one answer and the documents the answer placed (scores filled
        for ``first_token``), or None if unreadable."""
        labels = self.labels(len(ids))
        probs = choice_distribution(answer.choice_logprobs, tuple(labels)) if self.method == "first_token" else {}
        if self.method == "first_token":
            diagnostics += logprobs_note(answer, tuple(labels), where=where)
        if probs:
            seen = sorted((p, -k) for k, label in enumerate(labels) if (p := probs.get(label)) is not None)
            ranked = [-k for _, k in reversed(seen)]
            unseen = [k for k in range(len(ids)) if k not in set(ranked)]
            if unseen:
                diagnostics.append(Diagnostic(LABEL_UNSEEN, f"{where}: {len(unseen)} labels not in the top tokens"))
            for k in ranked:
                scores[ids[k]] = probs[labels[k]]
            order = [ids[k] for k in ranked + unseen]
            return order, order  # a label outside the top tokens is one the model found least likely
        perm = parse_permutation(answer.text, len(ids))
        if ctx.strict and not perm.clean:
            raise ParseError("not a full ranking of the window", output=answer.text)
        if perm.parsed == 0 and self.method == "first_token":
            # Without log-probs the letters are read from the text: A is 1.
            letters = parse_permutation(_letters_to_numbers(answer.text, len(ids)), len(ids))
            perm = letters if letters.parsed else perm
        if perm.parsed == 0:
            diagnostics.append(Diagnostic(FALLBACK_INPUT_ORDER, f"{where}: unreadable answer {answer.text[:80]!r}"))
            return None
        if not perm.clean:
            diagnostics.append(
                Diagnostic(
                    PERMUTATION_REPAIRED,
                    f"{where}: named {len(ids) - len(perm.missing)} of {len(ids)}; {perm.duplicates} duplicate, "
                    f"{perm.out_of_range} unknown ids",
                )
            )
            diagnostics += [Diagnostic(MISSING_APPENDED, "", ids[m]) for m in perm.missing]
        order = [ids[p] for p in perm.order]
        # A ranking of all but one places the last one too; with more left out the order is the model's
        # only for those it named.
        named = order if len(perm.missing) <= 1 else order[: len(order) - len(perm.missing)]
        return order, named


def _letters_to_numbers(text: str, count: int) -> str:
    """``[C] > [A]`` as ``[3] > [1]``, for answers in the letter labels of ``first_token``."""

    def number(match: re.Match[str]) -> str:
        k = LETTERS.index(match.group(1))
        return f"[{k + 1}]" if k < count else match.group(0)

    return re.sub(r"(?<![A-Za-z])\[?([A-Z])\]?(?![A-Za-z])", number, text)
