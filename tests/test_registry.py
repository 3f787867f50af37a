"""The repository is the model registry: models/README.md and `runner models` list every recorded run, commit-back
regenerates the page, and the plan comment of a changed recipe shows its current model beside the new plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import a_plan, git, train_summary_json
from hubstub import JobScript

from runner import ledger
from runner.evaluation import Evaluation
from runner.gates import GateVerdict
from runner.registry import ModelEntry, Registry
from runner.summaries import TrainSummary

GH_TOKEN = "test-only-not-a-token-github-registry"
EVIL = "@acme/admins <img src=x> [click](https://evil.example)"
EVAL = {"held_out": "2% of train", "rows": 5,
        "metrics": [{"name": "eval_loss", "before": 3.2, "after": 1.1}],
        "benchmarks": [{"task": "gsm8k", "metric": "acc", "value": 0.41}]}


def _run(run_id: str, *, state: str = "recorded", day: int = 1, backend: str = "hf", evaluation: dict | None = None,
         **update: object) -> ledger.RunRecord:
    """A finished run of tiny-sft as the runner records it: a pushed model, 10 billed minutes on a10g-small."""
    at = f"2026-12-0{day}T10:00:00Z"
    pushed = {"repo": "alice/tiny-sft", "commit": f"{day}" * 40} if backend == "hf" else None
    summary = TrainSummary.model_validate(train_summary_json(pushed=pushed, evaluation=evaluation))
    jobs = {"train": ledger.JobRef(id=f"job-{run_id}", backend=backend, flavor="a10g-small", submitted_at=at,
                                   running_seconds=600, usd_per_hour=1.0)}
    record = ledger.RunRecord(
        run_id=run_id, recipe="recipes/tiny-sft.yaml", recipe_sha256="0" * 64, commit=None, backend=backend,
        state=state, created_at=at, updated_at=at, push=backend == "hf", jobs=jobs, train_summary=summary,
        evaluation=Evaluation.model_validate(evaluation) if evaluation else None, metrics={"final_loss": 1.25},
        plan=a_plan(name="tiny-sft", recipe="recipes/tiny-sft.yaml", base_model="./tiny-model",
                    dataset_path="data/sft.jsonl", flavor="a10g-small"),
        cost_usd={"estimated": 0.2, "max": 0.5},
        links={"gguf": "https://huggingface.co/alice/tiny-sft-GGUF", "card": "models/tiny-sft/README.md"}
        if state == "recorded" and backend == "hf" else {})
    return record.model_copy(update=update)


def _record_history(root: Path) -> None:
    """Three runs of tiny-sft (recorded, rejected, failed) and one local run of tiny-dpo."""
    ledger.save(root, _run("r1", evaluation=EVAL), "tiny-sft")
    worse = EVAL | {"metrics": [{"name": "eval_loss", "before": 3.2, "after": 3.5}]}
    ledger.save(root, _run("r2", day=2, state="rejected", evaluation=worse,
                           gate=GateVerdict(passed=False, reasons=["eval_loss must drop: 3.2 -> 3.5"])), "tiny-sft")
    ledger.save(root, _run("r3", day=3, state="failed", failure=ledger.Failure(stage="train", reason=EVIL,
                                                                               kind="oom")), "tiny-sft")
    dpo = _run("d1", day=2, backend="local", recipe="recipes/tiny-dpo.yaml",
               plan=a_plan(name="tiny-dpo", method="dpo", lora=True, base_model="./tiny-model",
                           dataset_path="data/dpo.jsonl"))
    ledger.save(root, dpo, "tiny-dpo")


def test_models_lists_every_run_and_marks_the_promoted_one(workspace: Path, cli) -> None:
    _record_history(workspace)
    assert cli("promote", "tiny-sft", "r1", cwd=workspace).code == 0

    table = cli("models", cwd=workspace)
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    for run_id, state in (("r1", "recorded"), ("r2", "rejected"), ("r3", "failed"), ("d1", "recorded")):
        [line] = [ln for ln in lines if f" {run_id} " in ln]
        assert state in line, line
    assert lines[[i for i, ln in enumerate(lines) if " r1 " in ln][0]].startswith("*")
    assert "eval loss 3.2 -> 1.1" in table.out and "$0.17 (est. $0.20)" in table.out
    assert "r2: eval_loss must drop: 3.2 -> 3.5" in table.out

    doc = json.loads(cli("models", "--json", cwd=workspace).out)
    assert list(doc) == ["schema_version", "current", "models", "problems"]  # the dump is the stable contract
    assert list(doc["models"][0]) == list(ModelEntry.model_fields)
    reg = Registry.model_validate(doc)
    assert reg.current == {"tiny-sft": "r1"} and reg.problems == []
    assert [(m.recipe, m.run_id, m.state, m.current) for m in reg.models] == [
        ("tiny-dpo", "d1", "recorded", False), ("tiny-sft", "r1", "recorded", True),
        ("tiny-sft", "r2", "rejected", False), ("tiny-sft", "r3", "failed", False)]
    r1 = reg.models[1]
    assert r1.before == {"eval_loss": 3.2} and r1.after == {"eval_loss": 1.1, "gsm8k": 0.41}
    assert (r1.actual_usd, r1.estimated_usd, r1.updated_at[:10]) == (0.1667, 0.2, "2026-12-01")
    assert r1.links.model == "https://huggingface.co/alice/tiny-sft/tree/" + "1" * 40
    assert r1.links.card == "models/tiny-sft/README.md" and reg.models[0].actual_usd == 0.0


def test_the_registry_page_shows_rejected_and_failed_runs_and_escapes_records(workspace: Path, cli) -> None:
    _record_history(workspace)
    assert cli("promote", "tiny-sft", "r1", cwd=workspace).code == 0
    page = cli("models", "--markdown", cwd=workspace).out
    assert page.startswith("# Models") and "4 run(s) of 2 recipe(s), $0.50 billed" in page
    sft = page.split("## tiny-sft", 1)[1]
    rows = [ln for ln in sft.splitlines() if ln.startswith("| `r")]
    assert [r.split("`")[1] for r in rows] == ["r3", "r2", "r1"]  # newest first
    assert "**failed**: train: " in rows[0] and "**rejected**: eval\\_loss must drop: 3.2 -&gt; 3.5" in rows[1]
    assert "`r1` **current**" in rows[2] and "eval loss 3.2 -> 1.1; gsm8k 0.41" in rows[2]
    assert "[card](tiny-sft/README.md)" in rows[2] and "GGUF [huggingface.co/alice/tiny-sft-GGUF]" in rows[2]
    assert "current: `r1`" in sft
    for unsafe in ("@acme/admins", "<img", "](https://evil.example)"):
        assert unsafe not in page


def test_a_file_that_does_not_read_is_one_line_and_the_rest_is_listed(workspace: Path, cli) -> None:
    _record_history(workspace)
    (workspace / "runs" / "broken.json").write_text("{not json")
    (workspace / "models").mkdir(exist_ok=True)
    (workspace / "models" / "current.json").write_text('{"models": {"tiny-sft": "gone"}}')
    result = cli("models", cwd=workspace)
    assert result.code == 1 and " r1 " in result.out
    errors = result.err.splitlines()
    assert len(errors) == 2 and errors[0].startswith("error: runs/broken.json: run record is not valid")
    assert "tiny-sft -> gone, but runs/tiny-sft.json has no such run" in errors[1]


def _github_env(monkeypatch: pytest.MonkeyPatch, github, **more: str) -> None:
    for k, v in {"GITHUB_API_URL": github.url, "GITHUB_TOKEN": GH_TOKEN, "GITHUB_REPOSITORY": "acme/models",
                 "GITHUB_REF_NAME": "main", **more}.items():
        monkeypatch.setenv(k, v)


def test_commit_back_regenerates_the_registry_page_from_the_branch(workspace: Path, github, cli,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _github_env(monkeypatch, github)
    # Another recipe's commit-back landed after this job's checkout: its runs must stay on the page.
    other = ledger.RecipeRuns(name="tiny-dpo", runs=[_run("d1", backend="local", recipe="recipes/tiny-dpo.yaml")])
    github.state.commit("main", {"runs/tiny-dpo.json": other.model_dump_json().encode()}, "tiny-dpo's commit-back")
    ledger.save(workspace, _run("r1", evaluation=EVAL), "tiny-sft")

    result = cli("commit-back", "--recipe", "recipes/tiny-sft.yaml", cwd=workspace)
    assert result.code == 0, result.err
    page = github.state.file("main", "models/README.md").decode()
    assert "`r1`" in page and "`d1`" in page and "2 run(s) of 2 recipe(s)" in page
    assert "`d1`" not in (workspace / "models" / "README.md").read_text()  # the checkout knew only its own

    # The run moves on (a retry failed): the next commit-back rewrites the page with it.
    ledger.save(workspace, _run("r2", day=2, state="failed", failure=ledger.Failure(stage="gguf", reason="boom")),
                "tiny-sft")
    assert cli("commit-back", "--recipe", "recipes/tiny-sft.yaml", cwd=workspace).code == 0
    page = github.state.file("main", "models/README.md").decode()
    assert "**failed**: gguf: boom" in page and "`d1`" in page and "3 run(s)" in page
    assert json.loads(github.state.file("main", "runs/tiny-sft.json"))["runs"][-1]["run_id"] == "r2"


HUB_BASE = """\
name: hub-base
base_model: acme/base
method: sft
dataset:
  path: data/sft.jsonl
training:
  max_steps: 2
gguf:
  enabled: false
"""


def test_a_local_run_regenerates_the_registry_page_where_the_repository_keeps_models(workspace: Path, hub,
                                                                                     cli) -> None:
    hub.state.models["acme/base"] = {"params": 5_000_000}
    recipe, page = workspace / "recipes" / "hub-base.yaml", workspace / "models" / "README.md"
    assert not (workspace / "models").exists()
    # A first run fails in a repository with no models yet: runs/ has it, no page is made up.
    recipe.write_text(HUB_BASE)
    hub.state.job_scripts.append(JobScript(end="ERROR", message="CUDA out of memory"))
    failed = cli("run", "recipes/hub-base.yaml", "--backend", "hf", "--quiet", cwd=workspace)
    assert failed.code == 1 and not (workspace / "models").exists()
    # A run that records its model writes its card under models/: the page is written with both runs.
    recipe.write_text(HUB_BASE.replace("max_steps: 2", "max_steps: 3"))
    hub.state.job_scripts.append(JobScript(summary=train_summary_json()))
    recorded = cli("run", "recipes/hub-base.yaml", "--backend", "hf", "--quiet", cwd=workspace)
    assert recorded.code == 0, recorded.err
    ids = [r["run_id"] for r in json.loads((workspace / "runs" / "hub-base.json").read_text())["runs"]]
    assert page.read_text().strip() == cli("models", "--markdown", cwd=workspace).out.strip()
    assert all(f"`{i}`" in page.read_text() for i in ids) and "**failed**" in page.read_text()
    # The next local run that fails is on the page too, as commit-back would write it in Actions.
    recipe.write_text(HUB_BASE.replace("max_steps: 2", "max_steps: 4"))
    hub.state.job_scripts.append(JobScript(end="ERROR", message="CUDA out of memory"))
    assert cli("run", "recipes/hub-base.yaml", "--backend", "hf", "--quiet", cwd=workspace).code == 1
    newest = json.loads((workspace / "runs" / "hub-base.json").read_text())["runs"][-1]["run_id"]
    assert f"`{newest}`" in page.read_text() and page.read_text().count("**failed**") == 2
    assert page.read_text().strip() == cli("models", "--markdown", cwd=workspace).out.strip()


def test_the_plan_comment_of_a_changed_recipe_shows_its_current_model(workspace: Path, github, cli,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _record_history(workspace)
    assert cli("promote", "tiny-sft", "r1", cwd=workspace).code == 0
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "runs recorded, r1 promoted")
    base = git(workspace, "rev-parse", "HEAD")
    git(workspace, "checkout", "-qb", "feature")
    recipe = workspace / "recipes" / "tiny-sft.yaml"
    recipe.write_text(recipe.read_text().replace("learning_rate: 1e-3", "learning_rate: 5e-4"))
    (workspace / "recipes" / "fresh.yaml").write_text(recipe.read_text().replace("name: tiny-sft", "name: fresh"))
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "retune tiny-sft, add fresh")
    head = git(workspace, "rev-parse", "HEAD")
    git(workspace, "checkout", "-q", "main")  # the trusted workflow runs on the default branch
    github.add_pull(5, head)
    github.state.pulls[5]["base"]["sha"] = base
    event = workspace.parent / "event.json"
    event.write_text(json.dumps({"repository": {"full_name": "acme/models"}, "workflow_run": {
        "id": 77, "head_sha": head, "pull_requests": [{"number": 5}],
        "head_repository": {"full_name": "acme/models"}}}))
    _github_env(monkeypatch, github, GITHUB_EVENT_PATH=str(event))

    result = cli("comment-plan", cwd=workspace)
    assert result.code == 0, result.err
    [body] = [c["body"] for c in github.state.comments_on(5)]
    sections = {s.split(" ", 2)[1]: s for s in body.split("\n### ")[1:]}
    changed = sections["tiny-sft"]
    assert "**Current model:** run `r1` (promoted in `models/current.json`), recorded 2026-12-01" in changed
    assert "| Method | SFT, full, lr 2e-05 | SFT, full, lr 0.0005 |" in changed  # what the pull request changes
    assert "| Cost | $0.17 (est. $0.20) | $" in changed
    assert "| Eval | eval loss 3.2 -> 1.1; gsm8k 0.41 | measured after training |" in changed
    assert "Current model" not in sections["fresh"]  # a new recipe has nothing to compare with
