"""Tolerant parsing of LLM output. Nothing here raises on what an LLM says; callers decide."""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from .inputs import is_number

_OPEN = re.compile(r"<(think|thinking|reasoning)>", re.IGNORECASE)
_CLOSE = {tag: re.compile(rf"</{tag}>", re.IGNORECASE) for tag in ("think", "thinking", "reasoning")}
_NUMBER = r"[-+]?\d+(?:[.,]\d+)?"
_BRACKETED = re.compile(r"\[\s*(-?\d+)\s*\]")
# An answer cut off inside its last id ("[3] > [1] > [5"): only the tail is searched, so this stays O(1).
_CUT_ID = re.compile(r"\[\s{0,3}(-?\d{1,12})\s{0,3}$")
# "Doc: 2", "Document #3", "passage 4": bounded separators keep the scan linear.
_LABELLED = re.compile(r"(?<![a-z])(?:doc(?:ument)?|passage)s?[ \t:#_]{0,6}(-?\d+)(?!\d|\.\d)", re.IGNORECASE)
_BARE = re.compile(r"(?<![\w.])-?\d+(?!\d|\.\d)")
# A ranking written as bare numbers, "3 > 1 > 2" or "4, 2, 1, 3": ids joined by ">", "," or ";".
_BARE_RUN = re.compile(r"(?<![\w.])-?\d{1,12}(?:[ \t]{0,3}[>,;][ \t]{0,3}-?\d{1,12}(?!\d|\.\d))+")
# LlamaIndex's choice-select form, whatever the labels: "answer_num: 2, answer_relevance: 8" per line.
# Group 1 is the id, group 2 the labelled value after it (LlamaIndex's own parser reads the same way).
_CHOICE_LINE = re.compile(
    r"^\W{0,4}[a-z_][\w \t#]{0,24}:[ \t]{0,3}#?(-?\d{1,12})[ \t]{0,3}[,;][ \t]{0,3}([a-z_][\w \t]{0,24}:.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# A scale named in an answer: a denominator ("/10", "out of 10") or a range of the usual scales ("0-10", "1 to 5").
_SCALE_MENTION = re.compile(
    r"(?:/|out of)\s*\d+(?:\.\d+)?|(?<![\d.,])[01]\s*(?:-|\u2013|\u2014|to)\s*(?:5|10|100)(?![\d.,])", re.IGNORECASE
)


def strip_thinking(text: str) -> str:
    """The answer in ``text``: ``<think>...</think>`` (and ``<thinking>``, ``<reasoning>``) blocks removed.

    Text before a stray closer is thinking too (templates that open the block in the prompt). A
    block that is opened and never closed means the model was still thinking when it stopped
    (its token budget ran out): everything from the opener on is dropped, so that thinking is
    never read as the answer (``"<think>Let me compare [1] with [2]..."`` holds no ranking).
    """
    text = _drop_blocks(text or "")
    closer = re.search(r"</(think|thinking|reasoning)>", text, re.IGNORECASE)
    if closer:
        text = text[closer.end() :]
    opener = _OPEN.search(text)
    if opener:
        text = text[: opener.start()]
    return text.strip()


def _drop_blocks(text: str) -> str:
    # A scan rather than one lazy regex: with many unclosed openers the regex retried each of
    # them to the end of the text (quadratic time on the event loop). Each tag's closer is
    # searched for once past any opener that turns out to be unclosed.
    out: list[str] = []
    kept = search = 0
    unclosed: set[str] = set()
    while True:
        opener = _OPEN.search(text, search)
        if opener is None:
            break
        tag = opener.group(1).lower()
        closer = None if tag in unclosed else _CLOSE[tag].search(text, opener.end())
        if closer is None:
            unclosed.add(tag)
            search = opener.end()
            continue
        out += [text[kept : opener.start()], " "]
        kept = search = closer.end()
    out.append(text[kept:])
    return "".join(out)


def _to_float(token: str) -> float:
    return float(token.replace(",", "."))


def parse_score(text: str, low: float = 0.0, high: float = 10.0) -> float | None:
    """Read a relevance score in ``[low, high]`` from free text, or None.

    Understands ``7``, ``7.5``, ``Score: 8``, ``8/10``, ``8 out of 10``, ``80/100`` and
    ``{"score": 8}``. A number outside the range (and no scale that brings it in) gives None, and
    so does an answer whose only numbers name the scale (``X/10``, ``?/10``, ``N/A (0-10 scale)``).
    """
    text = strip_thinking(text)
    if not text:
        return None
    # The lookbehind anchors the number at the start of a digit run: without it a long run of
    # digits is retried from every position (quadratic time on the event loop).
    scaled = re.search(rf"(?<![\d.,])({_NUMBER})\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
    if scaled:
        value, scale = _to_float(scaled.group(1)), float(scaled.group(2))
        # Digit runs too long for a float overflow to inf; inf/inf would be a NaN score.
        if math.isfinite(scale) and scale > 0 and 0 <= value <= scale:
            return low + (high - low) * value / scale
        return None
    # With no "N/10" rating, the scale is not a rating either: "X/10", "?/10" or "N/A (0-10 scale)"
    # would otherwise read the 10 or the 0 of the scale as the score.
    text = _SCALE_MENTION.sub(" ", text)
    labelled = re.search(rf"(?:score|rating|relevance)\W{{0,4}}\s*({_NUMBER})", text, re.IGNORECASE)
    match = labelled or re.search(_NUMBER, text)
    if not match:
        return None
    value = _to_float(match.group(1) if labelled else match.group(0))
    if not math.isfinite(value) or not low <= value <= high:
        return None
    return value


def parse_reason(text: str) -> str | None:
    """Return the one-line reason from ``Reason: ...`` (or the text after the score), or None."""
    text = strip_thinking(text)
    labelled = re.search(r"reason\W{0,3}\s*(.+)", text, re.IGNORECASE)
    if labelled:
        line = labelled.group(1).strip().splitlines()[0].strip().strip('"')
        return line or None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rest = [ln for ln in lines[1:] if not re.fullmatch(rf"\W*{_NUMBER}\W*", ln)]
    return rest[0] if rest else None


@dataclass(frozen=True)
class Permutation:
    """A repaired permutation of ``range(n)`` read from LLM output.

    ``order`` always holds every position exactly once: ids the LLM gave, in its order, then
    the ones it left out, in input order.
    """

    order: tuple[int, ...]
    parsed: int
    """How many valid, distinct ids the LLM gave."""
    duplicates: int
    out_of_range: int
    missing: tuple[int, ...]

    @property
    def clean(self) -> bool:
        """True when the LLM gave every id once and nothing else."""
        return not (self.duplicates or self.out_of_range or self.missing)


@functools.lru_cache(maxsize=1024)
def _ascii_form(char: str) -> str:
    """ASCII stand-in for one character: circled, parenthesised, dingbat, superscript and subscript
    numbers become their digits (enclosed ones padded with spaces, so ``③①`` stays two ids); full-width
    ASCII forms (``［３］``) become ASCII; anything else is kept."""
    if unicodedata.category(char) == "No":
        value = unicodedata.numeric(char, -1.0)
        if value < 0 or value != int(value):
            return char  # fractions and the like
        digits = str(int(value))
        name = unicodedata.name(char, "")
        return digits if "SUPERSCRIPT" in name or "SUBSCRIPT" in name else f" {digits} "
    if "\uff01" <= char <= "\uff5e":
        return chr(ord(char) - 0xFEE0)
    return char


def normalize_digits(text: str) -> str:
    """Spell numbers written with Unicode digit forms (``③``, ``➌``, ``²``, ``₃``, ``［３］``) in ASCII.

    Decimal digits of other scripts (``٣``) are left alone: ``int`` reads them already.
    """
    if text.isascii():
        return text
    return _NON_ASCII.sub(lambda m: _ascii_form(m.group()), text)


def _id_tokens(text: str) -> list[str]:
    """The id tokens of a listwise answer, by the most specific form present: ``[N]`` (plus an id cut
    off at the very end, ``... > [5``), else labelled ids (``Doc: N``, ``Document #N``, ``passage N``)
    unless a run of bare ids (``3 > 1 > 2``, ``3, 1, 2``) names more documents, else choice-select
    lines (``answer_num: N, answer_relevance: R``: the first number), else bare numbers."""
    tokens = _BRACKETED.findall(text)
    if tokens:
        cut = _CUT_ID.search(text[-32:])
        return [*tokens, cut.group(1)] if cut else tokens
    labelled = _LABELLED.findall(text)
    if labelled:
        # Prose around a bare ranking ("Doc 3 answers it. 3 > 1 > 2 > 4") names fewer documents than it.
        run = max((_BARE.findall(m.group()) for m in _BARE_RUN.finditer(text)), key=lambda r: len(set(r)), default=[])
        return run if len(set(run)) > len(set(labelled)) else labelled
    return [m.group(1) for m in _CHOICE_LINE.finditer(text)] or _BARE.findall(text)


def parse_permutation(text: str, n: int) -> Permutation:
    """Read an ordering of ``n`` items labelled ``[1]..[n]`` from text like ``[3] > [1] > [2]`` or ``3,1,2``.

    Bracketed ids win over labelled ones (``Doc: 2``, ``passage 4``), which win over bare numbers
    (so prose numbers such as ``Relevance: 8`` are ignored) unless those form a ranking of their own
    (``3 > 1 > 2``, ``3, 1, 2``) that names more documents than the labels (prose around the
    ranking); an answer cut off inside its last bracketed id (``[3] > [1] > [5``) keeps that id;
    circled, dingbat, superscript, subscript and full-width digits count as digits. Ids outside
    ``1..n`` (including 0, negatives and absurdly long digit runs) are dropped, duplicates keep
    their first place, and missing ids are appended in input order.
    """
    tokens = _id_tokens(normalize_digits(strip_thinking(text)))
    seen: list[int] = []
    duplicates = out_of_range = 0
    for token in tokens:
        # A digit run far longer than any id is out of range (and int() refuses > 4300 digits).
        value = int(token) - 1 if len(token) <= 12 else -1
        if not 0 <= value < n:
            out_of_range += 1
        elif value in seen:
            duplicates += 1
        else:
            seen.append(value)
    missing = tuple(i for i in range(n) if i not in set(seen))
    return Permutation(
        order=tuple(seen) + missing,
        parsed=len(seen),
        duplicates=duplicates,
        out_of_range=out_of_range,
        missing=missing,
    )


def parse_choice(text: str, choices: tuple[str, ...]) -> str | None:
    """Return the first of ``choices`` that appears as a whole word in ``text`` (case-insensitive), or None."""
    text = strip_thinking(text)
    pattern = "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True))
    found = re.search(rf"(?<![A-Za-z0-9])({pattern})(?![A-Za-z0-9])", text, re.IGNORECASE)
    if not found:
        return None
    word = found.group(1).lower()
    return next(c for c in choices if c.lower() == word)


def choice_mass(logprobs: Mapping[str, float] | None, choices: tuple[str, ...]) -> float:
    """The probability the backend saw on any of ``choices`` (0 to 1; 0 when it saw none).

    A choice's log-prob counts every answer that starts with it (``"1"`` covers ``"10"``), so a
    choice that starts with another listed choice is not added again.
    """
    if not logprobs:
        return 0.0
    keys = {c: c.strip().lower() for c in choices}
    outer = [
        c
        for c in choices
        if c in logprobs and not any(o != c and keys[c].startswith(keys[o]) and keys[o] for o in choices)
    ]
    total = sum(math.exp(min(float(logprobs[c]), 0.0)) for c in outer if math.isfinite(logprobs[c]))
    return min(total, 1.0)


LOGPROB_SLACK = 1e-3
"""How far above 0 a reported log-prob may be (rounding) before it counts as unusable."""


def unusable_logprobs(logprobs: Mapping[str, float] | None, choices: tuple[str, ...]) -> tuple[str, ...]:
    """The choices whose reported log-prob no probability has: NaN, +Infinity, or above 0 (p > 1).

    One such value makes the whole answer's log-probs suspect (renormalising over the other
    choices would read a confident ``"9"`` as a middling score): callers read the text instead.
    """
    if not logprobs:
        return ()
    bad = []
    for c in choices:
        if c in logprobs:
            value = float(logprobs[c])
            if math.isnan(value) or value > LOGPROB_SLACK:
                bad.append(c)
    return tuple(bad)


def choice_distribution(logprobs: Mapping[str, float] | None, choices: tuple[str, ...]) -> dict[str, float]:
    """Normalise the choices' log-probabilities into probabilities over the choices that were seen.

    Empty when there are none, or when any is unusable (:func:`unusable_logprobs`).
    """
    if not logprobs or unusable_logprobs(logprobs, choices):
        return {}
    seen = {c: float(logprobs[c]) for c in choices if c in logprobs and math.isfinite(logprobs[c])}
    if not seen:
        return {}
    # Shift by the largest so that exp() cannot overflow on (invalid) positive log-probs.
    top = max(seen.values())
    probs = {c: math.exp(v - top) for c, v in seen.items()}
    total = sum(probs.values())
    if total <= 0:
        return {}
    return {c: p / total for c, p in probs.items()}


@dataclass(frozen=True)
class LabelledScores:
    """0-10 scores of ``n`` items labelled ``[1]..[n]``, read from one answer (see :func:`parse_labelled_scores`)."""

    scores: dict[int, float]
    """Score by 0-based position, for each label the answer scored readably (first mention wins)."""
    duplicates: int
    """Labels scored again after their first score (ignored)."""
    out_of_range: int
    """Scores given to labels outside ``1..n`` (ignored)."""
    positional: bool = False
    """True when the answer gave bare scores without labels, read in the items' order."""


# "[3] 7", "[3]: Score 8/10", "[3] - 7.5": a bracketed label and the score right after it.
_LABELLED_SCORE = re.compile(
    rf"\[\s{{0,3}}(-?\d{{1,12}})\s{{0,3}}\][ \t]{{0,3}}[:=|>\-\u2013\u2014]?[ \t]{{0,3}}"
    rf"((?:(?:score|rating|relevance)\W{{0,4}}\s{{0,3}})?{_NUMBER}"
    rf"(?:[ \t]{{0,3}}(?:/|out of)[ \t]{{0,3}}\d+(?:\.\d+)?)?)",
    re.IGNORECASE,
)
# One item per line without brackets: "3: 7", "Doc: 3, Relevance: 7", "Document 3 - 8/10", "3 7".
_SCORE_LINE = re.compile(
    r"^\W{0,4}(?:(?:doc(?:ument)?|passage|id)s?[ \t:#_]{0,6})?(-?\d{1,12})"
    r"(?:[ \t]{0,3}[:=|>)\].,\-\u2013\u2014]+[ \t]{0,3}|[ \t]+)(\S.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def _json_pairs(text: str) -> list[tuple[str, object]] | None:
    """(label, value) pairs from the first JSON object or array in ``text``: ``{"3": 7}``,
    ``{"scores": {...}}``, ``[{"id": 3, "score": 7}]``, or a list of bare scores (labels None)."""
    import json

    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except (ValueError, RecursionError):  # not JSON, or absurdly nested
        return None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), dict | list):
        value = next(iter(value.values()))  # {"scores": {...}} or {"results": [...]}
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if not isinstance(value, list):
        return None
    pairs: list[tuple[str, object]] = []
    for entry in value:
        if isinstance(entry, dict):
            label = next((entry[k] for k in ("id", "doc", "document", "label", "index") if k in entry), None)
            score = next((entry[k] for k in ("score", "rating", "relevance") if k in entry), None)
            if label is not None and score is not None:
                pairs.append((str(label), score))
        elif is_number(entry):
            pairs.append(("", entry))  # positional
    return pairs


def parse_labelled_scores(text: str, n: int, low: float = 0.0, high: float = 10.0) -> LabelledScores:
    """Read a score in ``[low, high]`` for each of ``n`` items labelled ``[1]..[n]``.

    Understands one line per item (``[3] 7``, ``[3]: 8/10``, ``3: 7``, ``Doc: 3, Relevance: 7``,
    ``answer_num: 3, answer_relevance: 7``),
    several on one line (``[1] 7, [2] 3``), and JSON (``{"3": 7}``, ``{"scores": {"[3]": 7}}``,
    ``[{"id": 3, "score": 7}]``). Each score is read as :func:`parse_score` reads one (``8/10``
    is 8). Labels outside ``1..n`` are dropped, a label scored twice keeps its first score, and
    a score outside the range is no score; Unicode digit forms count (:func:`normalize_digits`).
    Bare scores without labels are read in order only when
    there are exactly ``n`` of them (``positional``). Items the answer gives no readable score are
    simply absent from :attr:`LabelledScores.scores`.
    """
    text = normalize_digits(strip_thinking(text))
    pairs: list[tuple[str, object]] = [(m.group(1), m.group(2)) for m in _LABELLED_SCORE.finditer(text)]
    if not pairs:
        pairs = _json_pairs(text) or []
    if not pairs:
        pairs = [(m.group(1), m.group(2)) for m in _CHOICE_LINE.finditer(text)]
    if not pairs:
        pairs = [(m.group(1), m.group(2)) for m in _SCORE_LINE.finditer(text)]
    positional = bool(pairs) and all(label == "" for label, _ in pairs)
    if not pairs:
        bare = [line.strip() for line in text.splitlines() if line.strip()]
        if bare and all(re.fullmatch(_NUMBER, line) for line in bare):
            pairs, positional = [("", line) for line in bare], True
        elif n == 1:
            pairs = [("1", text)]
    if positional:
        if len(pairs) != n:
            return LabelledScores({}, 0, 0)
        pairs = [(str(k + 1), value) for k, (_, value) in enumerate(pairs)]
    scores: dict[int, float] = {}
    duplicates = out_of_range = 0
    for label, value in pairs:
        found = re.search(r"-?\d{1,12}", label)
        index = int(found.group()) - 1 if found else -1
        score = parse_score(str(value), low, high) if not isinstance(value, bool) else None
        if score is None:
            continue
        if not 0 <= index < n:
            out_of_range += 1
        elif index in scores:
            duplicates += 1
        else:
            scores[index] = score
    return LabelledScores(scores, duplicates, out_of_range, positional)
