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
    set_up(fork, github)
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


def set_up(fork: Path, github) -> None:
    """The settings the README's security section asks for."""
    defaults = fork / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "namespace: alice\n")
    owners = fork / ".github" / "CODEOWNERS"
    owners.write_text(owners.read_text().replace("@your-org/ml-platform", "@acme/ml"))
    github.state.environments = {"training": ["bob"], "reconcile": []}
    github.state.protected.add("main")
    github.state.workflow_permissions["can_approve_pull_request_reviews"] = True


def test_branch_protection_is_checked_rule_by_rule(fork, hub, github, cli) -> None:
    set_up(fork, github)
    found = lines(cli("doctor", cwd=fork).out)
    assert found["branch protection"] == ("[ok] branch protection: main is protected: pull requests with an approval, "
                                          "Code Owners review, dismiss stale approvals, approval of the most recent "
                                          "push, the plan check")
    github.state.protection["main"] = {
        "required_pull_request_reviews": {"url": "x", "dismiss_stale_reviews": False,
                                          "require_code_owner_reviews": True, "required_approving_review_count": 1,
                                          "require_last_push_approval": False},
        "required_status_checks": None}
    result = cli("doctor", cwd=fork)
    assert result.code == 0, result.out  # weaker gates are advice, not a blocker
    out = result.out
    assert ("[warn] branch protection: main is protected without dismiss stale approvals -> Settings > Branches > "
            "main: dismiss stale pull request approvals when new commits are pushed") in out
    assert "[warn] branch protection: main is protected without approval of the most recent push" in out
    assert "[warn] branch protection: main is protected without the plan check" in out
    assert "without Code Owners review" not in out


def test_the_workflow_token_cannot_read_protection_rules(fork, hub, github, cli) -> None:
    """GITHUB_TOKEN gets 403 on the rules; the branch itself still says whether it is protected."""
    set_up(fork, github)
    github.state.admin_read = False
    result = cli("doctor", cwd=fork)
    assert result.code == 0 and "[ok] branch protection: main is protected (its rules need a token" in result.out
    assert ("[skip] Actions pull requests: this token cannot read the workflow permissions (HTTP 403) -> check it "
            "yourself: Settings > Actions > General > Workflow permissions: tick `Allow GitHub Actions to create "
            "and approve pull requests`") in result.out
    github.state.protected.clear()
    result = cli("doctor", cwd=fork)
    assert result.code == 1 and "[fail] branch protection: main is not protected" in result.out


def test_workflows_that_may_not_open_pull_requests_are_named(fork, hub, github, cli) -> None:
    """A new repository's default: GITHUB_TOKEN may not open the watcher's or commit-back's pull requests."""
    set_up(fork, github)
    github.state.workflow_permissions["can_approve_pull_request_reviews"] = False
    result = cli("doctor", cwd=fork)
    assert result.code == 1
    assert lines(result.out)["Actions pull requests"] == (
        "[fail] Actions pull requests: workflows may not open pull requests: runner watch's proposals and "
        "commit-back to a protected branch are refused -> Settings > Actions > General > Workflow permissions: "
        "tick `Allow GitHub Actions to create and approve pull requests`")
    assert ("GET", "/repos/acme/models/actions/permissions/workflow") in [r[:2] for r in github.state.requests]


def test_environments_that_weaken_the_gate_are_warned(fork, hub, github, cli) -> None:
    set_up(fork, github)
    github.state.environments["reconcile"] = ["bob"]  # would hold every scheduled run for an approval
    github.state.open_environments.add("training")  # any branch could read the token
    out = cli("doctor", cwd=fork).out
    assert "[warn] environment reconcile: has required reviewers" in out
    assert "[warn] environment training branches: any branch's workflow may read its HF_TOKEN" in out


def test_jobs_are_asked_for_not_assumed(fork, hub, github, cli) -> None:
    """The Jobs check sends a request (list_jobs is lazy): a refusal, a token without job.write, no billing."""
    set_up(fork, github)
    hub.state.faults["GET /api/jobs/alice"] = [403]
    found = lines(cli("doctor", cwd=fork).out)
    assert found["Jobs"].startswith("[fail] Jobs: listing Jobs in alice was refused")
    assert any(r.path == "/api/jobs/alice" for r in hub.state.requests)
    hub.state.whoami["canPay"] = False
    result = cli("doctor", cwd=fork)
    assert result.code == 1 and "[fail] Jobs: alice cannot pay for Jobs" in result.out
    hub.state.whoami["canPay"] = True
    hub.state.whoami["auth"]["accessToken"] = {"role": "fineGrained", "fineGrained": {"scoped": [
        {"entity": {"type": "user", "name": "alice"}, "permissions": ["repo.content.read", "repo.write"]}]}}
    found = lines(cli("doctor", cwd=fork).out)
    assert found["write access"].startswith("[ok]")
    assert found["Jobs"] == ("[fail] Jobs: the fine-grained token may not start Jobs in alice -> edit the token: "
                             "allow Jobs (job.write) on alice")
