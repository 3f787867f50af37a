"""A sweep's winner and the model repo's main, on the Hub stand-in through the real HfApi: each trial's branch is set up
completely even when a set-up is cut short, and main never holds a model without the card that describes it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hubstub import HubStub, JobScript
from test_hf_backend import GGUF_SUMMARY, run
from test_sweep import LFS, REPO, _model, _summary, _sweep_workspace, _train_jobs

from runner import recipe as recipe_mod
from runner import runs, sweep, sweeprun
from runner.jobspec import trial_branch

EARLIER = {".gitattributes": LFS, "model.safetensors": b"an earlier model", "config.json": b"{}",
           "adapter_config.json": b"{}", "README.md": b"an earlier card", "loss.png": b"an earlier plot",
           "runner/old/train.py": b"#"}
LOSSES = [1.5, 1.2, 0.9, 1.1]  # the third trial wins


@pytest.fixture
def swept(hub: HubStub, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The workspace's recipe with a four-trial sweep; the model repo's main holds an earlier model and its card."""
    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.commit(REPO, EARLIER)
    return _sweep_workspace(workspace, 5)


def _runs(workspace: Path) -> list[dict]:
    return json.loads((workspace / "runs" / "tiny-sft.json").read_text())["runs"]


def _branches(workspace: Path, path: str) -> list[str]:
    """The trials' branches, in the sweep's order, as the runner names them (trial id and recipe version)."""
    loaded = recipe_mod.load(workspace / path)
    return [trial_branch(t.id, runs.recipe_version(dataclasses.replace(loaded, recipe=t.recipe)))
            for t in sweep.expand(loaded.recipe)]


def _run_of_card(readme: bytes, runs_: list[dict]) -> str | None:
    """The run a card describes: the one its provenance table names."""
    return next((r["run_id"] for r in runs_ if f"| run | `{r['run_id']}`".encode() in readme), None)


def _assert_every_main_has_its_card(hub: HubStub, runs_: list[dict]) -> None:
    """At every commit of main, the card describes the model beside it: the earlier card with the earlier model,
    and a run's card (naming that run) with the model that run's job pushed; never a model without a card."""
    pushed = {hub.files(REPO, r["train_summary"]["pushed"]["commit"])["model.safetensors"]: r["run_id"]
              for r in runs_ if r.get("train_summary")}
    for oid, tree in hub.history(REPO):
        if "model.safetensors" not in tree:
            continue
        assert "README.md" in tree, f"main at {oid[:12]} holds a model and no card"
        if tree["model.safetensors"] == EARLIER["model.safetensors"]:
            assert tree["README.md"] == EARLIER["README.md"], oid
        else:
            assert _run_of_card(tree["README.md"], runs_) == pushed[tree["model.safetensors"]], oid
            assert tree.get("loss.png") != EARLIER["loss.png"], oid


def _assert_branch_without_main(hub: HubStub, branch: str) -> None:
    files = hub.files(REPO, branch)
    assert not {k: v for k, v in files.items() if EARLIER.get(k) == v and k != ".gitattributes"
                and not k.startswith("runner/")}, f"{branch} still holds main's earlier model or card"
    assert "adapter_config.json" not in files


def test_a_branch_set_up_cut_short_is_completed_by_the_next_run(hub: HubStub, workspace: Path, swept: str,
                                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The Hub refuses the commit that clears the first trial's new branch: the run stops with one line, before any
    job, leaving the branch holding main's earlier model. The re-run clears it (the branch has no commit of its
    own), every trial trains, and main ends with exactly the winner's model and its card."""
    hub.state.faults[f"POST /api/models/{REPO}/commit/trial-*"] = [403]
    hub.state.commits_page_size = 2  # main's history is read page by page, as the Hub serves a long one
    code, out = run(workspace, monkeypatch, capsys, "run", swept, "--backend", "hf")
    first = _branches(workspace, swept)[0]
    assert code == 1 and f"clear branch {first} failed" in out, out
    assert not hub.state.jobs
    assert hub.files(REPO, first)["model.safetensors"] == EARLIER["model.safetensors"]  # the set-up was cut short

    hub.state.job_scripts += [JobScript(running=0.5, summary=_summary(x)) for x in LOSSES]
    hub.state.job_scripts.append(JobScript(summary=GGUF_SUMMARY))
    code, out = run(workspace, monkeypatch, capsys, "run", swept, "--backend", "hf")
    assert code == 0, out
    runs_ = _runs(workspace)
    winner = next(r for r in runs_ if r["state"] == "recorded")
    for _, config in _train_jobs(hub):
        _assert_branch_without_main(hub, config["hub_revision"])
    assert any("p" in q.query for q in hub.state.requests if f"/api/models/{REPO}/commits/" in q.path)
    main = hub.files(REPO)
    assert _model(main) == _model(hub.files(REPO, winner["train_summary"]["pushed"]["commit"]))
    assert set(_model(main)) == {"config.json", "model.safetensors"}
    assert _run_of_card(main["README.md"], runs_) == winner["run_id"] and "## GGUF" in main["README.md"].decode()
    _assert_every_main_has_its_card(hub, runs_)


def test_a_branch_is_cleared_only_while_it_has_no_commit_of_its_own(hub: HubStub, workspace: Path, swept: str,
                                                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Two trials' branches exist before the sweep: one cut from main and left as it was (cleared now, even after
    the Hub refuses the clearing commit once as stale), and the winner's, which an earlier attempt cleared and pushed
    a checkpoint and the trainer's own card to (kept as it is: no commit of the runner's lands on it); main gets the
    runner's card for the winner, not the trainer's."""
    branches = _branches(workspace, swept)
    fresh, resumed = branches[0], branches[LOSSES.index(min(LOSSES))]
    repo = hub.state.repos[REPO]
    repo.branches[fresh] = repo.branches[resumed] = repo.branches["main"]
    checkpoint = {"last-checkpoint/trainer_state.json": b'{"global_step": 3}', "README.md": b"the trainer's card"}
    inherited = tuple(k for k in EARLIER if "/" not in k and k not in (".gitattributes", *checkpoint))
    hub.commit(REPO, checkpoint, deleted=inherited, revision=resumed)  # as the earlier attempt left it
    hub.state.faults[f"POST /api/models/{REPO}/commit/{fresh}"] = [412]
    hub.state.job_scripts += [JobScript(running=0.5, summary=_summary(x)) for x in LOSSES]
    hub.state.job_scripts.append(JobScript(summary=GGUF_SUMMARY))
    code, out = run(workspace, monkeypatch, capsys, "run", swept, "--backend", "hf")
    assert code == 0, out
    _assert_branch_without_main(hub, fresh)
    kept = hub.files(REPO, resumed)
    assert {k: kept[k] for k in checkpoint} == checkpoint
    posted = [q for q in hub.state.requests if (q.method, q.path) == ("POST", f"/api/models/{REPO}/commit/{resumed}")]
    assert not posted  # the job's own push is the stand-in's, not a request: the runner committed nothing there
    assert len([q for q in hub.state.requests
                if (q.method, q.path) == ("POST", f"/api/models/{REPO}/commit/{fresh}")]) == 2  # refused, then made
    runs_ = _runs(workspace)
    winner = next(r for r in runs_ if r["state"] == "recorded")
    assert winner["configs"]["train"]["hub_revision"] == resumed
    _assert_every_main_has_its_card(hub, runs_)


def test_a_winner_whose_conversion_fails_leaves_main_its_model_with_its_card(hub: HubStub, workspace: Path,
                                                                             swept: str, monkeypatch, capsys) -> None:
    """The winner's GGUF job fails: main keeps the winner's model, with the card it was published with (the winner's
    own, its sweep table and no GGUF section), never the earlier card nor no card at all."""
    hub.state.job_scripts += [JobScript(running=0.5, summary=_summary(x)) for x in LOSSES]
    hub.state.job_scripts.append(JobScript(stage="gguf", end="ERROR", message="exit code 1"))
    code, out = run(workspace, monkeypatch, capsys, "run", swept, "--backend", "hf")
    runs_ = _runs(workspace)
    winner = next(r for r in runs_ if r["state"] not in ("rejected",))
    assert winner["state"] == "failed" and winner["failure"]["stage"] == "gguf", out
    main = hub.files(REPO)
    assert _model(main) == _model(hub.files(REPO, winner["train_summary"]["pushed"]["commit"]))
    card = main["README.md"].decode()
    assert _run_of_card(main["README.md"], runs_) == winner["run_id"]
    assert "## Sweep" in card and "## GGUF" not in card
    assert main.get("loss.png") != EARLIER["loss.png"]
    _assert_every_main_has_its_card(hub, runs_)
