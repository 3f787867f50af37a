"""`runner history`: every recorded run's estimated against actual cost, and the planner's median error."""

from __future__ import annotations

import statistics
from pathlib import Path

from pydantic import BaseModel

from runner import ledger


class HistoryRow(BaseModel):
    """One run: what it was estimated to cost, what it cost, and on what."""

    recipe: str
    run_id: str
    state: str
    backend: str
    flavor: str | None
    estimated_usd: float | None
    max_usd: float | None
    actual_usd: float | None
    ratio: float | None  # actual / estimated, for a recorded run on billed hardware
    hours: float  # billed running time


class History(BaseModel):
    """Every run's row, and the planner's median estimate error over the runs that can be compared."""

    runs: list[HistoryRow]
    median_ratio: float | None
    runs_compared: int


def history(root: Path, names: list[str]) -> History:
    """Per run of these recipes: estimated vs actual cost, billed hours and flavor; and the median actual/estimate."""
    rows, ratios = [], []
    for name in names:
        for r in ledger.read(root, name).runs:
            est, actual = r.cost_usd.get("estimated"), r.cost_usd.get("actual")
            # Only a finished run on billed hardware says how far off the estimate was.
            ratio = actual / est if r.push and est and actual is not None and r.state == "recorded" else None
            if ratio is not None:
                ratios.append(ratio)
            rows.append(HistoryRow(
                recipe=name, run_id=r.run_id, state=r.state, backend=r.backend,
                flavor=r.jobs["train"].flavor if "train" in r.jobs else (r.plan.flavor if r.plan else None),
                estimated_usd=est, max_usd=r.cost_usd.get("max"), actual_usd=actual,
                ratio=round(ratio, 3) if ratio is not None else None,
                hours=round(r.billed_hours, 3)))
    median = round(statistics.median(ratios), 3) if ratios else None
    return History(runs=rows, median_ratio=median, runs_compared=len(ratios))


def text(found: History) -> list[str]:
    """The history as a table, one line a run, and the median line."""
    if not found.runs:
        return ["no runs recorded yet (runs/ is empty)"]

    def usd(v: float | None) -> str:
        return "-" if v is None else f"${v:.2f}"

    lines = [f"{'recipe':<20} {'run':<24} {'state':<10} {'flavor':<12} {'estimate':>9} {'actual':>9} {'ratio':>6} "
             f"{'hours':>6}"]
    for row in found.runs:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        lines.append(f"{row.recipe:<20} {row.run_id:<24} {row.state:<10} {str(row.flavor or '-'):<12} "
                     f"{usd(row.estimated_usd):>9} {usd(row.actual_usd):>9} {ratio:>6} {row.hours:>6.2f}")
    if found.median_ratio is None:
        lines.append("median actual/estimate: no finished Hugging Face Jobs run to compare yet")
    else:
        lines.append(f"median actual/estimate: {found.median_ratio:.2f} over {found.runs_compared} run(s)")
    return lines
