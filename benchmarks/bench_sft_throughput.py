"""Benchmark: our SFT configuration against the plain trainer-skill settings, side by side.

Same tiny model, same mixed-length chat data, same steps, batch and learning rate.
"Plain" is the Hugging Face trainer skill's SFT example: SFTTrainer with default
settings (no packing, every batch padded to its longest row, random order). "Ours" is
runner/jobs/train.py exactly as `runner run` launches it. The figure of merit is
effective (non-padding) training tokens per second; peak memory is the process's
maximum resident set. Also reports the wall time per stage of the whole local pipeline
(`runner run examples/recipes/tiny-sft.yaml`).

    python benchmarks/bench_sft_throughput.py [--steps 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "tiny-model"
WORDS = "the a model learns to answer short questions about numbers and words with care".split()

PLAIN = r"""
import json, resource, sys
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer
cfg = json.loads(sys.argv[1])
data = load_dataset("json", data_files=cfg["data"], split="train")
args = SFTConfig(output_dir=cfg["out"], max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch"],
                 gradient_accumulation_steps=1, learning_rate=cfg["lr"], max_length=cfg["max_length"],
                 logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                 include_num_input_tokens_seen="non_padding", seed=42)
trainer = SFTTrainer(model=cfg["model"], args=args, train_dataset=data)
out = trainer.train()
print(json.dumps({"tokens": int(trainer.state.num_input_tokens_seen), "runtime": out.metrics["train_runtime"],
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("HF_TOKEN", None)
    return e


def make_data(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.choice([3, 5, 8, 40, 90])))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 4, 10, 60])))
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")


def run_plain(tmp: Path, data: Path, steps: int, batch: int) -> dict:
    cfg = {"data": str(data), "out": str(tmp / "plain"), "steps": steps, "batch": batch, "lr": 1e-3,
           "max_length": 512, "model": str(MODEL)}
    proc = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(cfg)], env=env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"plain run failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"tokens": r["tokens"], "seconds": r["runtime"], "peak_bytes": r["peak_rss"]}


def run_ours(tmp: Path, data: Path, steps: int, batch: int) -> dict:
    from runner.jobspec import SFTJobConfig

    config = SFTJobConfig(  # the job config as the runner writes it (runner/jobspec.py)
        run_id="bench", model_name_or_path=str(MODEL), dataset_name=str(data), num_train_epochs=1, max_steps=steps,
        learning_rate=1e-3, lr_scheduler_type="linear", warmup_steps=0.0, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, max_length=512, packing_mode=False, seed=42, gradient_checkpointing_mode=True,
        output_dir=str(tmp / "ours"), project="bench", summary_path=str(tmp / "ours.json"),
    ).model_dump(mode="json")
    (tmp / "ours-config.json").write_text(json.dumps(config))
    e = env()
    e["TRACKIO_DIR"] = str(tmp / "trackio")
    proc = subprocess.run([sys.executable, str(ROOT / "runner" / "jobs" / "train.py"), "--config",
                           str(tmp / "ours-config.json")], env=e, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"our run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    s = json.loads((tmp / "ours.json").read_text())
    return {"tokens": s["tokens_seen"], "seconds": s["train_runtime_s"], "peak_bytes": s["peak_memory_bytes"]}


def pipeline_stages(tmp: Path) -> dict:
    repo = tmp / "repo"
    for part in ("recipes", "rewards", "data", "tiny-model"):  # examples/ is a repository root of its own
        shutil.copytree(ROOT / "examples" / part, repo / part)
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "recipes/tiny-sft.yaml", "--quiet"], cwd=repo,
                          env=env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"pipeline failed:\n{proc.stderr[-2000:]}")
    run = json.loads((repo / "runs" / "tiny-sft.json").read_text())["runs"][-1]
    return run["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = tmp / "mixed.jsonl"
        make_data(data, 1000)
        plain = run_plain(tmp, data, args.steps, args.batch)
        ours = run_ours(tmp, data, args.steps, args.batch)
        stages = pipeline_stages(tmp)
    for r in (plain, ours):
        r["tokens_per_second"] = r["tokens"] / r["seconds"]
    result = {"plain": plain, "ours": ours, "ratio": ours["tokens_per_second"] / plain["tokens_per_second"],
              "pipeline_seconds": stages}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'config':<8}{'eff. tokens':>12}{'train s':>9}{'eff. tok/s':>12}{'peak MiB':>10}")
    for name in ("plain", "ours"):
        r = result[name]
        print(f"{name:<8}{r['tokens']:>12}{r['seconds']:>9.2f}{r['tokens_per_second']:>12.0f}"
              f"{r['peak_bytes'] / 2**20:>10.0f}")
    print(f"ratio ours/plain: {result['ratio']:.2f}x")
    print("pipeline wall time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
