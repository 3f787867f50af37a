"""Sweeps: one recipe, several trials that differ by a few hyperparameters, one winner.

A recipe's `sweep:` is either a `grid:` (override path -> values, every combination) or `trials:` (a list of
override mappings). Expansion is pure: recipe -> trials, each an ordinary Recipe with the overrides applied and
no `sweep:` of its own, so a trial is recorded, retried, reconciled and priced like any run (its version is the
effective recipe's hash, which the overrides change). The winner is picked from the trials' metrics.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runner.errors import Problem

if TYPE_CHECKING:  # recipe_models.py imports this module for the Sweep field
    from runner import yamlsafe
    from runner.plan import Plan
    from runner.recipe_models import Recipe

DEFAULT_MAX_TRIALS = 8
SWEEPABLE = ("training", "adapter")  # the sections a trial may override: hyperparameters, not data or model
Scalar = float | int | bool | str


class Sweep(BaseModel):
    """`sweep:` in a recipe: which trials to train and how to pick the winner."""

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[Scalar]] | None = Field(None, description="override path (e.g. training.learning_rate, "
                                                 "adapter.r) -> values; every combination is a trial")
    trials: list[dict[str, Scalar]] | None = Field(None, description="the trials, each a mapping of override path "
                                                   "-> value (instead of grid)")
    metric: str = Field("eval_loss", description="what picks the winner: a held-out metric (eval_loss) or a "
                        "benchmark task's score")
    mode: Literal["min", "max"] | None = Field(None, description="min: lower wins, max: higher wins; default min "
                                               "for a loss or perplexity, max otherwise")
    parallel: int = Field(2, ge=1, le=16, description="most trials training at once on the Hub (locally: one)")

    @model_validator(mode="after")
    def _one_kind(self) -> Sweep:
        if (self.grid is None) == (self.trials is None):
            raise ValueError("set exactly one of grid (values per path) or trials (a list of overrides)")
        if self.grid is not None and any(not v for v in self.grid.values()):
            raise ValueError("every grid path needs at least one value")
        if self.trials is not None and (not self.trials or any(not t for t in self.trials)):
            raise ValueError("trials needs at least one trial, each with at least one override")
        return self

    @property
    def direction(self) -> Literal["min", "max"]:
        """min for losses and perplexities (lower is better), max for scores, unless `mode` says."""
        if self.mode:
            return self.mode
        return "min" if re.search(r"loss|perplexity", self.metric) else "max"

    def combinations(self) -> list[dict[str, Scalar]]:
        """The overrides of every trial, in the order written (grid: the last path varies fastest)."""
        if self.trials is not None:
            return [dict(t) for t in self.trials]
        assert self.grid is not None
        paths = list(self.grid)
        return [dict(zip(paths, values, strict=True)) for values in itertools.product(*self.grid.values())]


class Trial(BaseModel):
    """One trial of a sweep: its stable id, a readable suffix, its overrides and the recipe it trains."""

    id: str  # hash of the overrides: the same overrides are the same trial in every plan and record
    suffix: str  # for people and job names, e.g. "learning-rate0.0001-r8"
    overrides: dict[str, Scalar]
    recipe: Recipe


def trial_id(overrides: Mapping[str, Scalar]) -> str:
    """A short hash of the overrides, independent of their order."""
    return hashlib.sha256(json.dumps(dict(sorted(overrides.items())), sort_keys=True).encode()).hexdigest()[:8]


def suffix(overrides: Mapping[str, Scalar]) -> str:
    """A slug naming the overrides: last path part and value, e.g. learning-rate0.0001-r8."""
    parts = [f"{path.rsplit('.', 1)[-1]}{value}" for path, value in overrides.items()]
    return re.sub(r"[^a-z0-9.-]+", "-", "-".join(parts).lower()).strip("-")[:60]


def _path_problem(path: str) -> str | None:
    """Why `path` is not an override a trial may make (None: it is)."""
    from runner.recipe_models import Recipe

    section, _, name = path.partition(".")
    if section not in SWEEPABLE or not name or "." in name:
        return f"'{path}' is not an override path: use section.field with a section among {', '.join(SWEEPABLE)}"
    fields = Recipe.model_fields[section].annotation.model_fields  # type: ignore[union-attr]  # SWEEPABLE are models
    if name not in fields:
        close = [f for f in fields if f.startswith(name[:3])]
        hint = f" (did you mean {section}.{close[0]}?)" if close else ""
        return f"unknown field '{name}' in {section}{hint}"
    return None


def _apply(recipe: Recipe, overrides: Mapping[str, Scalar]) -> Recipe:
    """The recipe with the overrides applied and no sweep; raises ValidationError when a value is refused."""
    data: dict[str, Any] = recipe.model_dump(exclude={"sweep"}, exclude_none=True)
    for path, value in overrides.items():
        section, _, name = path.partition(".")
        data.setdefault(section, {})[name] = value
    return type(recipe).model_validate(data)


def expand(recipe: Recipe) -> list[Trial]:
    """Every trial of the recipe's sweep (empty without one); assumes `problems` found nothing."""
    if recipe.sweep is None:
        return []
    rebuild()
    return [Trial(id=trial_id(o), suffix=suffix(o), overrides=o, recipe=_apply(recipe, o))
            for o in recipe.sweep.combinations()]


def _entries(sweep: Sweep) -> list[tuple[dict[str, Scalar], dict[str, tuple[str | int, ...]]]]:
    """Each trial's overrides, with the YAML path of the entry that set each value (for located errors)."""
    out: list[tuple[dict[str, Scalar], dict[str, tuple[str | int, ...]]]] = []
    if sweep.trials is not None:
        for i, t in enumerate(sweep.trials):
            out.append((dict(t), {p: ("sweep", "trials", i, p) for p in t}))
        return out
    assert sweep.grid is not None
    indexed = [[(p, i, v) for i, v in enumerate(vs)] for p, vs in sweep.grid.items()]
    for combo in itertools.product(*indexed):
        out.append(({p: v for p, _, v in combo}, {p: ("sweep", "grid", p, i) for p, i, _ in combo}))
    return out


def problems(recipe: Recipe, doc: yamlsafe.Located, max_trials: int | None) -> list[Problem]:
    """Located problems of the recipe's sweep: unknown paths, values the recipe refuses, too many trials."""
    sweep = recipe.sweep
    if sweep is None:
        return []
    cap = max_trials or DEFAULT_MAX_TRIALS
    paths = list(sweep.grid or {}) + [p for t in sweep.trials or [] for p in t]
    bad = {p: why for p in dict.fromkeys(paths) if (why := _path_problem(p))}
    out = []
    for path, why in bad.items():
        key: tuple[str | int, ...] = ("sweep", "grid", path) if sweep.grid else next(
            ("sweep", "trials", i, path) for i, t in enumerate(sweep.trials or []) if path in t)
        out.append(doc.problem(key, why, key=True))
    entries = _entries(sweep)
    if len(entries) > cap:
        out.append(doc.problem(("sweep",), f"{len(entries)} trials, above max_sweep_trials {cap} in "
                               "_defaults.yaml: drop values or trials, or raise the cap", key=True))
    if bad:
        return out
    seen: set[str] = set()
    for overrides, where in entries:
        tid = trial_id(overrides)
        if tid in seen:
            out.append(doc.problem(next(iter(where.values()))[:3], "the same trial is listed twice"))
        seen.add(tid)
        try:
            _apply(recipe, overrides)
        except ValidationError as e:
            for err in e.errors():
                loc = tuple(err["loc"])
                field = f"{loc[0]}.{loc[1]}" if len(loc) >= 2 else ""
                at = where.get(field) or next(iter(where.values()))  # a cross-field check: the trial's first entry
                out.append(doc.problem(at, f"trial {suffix(overrides)}: {err['msg'].removeprefix('Value error, ')}"))
    return list({str(p): p for p in out}.values())  # a value refused in several grid combinations: said once


# --- the winner ---------------------------------------------------------------------------------------------

class TrialResult(BaseModel):
    """What one trial produced: its metrics after training (None: it failed or was not evaluated)."""

    id: str
    suffix: str
    metrics: dict[str, float] | None = None


class Verdict(BaseModel):
    """The sweep's outcome: the winning trial, or why there is none."""

    winner: str | None = None  # a trial id
    value: float | None = None
    reason: str  # how the winner was chosen, or why none was


def pick_winner(results: Sequence[TrialResult], metric: str, mode: Literal["min", "max"]) -> Verdict:
    """The trial with the best `metric` (ties: the first listed); trials without a finite value cannot win."""
    scored = [(r, r.metrics[metric]) for r in results
              if r.metrics is not None and metric in r.metrics and math.isfinite(r.metrics[metric])]
    if not scored:
        failed = sum(r.metrics is None for r in results)
        return Verdict(reason=f"no winner: none of the {len(results)} trials reported {metric} "
                              f"({failed} failed or were not evaluated)")
    best = (min if mode == "min" else max)(scored, key=lambda rv: rv[1])
    skipped = len(results) - len(scored)
    note = f"; {skipped} trial(s) without {metric} could not win" if skipped else ""
    word = "lowest" if mode == "min" else "highest"
    return Verdict(winner=best[0].id, value=best[1],
                   reason=f"{best[0].suffix}: {word} {metric} {best[1]:.4g} of {len(scored)} trials{note}")


# --- the plan -------------------------------------------------------------------------------------------------

class TrialPlan(BaseModel):
    """One trial's plan beside what it overrides."""

    trial: Trial
    plan: Plan


class SweepPlan(BaseModel):
    """The plan of a sweep: a plan per trial, gated together against the recipe's budget."""

    trials: list[TrialPlan]
    estimate_usd: float
    worst_usd: float  # every trial's training worst case + one GGUF conversion (only the winner converts)
    budget_usd: float | None
    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return self.refusal is None and all(t.plan.ok for t in self.trials)


def plan_sweep(trials: Sequence[Trial], plan_one: Callable[[Recipe], Plan], budget: float | None) -> SweepPlan:
    """Plan every trial with `plan_one`, then gate their summed worst case against the budget as a whole."""
    rebuild()
    plans = [TrialPlan(trial=t, plan=plan_one(t.recipe)) for t in trials]

    def cost(stage: str, worst: bool) -> list[float]:
        jobs = [j for tp in plans for j in tp.plan.jobs if j.stage == stage]
        return [j.max_cost_usd if worst else j.cost_usd for j in jobs]

    estimate = round(sum(cost("train", False)) + max(cost("gguf", False), default=0.0), 2)
    worst = round(sum(cost("train", True)) + max(cost("gguf", True), default=0.0), 2)
    refusal = None
    if budget is None:
        refusal = "no budget: set `budget_usd`; a sweep is gated as a whole against it"
    elif worst > budget:
        refusal = (f"sweep over budget: {len(plans)} trials may cost ${worst:.2f} together in the worst case "
                   f"(estimate ${estimate:.2f}), above budget_usd ${budget:.2f}; raise budget_usd to at least "
                   f"${worst:.2f}, drop trials, or lower the timeout")
    return SweepPlan(trials=plans, estimate_usd=estimate, worst_usd=worst, budget_usd=budget, refusal=refusal)


def markdown(sp: SweepPlan) -> str:
    """The plan comment's sweep section: one line per trial, then the total and the verdict."""
    lines = ["| trial | overrides | flavor | estimate | worst case |", "|---|---|---|---|---|"]
    for tp in sp.trials:
        p, t = tp.plan, tp.trial
        overrides = ", ".join(f"`{k}={v}`" for k, v in t.overrides.items())
        train = p.job("train")
        est = f"${train.cost_usd:.2f}" if train else "—"
        worst = f"${train.max_cost_usd:.2f}" if train else "—"
        lines.append(f"| `{t.id}` | {overrides} | {p.flavor or '—'} | {est} | {worst} |")
    gguf = "" if not any(tp.plan.job("gguf") for tp in sp.trials) else " (the winner's GGUF conversion included)"
    budget = f"${sp.budget_usd:.2f}" if sp.budget_usd is not None else "none"
    lines.append(f"| **total** | {len(sp.trials)} trials{gguf} | | ${sp.estimate_usd:.2f} | ${sp.worst_usd:.2f} |")
    lines.append("")
    lines.append(f"Budget {budget}: " + (f"**refused**: {sp.refusal}" if sp.refusal else "within budget as a whole"))
    return "\n".join(lines)


def rebuild() -> None:
    """Resolve the forward references to Recipe and Plan (their modules import this one, so not at import)."""
    if Trial.__pydantic_complete__ and SweepPlan.__pydantic_complete__:
        return
    from runner.plan import Plan
    from runner.recipe_models import Recipe

    Trial.model_rebuild(_types_namespace={"Recipe": Recipe})
    TrialPlan.model_rebuild(_types_namespace={"Recipe": Recipe, "Plan": Plan, "Trial": Trial})
    SweepPlan.model_rebuild(_types_namespace={"Recipe": Recipe, "Plan": Plan, "TrialPlan": TrialPlan})
