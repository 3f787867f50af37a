"""Run records: the state machine only moves forward, history is kept, writes are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import a_plan, gguf_summary_json, train_summary_json

from runner import ledger
from runner.errors import UserError
from runner.ledger import RunRecord
from runner.summaries import GgufSummary, TrainSummary


def record(run_id: str = "r1") -> RunRecord:
    return RunRecord(run_id=run_id, recipe="recipes/x.yaml", recipe_sha256="0" * 64, commit=None, backend="local")


def test_state_machine_moves_forward_only() -> None:
    r = record()
    for state in ("training", "trained", "converting", "converted", "recorded"):
        r.move(state)
    assert [h["state"] for h in r.history] == ["training", "trained", "converting", "converted", "recorded"]
    assert r.terminal
    with pytest.raises(ValueError, match="cannot go from recorded to training"):
        r.move("training")
    skipped = record("r2")
    with pytest.raises(ValueError):
        skipped.move("converted")


def test_history_of_runs_is_kept(tmp_path: Path) -> None:
    first, second = record("a"), record("b")
    ledger.save(tmp_path, first, "x")
    ledger.save(tmp_path, second, "x")
    first.move("training")
    ledger.save(tmp_path, first, "x")
    runs = ledger.read(tmp_path, "x")
    assert [r.run_id for r in runs.runs] == ["a", "b"]
    assert runs.runs[0].state == "training"


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger.save(tmp_path, record("a"), "x")
    before = ledger.runs_path(tmp_path, "x").read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ledger.save(tmp_path, record("b"), "x")
    assert ledger.runs_path(tmp_path, "x").read_text() == before
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["x.json"]  # no temp file left behind


def test_corrupt_record_is_a_clear_error(tmp_path: Path) -> None:
    path = ledger.runs_path(tmp_path, "x")
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ledger.UserError, match="run record is not valid"):
        ledger.read(tmp_path, "x")


def test_record_round_trips_as_json(tmp_path: Path) -> None:
    r = record()
    r.metrics = {"train_loss": 1.5}
    ledger.save(tmp_path, r, "x")
    doc = json.loads(ledger.runs_path(tmp_path, "x").read_text())
    assert doc["name"] == "x" and doc["runs"][0]["metrics"] == {"train_loss": 1.5}


def test_plan_and_summaries_round_trip_typed(tmp_path: Path) -> None:
    r = record()
    r.plan = a_plan(warnings=["a warning"], guesses=["tokens"])
    r.train_summary = TrainSummary.model_validate(train_summary_json(
        pushed={"repo": "alice/x", "commit": "c" * 40}, adapter=True,
        log_history=[{"step": 1, "loss": 2.0, "learning_rate": 1e-4}, {"train_runtime": 1.5, "epoch": 1.0}]))
    r.gguf_summary = GgufSummary.model_validate(gguf_summary_json([
        {"quantization": "Q4_K_M", "path": "out/x-Q4_K_M.gguf", "bytes": 10, "sha256": "0" * 64, "smoke_test": "hi",
         "imatrix": True},
        {"quantization": "F16", "kind": "mmproj", "path": "out/x-mmproj-F16.gguf", "bytes": 5, "sha256": "1" * 64,
         "smoke_test": "a vision encoder"}], imatrix={"file": "x-imatrix.gguf", "dataset": "d.jsonl", "chunks": 2,
                                                      "chunk_size": 512, "tokens": 1024, "matrices": 14, "bytes": 99}))
    ledger.save(tmp_path, r, "x")
    back = ledger.read(tmp_path, "x").runs[0]
    assert back == r
    assert back.plan is not None and back.plan.job("train").flavor == "cpu-basic" and back.plan.warnings == ["a warning"]
    assert back.train_summary.pushed.commit == "c" * 40 and back.gguf_summary.projector.name == "x-mmproj-F16.gguf"
    assert [f.name for f in back.gguf_summary.models] == ["x-Q4_K_M.gguf"]


def test_a_record_from_before_typed_plans_still_loads(tmp_path: Path) -> None:
    """Records kept their plan without warnings and guesses, and summaries from older job scripts lack later keys."""
    r = record()
    r.plan = a_plan()
    doc = json.loads(r.model_dump_json())
    del doc["plan"]["warnings"], doc["plan"]["guesses"]
    doc["train_summary"] = {k: v for k, v in train_summary_json().items()
                            if k not in ("vision", "setup", "pushed", "evaluation")}
    doc["gguf_summary"] = {"files": [], "merged_adapter": False, "seconds": {}, "hub_repo": None}
    ledger.runs_path(tmp_path, "x").parent.mkdir()
    ledger.runs_path(tmp_path, "x").write_text(json.dumps({"name": "x", "runs": [doc]}))
    back = ledger.read(tmp_path, "x").runs[0]
    assert back.plan.warnings == [] and back.train_summary.pushed is None and back.gguf_summary.files == []


def test_one_unreadable_run_file_does_not_stop_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.cli import main

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "broken.json").write_text('{"name": "broken", "runs": [{"run_id": 1}]}')
    good = RunRecord(run_id="r1", recipe="recipes/good.yaml", recipe_sha256="0" * 64, commit=None, backend="local",
                     state="recorded", plan=a_plan())
    ledger.save(tmp_path, good, "good")
    problems: list[str] = []
    assert [g.name for g in ledger.all_runs(tmp_path, problems)] == ["good"]
    assert len(problems) == 1 and "runs/broken.json: run record is not valid" in problems[0]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["history", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["runs"][0]["run_id"] == "r1" and "broken.json" in out.err
    assert main(["reconcile"]) == 1  # nothing to carry on, but a file a person must look at
    assert "error: " in capsys.readouterr().err


def test_records_carry_their_layout_version_and_a_newer_one_is_refused_in_one_line(tmp_path: Path, cli) -> None:
    ledger.save(tmp_path, RunRecord(run_id="r1", recipe="recipes/x.yaml", recipe_sha256="0" * 64, commit=None,
                                    backend="local", plan=a_plan()), "x")
    path = tmp_path / "runs" / "x.json"
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1 and ledger.read(tmp_path, "x").runs[0].run_id == "r1"
    path.write_text(json.dumps(doc | {"schema_version": 2}))
    with pytest.raises(UserError, match=r"runs/x.json: written by a newer runner \(schema_version 2; this one reads up "
                                         r"to 1\); update the runner"):
        ledger.read(tmp_path, "x")
    result = cli("history", cwd=tmp_path)
    assert "written by a newer runner" in result.out + result.err and "Traceback" not in result.err


def test_every_state_that_can_move_has_exactly_one_handler() -> None:
    from runner.runs.lifecycle import HANDLERS

    movable = {state for state, nexts in ledger.NEXT.items() if nexts}
    assert set(HANDLERS) == movable
