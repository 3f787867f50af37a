"""Benchmark: the GGUF job's wall time for 1 vs 3 quantizations, and with an importance matrix.

Runs runner/jobs/gguf.py exactly as `runner run` does (a subprocess with the project's
interpreter) on the tiny example model and its SFT data, best of N runs per case, and
reports total wall time, CPU time (the machine may be shared: CPU time is the steadier
figure) and the job's own seconds per stage.

    python benchmarks/bench_gguf.py [--repeat 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "1 quantization (Q4_K_M)": (["Q4_K_M"], False),
    "3 quantizations (Q4_K_M, Q5_K_M, Q8_0)": (["Q4_K_M", "Q5_K_M", "Q8_0"], False),
    "3 quantizations + imatrix": (["Q4_K_M", "Q5_K_M", "Q8_0"], True),
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(quants: list[str], imatrix: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = {"model_dir": str(ROOT / "examples" / "tiny-model"), "base_model": None, "name": "tiny",
                  "quantizations": quants, "imatrix": imatrix,
                  "dataset_name": str(ROOT / "examples" / "data" / "sft.jsonl"),
                  "model_id": "bench/tiny", "output_dir": f"{tmp}/out", "hub_repo": None,
                  "summary_path": f"{tmp}/summary.json"}
        Path(tmp, "config.json").write_text(json.dumps(config))
        env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        cpu, start = children_cpu(), time.monotonic()
        proc = subprocess.run([sys.executable, str(ROOT / "runner" / "jobs" / "gguf.py"), "--config",
                               f"{tmp}/config.json"], env=env, capture_output=True, text=True)
        wall, cpu = time.monotonic() - start, children_cpu() - cpu
        if proc.returncode != 0:
            raise SystemExit(f"the GGUF job failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        summary = json.loads(Path(tmp, "summary.json").read_text())
        return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stages_s": summary["seconds"],
                "bytes": {f["quantization"]: f["bytes"] for f in summary["files"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    for name, (quants, imatrix) in CASES.items():
        runs = [run_case(quants, imatrix) for _ in range(args.repeat)]
        results[name] = min(runs, key=lambda r: r["wall_s"])
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
        print(f"{name}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s ({stages})")


if __name__ == "__main__":
    main()
