"""The plan's spend gate: each job's worst case (its whole timeout, billed) within the recipe's budget, the
budget within the repository's cap, and the recipes of one merge within `max_total_usd` together."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel

from runner.estimate import billed
from runner.hardware import HardwareFlavor

# A timeout the spend gate lowers to fit the budget must still leave the estimate this much room.
GATE_MARGIN = 1.25
MIN_TIMEOUT = 300  # the Hub's and the recipe's floor


class PlannedJob(BaseModel):
    """One job the run will submit, exactly as the pipeline submits it."""

    stage: Literal["train", "gguf"]
    flavor: str
    timeout_seconds: int
    usd_per_hour: float
    hours: float
    cost_usd: float  # the estimate
    max_cost_usd: float  # the worst case: the whole timeout, billed


def planned_job(stage: Literal["train", "gguf"], flavor: HardwareFlavor, hours: float, timeout: int) -> PlannedJob:
    """The job on `flavor` for `hours`, with its estimate and its worst case."""
    return PlannedJob(stage=stage, flavor=flavor.name, timeout_seconds=timeout, usd_per_hour=flavor.usd_per_hour,
                      hours=hours, cost_usd=round(billed(hours, flavor.usd_per_hour), 4),
                      max_cost_usd=round(billed(timeout / 3600, flavor.usd_per_hour), 4))


def _with_timeout(job: PlannedJob, timeout: int) -> PlannedJob:
    return job.model_copy(update={"timeout_seconds": timeout,
                                  "max_cost_usd": round(billed(timeout / 3600, job.usd_per_hour), 4)})


class Gated(BaseModel):
    """The spend gate's verdict on one run's jobs."""

    jobs: list[PlannedJob]  # as submitted: the training timeout may be lowered to fit the budget
    refusal: str | None = None  # why nothing would be submitted (None: the money is within bounds)
    notes: list[str] = []  # what the gate changed


def spend_gate(jobs: list[PlannedJob], budget: float | None, cap: float | None) -> Gated:
    """Every job's worst case (timeout x price) within the budget, the budget within the cap.

    Where the worst case is over the budget, the training timeout is lowered to what the budget allows,
    as long as that leaves the estimate GATE_MARGIN of room; otherwise the run is refused with the numbers.
    """
    if budget is None:
        return Gated(jobs=jobs, refusal="no budget: set `budget_usd` in the recipe or in recipes/_defaults.yaml; "
                                        "nothing is submitted to Hugging Face Jobs without one")
    if cap is not None and budget > cap:
        return Gated(jobs=jobs, refusal=f"budget_usd ${budget:.2f} is above the repository cap max_budget_usd "
                                        f"${cap:.2f}")
    estimate = sum(j.cost_usd for j in jobs)
    if estimate > budget:
        return Gated(jobs=jobs, refusal=f"over budget: estimated ${estimate:.2f} exceeds budget_usd ${budget:.2f}")
    worst = sum(j.max_cost_usd for j in jobs)
    if worst <= budget:
        return Gated(jobs=jobs)
    train = next((j for j in jobs if j.stage == "train"), None)
    others = sum(j.max_cost_usd for j in jobs if j is not train)
    if train is None or train.usd_per_hour <= 0:
        return Gated(jobs=jobs, refusal=f"worst case ${worst:.2f} exceeds budget_usd ${budget:.2f}")
    allowed = int((budget - others) * 60 / train.usd_per_hour) * 60  # whole billed minutes
    needed = max(math.ceil(train.hours * 3600 * GATE_MARGIN), MIN_TIMEOUT)
    if allowed >= needed:
        lowered = _with_timeout(train, min(allowed, train.timeout_seconds))
        note = (f"timeout lowered from {train.timeout_seconds // 60} to {lowered.timeout_seconds // 60} min so the "
                f"worst case (${lowered.max_cost_usd + others:.2f}) stays within budget_usd ${budget:.2f}")
        return Gated(jobs=[lowered if j is train else j for j in jobs], notes=[note])
    floor = billed(needed / 3600, train.usd_per_hour) + others
    return Gated(jobs=jobs, refusal=(
        f"worst case ${worst:.2f} ({train.flavor} ${train.usd_per_hour:g}/h for the whole "
        f"{train.timeout_seconds // 60}-min timeout{' + GGUF' if others else ''}) exceeds budget_usd ${budget:.2f}, "
        f"and the budget leaves no timeout with room for the estimated {train.hours * 60:.0f} min: raise budget_usd "
        f"to at least ${floor:.2f} or shrink the run"))


def merge_refusal(worst_cases: Mapping[str, float], cap: float | None) -> str | None:
    """Why the recipes of one merge are refused together: their summed worst case above `max_total_usd`."""
    total = round(sum(worst_cases.values()), 2)
    if cap is None or total <= cap:
        return None
    each = ", ".join(f"{name} ${usd:.2f}" for name, usd in worst_cases.items())
    return (f"recipes/_defaults.yaml: max_total_usd: the {len(worst_cases)} recipes of this pull request may cost "
            f"${total:.2f} together in the worst case ({each}), above max_total_usd ${cap:.2f}; lower their budgets "
            "or timeouts, split the pull request, or raise max_total_usd")
