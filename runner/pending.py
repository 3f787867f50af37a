"""`python -m runner.pending`: are there unfinished HF Jobs runs in runs/? Prints `pending=true|false`.

The scheduled reconcile asks this first, with the standard library only (no install, no token),
so a schedule with nothing to carry on costs seconds of runner time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TERMINAL = {"recorded", "rejected", "failed", "canceled"}


def pending(root: Path) -> bool:
    """True when an HF Jobs run in root/runs is not finished (or a record cannot be read: reconcile says why)."""
    for path in sorted((root / "runs").glob("*.json")):
        try:
            runs = json.loads(path.read_text(encoding="utf-8")).get("runs") or []
        except (OSError, ValueError, AttributeError):
            return True
        if any(isinstance(r, dict) and r.get("backend") == "hf" and r.get("state") not in TERMINAL for r in runs):
            return True
    return False


if __name__ == "__main__":
    print(f"pending={'true' if pending(Path.cwd()) else 'false'}")
    sys.exit(0)
