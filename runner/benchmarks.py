"""The lm-evaluation-harness task names a recipe may ask for, checked offline at validate time.

The list ships with the runner (runner/data/lm_eval_tasks.txt.gz, written from the locked lm-eval by
`python -m runner.benchmarks`), so a misspelt task fails `runner validate` instead of the paid job.
"""

from __future__ import annotations

import difflib
import gzip
from functools import cache
from pathlib import Path

TASKS_FILE = Path(__file__).with_name("data") / "lm_eval_tasks.txt.gz"


@cache
def known_tasks() -> tuple[str, frozenset[str]]:
    """The lm-eval version the list was written from, and its task names."""
    lines = gzip.decompress(TASKS_FILE.read_bytes()).decode().splitlines()
    return lines[0].removeprefix("# "), frozenset(line for line in lines[1:] if line)


def task_problem(name: str) -> str | None:
    """Why `name` is not a task lm-eval knows (with the nearest names), or None."""
    version, names = known_tasks()
    if name in names:
        return None
    near = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return f"'{name}' is not a task of {version}{hint}"


def write_tasks_file() -> int:
    """Regenerate the shipped list from the installed lm-eval (run after changing its version in the lock)."""
    from importlib.metadata import version

    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager().all_tasks)
    with gzip.GzipFile(TASKS_FILE, "wb", mtime=0) as f:  # mtime 0: the same bytes for the same list
        f.write((f"# lm-eval {version('lm-eval')}\n" + "\n".join(names) + "\n").encode())
    return len(names)


if __name__ == "__main__":
    print(f"{write_tasks_file()} tasks written to {TASKS_FILE}")
