"""Attacks from the security review (issue 18), each replayed against the stand-ins and refused.

Every case ends with the same proof: no request that spends or publishes reached the Hub stand-in
(only GETs), no job exists, and no file was committed to any model repo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import HUB_TOKEN, git, write_jsonl
from hubstub import HubStub

from runner.cli import main


def run(ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.chdir(ws)
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.out + out.err


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
