"""`--backend hf`: the whole lifecycle against the Hub stand-in, through the real `HfApi`.

Most tests play scripted jobs (stages, logs, a summary) so they run in seconds; one
runs both jobs for real (TRL training, llama.cpp conversion) inside the stand-in.
Every test checks the record it ends with and that no job was paid for twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HUB_TOKEN, ROOT, gguf_summary_json, run, train_summary_json
from hubstub import HubStub, JobScript

from runner.errors import UserError

TOKEN = HUB_TOKEN
SUMMARY = train_summary_json()
GGUF_SUMMARY = gguf_summary_json([{"quantization": "Q4_K_M", "path": "output/gguf/tiny-sft-Q4_K_M.gguf", "bytes": 1000,
                                   "sha256": "0" * 64, "smoke_test": "hi", "imatrix": False}])


def scripted(hub: HubStub, *, train: JobScript | None = None) -> None:
    hub.state.job_scripts += [train or JobScript(summary=SUMMARY), JobScript(summary=GGUF_SUMMARY)]


def record(ws: Path, name: str = "tiny-sft") -> dict:
    return json.loads((ws / "runs" / f"{name}.json").read_text())["runs"][-1]


def created(hub: HubStub, stage: str | None = None) -> list:
    return [j for j in hub.state.jobs.values() if stage is None or j.spec["labels"].get("stage") == stage]


def assert_no_token(hub: HubStub, ws: Path, *texts: str) -> None:
    """The token appears nowhere but where it must: the job's secret and the Authorization header."""
    for text in texts:
        assert TOKEN not in text
    for path in ws.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert TOKEN.encode() not in path.read_bytes(), path
    for job in hub.state.jobs.values():
        assert TOKEN not in json.dumps(job.info())
        assert TOKEN not in json.dumps(job.spec.get("environment"))
        assert job.spec["secrets"] == {"HF_TOKEN": TOKEN}
        assert all(TOKEN not in line for _, line in job.logs)
    for repo in hub.state.repos.values():
        for _, tree in repo.commits:
            assert all(TOKEN.encode() not in data for data in tree.values())


def test_scripted_run_records_and_publishes(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub)
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out
    rec = record(workspace)
    assert rec["state"] == "recorded"
    assert [h["state"] for h in rec["history"]] == ["planned", "training", "trained", "converting", "converted",
                                                    "recorded"]
    assert rec["metrics"]["final_loss"] == 1.25
    assert 0 < rec["cost_usd"]["actual"] < 0.01  # two short jobs, a started minute each on CPU flavors
    assert rec["links"]["model"].endswith("alice/tiny-sft") and rec["links"]["gguf"].endswith("alice/tiny-sft-GGUF")
    train, gguf = created(hub, "train"), created(hub, "gguf")
    assert len(train) == 1 and len(gguf) == 1
    spec = train[0].spec
    assert spec["labels"]["recipe"] == "tiny-sft" and spec["labels"]["run"] == rec["run_id"]
    assert spec["labels"]["commit"] == rec["commit"][:12]
    assert spec["flavor"] == rec["plan"]["flavor"] and spec["timeoutSeconds"] == rec["plan"]["timeout_seconds"]
    # The script ships through an ordinary commit, mounted at that commit: the exact script stays with the model.
    volume = spec["volumes"][0]
    model = hub.files("alice/tiny-sft")
    bundle = f"runner/{rec['run_id']}"
    assert volume["source"] == "alice/tiny-sft" and volume["path"] == bundle and len(volume["revision"]) == 40
    assert model[f"{bundle}/train.py"] == (ROOT / "runner" / "jobs" / "train.py").read_bytes()
    # The training policy train.py imports travels with it.
    assert model[f"{bundle}/train_policy.py"] == (ROOT / "runner" / "jobs" / "train_policy.py").read_bytes()
    assert model[f"{bundle}/data/sft.jsonl"] == (workspace / "data/sft.jsonl").read_bytes()
    config = json.loads(spec["environment"]["RUNNER_JOB_CONFIG"])
    # The GGUF job converts exactly the commit the training job pushed, not whatever main holds by then.
    gguf_config = json.loads(gguf[0].spec["environment"]["RUNNER_JOB_CONFIG"])
    pushed = rec["train_summary"]["pushed"]
    assert gguf_config["model_repo"] == pushed["repo"] == "alice/tiny-sft" and len(pushed["commit"]) == 40
    assert gguf_config["model_revision"] == pushed["commit"] == rec["configs"]["gguf"]["model_revision"]
    assert config["dataset_name"] == "/runner/data/sft.jsonl"
    assert config["hub_model_id"] == "alice/tiny-sft" and config["push_to_hub"] is True
    # Outside a sweep the job pushes to main, as Trainer does by default: no branch is made.
    assert config["hub_revision"] is None and set(hub.state.repos["alice/tiny-sft"].branches) == {"main"}
    assert not any("/branch/" in q.path for q in hub.state.requests)
    # The card is the model repo's README, and the repo keeps its copy.
    assert model["README.md"].decode() == (workspace / "models" / "tiny-sft" / "README.md").read_text()
    assert "loss.png" in model
    assert_no_token(hub, workspace, out)


def test_repeated_trigger_adopts_instead_of_paying_twice(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub)
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")[0] == 0
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0 and "already has run" in out
    assert len(created(hub)) == 2
    assert len(json.loads((workspace / "runs" / "tiny-sft.json").read_text())["runs"]) == 1


@pytest.mark.slow  # waits out real back-off delays
def test_429_and_5xx_bursts_are_survived(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub)
    faults = {"POST /api/jobs/alice": [429, 503], "GET /api/jobs/alice/": [429, 500, 502, 503],
              "GET /api/jobs/alice": [503], "POST /api/models/alice/tiny-sft/commit": [500],
              "POST /api/repos/create": [502]}
    hub.state.faults.update({k: list(v) for k, v in faults.items()})
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out
    assert record(workspace)["state"] == "recorded"
    assert all(not v for v in hub.state.faults.values()), hub.state.faults  # every fault was served
    assert len(created(hub, "train")) == 1 and len(created(hub, "gguf")) == 1
    assert "retrying" in out


def test_lost_submission_answer_adopts_the_job_it_created(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub)
    hub.state.fail_after_create = 1  # the Hub creates the job, then the answer is lost
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out
    assert len(created(hub, "train")) == 1
    assert record(workspace)["jobs"]["train"]["id"] == created(hub, "train")[0].id


def test_dropped_log_stream_resumes_without_repeating_lines(hub, workspace, monkeypatch, capsys) -> None:
    lines = [f"progress step={i}/6 loss={3 - i / 3:.2f}" for i in range(1, 7)]
    scripted(hub, train=JobScript(logs=lines, running=1.0, summary=SUMMARY))
    hub.state.drop_log_streams = 2
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out
    assert hub.state.drop_log_streams == 0
    for line in lines:
        assert out.count(line) == 1, line


def test_job_error_fails_the_run_with_reason_tail_and_checkpoint(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts.append(JobScript(end="ERROR", message="exit code 1", checkpoint=True,
                                           logs=["loading", "error: column 'messages' is missing after mapping"]))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1
    rec = record(workspace)
    assert rec["state"] == "failed"
    failure = rec["failure"]
    assert failure["stage"] == "train"
    assert failure["kind"] == "data"
    assert failure["reason"] == "the training job stopped on its input: column 'messages' is missing after mapping"
    assert failure["log_tail"][-1] == "error: column 'messages' is missing after mapping"
    assert failure["checkpoint_on_hub"] is True
    assert len(created(hub)) == 1


def test_job_outliving_its_timeout_fails_the_run(hub, workspace, monkeypatch, capsys) -> None:
    path = workspace / "recipes" / "tiny-sft.yaml"
    path.write_text(path.read_text() + "timeout: 5m\n")
    hub.state.timeout_scale = 150  # five minutes pass in two seconds
    hub.state.job_scripts.append(JobScript(outlive_timeout=True))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1, out
    rec = record(workspace)
    assert rec["state"] == "failed" and "timeout" in rec["failure"]["reason"].lower()
    assert rec["failure"]["checkpoint_on_hub"] is False
    assert created(hub)[0].spec["timeoutSeconds"] == 300


def test_hub_restart_mid_run(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub, train=JobScript(running=3.0, summary=SUMMARY))
    restarter = threading.Timer(1.0, hub.restart, kwargs={"down_for": 2.0})
    restarter.start()
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    restarter.join()
    assert code == 0, out
    assert record(workspace)["state"] == "recorded"
    assert len(created(hub, "train")) == 1 and len(created(hub, "gguf")) == 1


@pytest.mark.slow  # waits out real back-off delays
def test_detach_status_logs_cancel(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts.append(JobScript(outlive_timeout=True, logs=["progress step=1/30 loss=2.5"]))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--detach")
    assert code == 0, out
    assert record(workspace)["state"] == "training"
    deadline = time.monotonic() + 10
    while created(hub)[0].stage != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out = run(workspace, monkeypatch, capsys, "status")
    assert code == 0 and "tiny-sft: training" in out and "is RUNNING" in out and "step=1/30 loss=2.5" in out
    code, out = run(workspace, monkeypatch, capsys, "logs", "tiny-sft")
    assert code == 0 and "progress step=1/30 loss=2.5" in out
    job_id = created(hub)[0].id
    code, by_id = run(workspace, monkeypatch, capsys, "logs", job_id)
    assert code == 0 and by_id == out
    code, out = run(workspace, monkeypatch, capsys, "status", job_id)
    assert code == 0 and f"train job {job_id} is RUNNING" in out
    code, out = run(workspace, monkeypatch, capsys, "status", "no-such-job")
    assert code == 1 and "no runs recorded for 'no-such-job'" in out
    code, out = run(workspace, monkeypatch, capsys, "cancel", "tiny-sft")
    assert code == 0 and "canceled" in out
    code, out = run(workspace, monkeypatch, capsys, "logs", "-f", job_id)
    assert code == 1 and out.rstrip().endswith(f"job {job_id} CANCELED")
    assert created(hub)[0].stage == "CANCELED"
    assert record(workspace)["state"] == "canceled"
    assert_no_token(hub, workspace, out)


def test_runner_killed_after_submit_then_reconcile_finishes(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub, train=JobScript(running=4.0, summary=SUMMARY))
    env = {k: v for k, v in os.environ.items()} | {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", "recipes/tiny-sft.yaml", "--backend", "hf"],
                            cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (workspace / "runs" / "tiny-sft.json").exists() and record(workspace)["state"] == "training":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0]
    assert record(workspace)["state"] == "training", out
    # Two reconcilers at once: one carries the run, the other steps aside; neither submits again.
    other = subprocess.Popen([sys.executable, "-m", "runner", "reconcile", "--wait"], cwd=workspace, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--wait")
    other_out = other.communicate(timeout=120)[0]
    assert code == 0 and other.returncode == 0, out + other_out
    assert "another runner process" in out + other_out or "recorded" in out + other_out
    assert record(workspace)["state"] == "recorded"
    assert len(created(hub, "train")) == 1 and len(created(hub, "gguf")) == 1
    code, out = run(workspace, monkeypatch, capsys, "reconcile")
    assert code == 0 and len(created(hub)) == 2


def test_no_token_is_a_clear_error(workspace, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1 and "needs a Hugging Face token" in out and not (workspace / "runs").exists()


@pytest.mark.skipif(not shutil.which("git"), reason="git needed")
@pytest.mark.slow
def test_real_jobs_on_the_stand_in(hub, workspace, monkeypatch, capsys) -> None:
    """Both jobs for real inside the stand-in: train pushes to its repo, GGUF downloads it and publishes."""
    pytest.importorskip("trl")
    pytest.importorskip("llama_cpp")
    hub.state.job_env = {"HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    path = workspace / "recipes" / "tiny-sft.yaml"
    path.write_text(path.read_text().replace("max_steps: 30", "max_steps: 4"))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out + "\n".join(line for j in hub.state.jobs.values() for _, line in j.logs[-30:])
    rec = record(workspace)
    assert rec["state"] == "recorded" and rec["train_summary"]["steps"] == 4
    model, gguf = hub.files("alice/tiny-sft"), hub.files("alice/tiny-sft-GGUF")
    assert "model.safetensors" in model and "README.md" in model
    assert "tiny-sft-Q4_K_M.gguf" in gguf and gguf["tiny-sft-Q4_K_M.gguf"][:4] == b"GGUF"
    assert b"base_model: alice/tiny-sft\n" in gguf["README.md"] and b"FROM ./tiny-sft-Q4_K_M.gguf" in gguf["Modelfile"]
    # the calibration data reached the job through the mounted bundle
    assert "tiny-sft-IQ4_XS.gguf" in gguf and rec["gguf_summary"]["imatrix"]["dataset"] == "sft.jsonl"
    assert rec["gguf_summary"]["files"][0]["smoke_test"] is not None
    assert len(created(hub)) == 2
    assert_no_token(hub, workspace, out)


def test_lost_run_record_adopts_the_job_training_this_version(hub, workspace, monkeypatch, capsys) -> None:
    """A re-triggered workflow checks out the merge commit, without the record an earlier run saved."""
    scripted(hub, train=JobScript(running=1.0, summary=SUMMARY))
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--detach")[0] == 0
    first = record(workspace)["run_id"]
    shutil.rmtree(workspace / "runs")
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 0, out
    assert "adopting job" in out
    rec = record(workspace)
    assert rec["state"] == "recorded" and rec["run_id"] != first
    assert rec["configs"]["train"]["run_id"] == first  # the adopted job's own config
    assert len(created(hub, "train")) == 1 and len(created(hub, "gguf")) == 1
    # Yet another trigger of the same version, record lost again: nothing new is paid for.
    shutil.rmtree(workspace / "runs")
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")[0] == 0
    assert len(created(hub)) == 2 and record(workspace)["state"] == "recorded"


def test_adoption_looks_through_every_page_of_jobs(hub) -> None:
    """The newest live job with the labels is found past the first page (Link paging), failed ones skipped."""
    from huggingface_hub import HfApi

    from runner.backends.hf import HfBackend

    api = HfApi(endpoint=hub.url, token=TOKEN)
    labels = {"recipe": "r", "version": "v1", "stage": "train"}
    hub.state.job_scripts += [JobScript(end="ERROR", running=0.0)] * 4 + [JobScript(outlive_timeout=True)] + \
        [JobScript(end="ERROR", running=0.0)] * 2
    ids = [api.run_job(image="x", command=["true"], labels=labels, env=RUNNER_ENV, namespace="alice").id
           for _ in range(7)]
    api.run_job(image="x", command=["true"], labels={**labels, "version": "v2"}, env=RUNNER_ENV, namespace="alice")
    deadline = time.monotonic() + 10
    while sum(j.stage == "ERROR" for j in hub.state.jobs.values()) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    found = HfBackend(api, "alice", TOKEN).find(labels)
    assert found is not None and found.id == ids[4]
    assert any("cursor" in r.query for r in hub.state.requests if r.path == "/api/jobs/alice")


# A config this runner writes: what makes a listed job one of its own.
RUNNER_ENV = {"RUNNER_JOB_CONFIG": json.dumps({
    "output_dir": "output", "summary_path": "output/summary.json", "name": "r", "model_dir": "output/model",
    "quantizations": ["Q4_K_M"], "dataset_name": "data/train.jsonl", "model_id": "org/base"})}


def _two_submitters(hub, labels: dict[str, str], *, first_env: dict[str, str] = RUNNER_ENV):
    """Two machines' jobs for the same work, the first submitted earlier; their backends (settling 0.3 s)."""
    from huggingface_hub import HfApi

    from runner.backends.hf import HfBackend

    api = HfApi(endpoint=hub.url, token=TOKEN)
    hub.state.job_scripts += [JobScript(scheduling=30.0), JobScript(scheduling=30.0)]
    first = api.run_job(image="x", command=["true"], labels=labels, env=first_env, namespace="alice").id
    time.sleep(0.05)  # creation times are whole milliseconds apart
    second = api.run_job(image="x", command=["true"], labels=labels, env=RUNNER_ENV, namespace="alice").id
    return first, second, [HfBackend(api, "alice", TOKEN, settle=0.3) for _ in range(2)]


def test_a_claim_outlasts_the_job_listings_lag(hub) -> None:
    """B lists before A's earlier job is visible; A lists after B's. The claim reads again after its pause,
    so both keep A's job and B's is canceled while still queued: one job billed, not two."""
    labels = {"recipe": "r", "version": "v1", "stage": "train", "attempt": "1"}
    a, b, (machine_a, machine_b) = _two_submitters(hub, labels)
    hub.state.jobs[a].unlisted_for = 0.2  # the listing shows A's job only after B first looked
    assert machine_b.claim(labels, b).id == a
    assert machine_a.claim(labels, a).id == a
    assert hub.state.jobs[b].stage == "CANCELED" and hub.state.jobs[a].stage != "CANCELED"
    assert hub.state.jobs[b].durations()["runningSecs"] is None  # never started: nothing billed


def test_a_job_with_copied_labels_but_no_runner_config_never_holds_the_work(hub) -> None:
    """Someone else's job carrying the same labels is neither adopted nor yielded to: ours runs."""
    labels = {"recipe": "r", "version": "v1", "stage": "train", "attempt": "1"}
    foreign, ours, (machine, _) = _two_submitters(hub, labels, first_env={"RUNNER_JOB_CONFIG": "{}"})
    assert machine.find(labels).id == ours
    held = machine.claim(labels, ours)
    assert held.id == ours and held.config.model_id == "org/base"
    assert hub.state.jobs[ours].stage != "CANCELED" and hub.state.jobs[foreign].stage != "CANCELED"


def test_a_finished_job_does_not_win_the_claim(hub) -> None:
    """An older job of the same work that already COMPLETED holds nothing: the new submission is kept."""
    labels = {"recipe": "r", "version": "v1", "stage": "gguf", "attempt": "1"}
    done, ours, (machine, _) = _two_submitters(hub, labels)
    hub.end_job(done, "COMPLETED")
    assert machine.claim(labels, ours).id == ours
    assert hub.state.jobs[ours].stage != "CANCELED"


def test_a_claim_that_never_sees_its_own_job_cancels_it(hub) -> None:
    """A job no record will hold must not run on: if the listing never shows it, it is canceled."""
    labels = {"recipe": "r", "version": "v1", "stage": "train", "attempt": "1"}
    _, ours, (machine, _) = _two_submitters(hub, labels)
    hub.state.jobs[ours].unlisted_for = 3600.0
    with pytest.raises(UserError, match="did not settle"):
        machine.claim(labels, ours)
    assert hub.state.jobs[ours].stage == "CANCELED"


def test_over_budget_is_refused_before_any_spend(hub, workspace, monkeypatch, capsys) -> None:
    path = workspace / "recipes" / "tiny-sft.yaml"
    path.write_text(path.read_text() + "hardware: a100-large\nbudget_usd: 0.01\n")
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", "--backend", "hf")
    assert code == 1 and "exceeds budget_usd $0.01" in out and "nothing submitted" in out
    assert not hub.state.jobs and not hub.state.repos and not (workspace / "runs").exists()


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_claim_settle_setting_is_one_line(monkeypatch, value: str) -> None:
    from runner.backends.hf import HfBackend

    monkeypatch.setenv("RUNNER_CLAIM_SETTLE_SECONDS", value)
    with pytest.raises(UserError, match="RUNNER_CLAIM_SETTLE_SECONDS=.*seconds >= 0"):
        HfBackend(None, "alice", TOKEN)


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_a_bad_github_pause_setting_is_one_line(monkeypatch, value: str) -> None:
    from runner import github

    monkeypatch.setenv("GITHUB_TOKEN", "test-only-not-a-token")
    monkeypatch.setenv("GITHUB_REPOSITORY", "alice/fork")
    monkeypatch.setenv("RUNNER_GITHUB_PAUSE_SECONDS", value)
    with pytest.raises(UserError, match="RUNNER_GITHUB_PAUSE_SECONDS=.*seconds >= 0"):
        github.repository()
