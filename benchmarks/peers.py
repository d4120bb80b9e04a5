"""Benchmark 2: LLM calls, tokens and wall time per query against the peers, on the same data and server.

Every reranker reorders the BM25 top ``--depth`` (bm25s, from :mod:`llmrerank.evaluation`) of the first
``--queries`` SciFact test queries, one query after another, through its library's own blocking API
(plus LlamaIndex's async one, which runs its batches in parallel). All of them talk to one
:class:`~testkit.server.FakeLLMServer` on 127.0.0.1 that waits a fixed ``--latency`` per call
and answers each library's own prompt format by word overlap between the query and the documents in
that prompt, so nobody is favoured and the quality figures are comparable:

- llmrerank's prompts: :func:`llmrerank.testing.overlap_judge` (scores, A/B, ``[2] > [1]``);
- LangChain ``LLMListwiseRerank``: the JSON its structured output asks for (``response_format``
  json_schema, or a tool call when it sends ``tools``): ``{"ranked_document_ids": [...]}``;
- LlamaIndex ``LLMRerank``: ``Doc: 3, Relevance: 7`` lines for the documents with any overlap.

Token counts are the server's (about four characters a token, prompt and answer), the same for all.
``wall / latency`` is the p50 wall time per query over the per-call latency: 1.0 is the floor for a
reranker that makes one round of parallel calls. ``ΔnDCG@10 vs BM25`` is the mean per-query difference
from BM25 on the same queries with its 95% paired-bootstrap interval
(:func:`llmrerank.evaluation.paired_difference`); each query's nDCG@10 is kept in peers.json.

    python benchmarks/peers.py --queries 30 --latency 0.2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/
from benchmark_support import add_data_options, machine, make_parser, publish

from llmrerank import Listwise, Pairwise, Pointwise, Reranker, Strategy
from llmrerank.evaluation import EvalReport, evaluate, load_beir, paired_difference
from llmrerank.pricing import PRICES_AS_OF, price_of
from llmrerank.protocol import Prompt
from llmrerank.testing import overlap, overlap_judge
from testkit.server import FakeLLMServer, Reply, ServerRequest, estimate_tokens

MODEL = "gpt-4o-mini"
"""The model name every client sends; its list price gives the USD column (an estimate)."""

RERANKERS = (
    "llmrerank-listwise",
    "llmrerank-listwise-async",
    "llmrerank-pointwise",
    "llmrerank-pairwise",
    "llmrerank-rankgpt",
    "langchain-listwise",
    "llamaindex-llmrerank",
    "llamaindex-llmrerank-async",
)
"""Names accepted by ``--rerankers``, in table order."""

RANKGPT_DEPTH = 40
"""RankGPT's sliding window (20, step 10) is run over this many BM25 documents, as in the paper."""


# --------------------------------------------------------------------------- the judge behind the server


@dataclass
class Meter:
    """LLM calls and tokens as the server counted them (thread-safe)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, prompt: str, answer: str) -> None:
        with self._lock:
            self.calls += 1
            self.prompt_tokens += estimate_tokens(prompt)
            self.completion_tokens += estimate_tokens(answer)

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.calls, self.prompt_tokens, self.completion_tokens


def rank_by_overlap(query: str, texts: Sequence[str]) -> list[int]:
    """Positions of ``texts``, most query words first (ties keep the given order)."""
    scores = [overlap(query, t) for t in texts]
    return sorted(range(len(texts)), key=lambda i: (-scores[i], i))


def langchain_answer(request: ServerRequest) -> str:
    """``{"ranked_document_ids": [...]}`` for LLMListwiseRerank (documents in the system message)."""
    docs = {int(i): t for i, t in re.findall(r"Document ID: (\d+)\n```(.*?)```", request.system, re.DOTALL)}
    ids = sorted(docs)
    order = rank_by_overlap(request.user, [docs[i] for i in ids])
    return json.dumps({"ranked_document_ids": [ids[p] for p in order]})


def llamaindex_answer(user: str) -> str:
    """``Doc: n, Relevance: r`` lines, best first, for the documents sharing any word with the question."""
    tail = user.rsplit("Let's try this now:", 1)[-1]
    found = re.search(r"\nQuestion: (.*?)\n+Answer:\s*$", tail, re.DOTALL)
    query = found.group(1) if found else ""
    parts = re.split(r"(?m)^Document (\d+):\n", tail[: found.start()] if found else tail)
    docs = [(int(n), text.strip()) for n, text in zip(parts[1::2], parts[2::2], strict=True)]
    lines = []
    for p in rank_by_overlap(query, [t for _, t in docs]):
        relevance = round(10 * overlap(query, docs[p][1]))
        if relevance >= 1:
            lines.append(f"Doc: {docs[p][0]}, Relevance: {relevance}")
    return "\n".join(lines)


def tool_call_body(request: ServerRequest, arguments: str) -> bytes:
    """A chat completion whose answer is a call of the request's first tool."""
    tool = request.body["tools"][0]["function"]["name"]
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": tool, "arguments": arguments},
            }
        ],
    }
    prompt, answer = estimate_tokens(request.system + request.user), estimate_tokens(arguments)
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer},
    }
    return json.dumps(body).encode()


def make_responder(meter: Meter) -> Callable[[ServerRequest], Reply]:
    """The server's responder: each library's format answered by word overlap; calls counted in ``meter``."""

    def respond(request: ServerRequest) -> Reply:
        body = request.body
        if "response_format" in body or "tools" in body:
            text = langchain_answer(request)
            meter.add(request.system + request.user, text)
            return Reply(raw_body=tool_call_body(request, text)) if "tools" in body else Reply(text)
        if "Let's try this now:" in request.user:
            text = llamaindex_answer(request.user)
        else:
            text = overlap_judge(Prompt(request.system, request.user))
        meter.add(request.system + request.user, text)
        # Log-prob prompts (pointwise "expected", pairwise A/B): all the mass on the answer.
        return Reply(text, top_logprobs={text: 0.0} if request.logprobs else None)

    return respond


# --------------------------------------------------------------------------- the rerankers


def llmrerank_fn(strategy: Strategy, base_url: str, *, use_async: bool = False) -> Any:
    """llmrerank's ``Reranker.rerank`` (or ``arerank``) over :class:`~llmrerank.OpenAIBackend`, default options."""
    from llmrerank.backends.openai import OpenAIBackend

    reranker = Reranker(strategy, OpenAIBackend(model=MODEL, base_url=base_url, api_key="benchmark"))

    def rerank(query: str, texts: Sequence[str]) -> list[int]:
        return list(reranker.rerank(query, texts).indices)

    # Async: evaluate() awaits Reranker.arerank itself and closes the backend in its own event loop.
    return reranker if use_async else rerank


def langchain_fn(base_url: str, depth: int) -> Callable[[str, Sequence[str]], list[int]]:
    """LangChain's ``LLMListwiseRerank.compress_documents`` over ``ChatOpenAI``, keeping every document."""
    from langchain_classic.retrievers.document_compressors import LLMListwiseRerank
    from langchain_core.documents import Document
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=base_url, api_key="benchmark")  # type: ignore[arg-type]
    compressor = LLMListwiseRerank.from_llm(llm=llm, top_n=depth)

    def rerank(query: str, texts: Sequence[str]) -> list[int]:
        docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)]
        return [d.metadata["i"] for d in compressor.compress_documents(docs, query)]

    return rerank


def llamaindex_fn(base_url: str, depth: int, *, use_async: bool) -> Callable[[str, Sequence[str]], Any]:
    """LlamaIndex's ``LLMRerank`` (batches of 10) over ``llama_index.llms.openai.OpenAI``."""
    from llama_index.core.postprocessor import LLMRerank
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.llms.openai import OpenAI

    def make() -> LLMRerank:
        return LLMRerank(llm=OpenAI(model=MODEL, api_base=base_url, api_key="benchmark"), top_n=depth)

    postprocessor = make()
    # The OpenAI LLM keeps its async client, which breaks in the next event loop ("Event loop is closed",
    # then a silent SDK retry): one postprocessor per loop, as an application with one loop would have.
    per_loop: dict[int, LLMRerank] = {}

    def nodes(texts: Sequence[str]) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(texts)]

    def rerank(query: str, texts: Sequence[str]) -> list[int]:
        return [int(n.node.node_id) for n in postprocessor.postprocess_nodes(nodes(texts), query_str=query)]

    async def arerank(query: str, texts: Sequence[str]) -> list[int]:
        loop = id(asyncio.get_running_loop())
        if loop not in per_loop:
            per_loop[loop] = make()
        found = await per_loop[loop].apostprocess_nodes(nodes(texts), QueryBundle(query))
        return [int(n.node.node_id) for n in found]

    return arerank if use_async else rerank


def make_reranker(name: str, base_url: str, depth: int) -> tuple[str, int, Any]:
    """(label, BM25 depth, function) for a ``--rerankers`` name."""
    if name == "llmrerank-listwise":
        return "llmrerank Listwise (window 20)", depth, llmrerank_fn(Listwise(), base_url)
    if name == "llmrerank-listwise-async":
        return "llmrerank Listwise (arerank)", depth, llmrerank_fn(Listwise(), base_url, use_async=True)
    if name == "llmrerank-pointwise":
        return "llmrerank Pointwise (log-probs)", depth, llmrerank_fn(Pointwise(), base_url)
    if name == "llmrerank-pairwise":
        return "llmrerank Pairwise (sort)", depth, llmrerank_fn(Pairwise(mode="sort"), base_url)
    if name == "llmrerank-rankgpt":
        label = f"llmrerank Listwise RankGPT-style (window 20, step 10, top {RANKGPT_DEPTH})"
        return label, RANKGPT_DEPTH, llmrerank_fn(Listwise(window=20, step=10), base_url)
    if name == "langchain-listwise":
        return "LangChain LLMListwiseRerank", depth, langchain_fn(base_url, depth)
    if name == "llamaindex-llmrerank":
        return "LlamaIndex LLMRerank", depth, llamaindex_fn(base_url, depth, use_async=False)
    if name == "llamaindex-llmrerank-async":
        return "LlamaIndex LLMRerank (apostprocess)", depth, llamaindex_fn(base_url, depth, use_async=True)
    raise SystemExit(f"unknown reranker {name!r}: use {', '.join(RERANKERS)}")


# --------------------------------------------------------------------------- running and reporting


def warm_up(fn: Any) -> None:
    """One small rerank first, so that imports and client set-up stay out of the figures."""
    query, texts = "warm-up query about cells", ["a document about cells", "another document"]
    if isinstance(fn, Reranker):

        async def once() -> None:
            await fn.arerank(query, texts)
            await fn.backend.aclose()

        asyncio.run(once())
    elif inspect.iscoroutinefunction(fn):
        asyncio.run(fn(query, texts))
    else:
        fn(query, texts)


def quality(report: EvalReport, baseline: EvalReport) -> dict[str, Any]:
    """nDCG@10, its paired difference from ``baseline`` (same queries) with the 95% bootstrap interval,
    and each query's nDCG@10, so that the interval can be computed again from peers.json."""
    difference = paired_difference(report, baseline)
    return {
        "nDCG@10": report.metrics["nDCG@10"],
        "ΔnDCG@10": difference.delta,
        "ΔnDCG@10 95% CI": [difference.low, difference.high],
        "per-query nDCG@10": {q.query_id: q.metrics["nDCG@10"] for q in report.per_query},
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every reranker; one row of figures each, the BM25 baseline first."""
    collection = load_beir(args.data)
    price = price_of(MODEL)
    meter = Meter()
    rows = []
    baselines = {args.depth: evaluate(collection, None, depth=args.depth, queries=args.queries)}
    base = baselines[args.depth]
    zero = dict.fromkeys(["calls/q", "prompt tok/q", "completion tok/q", "USD/1k q", "wall/latency"], 0.0)
    label = f"BM25 top {args.depth} (no reranking)"
    figures = {**quality(base, base), "p50 s/q": base.latency_p50, "p95 s/q": base.latency_p95}
    rows.append({"reranker": label, "key": "bm25", "depth": args.depth, **figures, **zero})
    with FakeLLMServer(make_responder(meter), latency=args.latency, models=[MODEL]) as server:
        for key in args.rerankers:
            label, depth, fn = make_reranker(key, server.base_url, args.depth)
            warm_up(fn)
            server.clear()
            before = meter.snapshot()
            report = evaluate(collection, fn, depth=depth, queries=args.queries, name=label)
            calls, prompt, completion = (a - b for a, b in zip(meter.snapshot(), before, strict=True))
            n = max(report.queries, 1)
            if depth not in baselines:  # the RankGPT-style row's deeper BM25 list, on the same queries
                baselines[depth] = evaluate(collection, None, depth=depth, queries=args.queries)
            rows.append(
                {
                    "reranker": label,
                    "key": key,
                    "depth": depth,
                    **quality(report, baselines[depth]),
                    "calls/q": calls / n,
                    "prompt tok/q": prompt / n,
                    "completion tok/q": completion / n,
                    "USD/1k q": price.cost(prompt, completion) * 1000 / n if price else None,
                    "p50 s/q": report.latency_p50,
                    "p95 s/q": report.latency_p95,
                    "wall/latency": report.latency_p50 / args.latency if args.latency else None,
                    "failed calls": len(server.errors),
                    "max in flight": server.max_in_flight,
                }
            )
            print(f"{label}: {report.latency_p50:.2f} s/q, {calls / n:.1f} calls/q", file=sys.stderr, flush=True)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The result table in markdown."""
    head = [
        "reranker",
        "nDCG@10",
        "ΔnDCG@10 vs BM25 [95% CI]",
        "calls/q",
        "prompt tok/q",
        "completion tok/q",
        "USD/1k q",
        "p50 s/q",
        "wall/latency",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        low, high = r["ΔnDCG@10 95% CI"]
        cells = [
            r["reranker"],
            f"{r['nDCG@10']:.3f}",
            "" if r["key"] == "bm25" else f"{r['ΔnDCG@10']:+.3f} [{low:+.3f}, {high:+.3f}]",
            f"{r['calls/q']:.1f}",
            f"{r['prompt tok/q']:.0f}",
            f"{r['completion tok/q']:.0f}",
            "n/a" if r["USD/1k q"] is None else f"{r['USD/1k q']:.2f}",
            f"{r['p50 s/q']:.2f}",
            "–" if not r["wall/latency"] else f"{r['wall/latency']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the markdown table; with ``--out``, write peers.json and peers.md."""
    parser = make_parser(__doc__)
    add_data_options(parser, queries=30, depth=20, latency=0.2)
    parser.add_argument("--rerankers", nargs="+", default=list(RERANKERS), choices=RERANKERS, metavar="NAME")
    parser.add_argument("--out", help="folder for peers.json and peers.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args)
    note = (
        f"SciFact test, first {args.queries} queries, BM25 top {args.depth} (RankGPT-style row: top {RANKGPT_DEPTH}); "
        f"Δ: paired difference from BM25 on the same queries, 95% bootstrap interval (10,000 resamples); "
        f"FakeLLMServer on 127.0.0.1, {args.latency * 1000:.0f} ms per call, answers by word overlap; "
        f"queries one at a time, each library's default concurrency; tokens counted by the server (~4 chars); "
        f"USD at {MODEL} list prices as of {PRICES_AS_OF} (estimate); {machine()}; "
        f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s in all"
    )
    publish("peers", markdown(rows), note, args.out, argv, settings=vars(args), model=MODEL, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
