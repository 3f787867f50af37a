"""The template trains nothing by accident: its examples live where `changed` and the train workflow never look."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import ROOT


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _fresh_template(dest: Path) -> Path:
    """The repository as "Use this template" gives it: every tracked file, one commit."""
    repo = dest / "fork"
    for name in _git(ROOT, "ls-files").splitlines():
        source = ROOT / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "template")
    return repo


def test_setting_the_namespace_trains_nothing(tmp_path: Path, cli) -> None:
    repo = _fresh_template(tmp_path)
    assert sorted(p.name for p in (repo / "recipes").iterdir()) == ["_defaults.yaml", "schema.json",
                                                                      "starter.yaml.example"]
    # README step: set the namespace in recipes/_defaults.yaml and commit it (the defaults change: every recipe).
    defaults = repo / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "namespace: alice\n")
    _git(repo, "commit", "-qam", "set the namespace")
    result = cli("changed", "--base", "HEAD~1", "--head", "HEAD", "--json", cwd=repo)
    assert result.code == 0 and json.loads(result.out) == []
    # A new branch (no "before" commit) lists every recipe: still none.
    result = cli("changed", "--json", cwd=repo)
    assert result.code == 0 and json.loads(result.out) == []


def test_the_examples_are_a_repository_of_their_own(cli) -> None:
    result = cli("validate", "examples/recipes", cwd=ROOT)
    assert result.code == 0, result.err
    assert {f"ok: recipes/{n}.yaml" for n in ("tiny-sft", "tiny-dpo", "tiny-grpo", "tiny-vlm-dpo")} == set(
        result.out.splitlines())
    # The starter is not a recipe until it is copied to a .yaml name.
    assert cli("changed", "--json", cwd=ROOT).out.strip() == "[]"
