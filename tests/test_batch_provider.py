"""Provider batch engines with the real openai and anthropic SDKs against FakeBatchServer on loopback."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from batch_support import BAD_LINES, assert_each_row_once, comparable, good_rows, mixed_input, records, write_jsonl

from llmrerank import ConfigurationError, Hybrid, Listwise, Pairwise, Reranker
from llmrerank.batch import run_batch
from llmrerank.pricing import load_prices
from testkit.batch_server import FakeBatchServer
from testkit.server import Reply, ServerRequest, overlap_responder

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from llmrerank.backends.anthropic import AnthropicBackend
from llmrerank.backends.openai import OpenAIBackend

APIS = ["openai", "anthropic"]
CREATE = {"openai": "/v1/batches", "anthropic": "/v1/messages/batches"}


def backend(api: str, server: FakeBatchServer) -> OpenAIBackend | AnthropicBackend:
    if api == "openai":
        return OpenAIBackend("gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0)
    return AnthropicBackend("claude-haiku-4-5", base_url=server.anthropic_base_url, api_key="sk-test", max_retries=0)


def batch_run(api: str, server: FakeBatchServer, path: Path, out: Path, strategy: Any = "pointwise", **kw: Any) -> Any:
    options = {"on_error": kw.pop("on_error")} if "on_error" in kw else {}
    reranker = Reranker(strategy, backend(api, server), **options)
    return run_batch(path, out, reranker, engine=f"{api}-batch", poll_interval=0.02, **kw)


def created(server: FakeBatchServer, api: str) -> int:
    return sum(1 for r in server.requests if r.method == "POST" and r.path == CREATE[api])


@pytest.mark.parametrize("api", APIS)
def test_one_provider_batch_gives_what_live_calls_give_at_half_the_cost(api: str, tmp_path: Path) -> None:
    path, total = mixed_input(tmp_path / "rows.jsonl", count=6)
    # A server on 127.0.0.1 has no list price (it could be anyone's): give the provider's as our own.
    prices = {name: load_prices()[name] for name in ("gpt-4o-mini", "claude-haiku-4-5")}
    with FakeBatchServer(overlap_responder, batch_delay=0.1) as server:
        batch = batch_run(api, server, path, tmp_path / "batch", prices=prices)
        assert created(server, api) == 1
        assert not [r for r in server.requests if r.path in ("/v1/chat/completions", "/v1/messages")]
        (sent,) = server.batches.values()
        assert len(sent.requests) == 36  # 6 rows x 6 candidates, one request each
        live = run_batch(path, tmp_path / "live", Reranker("pointwise", backend(api, server)), prices=prices)
    assert (batch.results, batch.errors, batch.pending, batch.degraded) == (6, len(BAD_LINES), 0, 0)
    assert_each_row_once(tmp_path / "batch", total)
    assert comparable(batch.results_path) == comparable(live.results_path)
    assert records(batch.errors_path) == records(live.errors_path)
    assert batch.trec_path.read_text() == live.trec_path.read_text()
    assert batch.usage.calls == live.usage.calls == 36
    assert batch.cost == pytest.approx(live.cost / 2) and batch.cost > 0
    state = json.loads((tmp_path / "batch" / "provider_batches.json").read_text())
    assert [b["collected"] for b in state["batches"]] == [True]
    assert not list((tmp_path / "batch" / "provider").iterdir())  # the requests file goes once collected


@pytest.mark.parametrize("api", APIS)
def test_single_window_listwise_and_all_pairs_run_as_one_batch(api: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(3, docs=4))
    with FakeBatchServer(overlap_responder) as server:
        listwise = batch_run(api, server, path, tmp_path / "listwise", Listwise(window=4, step=2))
        pairs = batch_run(api, server, path, tmp_path / "pairs", Pairwise(mode="all_pairs"))
    assert listwise.results == pairs.results == 3 and listwise.degraded == pairs.degraded == 0
    assert listwise.usage.calls == 3 and pairs.usage.calls == 3 * 12
    assert all(r["score_kind"] == "win_rate" for r in records(pairs.results_path))


@pytest.mark.parametrize("api", APIS)
def test_a_strategy_needing_a_second_round_is_refused_before_anything_is_sent(api: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(3, docs=6))
    with FakeBatchServer(overlap_responder) as server:
        with pytest.raises(ConfigurationError, match=r"listwise needs 2 rounds.*row 1.*pointwise"):
            batch_run(api, server, path, tmp_path / "a", Listwise(window=4, step=2))
        with pytest.raises(ConfigurationError, match=r"pairwise needs \d+ rounds"):
            batch_run(api, server, path, tmp_path / "b", Pairwise(mode="sort"))
        assert created(server, api) == 0 and not server.files


def test_the_engine_must_match_the_backend(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(1))
    with FakeBatchServer() as server, pytest.raises(ConfigurationError, match="needs the anthropic backend"):
        run_batch(path, tmp_path / "out", Reranker("pointwise", backend("openai", server)), engine="anthropic-batch")
    assert not (tmp_path / "out").exists()


def failing_docs(request: ServerRequest) -> Reply | str:
    """Requests about candidates of row 2 fail with a 500; the rest are judged."""
    if "[[poison]]" in request.user:
        return Reply("upstream overloaded", status=500)
    return overlap_responder(request)


def poisoned_input(tmp_path: Path) -> Path:
    rows = good_rows(6, docs=3)
    rows[1]["candidates"][0]["text"] += " [[poison]]"
    return write_jsonl(tmp_path / "rows.jsonl", rows)


@pytest.mark.parametrize("api", APIS)
def test_failed_and_missing_requests_degrade_their_rows(
    api: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = poisoned_input(tmp_path)
    omit = lambda custom_id: custom_id.startswith("r4-")  # noqa: E731
    with FakeBatchServer(failing_docs, omit=omit) as server, caplog.at_level(logging.WARNING, logger="llmrerank"):
        summary = batch_run(api, server, path, tmp_path / "out")
    assert (summary.results, summary.errors, summary.degraded) == (6, 0, 2)
    # One warning per degraded row, from its real answers; none from recording the rows' prompts
    # (the stand-in's empty answers would read as 6 unreadable reranks).
    degraded = [r.getMessage() for r in caplog.records if "rerank degraded" in r.getMessage()]
    assert len(degraded) == 2 and all("call_failed" in m for m in degraded)
    by_row = {r["row"]: r for r in records(summary.results_path)}
    assert "upstream overloaded" in by_row[2]["degraded_reason"] and by_row[2]["usage"]["failed_calls"] == 1
    assert "no result for this request" in by_row[4]["degraded_reason"] and by_row[4]["usage"]["failed_calls"] == 3
    assert not any(by_row[n]["degraded"] for n in (1, 3, 5, 6))


@pytest.mark.parametrize("api", APIS)
def test_expired_requests_become_errors_and_retry_errors_sends_them_again(api: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(6, docs=3))
    out = tmp_path / "out"
    with FakeBatchServer(overlap_responder, outcome="expired", processed=9) as server:
        summary = batch_run(api, server, path, out, on_error="raise")
    assert (summary.results, summary.errors) == (3, 3)  # 9 of 18 requests ran: rows 1-3
    errors = records(out / "errors.jsonl")
    assert [e["row"] for e in errors] == [4, 5, 6] and all("expired" in e["message"] for e in errors)
    with FakeBatchServer(overlap_responder) as server:
        again = batch_run(api, server, path, out, on_error="raise", retry_errors=True)
        (sent,) = server.batches.values()
        assert len(sent.requests) == 9  # only the rows that expired
    assert (again.skipped, again.results, again.errors) == (3, 3, 0)
    assert_each_row_once(out, 6)


def test_a_failed_openai_batch_fails_every_row_with_its_reason(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2, docs=2))
    with FakeBatchServer(overlap_responder, outcome="failed") as server:
        summary = batch_run("openai", server, path, tmp_path / "out")
    assert summary.degraded == 2
    assert all("batch failed" in r["degraded_reason"] for r in records(summary.results_path))


@pytest.mark.parametrize("api", APIS)
def test_a_rerun_polls_the_saved_batch_instead_of_submitting_again(api: str, tmp_path: Path) -> None:
    path, total = mixed_input(tmp_path / "rows.jsonl", count=4)
    out = tmp_path / "out"
    with FakeBatchServer(overlap_responder, batch_delay=3600) as server:
        first = batch_run(api, server, path, out, wait=False)
        assert (first.pending, first.results, first.errors) == (4, 0, len(BAD_LINES))
        assert len(first.provider_batches) == 1
        state = json.loads((out / "provider_batches.json").read_text())
        assert state["batches"][0]["id"] == first.provider_batches[0] and state["batches"][0]["rows"] == [1, 2, 4, 6]
        still = batch_run(api, server, path, out, wait=False)
        assert (still.pending, still.results) == (4, 0)
        server.batch_delay = 0
        done = batch_run(api, server, path, out)
        assert created(server, api) == 1
    assert (done.pending, done.results, done.provider_batches) == (0, 4, ())
    assert_each_row_once(out, total)


@pytest.mark.parametrize("api", APIS)
def test_cancel_stops_the_open_batch_and_collects_it(api: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(3, docs=2))
    out = tmp_path / "out"
    with FakeBatchServer(overlap_responder, batch_delay=3600) as server:
        assert batch_run(api, server, path, out, wait=False).pending == 3
        summary = batch_run(api, server, path, out, cancel=True, on_error="raise")
        (batch,) = server.batches.values()
        assert batch.status == "cancelled"
    assert (summary.results, summary.errors, summary.pending) == (0, 3, 0)
    assert all("cancel" in e["message"] for e in records(out / "errors.jsonl"))


class WordScorer:
    """A stand-in cross-encoder: the number of query words in the document."""

    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        return [float(len(set(q.lower().split()) & set(d.lower().split()))) for q, d in pairs]


@pytest.mark.parametrize("api", APIS)
def test_hybrid_prefilters_locally_and_batches_its_llm_step(api: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(3, docs=6))
    with FakeBatchServer(overlap_responder) as server:
        strategy = Hybrid(cross_encoder=WordScorer(), keep=3, llm="pointwise")
        summary = batch_run(api, server, path, tmp_path / "out", strategy)
        (sent,) = server.batches.values()
    assert len(sent.requests) == 9  # the LLM sees only the 3 kept of 6 candidates per row
    assert summary.results == 3 and summary.degraded == 0 and summary.usage.calls == 9
    assert all(len(r["candidates"]) == 6 for r in records(summary.results_path))


@pytest.mark.parametrize("api", APIS)
def test_a_job_over_the_providers_limit_is_split_between_rows(
    api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmrerank.batch import provider

    monkeypatch.setattr(provider._OpenAI if api == "openai" else provider._Anthropic, "max_requests", 10)
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(6, docs=3))
    with FakeBatchServer(overlap_responder) as server:
        summary = batch_run(api, server, path, tmp_path / "out")
        sizes = [len(b.requests) for b in server.batches.values()]
    assert sizes == [9, 9]  # three rows of three requests each; a row never spans two batches
    assert summary.results == 6 and summary.degraded == 0
    state = json.loads((tmp_path / "out" / "provider_batches.json").read_text())
    assert [b["rows"] for b in state["batches"]] == [[1, 2, 3], [4, 5, 6]]


def test_cli_submits_exits_and_collects_on_the_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmrerank.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2, docs=3))
    with FakeBatchServer(overlap_responder, batch_delay=3600) as server:
        args = ["batch", str(path), "--out", str(tmp_path / "out"), "--engine", "openai-batch"]
        args += ["--base-url", server.base_url, "--strategy", "pointwise", "--poll-interval", "0.02", "--no-progress"]
        assert main([*args, "--no-wait"]) == 0
        assert "0 reranked (0 degraded), 0 errors, 0 done before, 2 waiting" in capsys.readouterr().out
        server.batch_delay = 0
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 rows: 2 reranked (0 degraded), 0 errors, 0 done before, 0 waiting" in printed
    assert "6 LLM calls" in printed and "still running" not in printed


def test_a_provider_batch_fuses_like_live_calls(tmp_path: Path) -> None:
    from llmrerank import Fusion

    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(3))
    with FakeBatchServer(overlap_responder, batch_delay=0.05) as server:
        fused = Reranker("pointwise", backend("openai", server), fusion=Fusion("zscore", weight=0.3))
        batch = run_batch(path, tmp_path / "batch", fused, engine="openai-batch", poll_interval=0.02)
        live = run_batch(path, tmp_path / "live", fused)
    assert comparable(batch.results_path) == comparable(live.results_path)
    assert {r["score_kind"] for r in records(batch.results_path)} == {"fused"}


def test_a_known_context_size_shapes_the_batch_as_it_shapes_live_calls(tmp_path: Path) -> None:
    # 8 abstracts of 600 characters do not fit one listwise window in 800 tokens: live calls split
    # them into several windows, each built from the answers before, so a provider batch must refuse.
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2, docs=8))
    with FakeBatchServer(overlap_responder) as server:
        small = OpenAIBackend(
            "gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, context_tokens=800
        )
        with pytest.raises(ConfigurationError, match=r"listwise needs \d+ rounds"):
            run_batch(path, tmp_path / "out", Reranker(Listwise(window=20), small), engine="openai-batch")
        assert created(server, "openai") == 0


def test_query_likelihood_is_refused_by_a_provider_batch(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2, docs=3))
    with FakeBatchServer(overlap_responder) as server:
        scorer = OpenAIBackend(
            "gpt-4o-mini", base_url=server.base_url, api_key="sk-test", max_retries=0, likelihood=True
        )
        with pytest.raises(ConfigurationError, match="cannot score a continuation"):
            run_batch(path, tmp_path / "out", Reranker("query_likelihood", scorer), engine="openai-batch")
        assert created(server, "openai") == 0
