"""Everything the plan needs to know, fetched at the edge: data sample, model facts, prices.

Each source degrades instead of failing where it can: no token means built-in prices,
no network means a model size from the built-in table or the model's name, and the
plan lists what it had to guess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner import hardware, hub, jobspec, ledger, modelfacts, sweep
from runner.budget import merge_refusal
from runner.dataset import DatasetReport, from_sample, load_sample
from runner.errors import UserError
from runner.formats import METHODS, MethodVerdict
from runner.hardware import HardwareFlavor
from runner.modelfacts import ModelFacts
from runner.plan import PastRun, Plan, plan
from runner.recipe import LoadedRecipe, Recipe

HUB_TIMEOUT = 10.0


@dataclass
class Prices:
    flavors: list[HardwareFlavor]
    source: str
    warnings: list[str] = field(default_factory=list)


def prices(token: str | None) -> Prices:
    """Built-in prices, refreshed from the live hardware endpoint when a token is present."""
    if not token or hub.offline():
        return Prices(hardware.catalog(), "built-in price table")
    try:
        live = hardware.live_prices_from(hub.api(token).list_jobs_hardware())
    except Exception as e:  # any failure: fall back, and say so
        return Prices(hardware.catalog(), "built-in price table",
                      [f"could not refresh prices from the Hub ({_why(e)}); using the built-in table"])
    if not live:
        return Prices(hardware.catalog(), "built-in price table")
    return Prices(hardware.catalog(live), "live Hub hardware prices")


def model_facts(loaded: LoadedRecipe, token: str | None) -> tuple[ModelFacts, list[str]]:
    r = loaded.recipe
    if r.base_model_is_local:
        return modelfacts.from_local(loaded.local(r.base_model), r.base_model), []
    reason = "offline"
    if not hub.offline():
        try:
            return modelfacts.from_hub(r.base_model, hub.api(token), r.base_model_revision), []
        except UserError:
            raise
        except Exception as e:  # network or server trouble: fall back to what we know
            reason = _why(e)
    facts = modelfacts.from_name(r.base_model)
    if facts is None:
        raise UserError(f"{loaded.display}: base_model: cannot tell the size of '{r.base_model}' ({reason}) and it is "
                        "not a well-known model; run the plan with network access")
    return facts, [f"model facts not read from the Hub ({reason})"]


def dataset_report(loaded: LoadedRecipe, token: str | None) -> DatasetReport:
    d = loaded.recipe.dataset
    try:
        sample = load_sample(d.path, split=d.split, config=d.config, revision=d.revision, root=loaded.root,
                                    token=token)
    except UserError as e:
        verdict = MethodVerdict(status="unknown", reason=f"dataset could not be read: {e}")
        return DatasetReport(dataset=d.path, config=d.config, split=d.split, rows=None, rows_exact=False, columns=[],
                             methods={m: verdict for m in METHODS}, sample_size=0, source="none")
    return from_sample(sample, d.columns)


def past_runs(root: Path) -> list[PastRun]:
    """Finished HF Jobs runs recorded in runs/: the plan's training estimate against the billed running time."""
    families = {f.name: f.accelerator for f in hardware.BUILTIN_FLAVORS}
    out = []
    for group in ledger.all_runs(root):
        for r in group.runs:
            train = r.jobs.get("train")
            planned = r.plan.job("train") if r.plan else None
            actual, estimate = r.cost_usd.get("actual"), r.cost_usd.get("estimated")
            if not (r.plan and r.push and r.state == "recorded" and train and train.running_seconds and planned
                    and actual and estimate):
                continue
            # The estimate before any calibration, so the planner's own scaling is not learned back.
            scaled = (r.plan.calibration.applied if r.plan.calibration else None) or 1.0
            out.append(PastRun(method=r.plan.method, accelerator=families.get(train.flavor or ""),
                               estimated_hours=planned.hours / scaled,
                               actual_hours=train.running_seconds / 3600, estimated_usd=estimate, actual_usd=actual))
    return out


def plan_recipe(loaded: LoadedRecipe, *, token: str | None, price_table: Prices) -> Plan:
    facts, notes = model_facts(loaded, token)
    data = dataset_report(loaded, token)
    try:
        history = past_runs(loaded.root)
    except UserError as e:  # an unreadable record must not block the plan; say so
        history, notes = [], notes + [f"past runs not used for calibration ({str(e).splitlines()[0]})"]
    result = plan(loaded, data, facts, price_table.flavors, price_source=price_table.source, history=history)
    extra = price_table.warnings + notes
    return result.model_copy(update={"warnings": result.warnings + extra}) if extra else result


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:160] if text else type(e).__name__


def plan_all(loaded: list[LoadedRecipe], token: str | None, problems: list[str]) -> list[Plan]:
    """A plan per loaded recipe; a recipe that cannot be planned adds its one-line problem instead, and so do
    recipes whose summed worst case is above `max_total_usd` (they are merged, and paid for, together)."""
    return plan_with_sweeps(loaded, token, problems)[0]


def plan_with_sweeps(loaded: list[LoadedRecipe], token: str | None,
                     problems: list[str]) -> tuple[list[Plan], dict[str, sweep.SweepPlan]]:
    """`plan_all`'s plans, and by recipe display path the plan of each sweep: its trials planned once, for both
    the merge total (every trial's worst case) and the sweep's table."""
    if not loaded:
        return [], {}
    price_table = prices(token)
    plans, worst, sweeps = [], {}, {}
    for item in loaded:
        try:
            jobspec.shipped_files(item)  # what the merge ships must exist: a data row's missing image fails here
            plans.append(plan_recipe(item, token=token, price_table=price_table))
            if item.recipe.sweep is not None:
                sweeps[item.display] = sweep_plan(item, token, price_table)
            worst[plans[-1].recipe] = worst_usd(item, plans[-1], token, price_table, sweeps.get(item.display))
        except UserError as e:
            problems.append(str(e))
    cap = min((x.defaults.max_total_usd for x in loaded if x.defaults.max_total_usd is not None), default=None)
    together = merge_refusal(worst, cap)
    if together:
        problems.append(together)
    return plans, sweeps


def trial_planner(loaded: LoadedRecipe, token: str | None, price_table: Prices) -> Callable[[Recipe], Plan]:
    """Plans one sweep trial: the recipe with the trial's overrides, read from the same file and repository."""
    return lambda r: plan_recipe(dataclasses.replace(loaded, recipe=r), token=token, price_table=price_table)


def sweep_plan(loaded: LoadedRecipe, token: str | None, price_table: Prices) -> sweep.SweepPlan:
    """The plan of a recipe's sweep: its trials planned one by one, gated together against its budget."""
    return sweep.plan_sweep(sweep.expand(loaded.recipe), trial_planner(loaded, token, price_table),
                            loaded.recipe.budget_usd)


def merge_gate(loaded: LoadedRecipe, plan: Plan, others: list[str], token: str | None) -> str | None:
    """At merge: why this recipe is refused together with the other recipes of the same merge (their summed
    worst case above `max_total_usd`), or None. Every recipe of the merge reaches the same verdict."""
    cap = loaded.defaults.max_total_usd
    paths = [p for p in dict.fromkeys(others) if Path(p).resolve() != loaded.path.resolve()]
    if cap is None or not paths:
        return None
    from runner import recipe

    price_table = prices(token)
    worst = {plan.recipe: worst_usd(loaded, plan, token, price_table)}
    for path in paths:
        other = recipe.load(path)
        other_plan = plan_recipe(other, token=token, price_table=price_table)
        worst[other_plan.recipe] = worst_usd(other, other_plan, token, price_table)
    return merge_refusal(worst, cap)


def worst_usd(loaded: LoadedRecipe, plan: Plan, token: str | None, price_table: Prices,
              planned: sweep.SweepPlan | None = None) -> float:
    """What a recipe may cost a merge at worst: its plan's, or for a sweep every trial's and one conversion
    (from `planned`, its sweep's plan, when the caller has it)."""
    if loaded.recipe.sweep is None:
        return plan.max_cost_usd
    return (planned or sweep_plan(loaded, token, price_table)).worst_usd
