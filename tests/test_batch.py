"""Batch jobs on the local engine: input checks, output files, TREC run, resuming, row failures, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batch_support import (
    BAD_LINES,
    assert_each_row_once,
    comparable,
    good_rows,
    mixed_input,
    records,
    write_jsonl,
)

from llmrerank import BackendError, ConfigurationError, MissingDependencyError, Reranker
from llmrerank.batch import RerankerSpec, arun_batch, run_batch
from llmrerank.batch.output import read_jsonl, trec_lines
from llmrerank.batch.progress import JobProgress
from llmrerank.cli import main
from llmrerank.protocol import Completion, Prompt
from llmrerank.testing import FakeBackend, overlap_judge
from llmrerank.types import Usage
from testkit.server import FakeLLMServer


def judge() -> FakeBackend:
    return FakeBackend(respond=overlap_judge)


def test_every_bad_row_gets_a_clear_error_line_and_the_good_rows_are_reranked(tmp_path: Path) -> None:
    path, total = mixed_input(tmp_path / "rows.jsonl")
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", judge()))
    assert (summary.rows, summary.results, summary.errors, summary.skipped) == (total, 12, len(BAD_LINES), 0)
    assert_each_row_once(tmp_path / "out", total)
    errors = {e["row"]: e for e in records(tmp_path / "out" / "errors.jsonl")}
    lines = path.read_text().splitlines()
    expected = {
        "not json": "not valid JSON",
        "non-string query": "query must be a string",
        "missing text": "has no text",
        "empty candidates": "is empty",
        "candidate without id": "has no id",
        "no query id": "no query_id",
        "duplicate query id": "duplicate query_id 'q0': row 1 has it already",
        "a list, not an object": "expected an object",
    }
    for what, line in BAD_LINES:
        error = errors[lines.index(line) + 1]
        assert expected[what] in error["message"], (what, error)
        assert error["error"] == "InvalidInputError" and error["stage"] == "input"
    assert errors[lines.index(BAD_LINES[-2][1]) + 1]["query_id"] == "q0"


def test_results_hold_a_ranking_of_every_candidate_and_the_trec_run_sorts_the_same(tmp_path: Path) -> None:
    rows = good_rows(5)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", judge()), run_name="mine")
    assert summary.results == 5 and summary.errors == 0 and summary.usage.calls == 30
    results = records(summary.results_path)
    trec = [line.split() for line in summary.trec_path.read_text().splitlines()]
    assert len(trec) == 30
    for row, result in zip(rows, sorted(results, key=lambda r: r["row"]), strict=True):
        assert result["query_id"] == row["query_id"] and result["score_kind"] == "relevance"
        ids = [c["id"] for c in result["candidates"]]
        assert sorted(ids) == sorted(c["id"] for c in row["candidates"])
        assert [c["rank"] for c in result["candidates"]] == list(range(1, 7))
        for c in result["candidates"]:
            assert c["input_score"] == row["candidates"][c["input_rank"] - 1]["score"]
            assert row["candidates"][c["input_rank"] - 1]["id"] == c["id"]
        lines = [t for t in trec if t[0] == row["query_id"]]
        assert all(t[1] == "Q0" and t[5] == "mine" for t in lines)
        # trec_eval orders by score: that order must be ours.
        by_score = sorted(lines, key=lambda t: -float(t[4]))
        assert [t[2] for t in by_score] == ids and [int(t[3]) for t in lines] == list(range(1, 7))


def ranked(*scores: float | None) -> dict[str, object]:
    return {"query_id": "q", "candidates": [{"id": f"d{i}", "rank": i + 1, "score": s} for i, s in enumerate(scores)]}


def test_trec_keeps_real_scores_when_they_fall_and_writes_rank_scores_otherwise() -> None:
    assert list(trec_lines(ranked(7.5, 2), "r")) == ["q Q0 d0 1 7.5 r\n", "q Q0 d1 2 2.0 r\n"]
    assert list(trec_lines(ranked(5, 5), "r")) == ["q Q0 d0 1 2 r\n", "q Q0 d1 2 1 r\n"]
    assert [line.split()[4] for line in trec_lines(ranked(5, None, 1), "r")] == ["3", "2", "1"]


def test_unscored_documents_get_pseudo_scores_in_the_trec_run(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(1, docs=3))
    backend = FakeBackend(["7", "no idea", "3"])
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", backend))
    (result,) = records(summary.results_path)
    assert [c["score"] for c in result["candidates"]] == [7.0, 3.0, None]
    assert result["diagnostics"]["score_unparsed"] == 1
    assert result["candidates"][2]["diagnostics"] == ["score_unparsed"]
    assert [line.split()[4] for line in summary.trec_path.read_text().splitlines()] == ["3", "2", "1"]


def test_input_aliases_are_read(tmp_path: Path) -> None:
    row = {"qid": 17, "query": "dogs", "docs": [{"doc_id": 1, "content": "dogs bark"}, {"docid": "x", "text": "cats"}]}
    path = write_jsonl(tmp_path / "rows.jsonl", [row])
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", judge()))
    (result,) = records(summary.results_path)
    assert result["query_id"] == "17" and [c["id"] for c in result["candidates"]] == ["1", "x"]


def test_top_k_keeps_the_best_candidates(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2))
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", judge()), top_k=2)
    assert all(len(r["candidates"]) == 2 for r in records(summary.results_path))
    assert len(summary.trec_path.read_text().splitlines()) == 4


def test_a_failing_row_is_recorded_and_retried_with_retry_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(6))
    poisoned = good_rows(6)[3]["query"]

    def flaky(prompt: Prompt) -> str:
        if poisoned in prompt.user:
            raise BackendError("HTTP 500 from the provider", status_code=500)
        return overlap_judge(prompt)

    out = tmp_path / "out"
    summary = run_batch(path, out, Reranker("listwise", FakeBackend(respond=flaky), on_error="raise"))
    assert (summary.results, summary.errors) == (5, 1)
    (error,) = records(out / "errors.jsonl")
    assert error == {
        "row": 4,
        "query_id": "q3",
        "stage": "rerank",
        "error": "BackendError",
        "message": "HTTP 500 from the provider",
    }
    again = run_batch(path, out, Reranker("listwise", judge(), on_error="raise"))
    assert (again.skipped, again.results, again.errors) == (6, 0, 0)  # errors are kept without --retry-errors
    retried = run_batch(path, out, Reranker("listwise", judge(), on_error="raise"), retry_errors=True)
    assert (retried.skipped, retried.results, retried.errors) == (5, 1, 0)
    assert records(out / "errors.jsonl") == []
    assert_each_row_once(out, 6)


def test_a_degraded_row_says_why(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(1, docs=3))
    backend = FakeBackend([BackendError("connection reset"), "4", "6"])
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", backend))
    (result,) = records(summary.results_path)
    assert result["degraded"] is True and summary.degraded == 1
    assert result["degraded_reason"].startswith("call_failed") and "connection reset" in result["degraded_reason"]
    assert result["usage"]["failed_calls"] == 1


def test_a_row_degraded_by_an_unreadable_score_names_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(1, docs=3))
    backend = FakeBackend(["N/A (0-10 scale)", "4", "6"])
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", backend))
    (result,) = records(summary.results_path)
    assert result["status"] == "partial" and result["degraded_reasons"] == ["unreadable_answer"]
    assert result["degraded_reason"].startswith("score_unparsed") and "N/A" in result["degraded_reason"]


def test_rows_in_flight_are_bounded_by_concurrency(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(12))
    backend = FakeBackend(respond=overlap_judge, delay=0.05)
    run_batch(path, tmp_path / "out", Reranker("listwise", backend, max_concurrency=16), concurrency=3)
    assert backend.max_in_flight == 3  # one listwise call per row: calls in flight = rows in flight


def test_a_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2))
    run_batch(path, tmp_path / "out", Reranker("pointwise", judge()))
    with pytest.raises(ConfigurationError, match=r"other settings.*strategy"):
        run_batch(path, tmp_path / "out", Reranker("listwise", judge()))


async def test_an_interrupted_run_resumes_without_losing_or_repeating_a_row(tmp_path: Path) -> None:
    path, total = mixed_input(tmp_path / "rows.jsonl", count=16)
    out = tmp_path / "out"
    gate = asyncio.Event()
    calls = 0

    def stall_after_five(prompt: Prompt) -> str:
        nonlocal calls
        calls += 1
        if calls == 6:
            gate.set()
        return overlap_judge(prompt)

    slow = FakeBackend(respond=stall_after_five, delay=0.01)
    job = asyncio.ensure_future(arun_batch(path, out, Reranker("listwise", slow), concurrency=2))
    await gate.wait()
    job.cancel()  # what Ctrl-C does to the blocking API
    with pytest.raises(asyncio.CancelledError):
        await job
    first = records(out / "results.jsonl")
    assert 0 < len(first) < 16
    with (out / "results.jsonl").open("a") as f:
        f.write('{"row": 99, "query_id": "torn')  # a process killed in the middle of a write
    summary = await arun_batch(path, out, Reranker("listwise", judge()))
    assert summary.results + len(first) == 16
    assert summary.skipped == len(first) + len(records(out / "errors.jsonl")) - summary.errors
    assert_each_row_once(out, total)
    ids = [r["query_id"] for r in records(out / "results.jsonl")]
    assert len(ids) == len(set(ids)) == 16
    assert len({line.split()[0] for line in (out / "run.trec").read_text().splitlines()}) == 16


def test_a_torn_last_line_is_dropped_and_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"row": 1}\n{"row": 2}\n{"row": 3, "qu')
    assert [r["row"] for r in read_jsonl(path, repair=True)] == [1, 2]
    assert path.read_text() == '{"row": 1}\n{"row": 2}\n'


def test_parquet_input_gives_the_same_results_as_jsonl(tmp_path: Path) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    rows = good_rows(4)
    parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "rows.parquet")
    write_jsonl(tmp_path / "rows.jsonl", rows)
    a = run_batch(tmp_path / "rows.parquet", tmp_path / "a", Reranker("pointwise", judge()))
    b = run_batch(tmp_path / "rows.jsonl", tmp_path / "b", Reranker("pointwise", judge()))
    assert a.results == 4
    assert comparable(a.results_path) == comparable(b.results_path)
    assert a.trec_path.read_text() == b.trec_path.read_text()


def test_parquet_without_pyarrow_names_the_install_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rows.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "llmrerank\[batch\]"'):
        run_batch(tmp_path / "rows.parquet", tmp_path / "out", Reranker("pointwise", judge()))


def test_progress_without_tqdm_logs_rows_per_second_calls_tokens_and_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import llmrerank.batch.progress as progress

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    stream = io.StringIO()
    bar = JobProgress(total=10, enabled=True, model="gpt-4o-mini", backend="openai", stream=stream)
    bar.add(1, Usage(calls=20, prompt_tokens=1_000_000, completion_tokens=1000))
    bar.close()
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("llmrerank batch: 1/10 rows,") and "rows/s" in line
    assert "calls=20 tokens=1.0M ~$0.1506" in line  # 1M in x $0.15 + 1k out x $0.60


def test_progress_bar_shows_calls_tokens_and_cost() -> None:
    import io

    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = JobProgress(total=2, enabled=True, model="gpt-4o-mini", backend="openai", stream=stream, discount=0.5)
    bar.add(2, Usage(calls=3, prompt_tokens=1000, completion_tokens=10))
    bar.close()
    assert "2/2" in stream.getvalue() and "calls=3 tokens=1.0k ~$0.0001" in stream.getvalue()


def test_cli_batch_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, total = mixed_input(tmp_path / "rows.jsonl", count=4)
    args = ["batch", str(path), "--out", str(tmp_path / "out"), "--backend", "fake", "--strategy", "listwise"]
    assert main([*args, "--window", "3", "--step", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{total} rows: 4 reranked (0 degraded), {len(BAD_LINES)} errors" in printed
    manifest = json.loads((tmp_path / "out" / "job.json").read_text())
    assert "window=3" in manifest["strategy"] and "step=2" in manifest["strategy"]
    assert main([*args, "--window", "3", "--step", "2", "--no-progress"]) == 0
    assert f"{total} rows: 0 reranked (0 degraded), 0 errors, {total} done before" in capsys.readouterr().out


def test_a_batch_on_a_backend_of_this_machine_prints_cost_n_a_not_a_dollar_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = mixed_input(tmp_path / "rows.jsonl", count=2)
    args = ["batch", str(path), "--out", str(tmp_path / "out"), "--backend", "fake", "--strategy", "pointwise"]
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "cost n/a (fake backend: no charge)" in printed and "$" not in printed
    bar = JobProgress(total=1, enabled=False, model="SmolLM2-135M-Instruct", backend="local")
    bar.add(1, Usage(calls=2, prompt_tokens=10, completion_tokens=1))
    assert bar.summary() == "calls=2 tokens=11 cost n/a" and bar.cost_note == "local backend: no charge"


def test_cli_batch_refuses_an_unknown_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--backend", "fake"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_reranker_spec_builds_the_cli_backend() -> None:
    reranker = RerankerSpec("fake", "pairwise", model="m", options={"max_concurrency": 3})()
    assert reranker.strategy.name == "pairwise" and reranker.backend.model == "m" and reranker.max_concurrency == 3


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_stopped_command_keeps_whole_lines_and_the_rerun_finishes(
    tmp_path: Path, stop: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path, total = mixed_input(tmp_path / "rows.jsonl", count=30)
    out = tmp_path / "out"
    with FakeLLMServer(lambda r: overlap_judge(Prompt(r.system, r.user)), latency=0.05) as server:
        env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
        command = [sys.executable, "-m", "llmrerank.cli", "batch", str(path), "--out", str(out)]
        command += ["--backend", "openai", "--base-url", server.base_url, "--strategy", "listwise"]
        command += ["--concurrency", "2", "--no-progress"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(records(out / "results.jsonl")) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)
        if stop == signal.SIGINT:
            assert process.returncode == 130, err
            assert "rerun the same command to resume" in err
        else:
            assert process.returncode == -signal.SIGKILL
        done = len(records(out / "results.jsonl"))  # every line whole: records() parses them all
        assert 5 <= done < 30
        again = run_batch(path, out, RerankerSpec("openai", "listwise", base_url=server.base_url))
    assert again.results == 30 - done
    assert_each_row_once(out, total)


def test_the_blocking_and_async_apis_write_the_same(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(3))
    a = run_batch(path, tmp_path / "a", Reranker("pointwise", judge()))
    b = asyncio.run(arun_batch(path, tmp_path / "b", Reranker("pointwise", judge())))
    assert comparable(a.results_path) == comparable(b.results_path)


def test_usage_and_completion_tokens_add_up(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2, docs=2))
    backend = FakeBackend([Completion("5", prompt_tokens=100, completion_tokens=1)] * 4)
    summary = run_batch(path, tmp_path / "out", Reranker("pointwise", backend), prices={"fake-model": [1.0, 2.0]})
    assert summary.usage.prompt_tokens == 400 and summary.usage.completion_tokens == 4
    assert summary.cost == 0.0  # the fake backend is free whatever the price table says


def test_a_rejected_key_stops_the_job_and_leaves_the_rows_pending(tmp_path: Path) -> None:
    from llmrerank.backends.openai import OpenAIBackend
    from llmrerank.errors import AuthenticationError
    from testkit.server import Reply

    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(12))
    out = tmp_path / "out"

    def reranker(server: FakeLLMServer) -> Reranker:
        return Reranker("listwise", OpenAIBackend("m", base_url=server.base_url, api_key="sk", max_retries=0))

    with FakeLLMServer(Reply(status=401, text="Incorrect API key provided")) as server:
        with pytest.raises(AuthenticationError):
            run_batch(path, out, reranker(server), concurrency=2)
        sent = len([r for r in server.requests if r.method == "POST"])
    assert sent <= 3  # the rows in flight, not all twelve
    assert records(out / "results.jsonl") == [] and records(out / "errors.jsonl") == []
    with FakeLLMServer(lambda r: overlap_judge(Prompt(r.system, r.user))) as server:
        assert run_batch(path, out, reranker(server), concurrency=2).results == 12


def test_first_stage_scores_of_the_rows_reach_fusion(tmp_path: Path) -> None:
    from llmrerank import Fusion, QueryLikelihood
    from llmrerank.testing import overlap_likelihood

    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(2))
    retriever_only = Reranker(QueryLikelihood(), FakeBackend(likelihood=overlap_likelihood), fusion=Fusion(weight=0.0))
    summary = run_batch(path, tmp_path / "out", retriever_only)
    for result in records(summary.results_path):
        assert result["score_kind"] == "fused"
        assert [c["input_rank"] for c in result["candidates"]] == list(range(1, 7))  # the rows' own scores


def test_the_typed_batch_options_are_exactly_the_ones_a_batch_takes() -> None:
    """BatchOptions (what type checkers and editors show for run_batch's **options) cannot drift
    from the settings the batch really reads."""
    import dataclasses

    from llmrerank.batch import BatchOptions, _Call

    taken = {f.name for f in dataclasses.fields(_Call)} - {"input", "output_dir", "reranker"}
    assert set(BatchOptions.__annotations__) == taken
