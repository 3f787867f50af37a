"""`runner run --backend local`, end to end and for real: train, GGUF, card, record.

One throwaway repository (a git checkout with the example recipes, data and the tiny
model) serves every run; each run is a real `runner run` subprocess that trains with
TRL and converts with llama.cpp on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytest.importorskip("trl")
pytest.importorskip("llama_cpp")

RUN_TIMEOUT = 900


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("workspace")
    for part in ("recipes", "rewards", "examples/data"):
        shutil.copytree(ROOT / part, repo / part)
    model = ROOT / "examples" / "tiny-model"
    if (model / "config.json").exists():
        shutil.copytree(model, repo / "examples" / "tiny-model")
    else:
        subprocess.run([sys.executable, str(ROOT / "examples" / "build_tiny_model.py"), "--out",
                        str(repo / "examples" / "tiny-model")], check=True, capture_output=True, timeout=300)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    return repo


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE"))}
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
             TOKENIZERS_PARALLELISM="false")
    return e


def runner(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner", "run", *args, "--quiet"], cwd=repo, env=env(),
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
    return run


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


def test_sft_lora(workspace: Path) -> None:
    path = variant(workspace, "tiny-sft", "tiny-sft-lora", replace=("  lora: false", "  lora: true\n  r: 8"))
    proc = runner(workspace, path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_recorded(workspace, "tiny-sft-lora", "sft", adapter=True)


def test_dpo(workspace: Path) -> None:
    proc = runner(workspace, "recipes/tiny-dpo.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_recorded(workspace, "tiny-dpo", "dpo", adapter=True)


def test_grpo_with_builtin_and_repo_local_rewards(workspace: Path) -> None:
    proc = runner(workspace, "recipes/tiny-grpo.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = assert_recorded(workspace, "tiny-grpo", "grpo", adapter=False)
    keys = {k for e in run["train_summary"]["log_history"] for k in e}
    assert any("contains_answer" in k for k in keys) and any("concise" in k for k in keys)


def test_two_process_data_parallel_sft(workspace: Path) -> None:
    path = variant(workspace, "tiny-sft", "tiny-sft-ddp", replace=("max_steps: 30", "max_steps: 6"))
    proc = runner(workspace, path, "--processes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = last_run(workspace, "tiny-sft-ddp")
    assert run["state"] == "recorded"
    assert run["train_summary"]["world_size"] == 2


def test_crash_in_training_ends_in_a_failed_record(workspace: Path) -> None:
    # The sample the plan reads is fine; a row beyond it lacks the mapped column, so only training finds out.
    rows = [json.loads(line) for line in (workspace / "examples" / "data" / "sft.jsonl").read_text().splitlines()]
    good = rows * 4  # > 256 sampled rows
    (workspace / "examples" / "data" / "late-bad.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in good) + json.dumps({"text": "no messages here"}) + "\n")
    path = variant(workspace, "tiny-sft", "tiny-bad", replace=("examples/data/sft.jsonl",
                                                                "examples/data/late-bad.jsonl"))
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
        "base_model: ./examples/tiny-model\nmethod: sft\ndataset: examples/data/sft.jsonl\n"
        "training:\n  max_steps: 150\n  save_steps: 10\n  learning_rate: 1e-3\n  batch_size: 8\n  grad_accum: 1\n"
        "  max_length: 128\n  warmup_ratio: 0.0\nadapter:\n  lora: false\ngguf:\n  enabled: false\n")
    path = "recipes/tiny-resume.yaml"
    first = subprocess.Popen([sys.executable, "-m", "runner", "run", path, "--quiet"], cwd=workspace, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_dir = workspace / ".runner" / "hub" / "local" / "tiny-resume"
    deadline = time.monotonic() + RUN_TIMEOUT
    while not list(out_dir.glob("checkpoint-*/trainer_state.json")) and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert first.poll() is None, "training ended before it could be killed: " + first.stderr.read()[-2000:]
    cancel = subprocess.run([sys.executable, "-m", "runner", "cancel", "tiny-resume"], cwd=workspace, env=env(),
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
