"""`runner doctor`: the first-day set-up checked through the real HfApi and PyGithub against the stand-ins."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import HUB_TOKEN, ROOT


@pytest.fixture
def fork(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, github) -> Path:
    """A team's fresh fork: the template's recipes/ and CODEOWNERS, and the GitHub context of a workflow."""
    repo = tmp_path / "fork"
    shutil.copytree(ROOT / "recipes", repo / "recipes")
    (repo / ".github").mkdir()
    shutil.copy(ROOT / ".github" / "CODEOWNERS", repo / ".github" / "CODEOWNERS")
    monkeypatch.setenv("GITHUB_TOKEN", "test-only-not-a-token-github")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    return repo


def lines(out: str) -> dict[str, str]:
    """`[verdict] name: ...` lines by name."""
    return {line.split("] ", 1)[1].split(":", 1)[0]: line for line in out.splitlines() if line.startswith("[")}


def test_a_fresh_fork_is_told_each_thing_to_set_up(fork, hub, cli) -> None:
    result = cli("doctor", cwd=fork)
    assert result.code == 1
    found = lines(result.out)
    assert "namespace" in found, result.out + result.err
    assert found["namespace"].startswith("[fail]") and "set `namespace:" in found["namespace"]
    assert found["CODEOWNERS"].startswith("[fail]") and "@your-org" in found["CODEOWNERS"]
    assert found["Hub token"].startswith("[ok]") and "authenticates as alice" in found["Hub token"]
    assert found["environment training"].startswith("[fail]") and "New environment `training`" in found[
        "environment training"]
    assert found["branch protection"].startswith("[fail]") and "main is not protected" in found["branch protection"]
    assert "first recipe: cp recipes/starter.yaml.example" in result.out
    assert HUB_TOKEN not in result.out + result.err


def test_a_set_up_fork_passes(fork, hub, github, cli) -> None:
    defaults = fork / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "namespace: alice\n")
    owners = fork / ".github" / "CODEOWNERS"
    owners.write_text(owners.read_text().replace("@your-org/ml-platform", "@acme/ml"))
    github.state.environments = {"training": ["bob"], "reconcile": []}
    github.state.protected.add("main")
    result = cli("doctor", cwd=fork)
    assert result.code == 0, result.out
    found = lines(result.out)
    assert all(line.startswith("[ok]") for line in found.values()), result.out
    assert "1 required reviewer" in found["environment training"]
    assert "can create and push repos in alice" in found["write access"]


def test_a_token_that_cannot_write_or_run_jobs_is_named(fork, hub, github, cli) -> None:
    defaults = fork / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "namespace: acme-org\n")
    hub.state.whoami["auth"]["accessToken"] = {"role": "fineGrained", "fineGrained": {"scoped": [
        {"entity": {"type": "org", "name": "acme-org"}, "permissions": ["repo.content.read"]}]}}
    github.state.environments = {"training": [], "reconcile": []}
    result = cli("doctor", cwd=fork)
    found = lines(result.out)
    assert result.code == 1
    assert found["write access"].startswith("[fail]") and "repo.write" in found["write access"]
    assert found["environment training"].startswith("[warn]") and "no required reviewers" in found[
        "environment training"]


def test_outside_github_the_repository_checks_are_skipped_and_said(fork, hub, cli, monkeypatch) -> None:
    monkeypatch.delenv("GITHUB_TOKEN")
    result = cli("doctor", cwd=fork)
    assert "[skip] GitHub: GITHUB_TOKEN/GITHUB_REPOSITORY not set -> run the `setup` workflow" in result.out
