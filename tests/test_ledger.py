"""Run records: the state machine only moves forward, history is kept, writes are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner import ledger
from runner.ledger import RunRecord


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
