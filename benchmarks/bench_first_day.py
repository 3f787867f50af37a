"""Benchmark: a newcomer's first day, timed.

1. Clones this repository (its committed HEAD) into a temporary folder, makes a fresh
   virtualenv there, and runs the README's two set-up commands exactly as written (the
   lines after `<!-- main-command -->` and `<!-- test-command -->`), timing each.
2. Says how many minutes the `ci` workflow costs a fork's recipe-only pull request: it
   matches a pull request that adds `recipes/my-model.yaml` against the workflow's path
   filters (zero when the template's tests do not run).

    python benchmarks/bench_first_day.py [--skip-tests] [--json]

The test command takes most of the time (the whole suite); `--skip-tests` times the main
command alone. Pip's wheel cache is used as it is: say whether it was warm when you report.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE_ONLY_PR = ["recipes/my-model.yaml"]


def readme_command(marker: str, readme: Path) -> str:
    """The first non-fence line after an HTML marker in the README."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    at = lines.index(f"<!-- {marker} -->")
    return next(line for line in lines[at + 1:] if line.strip() and not line.startswith("```"))


def timed(cmd: str, cwd: Path, venv: Path) -> tuple[float, int]:
    """Run one shell command inside the venv; wall seconds and exit code."""
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(venv), PIP_QUIET="1")
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    return time.perf_counter() - start, proc.returncode


def ci_runs_for(changed: list[str]) -> bool:
    """Whether the `ci` workflow's pull_request trigger fires for these changed paths."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    trigger = workflow.get("on", workflow.get(True))["pull_request"] or {}
    paths = trigger.get("paths")
    if paths is None:
        return True
    return any(fnmatch.fnmatch(f, p) for f in changed for p in paths)  # fnmatch: `*` crosses folders, a superset


def main() -> int:
    """Time the two README commands in a fresh clone and report the ci minutes of a recipe-only PR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true", help="time the main command only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, object] = {"ci_runs_on_recipe_only_pr": ci_runs_for(RECIPE_ONLY_PR)}
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        venv = clone / ".venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "pip==26.3"], check=True)
        markers = ["main-command"] + ([] if args.skip_tests else ["test-command"])
        for marker in markers:
            seconds, code = timed(readme_command(marker, clone / "README.md"), clone, venv)
            results[marker] = {"seconds": round(seconds, 1), "exit_code": code}
    results["machine"] = f"{os.cpu_count()} cores, {os.uname().machine}"
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
