"""The repository as git knows it: the commit checked out, whether a commit is on a branch, and a
snapshot of the files at a commit (read as data, never executed)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def on_branch(root: Path, commit: str | None, ref: str) -> bool:
    """Whether `commit` is `ref` or one of its ancestors (git merge-base --is-ancestor)."""
    if not commit or not all(c in "0123456789abcdef" for c in commit):
        return False
    try:
        out = subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", commit, ref],
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def snapshot(root: Path, commit: str | None) -> Path | None:
    """The repository as of `commit` (git archive), where a reconcile reads the recipe and what it ships."""
    if not commit or not all(c in "0123456789abcdef" for c in commit):
        return None
    target = root / ".runner" / "snapshots" / commit
    if target.is_dir():
        return target
    tmp = target.with_name(commit + ".tmp")
    try:
        out = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", commit], capture_output=True,
                             timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    import io
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
            tar.extractall(tmp, filter="data")  # refuses links out of the tree and absolute paths
    except (tarfile.TarError, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    tmp.rename(target)
    return target
