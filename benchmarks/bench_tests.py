"""Benchmark: wall time of the template's own test tiers on this machine.

Runs the fast tier (`pytest -m "not slow"`, the inner loop) and then the whole suite, each in a
fresh process with the project's pytest settings (workers from pyproject's addopts), and prints
wall seconds, CPU seconds (this process's children) and the machine:

    python benchmarks/bench_tests.py [--fast-only] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tier(name: str, extra: list[str]) -> tuple[float, float, str]:
    """One pytest run: wall seconds, CPU seconds, and its last line (the pass count)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    if proc.returncode:
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        sys.exit("\n".join([f"{name}: pytest exited {proc.returncode}: {last}", *failed]))
    return wall, cpu, last


def main() -> None:
    """Time the fast tier, then (unless --fast-only) the whole suite."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast-only", action="store_true", help="time only the fast tier")
    ap.add_argument("--workers", help="pytest-xdist workers (-n), instead of pyproject's")
    args = ap.parse_args()
    extra = ["-n", args.workers] if args.workers else []
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, Python {sys.version.split()[0]}")
    runs = [("fast tier", ["-m", "not slow", *extra])] + ([] if args.fast_only else [("whole suite", extra)])
    for name, tier_args in runs:
        wall, cpu, last = tier(name, tier_args)
        print(f"{name:12} {wall:7.1f} s wall  {cpu:7.1f} s CPU  {last}")


if __name__ == "__main__":
    main()
