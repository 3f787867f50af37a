"""Benchmark: inspect and plan cost O(sample), not O(dataset); and CLI start-up time.

Times `runner inspect` and `runner plan` as real subprocesses (what CI pays) on a
1,000-row and a 500,000-row local JSONL, best of N runs, and reports the ratio
(the target is under 3x). Also times start-up (`runner --version`, `runner validate`).

    python benchmarks/bench_inspect_plan.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROW = {"messages": [{"role": "user", "content": "What is 12 + 30? Please answer briefly."},
                    {"role": "assistant", "content": "12 + 30 = 42."}]}


def make_repo(root: Path, rows: int) -> None:
    (root / "recipes").mkdir(parents=True)
    (root / "data").mkdir()
    line = (json.dumps(ROW) + "\n").encode()
    with (root / "data" / "sft.jsonl").open("wb") as f:
        chunk = line * 10_000
        for _ in range(rows // 10_000):
            f.write(chunk)
        f.write(line * (rows % 10_000))
    (root / "recipes" / "bench.yaml").write_text(
        "name: bench\nbase_model: Qwen/Qwen3-0.6B\nmethod: sft\ndataset: data/sft.jsonl\nbudget_usd: 5\n"
        "output:\n  repo: acme/bench\n")


def best_of(cmd: list[str], cwd: Path, repeat: int) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("HF_TOKEN", None)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runner = [sys.executable, "-m", "runner"]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (1_000, 500_000):
            repo = Path(tmp) / f"r{rows}"
            make_repo(repo, rows)
            size_mb = (repo / "data" / "sft.jsonl").stat().st_size / 1e6
            results[f"inspect_{rows}"] = best_of(runner + ["inspect", "data/sft.jsonl", "--json"], repo, args.repeat)
            results[f"plan_{rows}"] = best_of(runner + ["plan", "recipes/bench.yaml", "--json"], repo, args.repeat)
            results[f"file_mb_{rows}"] = round(size_mb, 1)
        repo = Path(tmp) / "r1000"
        results["startup_version"] = best_of(runner + ["--version"], repo, args.repeat)
        results["startup_validate"] = best_of(runner + ["validate", "recipes/bench.yaml"], repo, args.repeat)
    results["inspect_ratio"] = results["inspect_500000"] / results["inspect_1000"]
    results["plan_ratio"] = results["plan_500000"] / results["plan_1000"]
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in results.items()}))
        return
    print(f"{'measure':<26}{'1k rows':>10}{'500k rows':>12}{'ratio':>8}")
    for verb in ("inspect", "plan"):
        print(f"{'runner ' + verb + ' (s)':<26}{results[verb + '_1000']:>10.3f}{results[verb + '_500000']:>12.3f}"
              f"{results[verb + '_ratio']:>8.2f}")
    print(f"{'file size (MB)':<26}{results['file_mb_1000']:>10}{results['file_mb_500000']:>12}")
    print(f"start-up: runner --version {results['startup_version']:.3f} s, "
          f"runner validate {results['startup_validate']:.3f} s")


if __name__ == "__main__":
    main()
