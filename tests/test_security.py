"""Attacks from the security review (issue 18), each replayed against the stand-ins and refused.

Every case ends with the same proof: no request that spends or publishes reached the Hub stand-in
(only GETs), no job exists, and no file was committed to any model repo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HUB_TOKEN, git, write_jsonl
from hubstub import HubStub, JobScript
from test_hf_backend import GGUF_SUMMARY, SUMMARY, run, scripted





def assert_nothing_spent_or_published(hub: HubStub) -> None:
    assert not hub.state.jobs
    assert [r for r in hub.state.requests if r.method != "GET"] == []
    assert all(not repo.commits for repo in hub.state.repos.values())


def commit_all(ws: Path, message: str) -> None:
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", message)


# --- 3. a symlink below a shipped folder ------------------------------------------------------------------


def test_a_link_in_the_base_model_folder_is_never_uploaded(hub, workspace, monkeypatch, capsys, tmp_path) -> None:
    secret = tmp_path / "environ"
    secret.write_text(f"HF_TOKEN={HUB_TOKEN}\nGITHUB_TOKEN=ghs_not_a_real_one\n")
    (workspace / "tiny-model" / "notes.txt").symlink_to(secret)  # as a link to /proc/self/environ would
    commit_all(workspace, "a model note")
    for command in (["validate", "recipes/tiny-sft.yaml"], ["plan", "recipes/tiny-sft.yaml"],
                    ["run", "recipes/tiny-sft.yaml", "--backend", "hf"]):
        code, out = run(workspace, monkeypatch, capsys, *command)
        assert code == 1, (command, out)
        assert "tiny-model/notes.txt' is a symbolic link" in out and "base_model" in out, (command, out)
        assert HUB_TOKEN not in out
    assert_nothing_spent_or_published(hub)


def test_a_linked_dataset_file_is_refused_where_it_is_named(workspace, cli) -> None:
    (workspace / "data" / "sft.jsonl").rename(workspace / "data" / "real.jsonl")
    (workspace / "data" / "sft.jsonl").symlink_to(workspace / "data" / "real.jsonl")
    result = cli("validate", "recipes/tiny-sft.yaml", cwd=workspace)
    assert result.code == 1
    [line] = [line for line in result.err.splitlines() if "symbolic link" in line]
    assert line.startswith("recipes/tiny-sft.yaml:") and "dataset.path" in line and "'data/sft.jsonl'" in line


# --- 4. reward code only from rewards/ ----------------------------------------------------------------


def test_a_reward_file_outside_rewards_is_refused(hub, workspace, monkeypatch, capsys) -> None:
    (workspace / "scripts").mkdir()
    (workspace / "scripts" / "score.py").write_text((workspace / "rewards" / "arith.py").read_text())
    recipe = workspace / "recipes" / "tiny-grpo.yaml"
    recipe.write_text(recipe.read_text().replace("file: rewards/arith.py", "file: scripts/score.py"))
    commit_all(workspace, "reward elsewhere")
    code, out = run(workspace, monkeypatch, capsys, "validate", "recipes/tiny-grpo.yaml")
    assert code == 1 and "rewards[1].file" in out and "move 'scripts/score.py' to rewards/" in out
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-grpo.yaml", "--backend", "hf")
    assert code == 1 and "rewards/" in out
    assert_nothing_spent_or_published(hub)


# --- 11. image paths in local data -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_image_paths_outside_the_data_folder_are_not_read_and_reveal_nothing(repo: Path, cli, where: str) -> None:
    outside = repo.parent / "outside.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    paths = {"absolute": (str(outside), str(repo.parent / "missing.png")),
             "dotdot": ("../../outside.png", "../../missing.png")}[where]
    reasons = []
    for i, path in enumerate(paths):
        write_jsonl(repo / "data" / f"vlm{i}.jsonl", [{"images": [path], "prompt": "Describe.", "chosen": "A.",
                                                      "rejected": "B."}])
        result = cli("inspect", f"data/vlm{i}.jsonl", "--json", cwd=repo)
        assert result.code == 0, result.err
        reasons.append(json.loads(result.out)["methods"]["dpo"]["reason"].replace(path, "PATH"))
    # The file that exists and the one that does not get the same answer: nothing outside is looked at.
    assert reasons[0] == reasons[1] == ("row 1: 'images': image path 'PATH' must be relative to the data file's "
                                        "folder, without '..' (absolute paths are not read)")


# --- 1, 2, 5: run records are data: they may say what a run was, never what is bought next ----------------


def _recorded_run(hub: HubStub, ws: Path, monkeypatch, capsys) -> dict:
    scripted(hub)
    code, out = run(ws, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out
    commit_all(ws, "the run's record, as the merge's commit-back leaves it")
    return json.loads((ws / "runs" / "tiny-sft.json").read_text())


def _save(ws: Path, doc: dict, message: str) -> None:
    (ws / "runs" / "tiny-sft.json").write_text(json.dumps(doc))
    commit_all(ws, message)


def _spent(hub: HubStub) -> tuple[int, int]:
    posts = [r for r in hub.state.requests if r.method != "GET"]
    return len(hub.state.jobs), len(posts)


def test_records_edited_to_trained_buy_no_conversion(hub, workspace, monkeypatch, capsys) -> None:
    doc = _recorded_run(hub, workspace, monkeypatch, capsys)
    good = doc["runs"][-1]
    for attempt in (2, 3, 4, 5):  # the review's proof: one paid GGUF job per edited record
        run_id = f"20261204-000000-00000{attempt}"
        # Consistent with itself: every config names the forged run, as the runner would have derived them.
        forged = json.loads(json.dumps(good).replace(good["run_id"], run_id)) | {"attempt": attempt,
                                                                               "state": "trained"}
        forged["jobs"] = {"train": good["jobs"]["train"]}
        forged["configs"]["gguf"]["model_revision"] = None
        doc["runs"].append(forged)
    _save(workspace, doc, "edited records")
    before = _spent(hub)
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    assert code == 1 and out.count("not submitting the GGUF job") == 4, out
    assert _spent(hub) == before


def test_a_record_whose_commit_is_not_on_the_default_branch_is_refused(hub, workspace, monkeypatch,
                                                                         capsys) -> None:
    doc = _recorded_run(hub, workspace, monkeypatch, capsys)
    git(workspace, "checkout", "-q", "-b", "unmerged")
    defaults = workspace / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text().replace("max_budget_usd: 100", "max_budget_usd: 1000"))
    commit_all(workspace, "an unreviewed cap")
    unmerged = git(workspace, "rev-parse", "HEAD")
    git(workspace, "checkout", "-q", "main")
    forged = json.loads(json.dumps(doc["runs"][-1])) | {"run_id": "20261204-000000-000009", "state": "trained",
                                                         "commit": unmerged}
    doc["runs"].append(forged)
    _save(workspace, doc, "a record from another branch")
    before = _spent(hub)
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    assert code == 1
    [line] = [line for line in out.splitlines() if "20261204-000000-000009" in line]
    assert f"runs/tiny-sft.json: run 20261204-000000-000009 names commit {unmerged[:12]}" in line
    assert "not on the default branch" in line
    assert _spent(hub) == before


def test_the_card_goes_only_to_the_repo_the_recipe_derives(hub, workspace, monkeypatch, capsys) -> None:
    doc = _recorded_run(hub, workspace, monkeypatch, capsys)
    forged = json.loads(json.dumps(doc["runs"][-1])) | {"run_id": "20261204-000000-000007", "state": "converted"}
    forged["configs"]["train"]["hub_model_id"] = "victim/model"
    doc["runs"].append(forged)
    _save(workspace, doc, "point the card elsewhere")
    _, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    assert "[card] not published: the record's repo victim/model is not the one the recipe" in out, out
    assert not [r for r in hub.state.requests if "victim" in r.path]
    assert "victim/model" not in hub.state.repos


# --- 8. record fields that reach markdown are held to their shape -------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("run_id", "@everyone"), ("backend", "<img src=x onerror=alert(1)>"),
                                              ("commit", "[click](https://evil.example)")])
def test_a_record_field_shaped_to_ping_or_link_does_not_load(hub, workspace, monkeypatch, capsys, field,
                                                              value) -> None:
    doc = _recorded_run(hub, workspace, monkeypatch, capsys)
    doc["runs"][-1][field] = value
    _save(workspace, doc, "a record shaped to reach a comment")
    before = _spent(hub)
    for command in (["reconcile", "--backend", "hf"], ["history"], ["status"]):
        code, out = run(workspace, monkeypatch, capsys, *command)
        assert value not in out, (command, out)
        if command[0] == "reconcile":  # the others only read: they warn and show the rest
            assert code == 1, (command, out)
        assert "runs/tiny-sft.json" in out and field in out, (command, out)
    assert _spent(hub) == before


# --- 6. two recipe files naming one recipe, run at once --------------------------------------------------


def test_two_files_naming_one_recipe_run_at_once_submit_nothing(hub, workspace, tmp_path) -> None:
    """Both files of one merge, each on its own runner at the same moment: both refused, naming both files."""
    src = workspace / "recipes" / "tiny-sft.yaml"
    (workspace / "recipes" / "copy.yaml").write_text(src.read_text())
    commit_all(workspace, "two files, one name")
    env = dict(os.environ) | {"HF_ENDPOINT": hub.url, "HF_TOKEN": HUB_TOKEN}
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "run", f"recipes/{f}", "--backend", "hf"],
                              cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for f in ("tiny-sft.yaml", "copy.yaml")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 1, out
        assert "recipes/tiny-sft.yaml" in out and "recipes/copy.yaml" in out and "Traceback" not in out, out
    assert_nothing_spent_or_published(hub)


# --- 7. two machines, one merge: one job --------------------------------------------------------------------


def test_two_machines_running_one_recipe_pay_for_one_job_per_stage(hub, workspace, tmp_path) -> None:
    # The same commit checked out twice (two runners: the per-machine lock cannot see across them).
    clones = []
    for i in range(2):
        clone = tmp_path / f"machine{i}"
        subprocess.run(["git", "clone", "-q", str(workspace), str(clone)], check=True)
        clones.append(clone)
    # Queued long enough that the loser is canceled before it would start, even on a busy machine.
    hub.state.job_scripts += [JobScript(summary=SUMMARY, scheduling=8.0, running=1.0) for _ in range(2)]
    hub.state.job_scripts += [JobScript(summary=GGUF_SUMMARY, scheduling=8.0) for _ in range(2)]
    env = dict(os.environ) | {"HF_ENDPOINT": hub.url, "HF_TOKEN": HUB_TOKEN}
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "run", "recipes/tiny-sft.yaml", "--backend", "hf"],
                              cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for clone in clones]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for stage in ("train", "gguf"):
        jobs = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == stage]
        alive = [j for j in jobs if j.stage != "CANCELED"]
        assert len(alive) == 1, (stage, [j.stage for j in jobs], outs)
        # A job canceled as the loser never ran: nothing billed for it.
        assert all(j.durations()["runningSecs"] in (0, None) for j in jobs if j.stage == "CANCELED")
    for clone in clones:
        rec = json.loads((clone / "runs" / "tiny-sft.json").read_text())["runs"][-1]
        assert rec["state"] == "recorded", rec.get("failure")
        assert rec["jobs"]["train"]["id"] == next(j.id for j in hub.state.jobs.values()
                                                  if j.spec["labels"]["stage"] == "train" and j.stage != "CANCELED")
