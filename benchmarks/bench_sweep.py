"""Benchmark: what a 4-trial sweep adds over one run, planned (HF Jobs prices) and measured (local backend).

In a temporary copy of `examples/`, plans and runs `recipes/tiny-sft.yaml` once, then the same recipe with a
2x2 `sweep:` grid (learning rate x seed, winner by held-out eval loss), and prints both side by side:

    python benchmarks/bench_sweep.py [--json]

The planned figures are what the pull request's comment would say for the default hardware; the measured
ones are wall seconds of `runner run` on this machine (tiny model, CPU), where trials train one at a time.
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
HELD_OUT = ("  path: data/sft.jsonl\n", "  path: data/sft.jsonl\n  split: train[:90%]\n  eval_split: train[90%:]\n")
SWEEP = """
sweep:
  grid:
    training.learning_rate: [5e-4, 1e-3]
    training.seed: [1, 2]
  metric: eval_loss
"""


def runner(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """`python -m runner ARGS` in `cwd`: wall seconds and the finished process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    return time.perf_counter() - start, proc


def planned(cwd: Path, recipe: str) -> dict[str, float]:
    """Estimated and worst-case HF Jobs dollars of a recipe (a sweep: its trials and one conversion)."""
    _, proc = runner(["plan", recipe, "--json"], cwd)
    doc = json.loads(proc.stdout)
    sweeps = list(doc["sweeps"].values())
    if sweeps:
        return {"estimate_usd": sweeps[0]["estimate_usd"], "worst_usd": sweeps[0]["worst_usd"],
                "trials": len(sweeps[0]["trials"])}
    (p,) = doc["plans"]
    return {"estimate_usd": p["cost_usd"], "worst_usd": p["max_cost_usd"], "trials": 1}


def main() -> int:
    """Plan and run one recipe and its 4-trial sweep; print the difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, object] = {"machine": f"{os.cpu_count()} cores, {os.uname().machine}, no GPU"}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "examples"
        shutil.copytree(ROOT / "examples", repo)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        one = repo / "recipes" / "tiny-sft.yaml"
        one.write_text(one.read_text().replace(*HELD_OUT))  # both evaluate on the same held-out rows
        sweep = repo / "recipes" / "tiny-sft-sweep.yaml"
        sweep.write_text(one.read_text().replace("name: tiny-sft", "name: tiny-sft-sweep") + SWEEP)
        for label, recipe in (("one_run", one), ("sweep_4", sweep)):
            rel = str(recipe.relative_to(repo))
            plan = planned(repo, rel)
            seconds, proc = runner(["run", rel, "--quiet"], repo)
            results[label] = {"planned": plan, "measured_seconds": round(seconds, 1), "exit_code": proc.returncode,
                              "outcome": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""}
    one_run, sweep_4 = results["one_run"], results["sweep_4"]
    assert isinstance(one_run, dict) and isinstance(sweep_4, dict)
    results["sweep_adds"] = {
        "seconds": round(sweep_4["measured_seconds"] - one_run["measured_seconds"], 1),
        "estimate_usd": round(sweep_4["planned"]["estimate_usd"] - one_run["planned"]["estimate_usd"], 2),
        "worst_usd": round(sweep_4["planned"]["worst_usd"] - one_run["planned"]["worst_usd"], 2)}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0 if one_run["exit_code"] == 0 and sweep_4["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
