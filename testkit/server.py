"""A fake LLM HTTP server on loopback that speaks the OpenAI and Anthropic wire formats.

The real SDKs talk to it unchanged, so tests exercise their retries, timeouts and error types::

    with FakeLLMServer(lambda request: "Yes") as srv:
        OpenAIBackend(base_url=srv.base_url, api_key="test")             # OpenAI: base URL ends in /v1
        AnthropicBackend(base_url=srv.anthropic_base_url, api_key="test")  # Anthropic: no /v1

Endpoints: ``POST /v1/chat/completions`` (non-streaming, with ``logprobs``/``top_logprobs``),
``GET /v1/models`` and ``POST /v1/messages`` (and ``GET /props`` as llama.cpp, ``POST /tokenize``
as llama.cpp and vLLM), and ``POST
/v1/completions`` (the legacy endpoint: ``echo`` returns the prompt's token log-probs from a
deterministic toy model, :func:`toy_logprobs`). A responder decides
each answer; it returns a string (the answer text) or a :class:`Reply` (status, headers, delay,
malformed body, connection reset, log-probs of several positions, reasoning text and tokens).

``flavor`` reproduces what self-hosted servers do differently from OpenAI's API (see
:data:`Flavor`): llama.cpp answers with its own model name and reports its context size at
``GET /props``; vLLM rejects unknown model names and reports ``max_model_len``; Ollama ignores
log-probs and silently cuts prompts longer than its context. ``context_tokens`` sets the context
size, with each server's own error message; ``reasoning_models`` names models that reject
``max_tokens``, a non-default temperature and log-probs the way OpenAI's reasoning models do.
Standard library only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from llmrerank.protocol import Prompt
from llmrerank.testing import answer_from, overlap, overlap_judge, overlap_logprobs, read_prompt

Api = Literal["openai", "anthropic"]

Flavor = Literal["openai", "llama.cpp", "vllm", "ollama"]
"""Which server :class:`FakeLLMServer` imitates on the OpenAI wire format.

- ``openai``: OpenAI's API. Over ``context_tokens`` a 400 ``context_length_exceeded``.
- ``llama.cpp``: ``llama-server``. Ignores the requested model and answers with its own
  (``served_model``, else the first of ``models``); ``GET /props`` reports ``n_ctx``, one slot's
  share of the context (``parallel``); a prompt of that many tokens or more (its chat template
  counted, the answer not) is a 400 ``exceed_context_size_error`` ("request (N tokens) exceeds the
  available context size (C tokens), try increasing it"); ``POST /tokenize`` takes ``{"content"}``
  and answers ``{"tokens": [...]}``.
- ``vllm``: a model name it does not serve is a 404 ("The model `x` does not exist."), errors
  come as a top-level ``{"object": "error", ...}``; ``GET /v1/models`` reports ``max_model_len``;
  prompt plus ``max_tokens`` over it is a 400 ("This model's maximum context length is C tokens.
  However, you requested N tokens ..."); ``POST /tokenize`` takes ``{"model", "prompt"}`` (or chat
  ``messages``) and answers ``{"count", "max_model_len", "tokens"}``.
- ``ollama``: an unknown model is a 404 (``model "x" not found, try pulling it first``);
  ``logprobs`` is ignored (``null``); a prompt over the context is cut silently, keeping its end,
  and the responder sees the cut prompt.
"""


@dataclass(frozen=True)
class Reply:
    """How :class:`FakeLLMServer` answers one request.

    ``text`` is the answer (or the error message when ``status`` >= 400). ``top_logprobs`` maps
    candidate first tokens to log-probs; an OpenAI request with ``logprobs: true`` gets them in
    ``choices[0].logprobs.content[0].top_logprobs`` (the highest is the sampled token), and
    ``"logprobs": null`` when this is None, like a server that ignores the parameter.
    ``more_logprobs`` are the top log-probs of the following output positions (the highest of
    each is its sampled token), sent as far as the request's token limit allows: a tokenizer
    that splits "10" into "1", "0" shows "0" only there (see :func:`digit_split_reply`).
    ``status`` >= 400 sends the API's error JSON; ``headers`` are added to the response
    (e.g. ``retry-after``); ``delay`` seconds pass before answering; ``raw_body`` is sent verbatim
    instead of the JSON; ``reset`` closes the connection without answering.
    ``reasoning`` is thinking text sent beside the answer: ``message.reasoning_content`` on the
    OpenAI format (vLLM, DeepSeek), a ``thinking`` block before the text on Anthropic's.
    ``reasoning_tokens`` are added to the completion tokens and reported in
    ``usage.completion_tokens_details.reasoning_tokens`` (Anthropic:
    ``usage.output_tokens_details.thinking_tokens``). ``finish_reason`` overrides ``stop``
    (``end_turn`` on Anthropic's format).
    """

    text: str = ""
    top_logprobs: Mapping[str, float] | None = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw_body: bytes | str | None = None
    reset: bool = False
    more_logprobs: Sequence[Mapping[str, float]] = ()
    reasoning: str | None = None
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    drip: float = 0.0
    """Seconds between the body's bytes: a server that keeps the connection alive but never finishes."""


@dataclass(frozen=True)
class ServerRequest:
    """One request as the server saw it.

    ``system`` and ``user`` join the system prompt and the other messages' text with newlines;
    ``headers`` has lower-case names; ``body`` is the parsed JSON body (empty for GET).
    """

    api: Api
    method: str
    path: str
    model: str = ""
    system: str = ""
    user: str = ""
    max_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    body: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cache_control: tuple[str, ...] = ()
    """Where the request marks a prompt-cache breakpoint (Anthropic ``cache_control``):
    ``"system"`` and/or ``"user"``, once per marked block."""
    cache_prefix: str = ""
    """The text up to and including the last block marked with ``cache_control`` ("" when none)."""


Responder = Callable[[ServerRequest], "Reply | str"]


class ScriptExhausted(AssertionError):
    """A :class:`ScriptedResponder` with ``repeat_last=False`` ran out of replies."""


class ScriptedResponder:
    """Answers requests with queued replies, in arrival order.

    When the queue runs out the last reply is repeated (``repeat_last=True``, the default), or
    :class:`ScriptExhausted` is raised, which the server turns into a 500 and records in
    :attr:`FakeLLMServer.errors`. Thread-safe.
    """

    def __init__(self, replies: Iterable[Reply | str], *, repeat_last: bool = True) -> None:
        self.queue: deque[Reply | str] = deque(replies)
        self.repeat_last = repeat_last
        self._last: Reply | str | None = None
        self._lock = threading.Lock()

    def __call__(self, request: ServerRequest) -> Reply | str:
        with self._lock:
            if self.queue:
                self._last = self.queue.popleft()
                return self._last
            if self.repeat_last and self._last is not None:
                return self._last
        raise ScriptExhausted(f"ScriptedResponder has no reply for {request.method} {request.path}")


def overlap_responder(request: ServerRequest) -> Reply:
    """The word-overlap judge (:func:`~llmrerank.testing.overlap_judge`) for every built-in prompt.

    When the request asks for log-probabilities, the reply carries the judge's first-token
    distribution (:func:`~llmrerank.testing.overlap_logprobs`: a softmax over the documents'
    overlap for a set, a near-certain rating for one document) and its text is the most likely token.
    A prompt with no document block (query likelihood on ``/v1/completions``, whose log-probs come
    from the toy model) gets the judge's text only.
    """
    choices = None
    if request.logprobs and request.user.count("<document id=") == 1:
        choices = ("Yes", "No") if "Yes or No" in request.user else tuple(str(i) for i in range(11))
    prompt = Prompt(system=request.system, user=request.user, choices=choices)
    logprobs = overlap_logprobs(prompt) if request.logprobs else {}
    if not logprobs:
        return Reply(text=overlap_judge(prompt))
    return Reply(text=max(logprobs, key=logprobs.__getitem__), top_logprobs=logprobs)


Relevance = Callable[[str, str], float]
"""A judge's ground truth: the graded relevance of ``(query, document text)``, higher is better."""


class BiasedJudge:
    """A judge with a real LLM's known flaws, set by number: it sees each document's graded
    relevance plus a bonus for being shown early, plus seeded noise.

    ``relevance(query, text)`` is the truth (default: word overlap, in [0, 1]; pass qrels grades
    for a collection). A document shown at position ``p`` of ``m`` gets ``bias * (m - 1 - p) / (m - 1)``
    on top (the first ``bias``, the last nothing), and Gaussian noise of deviation ``noise`` drawn
    from a generator seeded with ``seed`` and the prompt's text: the same prompt always gets the
    same answer (a cache is honest), a reordered prompt gets fresh noise. The judge then answers
    every built-in prompt as :func:`~llmrerank.testing.overlap_judge` does, from what it perceives:
    the order of a window, the best letter of a set or pair, a 0-10 rating (the perceived grade over
    ``max_grade``; one document shows no position bias), and, when a request asks for
    log-probabilities, a softmax over the perceived relevance (times ``sharpness``).

    Use it as the responder of :class:`FakeLLMServer` (``FakeLLMServer(BiasedJudge(...))``) or as
    ``FakeBackend(respond=judge.answer)``. With it a method that claims to undo position bias is
    measured, not assumed (``benchmarks/methods.py``).
    """

    def __init__(
        self,
        relevance: Relevance | None = None,
        *,
        bias: float = 1.0,
        noise: float = 0.0,
        seed: int = 0,
        max_grade: float = 1.0,
        sharpness: float = 4.0,
    ) -> None:
        if bias < 0 or noise < 0 or max_grade <= 0:
            raise ValueError("need bias >= 0, noise >= 0 and max_grade > 0")
        self.relevance: Relevance = relevance or overlap
        self.bias = bias
        self.noise = noise
        self.seed = seed
        self.max_grade = max_grade
        self.sharpness = sharpness

    def __repr__(self) -> str:
        return f"BiasedJudge(bias={self.bias}, noise={self.noise}, seed={self.seed})"

    def perceived(self, query: str, texts: Sequence[str], key: str = "") -> list[float]:
        """What the judge sees of ``texts`` shown in this order: relevance + position bonus + noise
        (the noise seeded with ``seed`` and ``key``, the prompt's text)."""
        import random

        rng = random.Random(f"{self.seed}\x00{key}")
        m = len(texts)
        out = []
        for p, text in enumerate(texts):
            bonus = self.bias * (m - 1 - p) / (m - 1) if m > 1 else 0.0
            out.append(self.relevance(query, text) + bonus + (rng.gauss(0.0, self.noise) if self.noise else 0.0))
        return out

    def _read(self, user: str) -> tuple[list[str], list[float]]:
        query, blocks = read_prompt(user)
        return [label for label, _ in blocks], self.perceived(query, [text for _, text in blocks], user)

    def answer(self, prompt: Prompt) -> str:
        """The answer text to one of llmrerank's built-in prompts."""
        labels, seen = self._read(prompt.user)
        rating = [10 * min(1.0, max(0.0, s / self.max_grade)) for s in seen]
        return answer_from(prompt.user, labels, seen, rating)

    def __call__(self, request: ServerRequest) -> Reply:
        """The server's reply: the answer, with first-token log-probabilities when asked for them."""
        prompt = Prompt(system=request.system, user=request.user)
        text = self.answer(prompt)
        if not request.logprobs:
            return Reply(text=text)
        labels, seen = self._read(request.user)
        if len(labels) < 2:
            return Reply(text=text, top_logprobs={text.split()[0] if text else "0": -0.01})
        top = max(self.sharpness * s for s in seen)
        weights = [math.exp(self.sharpness * s - top) for s in seen]
        total = sum(weights)
        logprobs = {label.strip("[]"): math.log(w / total) for label, w in zip(labels, weights, strict=True)}
        return Reply(text=max(logprobs, key=logprobs.__getitem__), top_logprobs=logprobs)


_CACHE_STEP = 512
"""OpenAI caches prefixes in 128-token steps: 512 characters at four a token."""


def digit_split_reply(
    ratings: Mapping[int, float], *, other: Mapping[str, float] | None = None, end: str = "<|im_end|>"
) -> Reply:
    """The reply of a model whose tokenizer writes numbers digit by digit (SmolLM2, Qwen, Llama 2, ...)
    to a 0-10 rating prompt, with the log-probs a llama.cpp or vLLM server would show.

    ``ratings`` maps ratings 0..10 to their probability; ``other`` gives first tokens that are no
    rating (their probability, e.g. ``{"The": 0.5}``). The first position shows ``"1"`` with
    P(1) + P(10), since "10" starts with the token "1"; the sampled first token is the most likely
    one. When it is ``"1"``, the second position shows ``"0"`` with P(10) / (P(1) + P(10)) and
    ``end`` with the rest; otherwise only ``end``: the continuation of an unsampled "1" is never seen.
    """
    first: dict[str, float] = dict(other or {})
    for rating, p in ratings.items():
        key = str(rating)[0]
        first[key] = first.get(key, 0.0) + p
    log = {token: math.log(p) for token, p in first.items() if p > 0}
    sampled = max(log, key=lambda token: log[token])
    ones, tens = ratings.get(1, 0.0), ratings.get(10, 0.0)
    if sampled == "1" and ones + tens > 0:
        second = {token: math.log(p / (ones + tens)) for token, p in (("0", tens), (end, ones)) if p > 0}
        text = "10" if tens > ones else "1"
    else:
        second, text = {end: 0.0}, sampled
    return Reply(text=text, top_logprobs=log, more_logprobs=[second])


def estimate_tokens(text: str) -> int:
    """The server's deterministic token count: about four characters a token."""
    return len(text) // 4 + 1 if text else 0


Tokenizer = Literal["chars", "subword"]
"""How :class:`FakeLLMServer` counts a prompt's tokens: ``chars`` (:func:`estimate_tokens`, four
characters a token) or ``subword`` (:func:`subword_tokens`, like a real tokenizer)."""

_PIECE = re.compile(r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\s")
SUBWORD_LETTERS = 5


def subword_tokens(text: str) -> list[str]:
    """A deterministic stand-in for a real model's tokenizer (they join back to ``text``): a word
    with the space before it, split every :data:`SUBWORD_LETTERS` letters, each digit, each other
    character. Like SmolLM2's or Llama's on scientific text it counts more tokens than four
    characters each: SciFact abstracts come to 3.8 characters a token at the median, 3.3 at the
    5th percentile."""
    tokens: list[str] = []
    for piece in _PIECE.findall(text):
        word = piece.lstrip(" ")
        if len(word) > SUBWORD_LETTERS and word.isalpha():
            parts = [word[k : k + SUBWORD_LETTERS] for k in range(0, len(word), SUBWORD_LETTERS)]
            tokens += [piece[: len(piece) - len(word)] + parts[0], *parts[1:]]
        else:
            tokens.append(piece)
    return tokens


CHATML_TOKENS = 3
"""Tokens of each ChatML message's frame (``<|im_start|>``, the role and a newline before the text;
``<|im_end|>`` and a newline after it), and of the ``<|im_start|>assistant`` line that ends the prompt."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True
    owner: FakeLLMServer

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn does not join daemon threads on close; keep them to join in stop().
        worker = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="FakeLLMServer-conn", daemon=True
        )
        with self.owner._lock:
            self.owner._workers.add(worker)
        worker.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.owner._lock:
                self.owner._workers.discard(threading.current_thread())


class FakeLLMServer:
    """OpenAI- and Anthropic-compatible HTTP server on ``127.0.0.1`` with an ephemeral port.

    Use it as a context manager or call :meth:`start` / :meth:`stop`. ``responder`` is a function
    of the :class:`ServerRequest` returning a :class:`Reply` or answer text (a plain string or
    Reply answers every request alike; None answers ``"OK"``). ``latency`` seconds are added to
    every request. Every request is recorded in :attr:`requests`; :attr:`max_in_flight` is the
    highest number answered at once; exceptions raised by the responder become 500s and are kept
    in :attr:`errors`.

    ``prompt_cache=True`` emulates the providers' prompt prefix caches, and reports what they would
    bill as cached: OpenAI's automatic cache (a prompt of at least ``cache_min_tokens`` tokens reuses
    the longest prefix an earlier request sent, in 128-token steps:
    ``usage.prompt_tokens_details.cached_tokens``) and Anthropic's explicit one (the prefix up to the
    last ``cache_control`` block, when it has at least ``cache_min_tokens`` tokens, is written once:
    ``cache_creation_input_tokens``, and read by later requests: ``cache_read_input_tokens``). As
    with the providers, a prefix becomes readable once the request that wrote it is answered.
    Tokens are :func:`estimate_tokens`.

    ``admit=N`` makes it a server that answers at most N completions at once: a request beyond
    them is answered at once with 429 and ``retry-after`` (``retry_after`` seconds; also as
    ``retry-after-ms``), counted in :attr:`rejected`.

    ``flavor`` picks the server imitated on the OpenAI format (:data:`Flavor`); ``models`` are the
    names it serves (``/v1/models``; vLLM and Ollama refuse others); ``served_model`` is the name a
    llama.cpp server answers with. ``context_tokens``: prompts over it (counted by ``tokenizer``)
    get the flavor's context error (Ollama: are cut); with llama.cpp's ``parallel`` slots each
    request gets its share (``-c 4096 --parallel 4``: 1,024 tokens). ``tokenizer`` (:data:`Tokenizer`)
    defaults to ``subword`` for llama.cpp and vLLM (more tokens than four characters each, as a
    real tokenizer on scientific text; llama.cpp also counts its chat template, ChatML), else
    ``chars``; llama.cpp and vLLM answer ``POST /tokenize`` with it (each in its own shape) unless
    ``tokenize=False``. Models in ``reasoning_models`` answer 400 to ``max_tokens``, to a
    temperature other than 1 and to ``logprobs``, as OpenAI's reasoning models do.
    """

    def __init__(
        self,
        responder: Responder | Reply | str | None = None,
        *,
        latency: float = 0.0,
        models: Iterable[str] = ("fake-model",),
        echo: bool = True,
        prompt_cache: bool = False,
        cache_min_tokens: int = 1024,
        admit: int | None = None,
        retry_after: float = 0.2,
        flavor: Flavor = "openai",
        context_tokens: int | None = None,
        served_model: str | None = None,
        reasoning_models: Iterable[str] = (),
        parallel: int = 1,
        tokenizer: Tokenizer | None = None,
        tokenize: bool = True,
    ) -> None:
        if flavor not in ("openai", "llama.cpp", "vllm", "ollama"):
            raise ValueError(f"unknown flavor {flavor!r}")
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        self.parallel = parallel
        """llama.cpp's ``--parallel``: its slots share ``context_tokens`` (``-c``), each request gets
        ``context_tokens // parallel``, and ``GET /props`` reports that per-slot size."""
        self.tokenizer: Tokenizer = tokenizer or ("subword" if flavor in ("llama.cpp", "vllm") else "chars")
        self.tokenize = tokenize
        """Whether llama.cpp and vLLM answer ``POST /tokenize`` (False: a server without the endpoint, 404)."""
        self.responder = responder
        self.latency = latency
        self.prompt_cache = prompt_cache
        self.cache_min_tokens = cache_min_tokens
        self._prefixes: set[str] = set()
        self.admit = admit
        self.retry_after = retry_after
        self.rejected = 0
        self.models = list(models)
        self.echo = echo
        """False: ``/v1/completions`` ignores ``echo`` and gives log-probs of generated tokens only,
        like llama.cpp's server."""
        self.flavor: Flavor = flavor
        self.context_tokens = context_tokens
        self.served_model = served_model
        self.reasoning_models = frozenset(reasoning_models)
        self.errors: list[BaseException] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._requests: list[ServerRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (after :meth:`start`)."""
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Base URL for the OpenAI SDK, which expects the ``/v1`` suffix."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the Anthropic SDK, which appends ``/v1/messages`` itself."""
        return self.url

    @property
    def requests(self) -> list[ServerRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget recorded requests, errors, the in-flight maximum and the emulated prompt cache."""
        with self._lock:
            self._prefixes.clear()
            self._requests.clear()
            self.errors.clear()
            self.max_in_flight = self.in_flight
            self.rejected = 0

    def start(self) -> FakeLLMServer:
        """Bind an ephemeral port and serve from a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeLLMServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and join every server thread."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        # Idle keep-alive connections would block their handler threads (and server_close) forever.
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join()
        if thread is not None:
            thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def answering_model(self, request: ServerRequest) -> str:
        """The model name a response carries: llama.cpp answers with its own, whatever was asked."""
        if self.flavor == "llama.cpp":
            return self.served_model or (self.models[0] if self.models else "model.gguf")
        return request.model

    def refusal(self, request: ServerRequest) -> tuple[int, dict[str, Any]] | None:
        """The error this server's flavor answers ``request`` with (status and body), if any."""
        body = request.body
        if request.api == "openai" and request.model in self.reasoning_models:
            for name, wrong in (("max_tokens", True), ("logprobs", bool(body.get("logprobs")))):
                if name in body and wrong:
                    return 400, _openai_error(
                        f"Unsupported parameter: '{name}' is not supported with this model."
                        + (" Use 'max_completion_tokens' instead." if name == "max_tokens" else ""),
                        param=name,
                        code="unsupported_parameter",
                    )
            temperature = body.get("temperature")
            if temperature is not None and temperature != 1:
                return 400, _openai_error(
                    f"Unsupported value: 'temperature' does not support {temperature} with this model. "
                    "Only the default (1) value is supported.",
                    param="temperature",
                    code="unsupported_value",
                )
        if request.api == "openai" and self.flavor in ("vllm", "ollama") and request.model not in self.models:
            if self.flavor == "vllm":
                return 404, _vllm_error(f"The model `{request.model}` does not exist.", "NotFoundError", 404)
            message = f'model "{request.model}" not found, try pulling it first'
            return 404, {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        limit = self.slot_context
        if limit is None or self.flavor == "ollama":
            return None
        prompt = self.prompt_tokens(request)
        wanted = request.max_tokens or 0
        if self.flavor == "llama.cpp" and prompt >= limit:
            message = (
                f"request ({prompt} tokens) exceeds the available context size ({limit} tokens), try increasing it"
            )
            error = {"code": 400, "message": message, "type": "exceed_context_size_error"}
            return 400, {"error": {**error, "n_prompt_tokens": prompt, "n_ctx": limit}}
        if self.flavor == "vllm" and prompt + wanted > limit:
            message = (
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt + wanted} tokens ({prompt} in the messages, {wanted} in the completion). "
                "Please reduce the length of the messages or completion."
            )
            return 400, _vllm_error(message, "BadRequestError", 400)
        if self.flavor == "openai" and request.api == "openai" and prompt + wanted > limit:
            message = (
                f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
                f"{prompt} tokens. Please reduce the length of the messages."
            )
            return 400, _openai_error(message, param="messages", code="context_length_exceeded")
        return None

    def fitted(self, request: ServerRequest) -> ServerRequest:
        """The request as the model sees it: an Ollama server keeps only the end of a prompt too long."""
        limit = self.context_tokens
        if self.flavor != "ollama" or limit is None or estimate_tokens(request.system + request.user) <= limit:
            return request
        keep = max(0, limit * 4 - len(request.system))
        return replace(request, user=request.user[len(request.user) - keep :] if keep else "")

    @property
    def slot_context(self) -> int | None:
        """The tokens one request may take: ``context_tokens``, shared by llama.cpp's ``parallel`` slots."""
        if self.context_tokens is None:
            return None
        return self.context_tokens // self.parallel if self.flavor == "llama.cpp" else self.context_tokens

    def count(self, text: str) -> int:
        """Tokens in ``text`` by the server's ``tokenizer``."""
        return len(subword_tokens(text)) if self.tokenizer == "subword" else estimate_tokens(text)

    def prompt_tokens(self, request: ServerRequest) -> int:
        """The tokens the server counts for a request's prompt; llama.cpp's include its chat template."""
        if self.flavor != "llama.cpp" or request.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            return self.count(request.system + request.user)
        messages = (1 if request.system else 0) + 1
        return self.count(request.system) + self.count(request.user) + CHATML_TOKENS * (2 * messages + 1)

    def tokenized(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """The answer to ``POST /tokenize``: llama.cpp's (``content`` -> ``tokens``, with ``with_pieces``
        ``{"id", "piece"}`` objects) or vLLM's (``prompt`` or chat ``messages`` -> ``count``,
        ``max_model_len``, ``tokens``). Token ids are stable numbers of each piece."""
        if self.flavor == "llama.cpp":
            content = body.get("content")
            pieces = subword_tokens(content) if isinstance(content, str) else []
            if self.tokenizer == "chars":
                pieces = [content[k : k + 4] for k in range(0, len(content), 4)] if isinstance(content, str) else []
            ids = [_token_id(p) for p in pieces]
            if body.get("with_pieces"):
                return 200, {"tokens": [{"id": i, "piece": p} for i, p in zip(ids, pieces, strict=True)]}
            return 200, {"tokens": ids}
        if "messages" in body:
            request = _parse("openai", "POST", "/v1/chat/completions", body, {})
            text, frames = request.system + request.user, 3
        elif isinstance(body.get("prompt"), str):
            text, frames = body["prompt"], 0
        else:
            return 400, _vllm_error("either prompt or messages is required", "BadRequestError", 400)
        count = self.count(text) + frames
        limit = self.context_tokens or 32768
        return 200, {"count": count, "max_model_len": limit, "tokens": list(range(count)), "token_strs": None}

    def props(self) -> dict[str, Any]:
        """llama.cpp's ``GET /props``: ``n_ctx`` is one slot's share of the context."""
        n_ctx = self.slot_context or 4096 // self.parallel
        return {
            "default_generation_settings": {"n_ctx": n_ctx, "params": {"n_predict": -1, "temperature": 0.8}},
            "total_slots": self.parallel,
            "model_path": f"/models/{self.answering_model(ServerRequest('openai', 'GET', '/props'))}",
            "chat_template": "{{ messages }}",
            "build_info": "b0000-fake",
        }

    def _answer(self, request: ServerRequest) -> Reply:
        responder = self.responder
        try:
            if responder is None:
                answer: Reply | str = "OK"
            elif isinstance(responder, (Reply, str)):
                answer = responder
            else:
                answer = responder(request)
        except Exception as exc:
            with self._lock:
                self.errors.append(exc)
            return Reply(text=f"responder failed: {type(exc).__name__}: {exc}", status=500)
        return answer if isinstance(answer, Reply) else Reply(text=str(answer))

    def _cache_usage(self, request: ServerRequest) -> tuple[int, int, list[str]]:
        """(cached tokens, tokens written to the cache, prefixes to remember once answered)."""
        if not self.prompt_cache:
            return 0, 0, []
        if request.api == "anthropic":
            prefix = request.cache_prefix
            if estimate_tokens(prefix) < self.cache_min_tokens:
                return 0, 0, []
            with self._lock:
                hit = prefix in self._prefixes
            return (estimate_tokens(prefix), 0, []) if hit else (0, estimate_tokens(prefix), [prefix])
        text = request.system + request.user
        if estimate_tokens(text) < self.cache_min_tokens:
            return 0, 0, []
        steps = [text[:end] for end in range(_CACHE_STEP, len(text) + 1, _CACHE_STEP)]
        with self._lock:
            hits = sum(1 for _ in itertools.takewhile(self._prefixes.__contains__, steps))
        cached = hits * _CACHE_STEP // 4
        return (cached if cached >= self.cache_min_tokens else 0), 0, steps

    def _remember(self, prefixes: list[str]) -> None:
        with self._lock:
            self._prefixes.update(prefixes)

    def _route(self, handler: _Handler, method: str, path: str, headers: Mapping[str, str], raw: bytes) -> bool:
        """Answer an endpoint a subclass adds (see :mod:`testkit.batch_server`); True when answered."""
        return False


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _text(content: Any) -> str:
    """Text of a message ``content``: a string or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _parse(api: Api, method: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> ServerRequest:
    system: list[str] = []
    user: list[str] = []
    marks: list[str] = []
    prefix = ""
    if api == "anthropic":
        if body.get("system"):
            system.append(_text(body["system"]))
        user = [_text(m.get("content")) for m in body.get("messages", ()) if isinstance(m, dict)]
        max_tokens = body.get("max_tokens")
        seen = ""
        contents = [("system", body.get("system"))]
        contents += [("user", m.get("content")) for m in body.get("messages", ()) if isinstance(m, dict)]
        for where, content in contents:
            for block in content if isinstance(content, list) else [content]:
                seen += _text([block]) if isinstance(block, dict) else _text(block)
                if isinstance(block, dict) and block.get("cache_control"):
                    marks.append(where)
                    prefix = seen
            seen += "\n" if where == "system" else ""
    elif "prompt" in body:
        prompt = body["prompt"]
        user = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt] if isinstance(prompt, list) else []
        max_tokens = body.get("max_tokens")
    else:
        for message in body.get("messages", ()):
            if isinstance(message, dict):
                role = message.get("role")
                (system if role in ("system", "developer") else user).append(_text(message.get("content")))
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    return ServerRequest(
        api=api,
        method=method,
        path=path,
        model=str(body.get("model", "")),
        system="\n".join(system),
        user="\n".join(user),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        logprobs=api == "openai"
        and (body.get("logprobs") is not None if "prompt" in body else bool(body.get("logprobs"))),
        top_logprobs=body.get("top_logprobs") if isinstance(body.get("top_logprobs"), int) else None,
        body=body,
        headers=headers,
        cache_control=tuple(marks),
        cache_prefix=prefix,
    )


def _position(top_logprobs: Mapping[str, float], count: int, fallback: str) -> dict[str, Any]:
    """One output position of ``logprobs.content``: the sampled (highest) token and its top alternatives."""
    ranked = sorted(top_logprobs.items(), key=lambda kv: -kv[1])
    token, logprob = ranked[0] if ranked else (fallback, 0.0)
    top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked[:count]]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top}


def _openai_completion(
    request: ServerRequest,
    reply: Reply,
    model: str | None = None,
    flavor: Flavor = "openai",
    cached: int = 0,
    prompt_tokens: int | None = None,
) -> dict[str, Any]:
    logprobs: dict[str, Any] | None = None
    if request.logprobs and reply.top_logprobs is not None and flavor != "ollama":
        positions = [reply.top_logprobs, *reply.more_logprobs][: max(1, request.max_tokens or 1)]
        content = [_position(top, request.top_logprobs or 0, reply.text) for top in positions]
        logprobs = {"content": content, "refusal": None}
    if prompt_tokens is None:
        prompt_tokens = estimate_tokens(request.system + request.user)
    completion_tokens = estimate_tokens(reply.text) + reply.reasoning_tokens
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
    }
    if reply.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or request.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": reply.finish_reason or "stop"}
        ],
        "usage": usage,
        "system_fingerprint": "fp_fake",
    }


_TOKEN = re.compile(r"\s*\S+|\s+")


def toy_tokens(text: str) -> list[str]:
    """The toy model's tokens: each word with the whitespace before it (they join back to ``text``)."""
    return _TOKEN.findall(text)


def toy_logprobs(tokens: list[str]) -> list[float | None]:
    """The toy model's log-probability of each token given the ones before it (None for the first).

    A copying model: a word already seen earlier in the text is likely (-0.5), a new one is not
    (-4.0). So log P(query | passage) grows with the query words the passage contains: query
    likelihood over this model ranks by word overlap, a deterministic oracle for tests.
    """
    seen: set[str] = set()
    out: list[float | None] = []
    for n, token in enumerate(tokens):
        word = re.sub(r"\W+", "", token.lower())
        out.append(None if n == 0 else (-0.5 if word and word in seen else -4.0))
        seen.add(word)
    return out


def _legacy_completion(request: ServerRequest, reply: Reply, echo: bool) -> dict[str, Any]:
    """A ``text_completion`` response; with ``echo`` the prompt's tokens and log-probs come first."""
    body = request.body
    prompts = body.get("prompt")
    prompts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts or [""]]
    max_tokens = request.max_tokens if request.max_tokens is not None else 16
    generated = toy_tokens(reply.text)[:max_tokens]
    choices = []
    prompt_tokens = completion_tokens = 0
    for index, prompt in enumerate(prompts):
        read = toy_tokens(prompt)
        echoed = read if echo and body.get("echo") else []
        tokens = echoed + generated
        values = toy_logprobs(read + generated)[len(read) - len(echoed) :]
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token)
        logprobs = None
        if request.logprobs:
            top = [None if v is None else {t: v} for t, v in zip(tokens, values, strict=True)]
            logprobs = {"tokens": tokens, "token_logprobs": values, "top_logprobs": top, "text_offset": offsets}
        text = "".join(tokens)
        choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": "length"})
        prompt_tokens += len(read)
        completion_tokens += len(generated)
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@contextlib.contextmanager
def loopback_backend(**options: Any) -> Iterator[Any]:
    """An ``OpenAIBackend`` (with ``likelihood=True``) talking to a :class:`FakeLLMServer` that judges by
    word overlap: chat prompts through :func:`overlap_responder`, query likelihood through the toy model.

    The loopback oracle for benchmarks; needs the ``openai`` SDK. The server stops when the block ends.
    """
    from llmrerank.backends.openai import OpenAIBackend

    with FakeLLMServer(overlap_responder) as server:
        yield OpenAIBackend("fake-model", base_url=server.base_url, api_key="test", likelihood=True, **options)


def _anthropic_message(request: ServerRequest, reply: Reply, cached: int = 0, written: int = 0) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.reasoning is not None:
        content.append({"type": "thinking", "thinking": reply.reasoning, "signature": "fake-signature"})
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    usage: dict[str, Any] = {
        "input_tokens": estimate_tokens(request.system + request.user) - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": estimate_tokens(reply.text) + reply.reasoning_tokens,
    }
    if reply.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": reply.reasoning_tokens}
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": reply.finish_reason or "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _token_id(piece: str) -> int:
    """A stable id for a token's text (the same piece, the same id)."""
    return int.from_bytes(piece.encode()[:3].ljust(3, b"\0"), "big") % 49152


def _openai_error(message: str, *, param: str | None, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _vllm_error(message: str, kind: str, status: int) -> dict[str, Any]:
    # vLLM sends its error object at the top level, not under "error".
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


def _error_body(api: Api, status: int, message: str) -> dict[str, Any]:
    if api == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": f"req_{uuid.uuid4().hex}"}
    kind, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _models(api: Api, names: list[str], flavor: Flavor = "openai", context_tokens: int | None = None) -> dict[str, Any]:
    if api == "anthropic":
        data = [{"type": "model", "id": n, "display_name": n, "created_at": "2025-01-01T00:00:00Z"} for n in names]
        return {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    owner = {"openai": "fake", "llama.cpp": "llamacpp", "vllm": "vllm", "ollama": "library"}[flavor]
    models: list[dict[str, Any]] = [{"id": n, "object": "model", "created": 0, "owned_by": owner} for n in names]
    if flavor == "vllm":
        for model in models:
            model.update(root=model["id"], parent=None, max_model_len=context_tokens or 32768)
    return {"object": "list", "data": models}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    # Without TCP_NODELAY a keep-alive reply waits ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.owner._lock:
            self.server.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.owner._lock:
            self.server.owner._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        api: Api = "anthropic" if "anthropic-version" in headers else "openai"
        path = self.path.split("?", 1)[0].rstrip("/")
        self._record(ServerRequest(api=api, method="GET", path=self.path, headers=headers))
        if self.server.owner._route(self, "GET", path, headers, b""):
            return
        owner = self.server.owner
        if path == "/v1/models":
            names = owner.models
            if owner.flavor == "llama.cpp":
                names = [owner.answering_model(ServerRequest(api, "GET", path))]
            self._send(200, _models(api, names, owner.flavor, owner.context_tokens))
        elif path == "/props" and owner.flavor == "llama.cpp":
            self._send(200, owner.props())
        else:
            self._send(404, _error_body(api, 404, f"unknown path {self.path}"))

    def do_POST(self) -> None:
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = self.rfile.read(int(headers.get("content-length") or 0))
        path = self.path.split("?", 1)[0].rstrip("/")
        if owner._route(self, "POST", path, headers, raw):
            return
        api: Api = "anthropic" if path == "/v1/messages" else "openai"
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as exc:
            self._record(ServerRequest(api=api, method="POST", path=self.path, headers=headers))
            self._send(400, _error_body(api, 400, f"invalid JSON body: {exc}"))
            return
        request = _parse(api, "POST", self.path, body, headers)
        self._record(request)
        if path == "/tokenize" and owner.tokenize and owner.flavor in ("llama.cpp", "vllm"):
            self._send(*owner.tokenized(body))
            return
        if path not in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
            self._send(404, _error_body(api, 404, f"unknown path {self.path}"))
            return
        if body.get("stream"):
            self._send(400, _error_body(api, 400, "FakeLLMServer does not stream"))
            return
        if not request.model or (api == "anthropic" and request.max_tokens is None):
            self._send(400, _error_body(api, 400, "model and max_tokens are required"))
            return

        refused = owner.refusal(request)
        if refused is not None:
            self._send(*refused)
            return

        with owner._lock:
            full = owner.admit is not None and owner.in_flight >= owner.admit
            if full:
                owner.rejected += 1
            else:
                owner.in_flight += 1
                owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        if full:
            wait = owner.retry_after
            headers = {"retry-after": f"{wait:g}", "retry-after-ms": f"{wait * 1000:.0f}"}
            self._send(429, _error_body(api, 429, f"at most {owner.admit} requests at once"), headers)
            return
        try:
            request = owner.fitted(request)
            cached, written, prefixes = owner._cache_usage(request)
            reply = owner._answer(request)
            # Event.wait rather than sleep, so that stop() is not held up by slow replies.
            if owner.latency + reply.delay > 0 and owner._stopping.wait(owner.latency + reply.delay):
                self._reset()
                return
            if reply.reset:
                self._reset()
            elif reply.raw_body is not None:
                raw_body = reply.raw_body.encode() if isinstance(reply.raw_body, str) else reply.raw_body
                self._send(reply.status, raw_body, reply.headers)
            elif reply.status >= 400:
                message = reply.text or _phrase(reply.status)
                self._send(reply.status, _error_body(api, reply.status, message), reply.headers)
            elif api == "anthropic":
                self._send(
                    reply.status, _anthropic_message(request, reply, cached, written), reply.headers, drip=reply.drip
                )
                owner._remember(prefixes)
            elif path == "/v1/completions":
                self._send(reply.status, _legacy_completion(request, reply, owner.echo), reply.headers)
            else:
                body = _openai_completion(
                    request, reply, owner.answering_model(request), owner.flavor, cached, owner.prompt_tokens(request)
                )
                self._send(reply.status, body, reply.headers, drip=reply.drip)
                owner._remember(prefixes)
        finally:
            with owner._lock:
                owner.in_flight -= 1

    def _record(self, request: ServerRequest) -> None:
        with self.server.owner._lock:
            self.server.owner._requests.append(request)

    def _send(
        self,
        status: int,
        body: Mapping[str, Any] | bytes,
        headers: Mapping[str, str] | None = None,
        *,
        drip: float = 0.0,
    ) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            if not any(name.lower() == "content-type" for name in headers or {}):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if drip > 0:
                self.wfile.flush()
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    if self.server.owner._stopping.wait(drip):
                        self.close_connection = True
                        return
                return
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away (e.g. it timed out)

    def _reset(self) -> None:
        # Linger 0 makes close() send RST instead of FIN: the client sees a connection reset.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop the makefile reference so close() really closes
            self.connection.close()
        except OSError:
            pass


def _phrase(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


__all__ = [
    "BiasedJudge",
    "FakeLLMServer",
    "Flavor",
    "Relevance",
    "Reply",
    "Responder",
    "ScriptExhausted",
    "ScriptedResponder",
    "ServerRequest",
    "Tokenizer",
    "digit_split_reply",
    "estimate_tokens",
    "loopback_backend",
    "overlap_responder",
    "subword_tokens",
    "toy_logprobs",
    "toy_tokens",
]
