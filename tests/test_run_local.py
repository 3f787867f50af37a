"""`runner run --backend local`, end to end and for real: train, GGUF, card, record.

Each test runs in its own copy of the example root (`workspace`, a git checkout with the
example recipes, data and the tiny model, no namespace: nothing is pushed); each run is a
real `runner run` subprocess that trains with TRL and converts with llama.cpp on the CPU.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_summaries_read_whole, job_env

# Trains, quantizes or builds a model: the slow tier (`pytest -m "not slow"` skips it).
pytestmark = pytest.mark.slow


pytest.importorskip("trl")
pytest.importorskip("llama_cpp")

RUN_TIMEOUT = 900


@pytest.fixture
def namespace() -> None:
    """The examples as shipped: no namespace, so a local run pushes nothing."""
    return None


def runner(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner", "run", *args, "--quiet"], cwd=repo, env=job_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def variant(repo: Path, source: str, name: str, extra: str = "", replace: tuple[str, str] = ("", "")) -> str:
    text = (repo / "recipes" / f"{source}.yaml").read_text().replace(f"name: {source}", f"name: {name}")
    if replace[0]:
        assert replace[0] in text
        text = text.replace(*replace)
    (repo / "recipes" / f"{name}.yaml").write_text(text + extra)
    return f"recipes/{name}.yaml"


def last_run(repo: Path, name: str) -> dict:
    doc = json.loads((repo / "runs" / f"{name}.json").read_text())
    assert doc["name"] == name
    return doc["runs"][-1]


def trackio_losses(repo: Path, project: str) -> list[float]:
    """Losses as Trackio logged them, read from its local SQLite store."""
    dbs = list((repo / ".runner" / "trackio").rglob(f"{project}.db"))
    assert dbs, f"no trackio database for {project}"
    with sqlite3.connect(dbs[0]) as db:
        rows = db.execute("SELECT metrics FROM metrics ORDER BY step").fetchall()
    return [json.loads(m)["train/loss"] for (m,) in rows if "train/loss" in json.loads(m)]


def check_gguf_loads(path: Path) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=128, verbose=False, seed=0)
    out = llm("What is 1 + 1?", max_tokens=4, temperature=0.0)
    return out["choices"][0]["text"]


def assert_recorded(repo: Path, name: str, method: str, *, adapter: bool) -> dict:
    run = last_run(repo, name)
    assert run["state"] == "recorded", run.get("failure")
    assert [h["state"] for h in run["history"]] == ["planned", "training", "trained", "converting", "converted",
                                                     "recorded"]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run["commit"] == head
    assert run["jobs"]["train"]["stage"] == "COMPLETED" and run["jobs"]["gguf"]["stage"] == "COMPLETED"
    assert len(run["jobs"]["train"]["script_sha256"]) == 64
    summary = run["train_summary"]
    assert summary["method"] == method and summary["adapter"] is adapter
    assert all(math.isfinite(v) for v in run["metrics"].values()) and run["metrics"]
    assert set(run["seconds"]) >= {"train", "gguf", "record"}
    assert_summaries_read_whole(run)  # SFT (imatrix quantizations), LoRA, DPO, GRPO

    model_dir = Path(run["links"]["model"])
    assert (model_dir / "adapter_config.json").exists() is adapter
    files = run["gguf_summary"]["files"]
    q4 = next(f for f in files if f["quantization"] == "Q4_K_M")
    assert Path(q4["path"]).exists() and Path(q4["path"]).stat().st_size == q4["bytes"]
    assert isinstance(check_gguf_loads(Path(q4["path"])), str)
    # The GGUF side: its own card and an Ollama Modelfile beside the files; the template was checked.
    gguf_dir = Path(q4["path"]).parent
    assert f"FROM ./{name}-Q4_K_M.gguf" in (gguf_dir / "Modelfile").read_text()
    assert "base_model_relation: quantized" in (gguf_dir / "README.md").read_text()
    assert run["gguf_summary"]["chat_template"]["checked"] is True
    if name == "tiny-sft":  # its recipe asks for two quantizations with an importance matrix
        assert [f["quantization"] for f in files] == ["Q4_K_M", "IQ4_XS"] and all(f["imatrix"] for f in files)
        assert (gguf_dir / "tiny-sft-imatrix.gguf").exists() and (gguf_dir / "tiny-sft-IQ4_XS.gguf").exists()

    from huggingface_hub import ModelCard

    card = ModelCard.load(repo / "models" / name / "README.md")
    assert {"trl", method} <= set(card.data.tags)
    assert card.data.library_name == ("peft" if adapter else "transformers")
    assert "## GGUF" in card.text and f"{name}-Q4_K_M.gguf" in card.text
    assert run["run_id"] in card.text and run["commit"] in card.text
    assert (repo / "models" / name / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_evaluation(run, card)
    return run


def check_evaluation(run: dict, card) -> dict[str, tuple[float, float]]:
    """The record holds before/after numbers; the card shows them, the samples, and model-index results."""
    ev = run["evaluation"]
    assert ev == run["train_summary"]["evaluation"] and ev["rows"] > 0
    numbers = {m["name"]: (m["before"], m["after"]) for m in ev["metrics"]}
    assert numbers and all(math.isfinite(v) for pair in numbers.values() for v in pair)
    assert len(ev["samples"]) == min(3, ev["rows"])
    assert all(s["prompt"] and isinstance(s["base"], str) and isinstance(s["tuned"], str) for s in ev["samples"])
    assert "## Evaluation" in card.text and "| metric | base | tuned | change |" in card.text
    assert "### Samples" in card.text and ev["samples"][0]["prompt"].strip() in card.text
    indexed = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert indexed == {k: pytest.approx(after, abs=1e-5) for k, (_, after) in numbers.items()}
    return numbers


def status_line(repo: Path, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "runner", "status", name], cwd=repo, env=job_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sft_full_is_the_main_command(workspace: Path) -> None:
    proc = runner(workspace, "recipes/tiny-sft.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["state"] == "recorded"
    run = assert_recorded(workspace, "tiny-sft", "sft", adapter=False)
    steps = run["train_summary"]["steps"]
    assert steps == 30
    # The record's losses are the ones Trackio logged.
    logged = trackio_losses(workspace, "tiny-sft")
    history = [e["loss"] for e in run["train_summary"]["log_history"] if "loss" in e]
    assert logged and logged == pytest.approx(history)
    # Held out by default (2% of the rows, at least the 3 samples' worth), never trained on; the tuned model
    # fits them better than the base did.
    ev = run["evaluation"]
    assert ev["rows"] == 3 and "never trained on" in ev["held_out"]
    before, after = next((m["before"], m["after"]) for m in ev["metrics"] if m["name"] == "eval_loss")
    assert after < before
    assert all(s["prompt"].startswith("<|im_start|>system") and s["prompt"].endswith("<|im_start|>assistant\n")
               for s in ev["samples"])  # chat template applied
    assert f"eval loss {before:.4g} -> {after:.4g}" in status_line(workspace, "tiny-sft")


def test_sft_lora_with_an_eval_split(workspace: Path) -> None:
    # A local file has one split; slices of it make the training and the evaluation split.
    path = variant(workspace, "tiny-sft", "tiny-sft-lora", replace=(
        "  path: data/sft.jsonl\n",
        "  path: data/sft.jsonl\n  split: train[:90%]\n  eval_split: train[90%:]\n"))
    text = (workspace / path).read_text().replace("  lora: false", "  lora: true\n  r: 8")
    (workspace / path).write_text(text)
    proc = runner(workspace, path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = assert_recorded(workspace, "tiny-sft-lora", "sft", adapter=True)
    assert run["evaluation"]["rows"] == 10 and run["evaluation"]["held_out"] == "split train[90%:]"
    card = (workspace / "models" / "tiny-sft-lora" / "README.md").read_text()
    assert "On 10 held-out rows (split train[90%:])" in card and "| eval loss |" in card


def test_dpo(workspace: Path) -> None:
    proc = runner(workspace, "recipes/tiny-dpo.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = assert_recorded(workspace, "tiny-dpo", "dpo", adapter=True)
    numbers = {m["name"]: (m["before"], m["after"]) for m in run["evaluation"]["metrics"]}
    assert list(numbers)[:2] == ["eval_rewards/margins", "eval_rewards/accuracies"]
    # Before the first step the policy is its own reference: no margin, no pair ranked right.
    assert numbers["eval_rewards/margins"][0] == 0 and numbers["eval_rewards/accuracies"][0] == 0
    assert "| reward margin |" in (workspace / "models" / "tiny-dpo" / "README.md").read_text()
    assert "reward margin 0 -> " in status_line(workspace, "tiny-dpo")


def test_grpo_with_builtin_and_repo_local_rewards(workspace: Path) -> None:
    proc = runner(workspace, "recipes/tiny-grpo.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = assert_recorded(workspace, "tiny-grpo", "grpo", adapter=False)
    keys = {k for e in run["train_summary"]["log_history"] for k in e}
    assert any("contains_answer" in k for k in keys) and any("concise" in k for k in keys)
    # The mean reward per reward function on held-out prompts, before and after.
    names = [m["name"] for m in run["evaluation"]["metrics"]]
    assert names == ["eval_reward", "eval_rewards/concise/mean", "eval_rewards/contains_answer/mean"]
    card = (workspace / "models" / "tiny-grpo" / "README.md").read_text()
    assert "| reward concise |" in card and "| reward contains_answer |" in card


def test_two_process_data_parallel_sft(workspace: Path) -> None:
    path = variant(workspace, "tiny-sft", "tiny-sft-ddp", replace=("max_steps: 30", "max_steps: 6"),
                   extra="  every_steps: 3\n")
    # The claim is the training's: no GGUF conversion (the other runs here convert).
    text = (workspace / path).read_text()
    (workspace / path).write_text(text.replace("gguf:\n", "gguf:\n  enabled: false\n"))
    proc = runner(workspace, path, "--processes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = last_run(workspace, "tiny-sft-ddp")
    assert run["state"] == "recorded"
    assert run["train_summary"]["world_size"] == 2
    # Evaluated every 3 steps as well as before and after, across both processes.
    assert [e["step"] for e in run["train_summary"]["log_history"] if "eval_loss" in e] == [3, 6]
    assert all(m["before"] is not None and m["after"] is not None for m in run["evaluation"]["metrics"])


def test_crash_in_training_ends_in_a_failed_record(workspace: Path) -> None:
    # The sample the plan reads is fine; a row beyond it lacks the mapped column, so only training finds out.
    rows = [json.loads(line) for line in (workspace / "data" / "sft.jsonl").read_text().splitlines()]
    good = rows * 4  # > 256 sampled rows
    (workspace / "data" / "late-bad.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in good) + json.dumps({"text": "no messages here"}) + "\n")
    path = variant(workspace, "tiny-sft", "tiny-bad", replace=("data/sft.jsonl",
                                                                "data/late-bad.jsonl"))
    proc = runner(workspace, path)
    assert proc.returncode == 1
    run = last_run(workspace, "tiny-bad")
    assert run["state"] == "failed"
    assert run["failure"]["stage"] == "train" and run["failure"]["reason"]
    assert run["failure"]["log_tail"]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["failure"]["stage"] == "train"
    assert not (workspace / "models" / "tiny-bad").exists()


def test_killed_training_resumes_from_its_checkpoint_to_the_same_final_step(workspace: Path) -> None:
    (workspace / "recipes" / "tiny-resume.yaml").write_text(
        "base_model: ./tiny-model\nmethod: sft\ndataset: data/sft.jsonl\n"
        "training:\n  max_steps: 150\n  save_steps: 10\n  learning_rate: 1e-3\n  batch_size: 8\n  grad_accum: 1\n"
        "  max_length: 128\n  warmup_ratio: 0.0\nadapter:\n  lora: false\ngguf:\n  enabled: false\n")
    path = "recipes/tiny-resume.yaml"
    first = subprocess.Popen([sys.executable, "-m", "runner", "run", path, "--quiet"], cwd=workspace, env=job_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_dir = workspace / ".runner" / "hub" / "local" / "tiny-resume"
    deadline = time.monotonic() + RUN_TIMEOUT
    while not list(out_dir.glob("checkpoint-*/trainer_state.json")) and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert first.poll() is None, "training ended before it could be killed: " + first.stderr.read()[-2000:]
    cancel = subprocess.run([sys.executable, "-m", "runner", "cancel", "tiny-resume"], cwd=workspace, env=job_env(),
                            capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 0, cancel.stderr
    assert first.wait(timeout=RUN_TIMEOUT) == 1
    killed = last_run(workspace, "tiny-resume")
    assert killed["state"] == "canceled" and killed["failure"]["checkpoint_on_hub"] is True
    # Not resubmitted by a plain re-run; `--retry` is a new attempt that resumes.
    again = runner(workspace, path)
    assert again.returncode == 1 and "--retry" in again.stderr
    proc = runner(workspace, path, "--retry")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = last_run(workspace, "tiny-resume")
    assert resumed["retry_of"] == killed["run_id"] and resumed["attempt"] == 2 and resumed["resume"] is True
    assert resumed["state"] == "recorded" and resumed["train_summary"]["steps"] == 150
    log = (workspace / ".runner" / "jobs" / resumed["jobs"]["train"]["id"] / "log.txt").read_text()
    assert "resuming from" in log and "checkpoint-" in log


def test_a_run_carries_on_from_what_it_fixed_when_the_recipe_changes_then_goes(workspace: Path) -> None:
    """Later steps (GGUF, card, reconcile) read the run's own configs: an edited, then deleted, recipe changes nothing."""
    path = variant(workspace, "tiny-sft", "tiny-fixed", replace=("max_steps: 30", "max_steps: 4"))
    text = (workspace / path).read_text().replace("[Q4_K_M, IQ4_XS]", "[Q8_0]").replace("imatrix: true", "imatrix: false")
    (workspace / path).write_text(text)
    started = runner(workspace, path, "--detach")
    assert started.returncode == 0, started.stderr[-3000:]
    assert last_run(workspace, "tiny-fixed")["state"] == "training"
    (workspace / path).write_text(text.replace("max_steps: 4", "max_steps: 99").replace("[Q8_0]", "[F16]"))
    (workspace / path).unlink()
    proc = subprocess.run([sys.executable, "-m", "runner", "reconcile", "--wait"], cwd=workspace, env=job_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = last_run(workspace, "tiny-fixed")
    assert run["state"] == "recorded" and run["train_summary"]["steps"] == 4
    assert [f["quantization"] for f in run["gguf_summary"]["files"]] == ["Q8_0"]
    card = (workspace / "models" / "tiny-fixed" / "README.md").read_text()
    assert "| epochs / max steps | 1 / 4 |" in card and "tiny-fixed-Q8_0.gguf" in card


def test_cancel_needs_only_the_record(workspace: Path) -> None:
    """A run whose recipe file is gone is still canceled by name: cancel reads the run record, not the recipe."""
    path = variant(workspace, "tiny-sft", "tiny-gone", replace=("max_steps: 30", "max_steps: 500"))
    started = runner(workspace, path, "--detach")
    assert started.returncode == 0, started.stderr[-3000:]
    (workspace / path).unlink()
    proc = subprocess.run([sys.executable, "-m", "runner", "cancel", "tiny-gone"], cwd=workspace, env=job_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "canceled" in proc.stdout and "Traceback" not in proc.stderr
    run = last_run(workspace, "tiny-gone")
    assert run["state"] == "canceled" and run["failure"]["kind"] == "canceled"
