"""Quality gates: whether a trained run publishes as the recipe's current model, decided over its numbers.

`evaluation.gate` in a recipe says what must hold (the eval loss dropped, no benchmark task fell more than
allowed, the run beats the current model). The verdict is pure: before/after metrics and the current model's
metrics in, pass or `rejected` with the numbers out. A rejected run keeps its weights private and buys no GGUF.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runner.evaluation import Evaluation


class Gate(BaseModel):
    """`evaluation.gate`: what a run must show to become the recipe's current model."""

    model_config = ConfigDict(extra="forbid")

    eval_loss: Literal["must_drop"] | None = Field(None, description="must_drop: the held-out loss after training "
                                                   "must be below the base model's")
    max_task_drop: dict[str, float] = Field(default_factory=dict, description="benchmark task -> the most its score "
                                            "may fall below the current model's (or the base model's), in the "
                                            "score's units")
    beat_current: bool = Field(False, description="the run (a sweep's winner) must beat the current model on the "
                                                  "sweep's metric (eval_loss without a sweep)")


class Scores(BaseModel):
    """A model's numbers by name: held-out metrics (eval_loss, ...) and benchmark task scores."""

    values: dict[str, float] = Field(default_factory=dict)

    def get(self, name: str) -> float | None:
        v = self.values.get(name)
        return v if v is not None and math.isfinite(v) else None


def scores(evaluation: Evaluation, *, after: bool = True) -> Scores:
    """The after (or before) training numbers of an evaluation: metrics by name, benchmark scores by task."""
    values = {m.name: v for m in evaluation.metrics if (v := m.after if after else m.before) is not None}
    if after:
        values |= {b.task: b.value for b in evaluation.benchmarks}
    return Scores(values=values)


class GateVerdict(BaseModel):
    """Pass, or rejected with every failed check's numbers."""

    passed: bool
    reasons: list[str] = []  # the failed checks (rejected), with the numbers
    notes: list[str] = []  # checks that passed or had nothing to compare with

    @property
    def state(self) -> Literal["passed", "rejected"]:
        return "passed" if self.passed else "rejected"

    def line(self) -> str:
        return "gate passed" + (f" ({'; '.join(self.notes)})" if self.notes else "") if self.passed \
            else "rejected: " + "; ".join(self.reasons)


def _better(value: float, than: float, mode: Literal["min", "max"]) -> bool:
    return value < than if mode == "min" else value > than


def judge(gate: Gate | None, before: Scores, after: Scores, current: Scores | None = None, *,
          metric: str = "eval_loss", mode: Literal["min", "max"] = "min") -> GateVerdict:
    """Every check of `gate` over the numbers; a check that has nothing to measure the run by rejects it,
    except beat_current when the recipe has no current model yet (the first run has nothing to beat)."""
    if gate is None:
        return GateVerdict(passed=True)
    reasons: list[str] = []
    notes: list[str] = []
    if gate.eval_loss == "must_drop":
        b, a = before.get("eval_loss"), after.get("eval_loss")
        if b is None or a is None:
            reasons.append("eval_loss must drop, but the run has no eval loss before and after training")
        elif a >= b:
            reasons.append(f"eval_loss must drop: {b:.4g} -> {a:.4g}")
        else:
            notes.append(f"eval_loss {b:.4g} -> {a:.4g}")
    for task, allowed in sorted(gate.max_task_drop.items()):
        ref_scores = current if current is not None and current.get(task) is not None else before
        ref, a = ref_scores.get(task), after.get(task)
        whose = "current model" if ref_scores is current else "base model"
        if ref is None or a is None:
            reasons.append(f"{task} may fall at most {allowed:g}, but there is no {task} score "
                           f"{'for the run' if a is None else 'to compare with'}")
        elif ref - a > allowed:
            reasons.append(f"{task} fell {ref - a:.4g} ({whose} {ref:.4g} -> {a:.4g}), more than {allowed:g}")
        else:
            notes.append(f"{task} {ref:.4g} -> {a:.4g}")
    if gate.beat_current:
        mine = after.get(metric)
        theirs = current.get(metric) if current is not None else None
        if current is None:
            notes.append("no current model to beat")
        elif mine is None or theirs is None:
            reasons.append(f"must beat the current model on {metric}, but "
                           f"{'the run' if mine is None else 'the current model'} has no {metric}")
        elif not _better(mine, theirs, mode):
            reasons.append(f"must beat the current model on {metric}: {mine:.4g} vs current {theirs:.4g} "
                           f"({'lower' if mode == 'min' else 'higher'} wins)")
        else:
            notes.append(f"{metric} {mine:.4g} beats current {theirs:.4g}")
    return GateVerdict(passed=not reasons, reasons=reasons, notes=notes)


def current_from(values: Mapping[str, float] | None) -> Scores | None:
    """The current model's scores from a registry entry's numbers (None: no current model)."""
    return None if values is None else Scores(values=dict(values))
