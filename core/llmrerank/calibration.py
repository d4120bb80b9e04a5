"""Calibrated probability of relevance: a monotone map from a strategy's raw score to P(relevant).

A 0-10 rating, a log-prob expectation and a query likelihood are on scales that mean different
things per model, so a threshold on them is a guess. Fitted on judged queries (``llmrerank
calibrate``), a :class:`Calibration` maps one model's and one strategy's raw score to the share of
documents with that score that were judged relevant:

- ``isotonic`` (default): pool-adjacent-violators over the pairs sorted by score, the non-decreasing
  step function closest to the labels in squared error, read between its steps by linear
  interpolation (and flat beyond the ends);
- ``platt``: a logistic curve ``1 / (1 + exp(-(a * score + b)))`` fitted by Newton's method on
  Platt's smoothed targets.

Both are monotone, so a rerank's order stays as it is; only the scores change meaning
(``score_kind="probability"``, in [0, 1]). Saved as a small JSON file holding one map per model and
strategy (:func:`save_calibration`, :func:`load_calibration`). Pure Python; no dependency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .diagnostics import CALIBRATION_SKIPPED
from .errors import ConfigurationError
from .protocol import Ranking
from .types import Diagnostic

Method = Literal["isotonic", "platt"]

FORMAT = "llmrerank-calibration/1"
"""The ``format`` field of a calibration file."""


@dataclass(frozen=True)
class Calibration:
    """A fitted map from one model's and strategy's raw score to P(relevant), in [0, 1]."""

    model: str
    strategy: str
    score_kind: str
    """The raw scores' kind it was fitted on (``logprob``, ``likelihood``, ...): other kinds are not mapped."""
    method: Method
    x: tuple[float, ...] = ()
    """Isotonic: the raw scores of the steps (increasing)."""
    y: tuple[float, ...] = ()
    """Isotonic: P(relevant) at each of :attr:`x` (non-decreasing)."""
    a: float = 0.0
    b: float = 0.0
    """Platt: P = 1 / (1 + exp(-(a * score + b)))."""
    pairs: int = 0
    positives: int = 0
    fitted_on: Mapping[str, Any] = field(default_factory=dict)
    """What it was fitted on (collection, queries, depth, relevance grade), for the record."""

    @property
    def key(self) -> str:
        """``model::strategy``, this map's key in a calibration file."""
        return calibration_key(self.model, self.strategy)

    def probability(self, score: float) -> float:
        """P(relevant) for a raw ``score``."""
        if self.method == "platt":
            z = self.a * score + self.b
            return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        x, y = self.x, self.y
        if score <= x[0]:
            return y[0]
        if score >= x[-1]:
            return y[-1]
        lo, hi = 0, len(x) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if x[mid] <= score else (lo, mid)
        share = (score - x[lo]) / (x[hi] - x[lo])
        return y[lo] + share * (y[hi] - y[lo])

    def as_json(self) -> dict[str, Any]:
        """The map as JSON data."""
        out = asdict(self)
        out["x"], out["y"], out["fitted_on"] = list(self.x), list(self.y), dict(self.fitted_on)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        """The map from :meth:`as_json` data; :class:`ConfigurationError` when it is not one."""
        try:
            made = cls(
                model=str(data["model"]),
                strategy=str(data["strategy"]),
                score_kind=str(data["score_kind"]),
                method=data["method"],
                x=tuple(float(v) for v in data.get("x", ())),
                y=tuple(float(v) for v in data.get("y", ())),
                a=float(data.get("a", 0.0)),
                b=float(data.get("b", 0.0)),
                pairs=int(data.get("pairs", 0)),
                positives=int(data.get("positives", 0)),
                fitted_on=dict(data.get("fitted_on", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a calibration map: {type(exc).__name__}: {exc}") from exc
        if made.method not in ("isotonic", "platt"):
            raise ConfigurationError(f"unknown calibration method {made.method!r}: use 'isotonic' or 'platt'")
        if made.method == "isotonic" and (not made.x or len(made.x) != len(made.y)):
            raise ConfigurationError("an isotonic calibration needs as many x as y values, at least one")
        return made


def calibration_key(model: str, strategy: str) -> str:
    """The key of a model's and strategy's map in a calibration file."""
    return f"{model}::{strategy}"


def fit_calibration(
    scores: Sequence[float],
    labels: Sequence[bool | int],
    *,
    model: str,
    strategy: str,
    score_kind: str,
    method: Method = "isotonic",
    fitted_on: Mapping[str, Any] | None = None,
) -> Calibration:
    """Fit a map from ``scores`` to P(``labels``); :class:`ConfigurationError` without both classes."""
    if len(scores) != len(labels):
        raise ConfigurationError(f"{len(scores)} scores for {len(labels)} labels")
    pairs = [(float(s), 1.0 if label else 0.0) for s, label in zip(scores, labels, strict=True) if math.isfinite(s)]
    positives = int(sum(label for _, label in pairs))
    if positives == 0 or positives == len(pairs):
        raise ConfigurationError(
            f"calibration needs relevant and non-relevant documents with scores; got {positives} of {len(pairs)}"
        )
    base = Calibration(model, strategy, score_kind, method, pairs=len(pairs), positives=positives)
    base = replace(base, fitted_on=dict(fitted_on or {}))
    if method == "platt":
        a, b = _platt(pairs)
        return replace(base, a=a, b=b)
    if method != "isotonic":
        raise ConfigurationError(f"unknown calibration method {method!r}: use 'isotonic' or 'platt'")
    x, y = _isotonic(pairs)
    return replace(base, x=x, y=y)


def _isotonic(pairs: list[tuple[float, float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pool adjacent violators: blocks of (weight-averaged score, mean label, weight), means non-decreasing."""
    groups: dict[float, list[float]] = {}  # score -> [sum of labels, count]: equal scores map alike
    for score, label in pairs:
        group = groups.setdefault(score, [0.0, 0.0])
        group[0] += label
        group[1] += 1
    blocks: list[list[float]] = []  # [sum of scores, sum of labels, count]
    for score in sorted(groups):
        positives, count = groups[score]
        blocks.append([score * count, positives, count])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            for k in range(3):
                blocks[-1][k] += last[k]
    return tuple(b[0] / b[2] for b in blocks), tuple(b[1] / b[2] for b in blocks)


def _platt(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """Logistic regression of the label on the score (Platt's targets), by Newton's method."""
    n_pos = sum(label for _, label in pairs)
    n_neg = len(pairs) - n_pos
    high, low = (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)
    mean = sum(s for s, _ in pairs) / len(pairs)
    spread = math.sqrt(sum((s - mean) ** 2 for s, _ in pairs) / len(pairs)) or 1.0
    data = [((s - mean) / spread, high if label else low) for s, label in pairs]
    a = b = 0.0
    for _ in range(100):
        ga = gb = haa = hab = hbb = 0.0
        for z, t in data:
            p = 1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, a * z + b))))
            w = max(p * (1 - p), 1e-12)
            ga += (p - t) * z
            gb += p - t
            haa += w * z * z
            hab += w * z
            hbb += w
        det = haa * hbb - hab * hab
        if det <= 1e-18:
            break
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-10:
            break
    return a / spread, b - a * mean / spread  # back to the raw score's scale


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[bool | int], bins: int = 10) -> float:
    """ECE: over ``bins`` equal-width bins of [0, 1], the gap between mean probability and share
    relevant, weighted by the bin's share of the pairs."""
    table = reliability(probabilities, labels, bins)
    total = sum(row[2] for row in table)
    return sum(abs(p - rate) * count for p, rate, count in table) / total if total else 0.0


def reliability(
    probabilities: Sequence[float], labels: Sequence[bool | int], bins: int = 10
) -> list[tuple[float, float, int]]:
    """Per non-empty bin of [0, 1]: (mean probability, share relevant, pairs): a reliability diagram's points."""
    sums = [[0.0, 0.0, 0] for _ in range(bins)]
    for p, label in zip(probabilities, labels, strict=True):
        k = min(bins - 1, max(0, int(p * bins)))
        sums[k][0] += p
        sums[k][1] += 1.0 if label else 0.0
        sums[k][2] += 1
    return [(s[0] / s[2], s[1] / s[2], int(s[2])) for s in sums if s[2]]


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    """Write ``calibration`` into the file at ``path``, beside the maps of other models and strategies
    it holds (one of the same model and strategy is replaced)."""
    path = Path(path)
    maps = _read(path) if path.exists() else {}
    maps[calibration.key] = calibration.as_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, "maps": maps}, indent=1) + "\n", encoding="utf-8")
    return path


def load_calibration(source: str | Path | Calibration, model: str, strategy: str) -> Calibration:
    """The map for ``model`` and ``strategy`` from a calibration file (or ``source`` itself when it is
    a :class:`Calibration` for them); :class:`ConfigurationError` naming what the file holds otherwise."""
    if isinstance(source, Calibration):
        found = {source.key: source.as_json()}
        where = "the calibration given"
    else:
        found = _read(Path(source))
        where = str(source)
    key = calibration_key(model, strategy)
    if key not in found:
        raise ConfigurationError(
            f"{where} has no calibration for model {model!r} and strategy {strategy!r} (it has: "
            f"{', '.join(sorted(found)) or 'none'}); fit one with: llmrerank calibrate --strategy {strategy} "
            f"--model {model} --data DIR --out FILE"
        )
    return source if isinstance(source, Calibration) else Calibration.from_json(found[key])


def calibrate_ranking(ranking: Ranking, calibration: Calibration) -> Ranking:
    """``ranking`` with its scores mapped to P(relevant) (``score_kind="probability"``), when they are
    the kind the calibration was fitted on; else as it is, with a ``calibration_skipped`` diagnostic."""
    if ranking.score_kind != calibration.score_kind or not ranking.scores:
        note = f"scores are {ranking.score_kind!r}, the calibration maps {calibration.score_kind!r}: not mapped"
        ranking.diagnostics.append(Diagnostic(CALIBRATION_SKIPPED, note))
        return ranking
    scores = {i: calibration.probability(s) for i, s in ranking.scores.items()}
    return replace(ranking, score_kind="probability", scores=scores)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read calibration file {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"calibration file {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("maps"), dict):
        raise ConfigurationError(f"{path} is not an llmrerank calibration file (format {FORMAT!r})")
    return dict(data["maps"])


__all__ = [
    "Calibration",
    "Method",
    "calibrate_ranking",
    "calibration_key",
    "expected_calibration_error",
    "fit_calibration",
    "load_calibration",
    "reliability",
    "save_calibration",
]
