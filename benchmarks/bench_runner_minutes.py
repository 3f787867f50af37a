"""Benchmark: GitHub runner minutes the `train` workflow holds for a 3-hour training job, before and after.

Before: the train job followed the job to its end (`runner run --backend hf`). After: it follows for
at most `--follow-for 15` minutes, then the scheduled reconcile (every 30 minutes) carries the run on.
The runner's real process runs against the Hub stand-in (tests/hubstub.py, real HfApi) on a compressed
clock: one simulated minute is `--scale` seconds of wall time, so the 3-hour job plays in 18 s at the
default scale. The figure is the wall time the `runner run` process held, converted back to minutes,
plus the fixed costs each workflow job pays (checkout, locked install: SETUP_MINUTES each; GitHub bills
every started minute per job) and, after, one billed minute per reconcile check while the job runs.

    python benchmarks/bench_runner_minutes.py [--hours 3] [--scale 0.1] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import gguf_summary_json, train_summary_json  # noqa: E402
from hubstub import HubStub, JobScript  # noqa: E402

from runner.plan import FINISH_MINUTES, FOLLOW_MINUTES, RECONCILE_INTERVAL, SETUP_MINUTES  # noqa: E402

SUMMARY = train_summary_json()  # every key the job script writes: the runner reads summaries whole
GGUF = gguf_summary_json([])


def workspace(tmp: Path) -> Path:
    repo = tmp / "ws"
    for part in ("recipes", "rewards", "data", "tiny-model"):  # examples/ is a repository root of its own
        shutil.copytree(ROOT / "examples" / part, repo / part)
    defaults = repo / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "namespace: alice\n")
    git = ["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b.invalid"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    return repo


def held_seconds(hours: float, scale: float, follow: float | None) -> float:
    """Wall seconds one `runner run` process holds the runner for a job of `hours` on the compressed clock."""
    with tempfile.TemporaryDirectory() as tmp, HubStub() as hub:
        ws = workspace(Path(tmp))
        hub.state.job_scripts += [JobScript(summary=SUMMARY, running=hours * 60 * scale, logs=["starting"]),
                                  JobScript(summary=GGUF)]
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "bench-not-a-token", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HOME": str(Path(tmp) / "hf")}
        cmd = [sys.executable, "-m", "runner", "run", "recipes/tiny-sft.yaml", "--backend", "hf", "--quiet"]
        if follow is not None:
            cmd += ["--follow-for", str(follow * scale / 60)]  # simulated minutes -> real minutes
        start = time.monotonic()
        subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=hours * 3600 * scale + 600)
        held = time.monotonic() - start
        for job in hub.state.jobs.values():
            job.cancel.set()
    return held


def held_minutes(hours: float, scale: float, follow: float | None, overhead: float) -> float:
    """Simulated minutes held: the compressed part scaled back, the process's own start-up at real speed."""
    return max(held_seconds(hours, scale, follow) - overhead, 0.0) / scale + overhead / 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0, help="simulated training length")
    parser.add_argument("--scale", type=float, default=0.1, help="wall seconds per simulated minute")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    job_minutes = args.hours * 60
    # The runner's own start-up, planning, submission (and, following to the end, the GGUF job and the card)
    # take real seconds that the compressed clock must not inflate: measured alone, counted at real speed.
    overhead = held_seconds(0.0, args.scale, None)
    submit_only = held_seconds(args.hours, args.scale, 0.0)
    before_held = held_minutes(args.hours, args.scale, None, overhead)
    after_held = held_minutes(args.hours, args.scale, FOLLOW_MINUTES, submit_only)
    # Before: one job that follows to the end (it also committed and commented from that job).
    before = SETUP_MINUTES + math.ceil(before_held)
    # After: the train job (set-up + bounded follow), the record job, a billed minute per reconcile check
    # while the job runs, and the reconcile that converts, records and commits.
    checks = math.ceil(max(job_minutes - FOLLOW_MINUTES, 0) / RECONCILE_INTERVAL)
    after = SETUP_MINUTES + math.ceil(after_held) + 1 + checks + FINISH_MINUTES
    result = {"training_hours": args.hours, "process_overhead_seconds": round(overhead, 1),
              "submit_only_seconds": round(submit_only, 1), "before": {"held_minutes": round(before_held, 1), "runner_minutes": before},
              "after": {"held_minutes": round(after_held, 1), "reconcile_checks": checks, "runner_minutes": after}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"a {args.hours:g}-hour training job (clock: {args.scale:g} s per simulated minute; "
              f"the runner's own work, counted at real speed: {overhead:.1f} s to the card, {submit_only:.1f} s to submit)")
        print(f"  before: train job held {before_held:.0f} min -> {before} runner minutes")
        print(f"  after:  train job held {after_held:.0f} min, {checks} reconcile checks -> {after} runner minutes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
