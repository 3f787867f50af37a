"""Benchmark: the wall time evaluation adds, measured on the example run and estimated for Qwen3-0.6B.

1. The tiny SFT example (`examples/recipes/tiny-sft.yaml`, GGUF off) trained for real, twice in a
   throwaway copy of the repo: with the default evaluation (held-out loss before and after,
   3 greedy samples from each model) and with `dataset.eval_fraction: 0` (no evaluation).
   Reports the training job's wall time for each and the evaluation's own time as the job
   measured it (the difference of two runs is noisy on a shared machine; the job's own
   clock is not).
2. The planner's estimate for Qwen/Qwen3-0.6B SFT on a 10,000-row chat dataset, on the
   flavor it picks and on a fixed one: evaluation off, the default, and with the
   `gsm8k` and `ifeval` benchmark tasks at 100 samples each.

    python benchmarks/bench_eval.py [--json] [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             PYTHONPATH=str(ROOT))
    e.pop("HF_TOKEN", None)
    return e


def workspace(tmp: Path) -> Path:
    repo = tmp / "repo"
    for part in ("recipes", "rewards", "data", "tiny-model"):  # examples/ is a repository root of its own
        shutil.copytree(ROOT / "examples" / part, repo / part)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def run_example(repo: Path, name: str, dataset_lines: str) -> dict:
    text = (ROOT / "examples" / "recipes" / "tiny-sft.yaml").read_text().replace("name: tiny-sft", f"name: {name}")
    text = text.replace("  path: data/sft.jsonl\n", dataset_lines)
    text = text.replace("gguf:\n  quantizations: [Q4_K_M]\n", "gguf:\n  enabled: false\n")
    (repo / "recipes" / f"{name}.yaml").write_text(text)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runner", "run", f"recipes/{name}.yaml", "--quiet"], cwd=repo,
                          env=env(), capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    run = json.loads((repo / "runs" / f"{name}.json").read_text())["runs"][-1]
    ev = run.get("evaluation") or {}
    return {"run_wall_s": round(wall, 1), "train_job_s": run["seconds"].get("train"),
            "train_runtime_s": round(run["train_summary"]["train_runtime_s"], 2),
            "evaluation_s": ev.get("seconds"), "held_out_rows": ev.get("rows", 0),
            "metrics": {m["name"]: [m["before"], m["after"]] for m in ev.get("metrics", [])}}


def planned(tasks: list[str] | None, fraction: float | None, hardware: str) -> dict:
    from runner import plan, recipe
    from runner.formats import MethodVerdict
    from runner.hardware import BUILTIN_FLAVORS
    from runner.modelfacts import ModelFacts
    from runner.dataset import DatasetReport

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "recipes").mkdir()
        (root / "data.jsonl").write_text("{}\n")
        dataset = "dataset:\n  path: data.jsonl\n" + (f"  eval_fraction: {fraction}\n" if fraction is not None else "")
        evaluation = f"evaluation:\n  tasks: [{', '.join(tasks)}]\n  task_limit: 100\n" if tasks else ""
        (root / "recipes" / "q.yaml").write_text(
            f"base_model: Qwen/Qwen3-0.6B\nmethod: sft\n{dataset}{evaluation}hardware: {hardware}\n"
            "training:\n  epochs: 1\n  max_length: 1024\nbudget_usd: 100\n")
        loaded = recipe.load(root / "recipes" / "q.yaml", root=root)
    row = {"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "y" * 1200}]}
    report = DatasetReport(dataset="data.jsonl", split="train", rows=10_000, rows_exact=True, columns=["messages"],
                           sample=[row] * 50, sample_size=50, source="local",
                           methods={"sft": MethodVerdict(status="ready", reason="messages")})
    facts = ModelFacts(model="Qwen/Qwen3-0.6B", params=751_632_384, source="table", hidden_size=1024,
                       num_layers=28, vocab_size=151_936)
    p = plan.plan(loaded, report, facts, BUILTIN_FLAVORS)
    return {"flavor": p.flavor, "hours": p.hours, "eval_s": round(p.eval_hours * 3600, 1), "eval_rows": p.eval_rows,
            "train_cost_usd": p.train_cost_usd}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-run", action="store_true", help="only the planner's estimates")
    args = parser.parse_args()
    out: dict = {}
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as tmp:
            repo = workspace(Path(tmp))
            out["example_without_eval"] = run_example(repo, "bench-noeval",
                                                      "  path: data/sft.jsonl\n  eval_fraction: 0\n")
            out["example_with_eval"] = run_example(repo, "bench-eval", "  path: data/sft.jsonl\n")
    out["qwen3_0_6b"] = {f"{hardware} {label}": planned(tasks, fraction, hardware)
                         for hardware in ("auto", "l4x1")
                         for label, tasks, fraction in (("off", None, 0), ("default", None, None),
                                                        ("gsm8k+ifeval x100", ["gsm8k", "ifeval"], None))}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if "example_with_eval" in out:
        a, b = out["example_without_eval"], out["example_with_eval"]
        print("tiny-sft example (30 steps, GGUF off):")
        print(f"  without evaluation: train job {a['train_job_s']} s (trainer {a['train_runtime_s']} s), "
              f"whole run {a['run_wall_s']} s")
        print(f"  with evaluation:    train job {b['train_job_s']} s (trainer {b['train_runtime_s']} s), "
              f"whole run {b['run_wall_s']} s; evaluation itself {b['evaluation_s']} s on {b['held_out_rows']} rows")
        print(f"  metrics: {b['metrics']}")
    print("Qwen3-0.6B SFT, 10,000 rows, planner estimate:")
    for label, p in out["qwen3_0_6b"].items():
        print(f"  {label:28} {p['flavor']:10} total {p['hours'] * 60:6.1f} min, evaluation {p['eval_s']:6.1f} s "
              f"({p['eval_rows']} held-out rows), training job ${p['train_cost_usd']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
