"""Issue 15: the models people run. Each behaviour is reproduced by a loopback server (FakeLLMServer
with a flavor) and driven through the real OpenAI and Anthropic SDKs.

- digit-splitting tokenizers (SmolLM2, Qwen: "10" is "1", "0") behind pointwise log-prob scores;
- reasoning and thinking models: their parameters, budgets, thinking never read as the answer;
- the model name a server answers with.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from llmrerank import Listwise, Pointwise, Reranker
from llmrerank.errors import BadRequestError, ConfigurationError
from llmrerank.parsing import choice_mass, parse_permutation, strip_thinking
from llmrerank.protocol import Context
from llmrerank.strategies.listwise import LIST_TEMPLATE
from testkit.server import FakeLLMServer, Reply, ServerRequest, digit_split_reply

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend, chained_logprobs

QUERY = "what causes the northern lights?"
DOCS = [
    "Bread rises thanks to yeast.",
    "The aurora borealis: charged particles from the sun strike gases in the upper atmosphere.",
    "Wind turbines turn moving air into electricity.",
]


def openai(srv: FakeLLMServer, model: str = "gpt-test", **options: object) -> OpenAIBackend:
    return OpenAIBackend(model, base_url=srv.base_url, api_key="sk-test", max_retries=0, **options)  # type: ignore[arg-type]


def posts(srv: FakeLLMServer) -> list[ServerRequest]:
    """The completions the server was asked for (not the ``POST /tokenize`` calls that measure prompts)."""
    return [r for r in srv.requests if r.method == "POST" and r.path.rstrip("/") != "/tokenize"]


# --- multi-token numbers ----------------------------------------------------------------------------


def rate(aurora: dict[int, float], other: dict[int, float] | None = None) -> object:
    """A responder of a digit-splitting server: the aurora document gets ``aurora``, the rest ``other``."""

    def respond(request: ServerRequest) -> Reply:
        return digit_split_reply(aurora if "aurora" in request.user else (other or {2: 1.0}))

    return respond


def test_a_ten_split_into_two_tokens_scores_ten_not_one() -> None:
    with FakeLLMServer(rate({10: 0.9, 9: 0.1}), flavor="llama.cpp") as srv:
        expected = Reranker(Pointwise(method="expected"), openai(srv)).rerank(QUERY, DOCS)
        generated = Reranker(Pointwise(method="generate"), openai(srv, logprobs=False)).rerank(QUERY, DOCS)
        sent = posts(srv)
    assert expected.indices[0] == 1 and generated.indices[0] == 1
    # The first token alone says "1" with P = 1.0; the second position tells 10 from 1.
    assert expected[0].score == pytest.approx(10 * 0.9 + 9 * 0.1)
    assert generated[0].score == 10.0
    assert expected[1].score == pytest.approx(2.0)
    logprob_calls = [r for r in sent if r.logprobs]
    assert len(logprob_calls) == 3 and all(r.max_tokens == 2 for r in logprob_calls)
    codes = {d.code for d in expected.diagnostics}
    assert "score_mass_low" not in codes and "score_prefix_unresolved" not in codes


def test_a_one_that_stays_one_is_not_read_as_ten() -> None:
    with FakeLLMServer(rate({1: 0.8, 10: 0.2}), flavor="llama.cpp") as srv:
        result = Reranker(Pointwise(method="expected"), openai(srv)).rerank(QUERY, DOCS)
    aurora = next(item for item in result if item.index == 1)
    assert aurora.score == pytest.approx(1 * 0.8 + 10 * 0.2)


def test_an_unsampled_one_is_counted_as_one_and_said() -> None:
    """The approximation: only the sampled path's second token is visible."""
    with FakeLLMServer(rate({8: 0.6, 10: 0.4}), flavor="llama.cpp") as srv:
        result = Reranker(Pointwise(method="expected"), openai(srv)).rerank(QUERY, DOCS)
    aurora = next(item for item in result if item.index == 1)
    assert aurora.score == pytest.approx(8 * 0.6 + 1 * 0.4)
    (doubt,) = [d for d in aurora.diagnostics if d.code == "score_prefix_unresolved"]
    assert "0.40" in doubt.message and not result.degraded


def test_little_probability_on_valid_scores_is_diagnosed_not_hidden() -> None:
    def respond(request: ServerRequest) -> Reply:
        return digit_split_reply({7: 0.07}, other={"The": 0.6, "Based": 0.33})

    with FakeLLMServer(respond, flavor="vllm", models=["gpt-test"]) as srv:
        result = Reranker(Pointwise(method="expected"), openai(srv)).rerank(QUERY, DOCS[:1])
    (item,) = result
    assert item.score == pytest.approx(7.0)  # renormalised over what there was...
    (low,) = [d for d in item.diagnostics if d.code == "score_mass_low"]
    assert "7%" in low.message  # ... and said


def test_chained_logprobs_read_the_sampled_path() -> None:
    first = ("1", math.log(0.6), [("1", math.log(0.6)), (" 1", math.log(0.1)), ("2", math.log(0.3))])
    second = ("0", math.log(0.5), [("0", math.log(0.5)), ("<|im_end|>", math.log(0.5))])
    found, unresolved = chained_logprobs([first, second], ("1", "2", "10"))
    assert math.exp(found["1"]) == pytest.approx(0.7)  # "1" counts every answer starting with it
    assert math.exp(found["10"]) == pytest.approx(0.35)
    assert math.exp(found["2"]) == pytest.approx(0.3)
    assert unresolved == ()
    # One position only: "10" cannot be told from "1".
    assert chained_logprobs([first], ("1", "10"))[1] == ("10",)
    # A tokenizer with a "10" token needs no chain.
    one_token = ("10", math.log(0.7), [("10", math.log(0.7)), ("1", math.log(0.3))])
    found, unresolved = chained_logprobs([one_token], ("1", "10"))
    assert math.exp(found["10"]) == pytest.approx(0.7) and math.exp(found["1"]) == pytest.approx(1.0)
    assert unresolved == ()


def test_choice_mass_counts_a_longer_choice_once() -> None:
    logprobs = {"1": math.log(0.5), "10": math.log(0.4), "3": math.log(0.2)}
    assert choice_mass(logprobs, tuple(str(i) for i in range(11))) == pytest.approx(0.7)
    assert choice_mass(None, ("Yes", "No")) == 0.0


def test_yes_no_still_asks_for_one_token() -> None:
    with FakeLLMServer(Reply(text="Yes", top_logprobs={"Yes": -0.1, "No": -2.4})) as srv:
        Reranker(Pointwise(method="yes_no"), openai(srv)).rerank(QUERY, DOCS[:1])
        (request,) = posts(srv)
    assert request.max_tokens == 1


# --- reasoning models --------------------------------------------------------------------------------


def test_openai_reasoning_model_gets_its_own_parameters() -> None:
    with FakeLLMServer(Reply(text="7", reasoning_tokens=120), reasoning_models=["o4-mini"]) as srv:
        backend = openai(srv, "o4-mini", reasoning_effort="low")
        assert backend.reasoning and not backend.supports_logprobs
        result = Reranker(Pointwise(), backend).rerank(QUERY, DOCS)
        sent = posts(srv)
    assert not result.degraded and result.score_kind == "relevance"
    for request in sent:
        assert "max_tokens" not in request.body and "temperature" not in request.body
        assert "logprobs" not in request.body
        assert request.body["max_completion_tokens"] == 8 + backend.reasoning_budget
        assert request.body["reasoning_effort"] == "low"
    assert result.usage.reasoning_tokens == 3 * 120
    assert result.usage.completion_tokens == 3 * (120 + 1)


def test_the_fake_rejects_what_openai_rejects() -> None:
    """The control: sent as to a chat model, the reasoning model answers 400 as OpenAI's API does."""
    with (
        FakeLLMServer("7", reasoning_models=["o4-mini"]) as srv,
        pytest.raises(BadRequestError, match="max_completion_tokens"),
    ):
        Reranker(Pointwise(), openai(srv, "o4-mini", reasoning=False, logprobs=False)).rerank(QUERY, DOCS)


def test_reasoning_budget_sits_on_top_of_the_listwise_answer_budget() -> None:
    with FakeLLMServer("[2] > [1] > [3]", reasoning_models=["gpt-5-mini"]) as srv:
        backend = openai(srv, "gpt-5-mini", reasoning_budget=2000)
        result = Reranker(Listwise(), backend).rerank(QUERY, DOCS)
        (request,) = posts(srv)
    assert result.indices == [1, 0, 2]
    assert request.body["max_completion_tokens"] == 6 * 3 + 16 + 2000


def test_a_thinking_model_on_another_server_gets_max_tokens_with_the_budget() -> None:
    with FakeLLMServer("[2] > [1] > [3]", flavor="vllm", models=["Qwen/Qwen3-8B"]) as srv:
        backend = openai(srv, "Qwen/Qwen3-8B", reasoning=True, reasoning_budget=1000)
        Reranker(Listwise(), backend).rerank(QUERY, DOCS)
        (request,) = posts(srv)
    assert request.body["max_tokens"] == 6 * 3 + 16 + 1000
    assert "temperature" not in request.body and "max_completion_tokens" not in request.body


def test_chat_models_are_not_reasoning_models() -> None:
    from llmrerank.backends.servers import is_reasoning_model

    assert all(map(is_reasoning_model, ["o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-nano", "openai/gpt-oss-20b"]))
    assert not any(map(is_reasoning_model, ["gpt-4o-mini", "gpt-4.1", "gpt-5-chat-latest", "omni", "claude-x"]))


def test_anthropic_extended_thinking_leaves_room_for_the_answer() -> None:
    reply = Reply(text="[2] > [1] > [3]", reasoning="Maybe [1] > [3] > [2]? No.", reasoning_tokens=300)
    with FakeLLMServer(reply) as srv:
        backend = AnthropicBackend(
            "claude-test", base_url=srv.anthropic_base_url, api_key="k", max_retries=0, reasoning_effort="low"
        )
        result = Reranker(Listwise(), backend).rerank(QUERY, DOCS)
        (request,) = posts(srv)
    assert result.indices == [1, 0, 2] and not result.degraded  # the thinking block is not the answer
    assert request.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert request.body["max_tokens"] == 6 * 3 + 16 + 1024
    assert result.usage.reasoning_tokens == 300


def test_anthropic_thinking_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="1024"):
        AnthropicBackend(api_key="k", reasoning_budget=100)
    with pytest.raises(ConfigurationError, match="temperature"):
        AnthropicBackend(api_key="k", reasoning_budget=2048, temperature=0.0)
    with pytest.raises(ConfigurationError, match="reasoning_effort"):
        AnthropicBackend(api_key="k", reasoning_effort="extreme")


# --- thinking text is never the answer ----------------------------------------------------------------


def test_reasoning_content_is_not_the_answer() -> None:
    reply = Reply(text="[2] > [1] > [3]", reasoning="[3] > [1] > [2] is what I first thought")
    with FakeLLMServer(reply, flavor="vllm", models=["gpt-test"]) as srv:
        result = Reranker(Listwise(), openai(srv)).rerank(QUERY, DOCS)
    assert result.indices == [1, 0, 2] and result.reranked


def test_a_budget_spent_on_thinking_is_an_unreadable_answer() -> None:
    reply = Reply(text="", reasoning="Let me compare [1] with [2]. Doc [3] ...", finish_reason="length")
    with FakeLLMServer(reply, flavor="vllm", models=["gpt-test"]) as srv:
        result = Reranker(Listwise(), openai(srv)).rerank(QUERY, DOCS)
    assert result.status == "fallback" and result.degraded_reasons == ("unreadable_answer",)
    assert result.indices == [0, 1, 2] and all(item.fallback for item in result)


@pytest.mark.parametrize("tag", ["think", "thinking", "reasoning"])
def test_an_unclosed_thinking_block_holds_no_ranking(tag: str) -> None:
    text = f"<{tag}>Let me compare [1] with [2]. Doc [4] is about auroras, then [3] and [5]"
    assert strip_thinking(text) == ""
    assert parse_permutation(text, 5).parsed == 0
    with FakeLLMServer(text) as srv:
        result = Reranker(Listwise(), openai(srv)).rerank(QUERY, [*DOCS, "Fifth.", "Sixth."][:5])
    assert result.status == "fallback" and result.indices == [0, 1, 2, 3, 4]
    (unreadable,) = [d for d in result.diagnostics if d.code == "fallback_input_order"]
    assert f"<{tag}>Let me compare" in unreadable.message


def test_text_after_a_closed_thinking_block_is_the_answer() -> None:
    assert parse_permutation("<think>[3] > [1]?</think>\n[2] > [1] > [3]", 3).order == (1, 0, 2)
    assert parse_permutation("[2] > [3] > [1]<think>but maybe", 3).order == (1, 2, 0)
    assert parse_permutation("weighing [1] against [3]...</think>[3] > [2] > [1]", 3).order == (2, 1, 0)


# --- the model that answered ---------------------------------------------------------------------------


def test_result_names_the_model_the_server_answered_with() -> None:
    with FakeLLMServer("[2] > [1] > [3]", flavor="llama.cpp", served_model="smollm2") as srv:
        result = Reranker(Listwise(), openai(srv, "gpt-4o-mini")).rerank(QUERY, DOCS)
        (request,) = posts(srv)
    assert request.model == "gpt-4o-mini"  # what was asked ...
    assert result.model == "smollm2"  # ... is not what answered
    assert result.summary()["model"] == "smollm2"


def test_anthropic_result_names_its_model() -> None:
    with FakeLLMServer("[1] > [2] > [3]") as srv:
        backend = AnthropicBackend("claude-haiku-4-5", base_url=srv.anthropic_base_url, api_key="k", max_retries=0)
        assert Reranker(Listwise(), backend).rerank(QUERY, DOCS).model == "claude-haiku-4-5"


# --- provider routing ----------------------------------------------------------------------------------


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for provider in ("OPENAI", "ANTHROPIC"):
        for name in ("API_KEY", "BASE_URL", "AUTH_TOKEN"):
            monkeypatch.delenv(f"{provider}_{name}", raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("model", "kind", "name"),
    [
        ("openai:gpt-4.1-mini", OpenAIBackend, "gpt-4.1-mini"),
        ("anthropic:claude-haiku-4-5", AnthropicBackend, "claude-haiku-4-5"),
        ("gpt-4.1-mini", OpenAIBackend, "gpt-4.1-mini"),
        ("o3-mini", OpenAIBackend, "o3-mini"),
        ("chatgpt-4o-latest", OpenAIBackend, "chatgpt-4o-latest"),
        ("claude-haiku-4-5", AnthropicBackend, "claude-haiku-4-5"),
        ("openai:claude-haiku-4-5", OpenAIBackend, "claude-haiku-4-5"),  # a gateway that serves Claude
    ],
)
def test_model_names_route_to_their_provider(no_keys: pytest.MonkeyPatch, model: str, kind: type, name: str) -> None:
    from llmrerank import backend_for

    no_keys.setenv("OPENAI_API_KEY", "sk-test")
    no_keys.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    backend = backend_for(model)
    assert type(backend) is kind and backend.model == name


def test_a_claude_model_with_only_an_openai_key_is_not_sent_to_openai(no_keys: pytest.MonkeyPatch) -> None:
    from llmrerank.options import build_reranker

    no_keys.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        build_reranker(None, model="claude-haiku-4-5")
    no_keys.delenv("OPENAI_API_KEY")
    no_keys.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        build_reranker(None, model="gpt-4.1-mini")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        Reranker(backend="openai:gpt-4.1-mini")


def test_an_unknown_name_goes_to_the_one_provider_configured_or_is_ambiguous(no_keys: pytest.MonkeyPatch) -> None:
    from llmrerank import backend_for

    with pytest.raises(ConfigurationError, match="needs a provider"):
        backend_for("my-finetune")
    no_keys.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert isinstance(backend_for("my-finetune"), AnthropicBackend)
    no_keys.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(ConfigurationError, match="'openai:my-finetune' or 'anthropic:my-finetune'"):
        backend_for("my-finetune")
    no_keys.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")  # an OpenAI-compatible server names its own
    assert isinstance(backend_for("qwen2.5:7b"), OpenAIBackend)
    assert backend_for("qwen2.5:7b").model == "qwen2.5:7b"  # a colon that names no provider stays
    assert backend_for("ft:gpt-4o-mini:acme::abc").model == "ft:gpt-4o-mini:acme::abc"
    if importlib.util.find_spec("torch") is not None:
        from llmrerank.backends.local import LocalBackend

        assert isinstance(backend_for("local:"), LocalBackend)  # the demo model; no key needed


def test_a_providers_bare_name_is_that_provider_with_its_default_model(no_keys: pytest.MonkeyPatch) -> None:
    # As the CLI's --backend takes them: backend="local" is the offline model, not a model named 'local'.
    from llmrerank import backend_for
    from llmrerank.options import build_reranker
    from llmrerank.routing import split_model

    assert split_model("local") == ("local", "") and split_model(" OpenAI ") == ("openai", "")
    with pytest.raises(ConfigurationError, match="backend 'openai' is served by OpenAI: set OPENAI_API_KEY"):
        backend_for("openai")
    no_keys.setenv("OPENAI_API_KEY", "sk-test")
    no_keys.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert type(backend_for("openai")) is OpenAIBackend and backend_for("openai").model == "gpt-4o-mini"
    assert type(backend_for("anthropic")) is AnthropicBackend
    if importlib.util.find_spec("torch") is not None:
        from llmrerank.backends.local import LocalBackend

        assert isinstance(Reranker(backend="local").backend, LocalBackend)
        assert isinstance(build_reranker(None, model="local").backend, LocalBackend)
    else:  # no torch: the local backend's own install lines, not "needs a provider"
        with pytest.raises(ConfigurationError, match=r"download\.pytorch\.org/whl/cpu"):
            Reranker(backend="local")


def test_reranker_and_adapter_take_a_routed_name(no_keys: pytest.MonkeyPatch) -> None:
    from llmrerank.options import build_reranker

    with FakeLLMServer("[2] > [1] > [3]") as srv:
        no_keys.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        no_keys.setenv("ANTHROPIC_BASE_URL", srv.anthropic_base_url)
        result = build_reranker(None, model="anthropic:claude-haiku-4-5", strategy="listwise").rerank(QUERY, DOCS)
        reranker = Reranker("listwise", backend="claude-haiku-4-5")
        assert isinstance(reranker.backend, AnthropicBackend)
        (request,) = posts(srv)
    assert request.api == "anthropic" and request.model == "claude-haiku-4-5"
    assert result.indices == [1, 0, 2]


# --- no price for servers of your own -----------------------------------------------------------------


def test_servers_of_your_own_and_unknown_models_have_no_price() -> None:
    from llmrerank.pricing import cost_basis, estimate_cost
    from llmrerank.types import Usage

    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert estimate_cost("gpt-4o-mini", usage, backend="openai") == pytest.approx(0.75)
    assert estimate_cost("gpt-4o-mini", usage, backend="openai", server_url="https://api.openai.com/v1") > 0
    price, note = cost_basis("gpt-4o-mini", backend="openai", server_url="http://127.0.0.1:8080/v1")
    assert price is None and note.startswith("n/a: a server of your own at http://127.0.0.1:8080/v1")
    price, note = cost_basis("gpt-4o-mini", backend="openai", server_url="https://gateway.example.com/v1")
    assert price is None and "api.openai.com" in note
    price, note = cost_basis("smollm2", backend="openai")
    assert price is None and "no known price for model 'smollm2'" in note
    mine = {"smollm2": {"input": 1, "output": 1}}
    assert estimate_cost("smollm2", usage, mine, backend="openai", server_url="http://127.0.0.1:8080/v1") == 2.0


def test_local_addresses() -> None:
    from llmrerank.backends.servers import call_defaults, is_local_url

    local = ["http://localhost:8000/v1", "http://127.0.0.1:11434/v1", "http://[::1]:8080", "http://192.168.1.20/v1"]
    local += [
        "http://10.0.0.5:8000",
        "http://172.20.0.2:8000",
        "http://gpu-box.local:8000",
        "http://host.docker.internal",
    ]
    assert all(map(is_local_url, local))
    assert not any(map(is_local_url, [None, "", "https://api.openai.com/v1", "https://example.com", "http://8.8.8.8"]))
    assert call_defaults("http://localhost:8000/v1", None, None) == (300.0, 2)
    assert call_defaults("https://api.openai.com/v1", None, None) == (60.0, 2)
    assert call_defaults("http://localhost:8000/v1", 30.0, 1) == (30.0, 1)


SLICE = Path(__file__).parent / "data" / "scifact-slice"


@pytest.mark.parametrize("flavor", ["llama.cpp", "vllm"])
def test_eval_against_a_server_of_your_own_names_its_model_and_no_price(
    flavor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmrerank.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    served = "smollm2" if flavor == "llama.cpp" else "Qwen/Qwen2.5-7B-Instruct"
    options = {"served_model": served} if flavor == "llama.cpp" else {"models": [served]}
    with FakeLLMServer("[2] > [1] > [3] > [4] > [5]", flavor=flavor, **options) as srv:  # type: ignore[arg-type]
        argv = ["eval", "--data", str(SLICE), "--base-url", srv.base_url, "--strategy", "listwise"]
        argv += ["--queries", "2", "--depth", "5", "--no-progress", "--out", str(tmp_path)]
        assert main(argv) == 0
        asked = {r.model for r in posts(srv)}
        url = srv.base_url
    printed = capsys.readouterr().out
    assert asked == {served}  # --model left out: the one model the server lists
    assert f"backend openai, model {served};" in printed and "gpt-4o-mini" not in printed
    assert f"USD/1k q n/a: a server of your own at {url}" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"] == served and report["results"][1]["cost_usd"] is None
    assert report["results"][1]["cost_note"].startswith("n/a: a server of your own")


def test_eval_reports_the_model_that_answered_over_the_one_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmrerank.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer("[2] > [1] > [3] > [4] > [5]", flavor="llama.cpp", served_model="smollm2") as srv:
        argv = ["eval", "--data", str(SLICE), "--base-url", srv.base_url, "--model", "gpt-4o-mini"]
        argv += ["--strategy", "listwise", "--queries", "2", "--depth", "5", "--no-progress"]
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "model smollm2 (asked for gpt-4o-mini)" in printed and "n/a" in printed


def test_cli_model_names_its_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrerank.routing import backend_kind

    assert backend_kind(None, "anthropic:claude-haiku-4-5", None) == ("anthropic", "claude-haiku-4-5")
    assert backend_kind(None, "claude-haiku-4-5", None) == ("anthropic", "claude-haiku-4-5")
    assert backend_kind(None, "Qwen/Qwen2.5-7B-Instruct", "http://localhost:8000/v1")[0] == "openai"
    assert backend_kind(None, None, None) == ("local", None)
    assert backend_kind("openai", "claude-x", "http://proxy/v1") == ("openai", "claude-x")
    with pytest.raises(ConfigurationError, match="names provider 'anthropic'"):
        backend_kind("openai", "anthropic:claude-haiku-4-5", None)


# --- context size -----------------------------------------------------------------------------------

BLOCK = re.compile(r'<document id="\[(\w+)\]">\n(.*?)\n</document>', re.DOTALL)
LONG_DOCS = [
    (f"Abstract {i}: a study of soil, rivers and weather patterns over many years. " * 16)[:1200] for i in range(20)
]
LONG_DOCS[13] = "The aurora borealis comes from charged particles of the sun. " + LONG_DOCS[13]


def aurora_first(request: ServerRequest) -> str:
    """A listwise judge: documents that mention the aurora first, the others in their order."""
    blocks = BLOCK.findall(request.user)
    ranked = sorted(blocks, key=lambda block: "aurora" not in block[1])
    return " > ".join(f"[{label}]" for label, _ in ranked) or "no documents"


def prompt_tokens(srv: FakeLLMServer, request: ServerRequest) -> int:
    """The tokens the server itself counts for the request's prompt (its tokenizer, its chat template)."""
    return srv.prompt_tokens(request)


def test_default_window_does_not_fit_a_4096_token_server() -> None:
    """The issue's failure, reproduced: 20 documents of 1,200 characters are over 6,000 tokens."""
    with FakeLLMServer(aurora_first, flavor="llama.cpp", context_tokens=4096) as srv:
        result = Reranker(Listwise(), openai(srv), on_error="degrade_all").rerank(QUERY, LONG_DOCS)
        first = posts(srv)[0]
    assert prompt_tokens(srv, first) > 4096
    assert "context_shrunk" in {d.code for d in result.diagnostics}  # the last resort: documents cut to half


@pytest.mark.parametrize("flavor", ["llama.cpp", "vllm"])
@pytest.mark.parametrize("configured", [4096, "auto"])
def test_windows_fit_a_known_context(flavor: str, configured: int | str) -> None:
    with FakeLLMServer(aurora_first, flavor=flavor, context_tokens=4096, models=["gpt-test"]) as srv:  # type: ignore[arg-type]
        backend = openai(srv, context_tokens=configured)
        result = Reranker(Listwise(), backend).rerank(QUERY, LONG_DOCS)
        sent = posts(srv)
        asked = [r.path for r in srv.requests if r.method == "GET"]
    assert backend.context_tokens == 4096
    assert result.reranked and result.indices[0] == 13
    assert len(sent) > 1 and all(prompt_tokens(srv, r) + (r.max_tokens or 0) <= 4096 for r in sent)  # no 400 at all
    (fitted,) = [d for d in result.diagnostics if d.code == "context_fitted"]
    assert "4096 tokens of context" in fitted.message
    assert "context_shrunk" not in {d.code for d in result.diagnostics}
    if configured == "auto":
        assert ("/props" in asked) and ("/v1/models" in asked)  # asked once, together
        Reranker(Listwise(), backend).rerank(QUERY, LONG_DOCS[:3])
        assert [r.path for r in srv.requests if r.method == "GET"] == asked  # cached
    else:
        assert asked == []


def test_discovery_is_time_boxed_and_optional() -> None:
    with FakeLLMServer(aurora_first) as srv:  # OpenAI-like: no /props, no max_model_len
        backend = openai(srv, context_tokens="auto")
        result = Reranker(Listwise(window=5), backend).rerank(QUERY, LONG_DOCS[:5])
    assert backend.context_tokens is None and result.reranked


def test_the_context_a_400_states_is_learned_for_the_next_rerank() -> None:
    with FakeLLMServer(aurora_first, flavor="llama.cpp", context_tokens=4096) as srv:
        backend = openai(srv)
        first = Reranker(Listwise(), backend).rerank(QUERY, LONG_DOCS)
        assert backend.context_tokens == 4096  # "exceeds the available context size (4096 tokens)"
        srv.clear()
        second = Reranker(Listwise(), backend).rerank(QUERY, LONG_DOCS)
        sent = posts(srv)
    assert "context_shrunk" in {d.code for d in first.diagnostics} and first.reranked
    assert second.reranked and all(prompt_tokens(srv, r) <= 4096 for r in sent)
    assert "context_shrunk" not in {d.code for d in second.diagnostics}


def test_two_documents_too_long_for_the_context_are_cut_to_fit() -> None:
    docs = ["aurora " + "x" * 9000, "y" * 9000, "z " * 4000]
    with FakeLLMServer(aurora_first, flavor="vllm", context_tokens=1024, models=["gpt-test"]) as srv:
        result = Reranker(Listwise(max_doc_chars=20000), openai(srv, context_tokens=1024)).rerank(QUERY, docs)
        sent = posts(srv)
    # Ranked, and honest that windows of 2 over 3 documents are below what a window needs.
    assert result.status == "partial" and result.degraded_reasons == ("context_too_small",)
    assert result.indices[0] == 0
    assert all(prompt_tokens(srv, r) + (r.max_tokens or 0) <= 1024 for r in sent)
    assert any("characters to fit" in d.message for d in result.diagnostics if d.code == "context_fitted")


@pytest.mark.parametrize("strategy", ["pointwise", "pairwise"])
def test_pointwise_and_pairwise_prompts_fit_too(strategy: str) -> None:
    docs = ["aurora " * 1500, "rivers " * 1500]
    with FakeLLMServer("7", flavor="llama.cpp", context_tokens=512) as srv:
        reranker = Reranker(strategy, openai(srv, context_tokens=512, logprobs=False))
        result = reranker.rerank(QUERY, docs)
        sent = posts(srv)
    assert sent and all(prompt_tokens(srv, r) <= 512 for r in sent)
    assert "context_fitted" in {d.code for d in result.diagnostics}


def test_a_hybrid_fits_its_llm_prompts_to_the_context_too() -> None:
    from llmrerank import Hybrid
    from llmrerank.testing import FakeCrossEncoder

    docs = ["aurora " + "x" * 9000, "y" * 9000, "z " * 4000]
    with FakeLLMServer(aurora_first, flavor="vllm", context_tokens=1024, models=["gpt-test"]) as srv:
        strategy = Hybrid(
            cross_encoder=FakeCrossEncoder(lambda query, text: 0.0), keep=3, llm=Listwise(max_doc_chars=20000)
        )
        result = Reranker(strategy, openai(srv, context_tokens=1024)).rerank(QUERY, docs)
        sent = posts(srv)
    assert result.status == "partial" and result.degraded_reasons == ("context_too_small",) and sent
    assert result.indices[0] == 0
    assert all(prompt_tokens(srv, r) + (r.max_tokens or 0) <= 1024 for r in sent)
    assert "context_fitted" in {d.code for d in result.diagnostics}


def test_stated_context_sizes() -> None:
    from llmrerank.backends.servers import stated_context

    llama = "request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it"
    assert stated_context(llama) == 4096
    assert stated_context("{'code': 400, 'type': 'exceed_context_size_error', 'n_prompt_tokens': 5000, 'n_ctx': 2048}")
    assert stated_context("This model's maximum context length is 8192 tokens. However, you requested 9000") == 8192
    assert stated_context("The decoder prompt (length 5000) is longer than the maximum model length of 4096.") == 4096
    assert stated_context("prompt is too long: 210000 tokens > 200000 maximum") == 200000
    assert stated_context("Context size has been exceeded.") is None


def test_ollama_cuts_a_long_prompt_silently_unless_the_context_is_configured() -> None:
    seen: list[str] = []

    def judge(request: ServerRequest) -> str:
        seen.append(request.user)
        return aurora_first(request)

    with FakeLLMServer(judge, flavor="ollama", context_tokens=2048, models=["qwen2.5:7b"]) as srv:
        Reranker(Listwise(), openai(srv, "qwen2.5:7b")).rerank(QUERY, LONG_DOCS)
        start = LIST_TEMPLATE[:20]  # the built-in prompt's first words
        assert not seen[0].startswith(start)  # no error: the model saw the end of the prompt only
        seen.clear()
        result = Reranker(Listwise(), openai(srv, "qwen2.5:7b", context_tokens=2048)).rerank(QUERY, LONG_DOCS)
    assert all(text.startswith(start) for text in seen)  # every window whole
    assert result.reranked and result.indices[0] == 13


# --- slow local servers: fail fast, name the first cause -----------------------------------------------


def test_local_server_defaults() -> None:
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:8080/v1", api_key="k")
    assert (backend.timeout, backend.max_retries) == (300.0, 2)  # retries by failure, not by address
    hosted = OpenAIBackend("m", api_key="k")
    assert (hosted.timeout, hosted.max_retries) == (60.0, 2)
    mine = OpenAIBackend("m", base_url="http://127.0.0.1:8080/v1", api_key="k", timeout=20, max_retries=1)
    assert (mine.timeout, mine.max_retries) == (20, 1)
    # A client made beforehand decides the server, for either provider, as the SDK will use it.
    import anthropic
    import openai

    for made in (
        OpenAIBackend("m", client=openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:8080/v1")),
        AnthropicBackend("m", client=anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:8080")),
    ):
        assert made.server_url is not None and made.server_url.startswith("http://127.0.0.1:8080")
        assert (made.timeout, made.max_retries) == (300.0, 2)
        assert made.cache_identity()["base_url"] == made.server_url.rstrip("/")


def test_a_timeout_after_a_context_error_names_the_400_first(caplog: pytest.LogCaptureFixture) -> None:
    from llmrerank.errors import BackendTimeoutError, ContextLengthError

    slow = Reply(text="[1] > [2]", delay=2.0)
    with FakeLLMServer(slow, flavor="llama.cpp", context_tokens=4096) as srv:
        backend = OpenAIBackend("m", base_url=srv.base_url, api_key="k", timeout=0.3)  # local: no retry
        with caplog.at_level("WARNING", logger="llmrerank"):
            result = Reranker(Listwise(), backend, on_error="degrade_all").rerank(QUERY, LONG_DOCS)
        assert len(posts(srv)) == 2  # the 400, then the shorter resend that timed out; no retries
        with pytest.raises(BackendTimeoutError) as raised:
            Reranker(
                Listwise(), OpenAIBackend("m", base_url=srv.base_url, api_key="k", timeout=0.3), on_error="raise"
            ).rerank(QUERY, LONG_DOCS)
    assert result.status == "fallback" and result.degraded_reasons == ("call_failed",)
    (warning,) = [r.getMessage() for r in caplog.records if "degraded" in r.getMessage()]
    assert "first BackendTimeoutError" in warning
    assert "after ContextLengthError (HTTP 400)" in warning and "exceeds the available context size" in warning
    assert isinstance(raised.value.earlier, ContextLengthError) and raised.value.earlier.status_code == 400
    assert "exceeds the available context size (4096 tokens)" in str(raised.value)
    (failed,) = [d for d in result.diagnostics if d.code == "call_failed"]
    assert "HTTP 400" in failed.message


def test_a_batch_job_on_a_server_of_your_own_has_no_price(tmp_path: Path) -> None:
    from batch_support import good_rows, write_jsonl

    from llmrerank.batch import run_batch

    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2, docs=3))
    with FakeLLMServer("[2] > [1] > [3]", flavor="llama.cpp", served_model="smollm2") as srv:
        summary = run_batch(path, tmp_path / "out", Reranker("listwise", openai(srv, "gpt-4o-mini")), progress=False)
    assert summary.results == 2 and summary.usage.calls == 2
    assert summary.cost is None  # gpt-4o-mini's list price does not apply to a server on 127.0.0.1


# --- the README's recipes, run against servers that behave like the ones they start ------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe(marker: str) -> tuple[str, str]:
    """The bash block before the python block that starts with ``# <marker>``, and that python block."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```(bash|python)\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    for k, (kind, body) in enumerate(blocks):
        if kind == "python" and body.startswith(f"# {marker}\n"):
            assert k > 0 and blocks[k - 1][0] == "bash", f"README: no command before the {marker} recipe"
            return blocks[k - 1][1], body
    raise AssertionError(f"README.md has no python block starting with '# {marker}'")


def run_recipe(code: str, srv: FakeLLMServer, documents: list[str]) -> dict[str, object]:
    code = re.sub(r"http://(localhost|127\.0\.0\.1):\d+/v1", srv.base_url, code)
    namespace: dict[str, object] = {"__name__": "readme", "documents": documents}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_readme_vllm_recipe() -> None:
    command, code = recipe("vLLM")
    model = re.search(r"vllm serve (\S+)", command).group(1)  # type: ignore[union-attr]
    limit = int(re.search(r"--max-model-len (\d+)", command).group(1))  # type: ignore[union-attr]
    with FakeLLMServer(aurora_first, flavor="vllm", models=[model], context_tokens=limit) as srv:
        result = run_recipe(code, srv, LONG_DOCS)["result"]
        sent = posts(srv)
    assert result.reranked and result.documents[0] == LONG_DOCS[13]  # type: ignore[attr-defined]
    assert all(r.model == model and prompt_tokens(srv, r) + (r.max_tokens or 0) <= limit for r in sent)


def test_readme_ollama_recipe() -> None:
    command, code = recipe("Ollama")
    model = re.search(r"ollama pull (\S+)", command).group(1)  # type: ignore[union-attr]
    limit = int(re.search(r"OLLAMA_CONTEXT_LENGTH=(\d+)", command).group(1))  # type: ignore[union-attr]
    seen: list[str] = []

    def judge(request: ServerRequest) -> str:
        seen.append(request.user)  # what the model saw, after Ollama's silent cut
        return aurora_first(request)

    with FakeLLMServer(judge, flavor="ollama", models=[model], context_tokens=limit) as srv:
        result = run_recipe(code, srv, LONG_DOCS)["result"]
    assert result.reranked and result.documents[0] == LONG_DOCS[13]  # type: ignore[attr-defined]
    assert len(seen) > 1 and all(text.startswith(LIST_TEMPLATE[:20]) for text in seen)  # no prompt was cut


def test_readme_llama_cpp_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    command, code = recipe("llama.cpp")
    gguf = re.search(r"-m (\S+)", command).group(1)  # type: ignore[union-attr]
    limit = int(re.search(r" -c (\d+)", command).group(1))  # type: ignore[union-attr]
    slots = int(re.search(r" --parallel (\d+)", command).group(1))  # type: ignore[union-attr]
    responder = rate({10: 0.9, 9: 0.1}, {2: 0.7, 3: 0.3})
    with FakeLLMServer(responder, flavor="llama.cpp", served_model=gguf, context_tokens=limit, parallel=slots) as srv:
        result = run_recipe(code, srv, DOCS)["result"]
    assert limit // slots >= 4096  # each request gets a share of -c that holds a listwise window
    assert result.documents[0] == DOCS[1] and result[0].score == pytest.approx(9.9)  # type: ignore[attr-defined]
    assert result.model == gguf and capsys.readouterr().out.strip() == gguf  # type: ignore[attr-defined]


def test_readme_reasoning_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    text = README.read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE) if "reasoning=True" in b]
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    window = Listwise().prompt(QUERY, DOCS, Context())
    o_series, claude, qwen3 = (namespace[name].backend for name in ("o_series", "claude", "qwen3"))  # type: ignore[attr-defined]
    sent = o_series.request_options(window)
    assert sent["max_completion_tokens"] == window.max_tokens + 4096 and sent["reasoning_effort"] == "low"
    assert "temperature" not in sent and "max_tokens" not in sent
    sent = claude.request_options(window)
    assert (
        sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        and sent["max_tokens"] == window.max_tokens + 1024
    )
    sent = qwen3.request_options(window)
    assert sent["max_tokens"] == window.max_tokens + 4096 and "temperature" not in sent


@pytest.mark.parametrize("cache_kind", ["memory", "disk"])
def test_a_cached_answer_keeps_the_model_and_what_was_unresolved(cache_kind: str, tmp_path: Path) -> None:
    from llmrerank import DiskCache, MemoryCache

    cache = MemoryCache() if cache_kind == "memory" else DiskCache(tmp_path / "cache")
    with FakeLLMServer(rate({8: 0.6, 10: 0.4}), flavor="llama.cpp", served_model="smollm2") as srv:
        reranker = Reranker(Pointwise(method="expected"), openai(srv), cache=cache)
        first, again = reranker.rerank(QUERY, DOCS), reranker.rerank(QUERY, DOCS)
        assert len(posts(srv)) == 3
    assert again.usage.cached_calls == 3 and again.model == first.model == "smollm2"
    assert [item.score for item in again] == [item.score for item in first]
    unresolved = [d.code for d in again.diagnostics if d.code == "score_prefix_unresolved"]
    assert unresolved == ["score_prefix_unresolved"]
