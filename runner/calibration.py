"""Past estimates against what the Hub billed: shown in every plan, and scaling it once enough runs compare."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel

CALIBRATION_MIN_RUNS = 3  # comparable finished runs before past errors scale the estimate
CALIBRATION_BOUNDS = (0.5, 3.0)  # the scale applied, whatever past records say


class PastRun(BaseModel):
    """A finished run on HF Jobs: what the plan said and what the Hub billed."""

    method: str
    accelerator: str | None  # the training flavor's family (A10G, H200, ...; None for CPU)
    estimated_hours: float
    actual_hours: float
    estimated_usd: float
    actual_usd: float


class Calibration(BaseModel):
    """How far past estimates were from actual time and cost, and whether this plan was scaled by it."""

    runs: int  # recorded runs compared (all of them)
    cost_ratio: float  # median actual / estimated cost
    time_ratio: float  # median actual / estimated training time
    comparable: int  # of which same method and flavor family as this plan
    applied: float | None  # the factor the training time was scaled by (None: too few comparable runs)


def calibration(history: Sequence[PastRun], method: str, accelerator: str | None) -> Calibration | None:
    """Median errors of past estimates; a scale factor once CALIBRATION_MIN_RUNS comparable runs exist."""
    usable = [h for h in history if h.estimated_usd > 0 and h.estimated_hours > 0]
    if not usable:
        return None
    same = [h for h in usable if h.method == method and h.accelerator == accelerator]
    factor = statistics.median(h.actual_hours / h.estimated_hours for h in same) \
        if len(same) >= CALIBRATION_MIN_RUNS else None
    if factor is not None:  # records are editable data: they may nudge an estimate, never rule it
        factor = min(max(factor, CALIBRATION_BOUNDS[0]), CALIBRATION_BOUNDS[1])
    return Calibration(runs=len(usable), cost_ratio=round(statistics.median(h.actual_usd / h.estimated_usd
                                                                             for h in usable), 3),
                       time_ratio=round(statistics.median(h.actual_hours / h.estimated_hours for h in usable), 3),
                       comparable=len(same), applied=round(factor, 3) if factor else None)
