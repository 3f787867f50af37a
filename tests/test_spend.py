"""The spend gate: nothing is submitted without a budget, above the cap, or with a worst case over budget;
run records never decide what is submitted; a failed version is retried only on purpose; actual cost
is the billed running time. Remote runs go through the real HfApi against the Hub stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    HUB_TOKEN,
    a_plan,
    git,
    gguf_summary_json,
    run,
    train_summary_json,
    write_jsonl,
    write_recipe,
)
from hubstub import JobScript

from runner import ledger, planning, recipe, runs
from runner.backends.hf import HfBackend
from runner.plan import billed

TOKEN = HUB_TOKEN
SUMMARY = train_summary_json(final_metrics={"final_loss": 1.25})
GGUF_SUMMARY = gguf_summary_json([{"quantization": "Q4_K_M", "path": "output/gguf/x.gguf", "bytes": 1000,
                                   "sha256": "0" * 64, "smoke_test": "hi", "imatrix": False}])

HUB_MODEL = """\
name: {name}
base_model: {model}
method: sft
dataset: data/sft.jsonl
output:
  repo: acme/{name}
"""


def plan_of(cli, repo: Path, path: str) -> tuple[int, dict]:
    result = cli("plan", path, "--json", cwd=repo)
    doc = json.loads(result.out)
    return result.code, doc["plans"][0] if doc["plans"] else doc


# --- the plan and the gate ------------------------------------------------------------------------------


def test_null_budget_is_refused_even_with_a_default(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("max_budget_usd: 100\nbudget_usd: 5\n")
    write_recipe(repo, "big", HUB_MODEL.format(name="big", model="Qwen/Qwen3-8B") + "budget_usd: null\n")
    code, p = plan_of(cli, repo, "recipes/big.yaml")
    assert code == 1 and p["budget_usd"] is None and p["within_budget"] is False
    assert "no budget" in p["refusal"]


def test_estimate_above_the_cap_is_refused_whatever_the_budget_says(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("max_budget_usd: 1\n")
    write_recipe(repo, "big", HUB_MODEL.format(name="big", model="Qwen/Qwen3-8B").replace(
        "method: sft", "method: sft\ntraining:\n  max_steps: 20000") + "budget_usd: 1\n")
    code, p = plan_of(cli, repo, "recipes/big.yaml")
    assert code == 1 and p["cost_usd"] > 1 and "over budget" in p["refusal"]


def test_a_recipe_in_a_subfolder_inherits_the_repo_defaults(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("namespace: acme\nmax_budget_usd: 10\nbudget_usd: 3\n")
    (repo / "recipes" / "team").mkdir()
    text = "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n"
    (repo / "recipes" / "team" / "x.yaml").write_text(text)
    code, p = plan_of(cli, repo, "recipes/team/x.yaml")
    assert code == 0, p
    assert p["output_repo"] == "acme/x" and p["budget_usd"] == 3
    (repo / "recipes" / "team" / "x.yaml").write_text(text + "budget_usd: 50\n")
    result = cli("validate", "recipes", cwd=repo)
    assert result.code == 1
    assert "recipes/team/x.yaml:4:" in result.err and "max_budget_usd 10" in result.err


def test_worst_case_over_budget_lowers_the_timeout_when_there_is_room(repo: Path, cli) -> None:
    text = HUB_MODEL.format(name="w", model="./models/tiny") + "hardware: h200x8\ntimeout: 7d\nbudget_usd: 20\n"
    write_recipe(repo, "w", text)
    code, p = plan_of(cli, repo, "recipes/w.yaml")
    assert code == 0, p["warnings"]
    train = next(j for j in p["jobs"] if j["stage"] == "train")
    assert train["flavor"] == "h200x8" and train["timeout_seconds"] < 7 * 86400
    assert p["max_cost_usd"] <= 20 and sum(j["max_cost_usd"] for j in p["jobs"]) == pytest.approx(p["max_cost_usd"])
    assert train["timeout_seconds"] >= train["hours"] * 3600 * 1.25
    assert any("timeout lowered" in w for w in p["warnings"])


def test_worst_case_over_budget_without_room_is_refused_with_numbers(repo: Path, cli) -> None:
    text = HUB_MODEL.format(name="w", model="./models/tiny") + "hardware: h200x8\ntimeout: 7d\nbudget_usd: {b}\n"
    write_recipe(repo, "w", text.format(b=20))
    _, p = plan_of(cli, repo, "recipes/w.yaml")
    estimate = p["cost_usd"]
    write_recipe(repo, "w", text.format(b=round(estimate * 1.05, 2)))  # the estimate fits, no timeout with margin
    code, p = plan_of(cli, repo, "recipes/w.yaml")
    assert code == 1 and p["within_budget"] is False
    assert "worst case" in p["refusal"] and "raise budget_usd to at least $" in p["refusal"]


def test_the_plan_prices_a_conversion_flavor_that_holds_the_model(repo: Path, cli) -> None:
    write_recipe(repo, "eight", HUB_MODEL.format(name="eight", model="Qwen/Qwen3-8B") + "budget_usd: 100\n")
    code, p = plan_of(cli, repo, "recipes/eight.yaml")
    gguf = next(j for j in p["jobs"] if j["stage"] == "gguf")
    # ~8B x 2 bytes x 2.5 + 2 = ~43 GB of RAM: more than any CPU flavor has.
    assert gguf["flavor"] not in ("cpu-basic", "cpu-upgrade") and gguf["cost_usd"] > 0
    assert p["gguf_cost_usd"] == gguf["cost_usd"]


def test_a_model_nobody_can_convert_fails_the_plan_unless_gguf_is_off(repo: Path, cli) -> None:
    text = HUB_MODEL.format(name="huge", model="acme/giant-900B") + "budget_usd: 1000000\n"
    write_recipe(repo, "huge", text)
    code, p = plan_of(cli, repo, "recipes/huge.yaml")
    assert code == 1 and "convert this model to GGUF" in (p.get("refusal") or "")
    write_recipe(repo, "huge", text + "gguf:\n  enabled: false\n")
    _, p = plan_of(cli, repo, "recipes/huge.yaml")
    assert "GGUF" not in (p.get("refusal") or "") and all(j["stage"] != "gguf" for j in p["jobs"])


def test_plan_shows_runner_minutes_and_jobs_in_markdown(repo: Path, cli) -> None:
    write_recipe(repo, "demo", HUB_MODEL.format(name="demo", model="./models/tiny") + "budget_usd: 5\n")
    result = cli("plan", "recipes/demo.yaml", "--markdown", cwd=repo)
    assert "| GitHub runner |" in result.out and "| Jobs | train on cpu-basic" in result.out


# --- input hardening ------------------------------------------------------------------------------------


def test_a_recipe_symlinked_out_of_the_repo_is_refused_without_its_contents(repo: Path, cli, tmp_path_factory) -> None:
    secret = tmp_path_factory.mktemp("outside") / "secret.yaml"
    secret.write_text("name: x\nbase_model: TOP-SECRET-VALUE\n")
    (repo / "recipes" / "link.yaml").symlink_to(secret)
    result = cli("validate", "recipes/link.yaml", cwd=repo)
    assert result.code == 1 and "symlink to a file outside recipes/" in result.err
    assert "TOP-SECRET-VALUE" not in result.out + result.err


def test_a_recipe_symlinked_to_another_folder_cannot_pick_other_defaults(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("max_budget_usd: 10\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "big.yaml").write_text(HUB_MODEL.format(name="big", model="./models/tiny") + "budget_usd: 5000\n")
    (repo / "recipes" / "big.yaml").symlink_to(repo / "docs" / "big.yaml")
    result = cli("validate", "recipes/big.yaml", cwd=repo)
    assert result.code == 1 and "symlink to a file outside recipes/" in result.err


def test_deeply_nested_yaml_is_one_located_error_and_others_are_still_reported(repo: Path, cli) -> None:
    write_recipe(repo, "deep", "name: deep\nbase_model: " + "[" * 1000 + "]" * 1000 + "\n")
    write_recipe(repo, "fine", HUB_MODEL.format(name="fine", model="./models/tiny") + "budget_usd: 5\n")
    result = cli("validate", "recipes", cwd=repo)
    assert result.code == 1
    assert "recipes/deep.yaml:2:" in result.err and "nesting deeper than" in result.err
    assert "internal error" not in result.err and "ok: recipes/fine.yaml" in result.out


# --- the pipeline against the Hub stand-in ---------------------------------------------------------------


def _planned_record(ws: Path, monkeypatch) -> ledger.RunRecord:
    """A run in state `planned`, as the train workflow leaves it when it dies right after saving."""
    monkeypatch.chdir(ws)
    loaded = recipe.load(ws / "recipes" / "tiny-sft.yaml")
    plan = planning.plan_recipe(loaded, token=None, price_table=planning.prices(None))
    backend = HfBackend(None, "alice", TOKEN)
    return runs.start(loaded, plan, backend)


def _tamper(ws: Path, change) -> None:
    path = ws / "runs" / "tiny-sft.json"
    doc = json.loads(path.read_text())
    change(doc["runs"][-1])
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("what", ["flavor", "repo", "config", "version", "attempt", "push"])
def test_a_tampered_planned_record_starts_no_job(hub, workspace, monkeypatch, capsys, what) -> None:
    _planned_record(workspace, monkeypatch)

    def change(run: dict) -> None:
        train_job = next(j for j in run["plan"]["jobs"] if j["stage"] == "train")
        if what == "flavor":
            train_job.update(flavor="h200x8", timeout_seconds=7 * 86400)
            run["plan"].update(flavor="h200x8", timeout_seconds=7 * 86400)
        elif what == "repo":
            run["configs"]["train"]["hub_model_id"] = "victim/model"
        elif what == "config":
            run["configs"]["train"]["max_steps"] = 10_000_000
        elif what == "attempt":  # a "retry" nobody asked for: no failed attempt 1 exists
            run["attempt"] = 2
        elif what == "push":  # "this is a local run": its config would be taken as it stands
            run["push"] = False
        else:
            run["version"] = "0" * 16

    _tamper(workspace, change)
    code, out = run(workspace, monkeypatch, capsys, "reconcile")
    assert code == 1 and "not submitting" in out, out
    assert not hub.state.jobs  # no job, and nothing uploaded that a job would run
    assert not any(r.method == "POST" and "/api/jobs" in r.path for r in hub.state.requests)
    assert ledger.read(workspace, "tiny-sft").runs[-1].state == "planned"


def test_reconcile_never_trains_a_planned_record_the_train_workflow_does(hub, workspace, monkeypatch,
                                                                          capsys) -> None:
    rec = _planned_record(workspace, monkeypatch)
    hub.state.job_scripts += [JobScript(summary=SUMMARY, running=60), JobScript(summary=GGUF_SUMMARY)]
    code, out = run(workspace, monkeypatch, capsys, "reconcile")
    assert code == 1 and "reconcile never starts one" in out, out
    assert not hub.state.jobs and ledger.read(workspace, "tiny-sft").runs[-1].state == "planned"
    # The train workflow (behind its approval) carries the same run on, with the recipe's own jobs.
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--detach")
    assert code == 0, out
    [job] = hub.state.jobs.values()
    assert job.spec["labels"]["run"] == rec.run_id
    assert (job.spec["flavor"], job.spec["timeoutSeconds"]) == (rec.plan.jobs[0].flavor,
                                                                rec.plan.jobs[0].timeout_seconds)
    # Once its job exists, reconcile follows it (adopts, never submits a second one).
    code, out = run(workspace, monkeypatch, capsys, "reconcile")
    assert code == 0 and len(hub.state.jobs) == 1, out
    job.cancel.set()


def test_submitted_jobs_equal_the_plans_jobs_and_cost_is_running_time(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.durations_scale = 3600.0  # each second of the stand-in's job is billed as an hour
    hub.state.job_scripts += [JobScript(summary=SUMMARY, running=0.5), JobScript(summary=GGUF_SUMMARY, running=0.5)]
    code, out = run(workspace, monkeypatch, capsys, "plan", "recipes/tiny-sft.yaml", "--json")
    planned = [{k: j[k] for k in ("stage", "flavor", "timeout_seconds")} for j in json.loads(out)["plans"][0]["jobs"]]
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out
    submitted = [{"stage": j.spec["labels"]["stage"], "flavor": j.spec["flavor"],
                  "timeout_seconds": j.spec["timeoutSeconds"]} for j in hub.state.jobs.values()]
    assert submitted == planned
    rec = ledger.read(workspace, "tiny-sft").runs[-1]
    expected = sum(billed(j.running_seconds / 3600, j.usd_per_hour) for j in rec.jobs.values())
    assert all(j.running_seconds and j.running_seconds >= 1800 for j in rec.jobs.values())
    assert rec.cost_usd["actual"] == pytest.approx(expected, abs=1e-4) and rec.cost_usd["actual"] > rec.cost_usd["estimated"]
    assert rec.cost_usd["max"] == rec.plan.max_cost_usd
    code, out = run(workspace, monkeypatch, capsys, "history", "tiny-sft", "--json")
    doc = json.loads(out)
    [row] = doc["runs"]
    assert row["actual_usd"] == rec.cost_usd["actual"] and row["ratio"] == pytest.approx(
        rec.cost_usd["actual"] / rec.cost_usd["estimated"], rel=1e-3)
    assert doc["median_ratio"] == row["ratio"] and doc["runs_compared"] == 1
    code, out = run(workspace, monkeypatch, capsys, "history")
    assert "median actual/estimate" in out and "tiny-sft" in out


def test_a_failed_version_is_retried_only_on_purpose(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts.append(JobScript(end="ERROR", message="boom", checkpoint=True))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1 and ledger.read(workspace, "tiny-sft").runs[-1].state == "failed"
    assert len(hub.state.jobs) == 1
    # A re-trigger: no job.
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1 and "--retry" in out and len(hub.state.jobs) == 1
    # The record lost (a workflow re-run checks out the merge commit, without it): still no job.
    (workspace / "runs" / "tiny-sft.json").unlink()
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1 and "--retry" in out and len(hub.state.jobs) == 1
    # On purpose: a new attempt that resumes from the checkpoint the failed one pushed.
    hub.state.job_scripts += [JobScript(summary=SUMMARY), JobScript(summary=GGUF_SUMMARY)]
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--retry")
    assert code == 0, out
    trains = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "train"]
    assert len(trains) == 2 and trains[-1].spec["labels"]["attempt"] == "2"


def test_retry_links_attempts_and_resumes_from_the_checkpoint(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts.append(JobScript(end="ERROR", message="Job timeout", checkpoint=True))
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")[0] == 1
    first = ledger.read(workspace, "tiny-sft").runs[-1]
    assert first.failure and first.failure.checkpoint_on_hub
    hub.state.job_scripts += [JobScript(summary=SUMMARY), JobScript(summary=GGUF_SUMMARY)]
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--retry")
    assert code == 0, out
    second = ledger.read(workspace, "tiny-sft").runs[-1]
    assert second.retry_of == first.run_id and second.attempt == 2 and second.resume
    job = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "train"][-1]
    assert json.loads(job.spec["environment"]["RUNNER_JOB_CONFIG"])["resume_from_checkpoint"] == "last-checkpoint"


def test_retry_after_a_failed_conversion_converts_again_and_trains_nothing(hub, workspace, monkeypatch,
                                                                         capsys) -> None:
    hub.state.job_scripts += [JobScript(summary=SUMMARY), JobScript(end="ERROR", message="exit code 1")]
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")[0] == 1
    first = ledger.read(workspace, "tiny-sft").runs[-1]
    assert first.state == "failed" and first.failure and first.failure.stage == "gguf"
    hub.state.job_scripts.append(JobScript(summary=GGUF_SUMMARY))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--retry")
    assert code == 0, out
    assert "only the conversion runs again" in out
    second = ledger.read(workspace, "tiny-sft").runs[-1]
    assert second.state == "recorded" and second.retry_of == first.run_id and second.attempt == 2
    assert [h["state"] for h in second.history][:2] == ["planned", "trained"]  # no training step happened
    trains = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "train"]
    ggufs = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "gguf"]
    assert len(trains) == 1 and len(ggufs) == 2  # the model was paid for once
    assert second.jobs["train"].id == trains[0].id and ggufs[-1].spec["labels"]["attempt"] == "2"
    assert second.train_summary == first.train_summary


def test_a_record_edited_to_a_failed_conversion_buys_no_gguf_job(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts += [JobScript(summary=SUMMARY), JobScript(summary=GGUF_SUMMARY)]
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")[0] == 0
    _tamper(workspace, lambda r: r.update(state="failed", failure={"stage": "gguf", "reason": "edited"}))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--retry")
    assert code == 1 and "no failed GGUF job of attempt 1 is on the backend" in out, out
    assert sorted(j.spec["labels"]["stage"] for j in hub.state.jobs.values()) == ["gguf", "train"]


def test_dry_run_prints_the_jobs_and_sends_nothing(hub, workspace, monkeypatch, capsys) -> None:
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--dry-run",
                    "--json")
    assert code == 0, out
    doc = json.loads(out.strip().splitlines()[-1])
    assert [j["stage"] for j in doc["jobs"]] == ["train", "gguf"]
    train = doc["jobs"][0]
    assert train["image"].split("@sha256:")[1] and train["command"][0] == "uv"
    assert train["config"]["hub_model_id"] == "alice/tiny-sft" and TOKEN not in out
    assert not any(r.method != "GET" for r in hub.state.requests) and not hub.state.jobs
    _, plan_out = run(workspace, monkeypatch, capsys, "plan", "recipes/tiny-sft.yaml", "--json")
    planned = json.loads(plan_out)["plans"][0]["jobs"]
    assert [(j["flavor"], j["timeout_seconds"]) for j in doc["jobs"]] == \
        [(j["flavor"], j["timeout_seconds"]) for j in planned]


def test_hf_run_without_a_budget_spends_nothing(hub, workspace, monkeypatch, capsys) -> None:
    recipe_path = workspace / "recipes" / "tiny-sft.yaml"
    recipe_path.write_text(recipe_path.read_text() + "budget_usd: null\n")
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1 and "no budget" in out
    assert not any(r.method != "GET" for r in hub.state.requests)


# --- what trains is what was reviewed --------------------------------------------------------------------


def test_a_reward_or_data_change_is_a_new_version_and_gets_a_plan(workspace, cli) -> None:
    base = git(workspace, "rev-parse", "HEAD")
    before = {n: runs.recipe_version(recipe.load(workspace / "recipes" / f"{n}.yaml"))
              for n in ("tiny-sft", "tiny-grpo")}
    reward = workspace / "rewards" / "arith.py"
    reward.write_text(reward.read_text() + "\n# tuned\n")
    git(workspace, "commit", "-qam", "reward")
    result = cli("changed", "--base", base, "--head", "HEAD", "--json", cwd=workspace)
    assert json.loads(result.out) == ["recipes/tiny-grpo.yaml"]
    after = runs.recipe_version(recipe.load(workspace / "recipes" / "tiny-grpo.yaml"))
    assert after != before["tiny-grpo"]
    data = workspace / "data" / "sft.jsonl"
    write_jsonl(data, [json.loads(line) for line in data.read_text().splitlines()][:50])
    git(workspace, "commit", "-qam", "data")
    result = cli("changed", "--base", base, "--head", "HEAD", "--json", cwd=workspace)
    assert set(json.loads(result.out)) == {"recipes/tiny-grpo.yaml", "recipes/tiny-sft.yaml"}
    assert runs.recipe_version(recipe.load(workspace / "recipes" / "tiny-sft.yaml")) != before["tiny-sft"]
    # A change to a run record alone trains nothing.
    (workspace / "runs").mkdir()
    (workspace / "runs" / "tiny-sft.json").write_text('{"name": "tiny-sft", "runs": []}\n')
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "record")
    result = cli("changed", "--base", "HEAD~1", "--head", "HEAD", "--json", cwd=workspace)
    assert json.loads(result.out) == []


# --- calibration from history -------------------------------------------------------------------------------


def _past_run(root: Path, i: int, *, estimated_h: float, actual_h: float, method: str = "sft") -> None:
    plan = a_plan(method=method)
    plan.jobs[0].hours = estimated_h
    rec = ledger.RunRecord(run_id=f"2026-{i}", recipe="recipes/old.yaml", recipe_sha256="0" * 64, version=str(i),
                           commit=None, backend="hf", push=True, state="recorded",
                           plan=plan,
                           cost_usd={"estimated": estimated_h * 0.01, "actual": actual_h * 0.01})
    rec.jobs["train"] = ledger.JobRef(id=f"j{i}", backend="hf", flavor="cpu-basic", submitted_at="2026-11-01T00:00:00Z",
                                      running_seconds=actual_h * 3600, usd_per_hour=0.01)
    ledger.save(root, rec, "old")


def test_past_runs_calibrate_the_plan_from_three_comparable_runs(repo: Path, cli) -> None:
    write_recipe(repo, "demo", HUB_MODEL.format(name="demo", model="./models/tiny") + "budget_usd: 5\n")
    _, plain = plan_of(cli, repo, "recipes/demo.yaml")
    assert plain["calibration"] is None
    _past_run(repo, 1, estimated_h=1.0, actual_h=2.0)
    _past_run(repo, 2, estimated_h=1.0, actual_h=2.0, method="dpo")
    _, seen = plan_of(cli, repo, "recipes/demo.yaml")
    assert seen["calibration"]["runs"] == 2 and seen["calibration"]["applied"] is None
    assert seen["hours"] == pytest.approx(plain["hours"])  # one comparable run: shown, not applied
    _past_run(repo, 3, estimated_h=1.0, actual_h=2.0)
    _past_run(repo, 4, estimated_h=2.0, actual_h=5.0)
    _, scaled = plan_of(cli, repo, "recipes/demo.yaml")
    assert scaled["calibration"]["comparable"] == 3 and scaled["calibration"]["applied"] == 2.0
    assert scaled["hours"] == pytest.approx(plain["hours"] * 2.0, rel=1e-3)
    assert any("time scaled by 2.00" in w for w in scaled["warnings"])
    body = cli("plan", "recipes/demo.yaml", "--markdown", cwd=repo).out
    assert "Past estimates in this repository" in body and "scaled by 2.00" in body
