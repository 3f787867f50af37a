"""`python -m runner.pending`: which recipes have unfinished HF Jobs runs in runs/? Prints `names=[...]`
(a JSON list of recipe names: the reconcile workflow's matrix) and `pending=true|false`.

The scheduled reconcile asks this first, with the standard library only (no install, no token),
so a schedule with nothing to carry on costs seconds of runner time.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TERMINAL = {"recorded", "rejected", "failed", "canceled"}
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # recipe names; no other file stem names a recipe


def unfinished(root: Path) -> list[str]:
    """Recipe names with an HF Jobs run in root/runs that is not finished (or whose record cannot be read:
    reconcile says why)."""
    names = []
    for path in sorted((root / "runs").glob("*.json")):
        if not SLUG.fullmatch(path.stem):
            continue
        try:
            runs = json.loads(path.read_text(encoding="utf-8")).get("runs") or []
        except (OSError, ValueError, AttributeError):
            names.append(path.stem)
            continue
        # By name, not runner.backends.engine(...).bills: this runs before any install (standard library only).
        if any(isinstance(r, dict) and r.get("backend") == "hf" and r.get("state") not in TERMINAL for r in runs):
            names.append(path.stem)
    return names


def pending(root: Path) -> bool:
    """True when an HF Jobs run in root/runs is not finished (or a record cannot be read)."""
    return bool(unfinished(root))


if __name__ == "__main__":
    found = unfinished(Path.cwd())
    print(f"names={json.dumps(found)}")
    print(f"pending={'true' if found else 'false'}")
    sys.exit(0)
