"""Prompt prefix caching: how many prompt tokens a provider would bill as cached, per strategy.

Each strategy reranks the same ``--docs`` documents of a SciFact query for a top-10, through the real
OpenAI and Anthropic SDKs against :class:`~testkit.server.FakeLLMServer` with
``prompt_cache=True``, which emulates both providers' caches (OpenAI: a repeated prefix of 1024+
tokens, in 128-token steps; Anthropic: the prefix up to a ``cache_control`` block, written once and
read after) and reports the cached tokens the way they do; tokens are the server's estimate (four
characters a token). The system prompt carries a domain instruction of ``--domain-chars``
characters (a long house style or few-shot examples: with the built-in prompt alone, about 150
tokens come before the documents, under every provider's minimum, and nothing is cached). Two
reranks of different queries run one after the other, so the second can reuse the first's system
prompt; the columns are their sums. The server answers after ``--latency`` seconds, and as with the
providers a prefix is readable only once the call that wrote it is answered, so calls sent together
cannot read each other's.

    python benchmarks/prefix_cache.py --domain-chars 8000
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for testkit/

from benchmark_support import add_data_options, make_parser

from llmrerank import BatchScore, Listwise, Pairwise, Pointwise, Reranker, Setwise, Strategy
from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.base import Backend
from llmrerank.backends.openai import OpenAIBackend
from llmrerank.evaluation import load_beir
from testkit.server import FakeLLMServer, overlap_responder

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "pointwise": lambda: Pointwise(method="generate"),
    "batch_score": lambda: BatchScore(),
    "listwise (window 20, step 10)": lambda: Listwise(),
    "setwise (set of 4)": lambda: Setwise(),
    "pairwise sort": lambda: Pairwise(mode="sort"),
}

STYLE = (
    "House rules for judging: prefer primary studies over reviews, randomised trials over "
    "observational ones, and human evidence over animal or cell models; a document that only "
    "mentions the query's terms without evidence about them is weak. "
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_data_options(parser, latency=0.2)
    parser.add_argument("--docs", type=int, default=40, help="BM25 documents per rerank")
    parser.add_argument("--domain-chars", type=int, default=8000, help="length of the domain instruction")
    args = parser.parse_args(argv)
    collection = load_beir(args.data)
    queries = list(collection.queries.values())[:2]
    hits = collection.bm25().search(queries, args.docs)
    domain = (STYLE * (args.domain_chars // len(STYLE) + 1))[: args.domain_chars]
    os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    print(
        f"2 reranks of {args.docs} documents, top 10, domain instruction of {len(domain)} characters, "
        f"{args.latency * 1000:.0f} ms a call\n"
    )
    print("| provider | strategy | calls | prompt tokens | cached prompt tokens | cached share |")
    print("|---|---|---:|---:|---:|---:|")
    for provider in ("openai", "anthropic"):
        for name, make in STRATEGIES.items():
            with FakeLLMServer(overlap_responder, prompt_cache=True, latency=args.latency) as server:
                backend: Backend
                if provider == "openai":
                    backend = OpenAIBackend("gpt-4o-mini", base_url=server.base_url, logprobs=False)
                else:
                    backend = AnthropicBackend(
                        "claude-sonnet-4-6", base_url=server.anthropic_base_url, api_key="benchmark"
                    )
                reranker = Reranker(make(), backend, domain=domain)
                calls = prompt = cached = 0
                for query, found in zip(queries, hits, strict=True):
                    documents = [collection.documents[doc_id] for doc_id, _ in found]
                    result = reranker.rerank(query, documents, top_k=10)
                    calls += result.usage.calls
                    prompt += result.usage.prompt_tokens
                    cached += result.usage.cached_prompt_tokens
                reranker.close()
            share = cached / max(prompt, 1)
            print(f"| {provider} | {name} | {calls} | {prompt} | {cached} | {share:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
