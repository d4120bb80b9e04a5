"""A server of your own, measured: listwise windows against its context, and numbers split into digits.

Point it at any OpenAI-compatible server (llama.cpp's ``llama-server``, vLLM, Ollama)::

    python benchmarks/self_hosted.py --base-url http://127.0.0.1:8080/v1 --queries 3

For each of the first ``--queries`` SciFact test queries (BM25 top ``--depth``), one default
listwise rerank with the context size unknown (a fresh backend: the first prompt too long gets the
server's 400 and is resent cut to half) and one with ``context_tokens="auto"`` (windows fitted to
what the server reports). Then a probe for digit-splitting tokenizers: a prompt whose answer is
"10", read as an expected 0-10 score from the first token only (as before issue 15) and over two
tokens. Prints markdown; ``--out`` also writes JSON. Manual: it needs the server, so CI runs it
against a loopback imitation only (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from llmrerank import Listwise, OpenAIBackend, Reranker
from llmrerank.backends.openai import choice_logprobs
from llmrerank.evaluation import default_data_path, load_beir
from llmrerank.protocol import Completion, Prompt
from llmrerank.strategies.pointwise import SCALE, read_score

PROBE = Prompt(
    "You answer with a number only.", "Repeat exactly this text and nothing else: 10", max_tokens=2, choices=SCALE
)
"""A prompt small models answer with "10" (SmolLM2-135M writes it as "1", "0")."""


def listwise_arm(
    base_url: str, model: str, queries: list[tuple[str, list[str]]], context: str | None
) -> dict[str, Any]:
    """Rerank every query with a fresh backend per query (``context`` None: unknown, else ``"auto"``)."""
    rows = []
    for query, docs in queries:
        backend = OpenAIBackend(model, base_url=base_url, api_key="none", context_tokens=context)
        started = time.perf_counter()
        result = Reranker(Listwise(), backend, on_error="degrade_all").rerank(query, docs)
        codes = [d.code for d in result.diagnostics]
        rows.append(
            {
                "seconds": time.perf_counter() - started,
                "status": result.status,
                "calls": result.usage.calls,
                "context_400s": codes.count("context_shrunk"),
                "prompt_tokens": result.usage.prompt_tokens,
                "context_tokens": backend.context_tokens,
                "fitted": next((d.message for d in result.diagnostics if d.code == "context_fitted"), ""),
                "model": result.model,
            }
        )
        backend.close()
    return {
        "arm": "context auto" if context else "context unknown",
        "queries": len(rows),
        "reranked": sum(r["status"] == "reranked" for r in rows),
        "calls": sum(r["calls"] for r in rows),
        "context_400s": sum(r["context_400s"] for r in rows),
        "prompt_tokens_per_call": sum(r["prompt_tokens"] for r in rows) / max(sum(r["calls"] for r in rows), 1),
        "seconds_per_query": sum(r["seconds"] for r in rows) / max(len(rows), 1),
        "context_tokens": rows[-1]["context_tokens"] if rows else None,
        "fitted": rows[-1]["fitted"] if rows else "",
        "model": rows[-1]["model"] if rows else None,
    }


async def digit_probe(base_url: str, model: str) -> dict[str, Any]:
    """The probe's tokens, and its expected score read from the first token only and over two."""
    backend = OpenAIBackend(model, base_url=base_url, api_key="none")
    try:
        raw = await backend._current_client().chat.completions.create(**backend.request_options(PROBE))
        completion = backend.completion_from(raw, PROBE)
    finally:
        await backend.aclose()
    content = getattr(raw.choices[0].logprobs, "content", None) or []
    first = choice_logprobs([(t.token, t.logprob) for t in content[0].top_logprobs], SCALE) if content else None
    old = read_score(Completion(text=completion.text, choice_logprobs=first), "expected")[0]
    new = read_score(completion, "expected")[0]
    return {"tokens": [t.token for t in content], "first_token_only": old, "two_tokens": new}


def markdown(arms: list[dict[str, Any]], probe: dict[str, Any]) -> str:
    """The report as markdown."""
    lines = [
        "| listwise (window 20) | reranked | calls | context 400s | prompt tok/call | s/query | context | fitted |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for a in arms:
        lines.append(
            f"| {a['arm']} | {a['reranked']}/{a['queries']} | {a['calls']} | {a['context_400s']} | "
            f"{a['prompt_tokens_per_call']:.0f} | {a['seconds_per_query']:.1f} | {a['context_tokens']} | "
            f"{a['fitted']} |"
        )
    scores = [probe["first_token_only"], probe["two_tokens"]]
    shown = ["n/a" if s is None else f"{s:.2f}" for s in scores]
    lines.append("")
    lines.append(
        f"model {arms[-1]['model']}; digit probe: tokens {probe['tokens']}, expected score from the first token "
        f"{shown[0]}, over two tokens {shown[1]}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the measurements; print (and with ``--out`` write) the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the server's OpenAI-compatible base URL (ends in /v1)")
    parser.add_argument("--model", default="local", help="model name sent (llama.cpp ignores it)")
    parser.add_argument("--data", help="BEIR folder (default: shared/data/scifact)")
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--out", help="folder for self_hosted.json")
    args = parser.parse_args(argv)
    collection = load_beir(args.data or default_data_path())
    ids = list(collection.queries)[: args.queries]
    hits = collection.bm25().search([collection.queries[q] for q in ids], args.depth)
    queries = [(collection.queries[q], [collection.documents[d] for d, _ in h]) for q, h in zip(ids, hits, strict=True)]
    arms = [listwise_arm(args.base_url, args.model, queries, context) for context in (None, "auto")]
    probe = asyncio.run(digit_probe(args.base_url, args.model))
    report = {"base_url": args.base_url, "arms": arms, "digit_probe": probe, "table": markdown(arms, probe)}
    print(report["table"])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "self_hosted.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
