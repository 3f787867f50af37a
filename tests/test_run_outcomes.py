"""A run's outcome is the truth: verified outputs, following that never gives up, honest failures.

Through the real `HfApi` against the Hub stand-in (tests/hubstub.py), with scripted jobs:
a job that says COMPLETED without its outputs fails the run and publishes nothing; a log
endpoint that keeps failing does not stop the run from ending in the right state; an
unreachable Hub fails within a minute with one line; failure reasons say what to change.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import gguf_summary_json, train_summary_json
from hubstub import HubStub, JobScript
from test_hf_backend import (
    GGUF_SUMMARY,
    SUMMARY,
    TOKEN,
    created,
    record,
    run,
    scripted,
)

from runner import failures, outputs
from runner.backends.local import LocalBackend
from runner.jobspec import GgufJobConfig, SFTJobConfig
from runner.summaries import GgufSummary, TrainSummary

HF = ("--backend", "hf")


def _append(ws: Path, text: str, name: str = "tiny-sft") -> None:
    path = ws / "recipes" / f"{name}.yaml"
    path.write_text(path.read_text() + text)


def _nothing_published(hub: HubStub, ws: Path) -> None:
    assert "README.md" not in hub.files("alice/tiny-sft")
    assert not (ws / "models" / "tiny-sft").exists()


# --- 1. verify before recording ------------------------------------------------------------------


def test_completed_job_without_summary_fails_and_publishes_nothing(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts.append(JobScript(push=False, summary=None))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 1, out
    rec = record(workspace)
    assert rec["state"] == "failed" and rec["failure"]["stage"] == "train"
    assert rec["failure"]["kind"] == "missing_output"
    reason = rec["failure"]["reason"]
    assert "COMPLETED" in reason and "no summary" in reason
    assert f"runner/{rec['run_id']}/train-summary.json in alice/tiny-sft" in reason
    assert not created(hub, "gguf")
    _nothing_published(hub, workspace)


def test_completed_job_without_a_model_fails_naming_where_it_was_expected(hub, workspace, monkeypatch,
                                                                          capsys) -> None:
    hub.state.job_scripts.append(JobScript(push=False, summary=SUMMARY))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 1, out
    rec = record(workspace)
    assert rec["state"] == "failed" and rec["failure"]["kind"] == "missing_output"
    assert "no trained model is in alice/tiny-sft" in rec["failure"]["reason"]
    assert "config.json" in rec["failure"]["reason"]
    assert rec["failure"]["reason"] in out
    assert not created(hub, "gguf")
    _nothing_published(hub, workspace)


def test_model_is_checked_at_the_commit_the_job_pushed(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub)
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)[0] == 0
    rec = record(workspace)
    commit = rec["train_summary"]["pushed"]["commit"]
    trees = [r for r in hub.state.requests if r.path.startswith("/api/models/alice/tiny-sft/tree/")]
    assert any(r.path.endswith(f"/tree/{commit}") for r in trees), [r.path for r in trees]


@pytest.mark.parametrize(("stage", "bad", "named"), [
    ("train", {"steps": "many"}, "steps: Input should be a valid integer"),
    ("train", {"pushed": {"commit": "abc"}}, "pushed.repo: Field required"),
    ("gguf", {"files": [{"quantization": "Q4_K_M"}]}, "files.0.path: Field required"),
])
def test_a_summary_that_does_not_fit_fails_the_run_in_one_line(hub, workspace, monkeypatch, capsys, stage, bad,
                                                               named) -> None:
    train, gguf = SUMMARY | (bad if stage == "train" else {}), GGUF_SUMMARY | (bad if stage == "gguf" else {})
    hub.state.job_scripts += [JobScript(summary=train, push=stage == "gguf"), JobScript(summary=gguf)]
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 1 and "Traceback" not in out, out
    rec = record(workspace)
    assert rec["state"] == "failed" and rec["failure"]["stage"] == stage
    assert rec["failure"]["kind"] == "missing_output"
    reason = rec["failure"]["reason"]
    assert "COMPLETED, but its summary is not what the job script writes" in reason and named in reason, reason
    assert "\n" not in reason and reason in out
    _nothing_published(hub, workspace)


def test_a_newer_job_scripts_extra_keys_are_ignored(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts += [JobScript(summary=SUMMARY | {"new_metric": {"x": 1}}),
                              JobScript(summary=GGUF_SUMMARY | {"new": True})]
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 0, out
    rec = record(workspace)
    assert rec["state"] == "recorded" and "new_metric" not in rec["train_summary"]


def test_missing_gguf_file_fails_the_conversion_and_no_card_is_pushed(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts += [JobScript(summary=SUMMARY), JobScript(push=False, summary=GGUF_SUMMARY)]
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 1, out
    rec = record(workspace)
    assert rec["state"] == "failed" and rec["failure"]["stage"] == "gguf"
    # the example recipe asks for two quantizations
    assert "tiny-sft-Q4_K_M.gguf, tiny-sft-IQ4_XS.gguf are missing from alice/tiny-sft-GGUF" in rec["failure"]["reason"]
    _nothing_published(hub, workspace)


def _train_config(**fields) -> SFTJobConfig:
    """A local training job's config with the fields a test cares about."""
    return SFTJobConfig(**{"run_id": "r", "dataset_name": "d.jsonl", "model_name_or_path": "m", "num_train_epochs": 1,
                           "learning_rate": 1e-3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                           "max_length": 64, "output_dir": "out", "summary_path": "out/s.json", **fields})


def test_local_outputs_are_checked_on_disk(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "jobs")
    model = tmp_path / "hub" / "local" / "m"
    config = _train_config(output_dir=str(model), summary_path=str(tmp_path / "s.json"))
    full, lora = (TrainSummary.model_validate(train_summary_json(adapter=a)) for a in (False, True))
    assert outputs.missing_model(backend, config, None) == f"it wrote no summary (expected {tmp_path}/s.json)"
    assert "does not exist" in outputs.missing_model(backend, config, full)
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert "no trained model is in" in outputs.missing_model(backend, config, full)
    (model / "model.safetensors").write_bytes(b"x")
    assert outputs.missing_model(backend, config, full) is None
    assert "adapter_config.json" in outputs.missing_model(backend, config, lora)
    gguf = GgufJobConfig(name="m", model_dir=str(model), quantizations=["q4_k_m", "Q8_0"], dataset_name="d.jsonl",
                         model_id="m", output_dir=str(tmp_path / "g"), summary_path="x")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "m-Q4_K_M.gguf").write_bytes(b"GGUF")
    nothing = GgufSummary.model_validate(gguf_summary_json([]))
    assert outputs.missing_ggufs(backend, gguf, nothing) == f"m-Q8_0.gguf is missing from {tmp_path}/g"


# --- 2. following never gives up on a job ------------------------------------------------------------


@pytest.mark.parametrize("end", ["COMPLETED", "ERROR"])
def test_failing_log_endpoint_falls_back_to_the_stage(hub, workspace, monkeypatch, capsys, end) -> None:
    train = JobScript(summary=SUMMARY, running=1.0, end=end, message=None if end == "COMPLETED" else "exit code 1",
                      logs=["progress step=1/30 loss=2.0"])
    scripted(hub, train=train)
    hub.state.faults["GET /api/jobs/alice/*/logs"] = [503] * 6
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    rec = record(workspace)
    assert rec["state"] == ("recorded" if end == "COMPLETED" else "failed"), out
    assert code == (0 if end == "COMPLETED" else 1)
    assert "following the job's stage" in out
    assert "reading the logs" not in out and "Traceback" not in out
    assert len(created(hub, "train")) == 1


@pytest.mark.slow  # waits out real back-off delays
def test_stage_polls_failing_too_are_waited_out(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub, train=JobScript(summary=SUMMARY, running=1.0))
    hub.state.faults["GET /api/jobs/alice/*/logs"] = [500] * 50
    hub.state.faults["GET /api/jobs/alice/*"] = [503, 502, 503]
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 0, out
    assert record(workspace)["state"] == "recorded"


@pytest.mark.slow  # waits out real back-off delays
def test_unreachable_hub_fails_within_a_minute_with_one_line(workspace, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    start = time.monotonic()
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    elapsed = time.monotonic() - start
    assert code == 1 and elapsed < 60, (elapsed, out)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no usable answer" in errors[0], out
    retries = [line for line in out.splitlines() if "retrying in" in line]
    assert retries and all(len(line) < 160 for line in retries)


def test_retry_after_zero_is_honored_and_no_lookup_precedes_a_plain_retry(hub, workspace, monkeypatch,
                                                                         capsys) -> None:
    scripted(hub)
    hub.state.faults["POST /api/jobs/alice"] = [429, 429, 429, 429]  # the stand-in says Retry-After: 0
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 0, out
    posts = [r for r in hub.state.requests if r.method == "POST" and r.path == "/api/jobs/alice"]
    first_train = posts[:5]
    assert first_train[-1].at - first_train[0].at < 1.5  # no backoff on top of Retry-After: 0
    between = [r for r in hub.state.requests if first_train[0].at <= r.at <= first_train[-1].at
               and r.method == "GET" and r.path == "/api/jobs/alice"]
    assert between == []  # a refusal before processing needs no lookup
    assert out.count("retrying in 0 s") == 4


def test_lost_answer_is_looked_up_once_before_resending(hub, workspace, monkeypatch, capsys) -> None:
    scripted(hub)
    hub.state.fail_after_create = 1  # the job is created, the answer lost
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 0, out
    posts = [r for r in hub.state.requests if r.method == "POST" and r.path == "/api/jobs/alice"]
    assert len(posts) == 2  # train (answer lost, then found by its labels) and gguf
    lookups = [r for r in hub.state.requests if r.method == "GET" and r.path == "/api/jobs/alice"
               and posts[0].at < r.at < posts[1].at and any("run=" in v for v in r.query.get("label", []))]
    assert lookups, "the lost answer was not looked up"
    assert len(created(hub, "train")) == 1 and "went through" in out


# --- 3. failure reasons a person can act on ------------------------------------------------------------


def test_timeout_reason_names_limit_step_field_and_checkpoint(hub, workspace, monkeypatch, capsys) -> None:
    _append(workspace, "timeout: 5m\n")
    hub.state.timeout_scale = 150  # five minutes pass in two seconds
    hub.state.job_scripts.append(JobScript(outlive_timeout=True, checkpoint=True,
                                           logs=["progress step=3/30 loss=2.1", "step 3 loss 1.52"]))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 1, out
    f = record(workspace)["failure"]
    assert f["kind"] == "timeout" and f["step"] == 3 and f["total_steps"] == 30
    reason = f["reason"]
    assert "5m (300 s) limit" in reason and "step 3 of 30" in reason
    assert "`timeout` in recipes/tiny-sft.yaml" in reason and "alice/tiny-sft/last-checkpoint/" in reason
    assert "1.52" not in reason and "Job timeout:" not in reason


def test_out_of_memory_reason_names_flavor_memory_batch_and_smallest_change(hub, workspace, monkeypatch,
                                                                            capsys) -> None:
    _append(workspace, "hardware: a10g-large\n")
    hub.state.job_scripts.append(JobScript(end="ERROR", message="exit code 1", logs=[
        "progress step=1/30 loss=2.5", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB",
        "Training complete"]))
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF)
    assert code == 1, out
    f = record(workspace)["failure"]
    assert f["kind"] == "oom"
    assert "a10g-large (24 GB per GPU) at batch_size 8" in f["reason"]
    assert "training.batch_size: 4 with training.grad_accum:" in f["reason"]
    assert "Training complete" not in f["reason"]


def test_cancel_reads_as_canceled_everywhere(hub, workspace, monkeypatch, capsys) -> None:
    hub.state.job_scripts.append(JobScript(outlive_timeout=True, logs=["Training complete, model saved to /output"]))
    assert run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF, "--detach")[0] == 0
    code, out = run(workspace, monkeypatch, capsys, "cancel", "tiny-sft")
    assert code == 0 and "canceled" in out
    f = record(workspace)["failure"]
    assert record(workspace)["state"] == "canceled" and f["kind"] == "canceled"
    assert "Training complete" not in f["reason"]
    code, out = run(workspace, monkeypatch, capsys, "status", "tiny-sft")
    assert "tiny-sft: canceled" in out and "the training job was canceled" in out and "failed" not in out


@pytest.mark.slow  # waits out real back-off delays
def test_reconcile_saves_the_stage_and_exits_nonzero_when_the_run_failed(hub, workspace, monkeypatch,
                                                                        capsys) -> None:
    hub.state.job_scripts.append(JobScript(outlive_timeout=True, logs=["loading"]))  # ended below
    code, out = run(workspace, monkeypatch, capsys, "run", "recipes/tiny-sft.yaml", *HF, "--detach")
    assert code == 0, out
    deadline = time.monotonic() + 10
    while created(hub)[0].stage != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out = run(workspace, monkeypatch, capsys, "reconcile")
    assert code == 0 and record(workspace)["jobs"]["train"]["stage"] == "RUNNING"
    code, out = run(workspace, monkeypatch, capsys, "reconcile")  # the stage seen last was saved
    assert code == 0 and "->" not in out, out
    hub.end_job(created(hub)[0].id, "ERROR", "exit code 1", ("error: row 3: column 'messages' is empty or missing",))
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--wait")
    assert code == 1, out
    assert "SCHEDULING" not in out and "RUNNING -> ERROR" in out
    f = record(workspace)["failure"]
    assert f["kind"] == "data" and f["reason"] == ("the training job stopped on its input: row 3: column "
                                                   "'messages' is empty or missing")


def test_diagnosis_without_a_flavor_or_progress() -> None:
    """The local backend: no flavor, no Hub message; a GGUF job's timeout is not the recipe's to change."""
    oom = failures.diagnose("train", "ERROR", "job script exited with code -9", ["Killed", "MemoryError"],
                            recipe="recipes/x.yaml", flavor=None,
                            config=_train_config(per_device_train_batch_size=1, gradient_checkpointing_mode=False),
                            timeout_seconds=600, checkpoint=None)
    assert oom.kind == "oom" and "on this machine at batch_size 1" in oom.reason
    assert "training.gradient_checkpointing: true" in oom.reason
    late = failures.diagnose("gguf", "ERROR", "timed out after 3600 s", [], recipe="recipes/x.yaml", flavor="cpu-upgrade",
                             config=None, timeout_seconds=3600, checkpoint=None)
    assert late.kind == "timeout" and "1h (3600 s) limit" in late.reason and "recipes/x.yaml" not in late.reason
    crash = failures.diagnose("train", "ERROR", "exit code 1", ["Traceback", "ValueError: boom"],
                              recipe="recipes/x.yaml", flavor=None, config=None, timeout_seconds=None, checkpoint=None)
    assert crash.kind == "infrastructure" and crash.reason == "the training job ended ERROR: exit code 1"
