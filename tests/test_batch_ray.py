"""The Ray engine on a local Ray instance (2 CPUs) against FakeLLMServer on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from batch_support import BAD_LINES, assert_each_row_once, comparable, good_rows, mixed_input, records, write_jsonl

from llmrerank import ConfigurationError, Reranker
from llmrerank.batch import RerankerSpec, run_batch
from llmrerank.testing import FakeBackend
from testkit.server import FakeLLMServer, Reply, ServerRequest, overlap_responder

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("openai")


def responder(request: ServerRequest) -> Reply | str:
    if "[[poison]]" in request.user:
        return Reply("upstream overloaded", status=500)
    return overlap_responder(request)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    """The loopback server, and a local Ray instance whose workers see its API key."""
    with pytest.MonkeyPatch.context() as env, FakeLLMServer(responder, latency=0.01) as srv:
        env.setenv("OPENAI_API_KEY", "sk-test")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield srv
        finally:
            ray.shutdown()


def spec(server: FakeLLMServer) -> RerankerSpec:
    return RerankerSpec("openai", "pointwise", "gpt-4o-mini", server.base_url, {"on_error": "raise"})


def rows_file(tmp_path: Path) -> tuple[Path, int]:
    rows = good_rows(12)
    rows[5]["candidates"][0]["text"] += " [[poison]]"
    return mixed_input(tmp_path / "rows.jsonl", rows=rows)


def test_ray_writes_what_the_local_engine_writes(server: FakeLLMServer, tmp_path: Path) -> None:
    path, total = rows_file(tmp_path)
    on_ray = run_batch(path, tmp_path / "ray", spec(server), engine="ray", concurrency=4, ray_actors=2)
    local = run_batch(path, tmp_path / "local", spec(server), concurrency=4)
    assert on_ray.engine == "ray" and on_ray.rows == local.rows == total
    assert (on_ray.results, on_ray.errors) == (local.results, local.errors)
    assert on_ray.errors > len(BAD_LINES)  # the poisoned row failed inside an actor and was recorded
    assert comparable(on_ray.results_path) == comparable(local.results_path)
    by_row = sorted(records(on_ray.errors_path), key=lambda e: e["row"])
    assert by_row == sorted(records(local.errors_path), key=lambda e: e["row"])
    assert any(e["stage"] == "rerank" and "upstream overloaded" in e["message"] for e in by_row)
    assert on_ray.trec_path.read_text() == local.trec_path.read_text()
    assert on_ray.usage.calls == local.usage.calls > 0
    assert_each_row_once(tmp_path / "ray", total)


def test_ray_skips_the_rows_an_earlier_run_wrote(server: FakeLLMServer, tmp_path: Path) -> None:
    rows = good_rows(10, docs=3)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    write_jsonl(tmp_path / "first.jsonl", rows[:4])
    out = tmp_path / "out"
    run_batch(tmp_path / "first.jsonl", out, spec(server))  # the rows a crashed run had finished
    resumed = run_batch(path, out, spec(server), engine="ray", concurrency=2)
    assert (resumed.skipped, resumed.results, resumed.errors) == (4, 6, 0)
    assert_each_row_once(out, 10)
    whole = run_batch(path, tmp_path / "whole", spec(server))
    assert comparable(out / "results.jsonl") == comparable(whole.results_path)


def test_ray_needs_a_factory_not_a_reranker(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", good_rows(1))
    with pytest.raises(ConfigurationError, match="function that builds it"):
        run_batch(path, tmp_path / "out", Reranker("pointwise", FakeBackend(["1"])), engine="ray")
    assert not (tmp_path / "out").exists()
