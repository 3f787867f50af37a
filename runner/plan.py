"""The cost plan: pure arithmetic from recipe, dataset report, model facts and flavors, in five phases.

The estimate is deliberately simple and stated, so a reviewer can check it:
- tokens: mean sampled row length (about 4 characters per token, plus each image's tokens as the
  model's processor settings make them) x rows x epochs (runner/tokens.py, runner/workload.py);
- compute: 6 FLOPs per active parameter per token for full fine-tuning, 4 with LoRA (no
  weight gradients), +2 with gradient checkpointing, +2 for DPO's reference pass (runner/estimate.py);
- time: compute over the flavor's peak throughput at its GPU family's utilisation (MFU,
  runner/hardware.py), plus start-up (image, model download) and evaluation;
- memory and the training setup: runner/jobs/train_policy.py, the same functions the job
  script runs with: the precision (fp32 master weights under autocast for full fine-tunes),
  weights, gradients and AdamW states (sharded by FSDP when one GPU is not enough),
  activations of the micro-batch that fills the GPU (checkpointed only when needed), overhead;
- flavor: the lowest estimated total cost among those that fit, not the cheapest hour (runner/pricing.py);
- money: every job's worst case (its whole timeout, billed) within the budget (runner/budget.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from runner.budget import PlannedJob, planned_job, spend_gate
from runner.calibration import Calibration, PastRun, calibration
from runner.dataset import DatasetReport
from runner.estimate import billed, gguf_flavor, gguf_hours, gguf_memory_gb, held_out_rows, recommended_timeout
from runner.estimate import runner_minutes as _runner_minutes
from runner.formats import MethodVerdict
from runner.hardware import HardwareFlavor
from runner.jobs import train_policy as policy
from runner.modelfacts import ModelFacts
from runner.pricing import Option, choose_flavor
from runner.recipe import DEFAULTS_FILE, LoadedRecipe
from runner.workload import Workload, workload

# Re-exported: what records, tests and the planning edge import from the plan.
__all__ = ["Calibration", "PastRun", "Plan", "PlannedJob", "billed", "held_out_rows", "plan"]

TIMEOUT_WARNING = 0.7  # an estimate at this share of the timeout leaves little room for a slow run
NO_OUTPUT = ("no Hub output: set `output.repo` in the recipe (or `namespace` in recipes/_defaults.yaml); a run on "
             "Hugging Face Jobs needs an output repo, or the trained model is lost when the job ends")
# What the JSON of a plan carries beside its fields, for readers (the comment, jq); loading ignores them.
DERIVED = ("flavor", "strategy", "devices", "memory_gb", "memory_capacity_gb", "hours", "timeout_seconds",
           "train_cost_usd", "gguf_cost_usd", "cost_usd", "max_cost_usd", "runner_minutes")


class ModelShapeInfo(BaseModel):
    """The shape the memory model used (the config's, or a rule of thumb from the size): the job reuses it."""

    hidden_size: int
    num_layers: int
    vocab_size: int
    architecture: str | None


# Run records keep the plan a run started from (runner/ledger.py): a field added here needs a
# default, or the records already committed stop loading. Figures derived from the jobs and the
# setup are properties, written to the JSON (DERIVED) and never read back.
class Plan(BaseModel):
    """What a recipe's run will do, on which flavor, for how long and how much, and whether the gate lets it."""

    recipe: str
    name: str
    method: str
    base_model: str
    dataset_path: str = ""  # as the recipe names it (a Hub id, or a file in the repo)
    params: int
    params_source: str
    active_params: int  # per token (less than params for mixture-of-experts): what compute is priced on
    lora: bool
    learning_rate: float
    learning_rate_source: str | None = None  # "recipe", or which default and why
    dataset: MethodVerdict
    rows: int | None
    tokens: int
    fits: bool
    eval_hours: float = 0.0  # part of the training job's hours: held-out evaluation, samples and benchmark tasks
    eval_rows: int = 0  # held-out rows evaluated before and after training
    budget_usd: float | None
    within_budget: bool  # the money alone: budget set, within the cap, the worst case within the budget
    jobs: list[PlannedJob]
    refusal: str | None  # every reason the spend gate refuses this run (None: it would submit)
    calibration: Calibration | None = None  # past estimate errors in this repo, and the scale applied
    output_repo: str | None
    price_source: str
    warnings: list[str] = []
    guesses: list[str] = []
    image_tokens_per_row: float | None = None  # a vision-language run: mean tokens the images take
    setup: policy.Setup | None = None  # precision, kernels, batch split on the chosen flavor (what train.py runs)
    sequence_tokens: int = 0  # longest sampled sequence after truncation: what the job sizes unpacked batches by
    model_shape: ModelShapeInfo | None = None

    @model_serializer(mode="wrap")
    def _with_derived(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return handler(self) | {name: getattr(self, name) for name in DERIVED}

    @property
    def ok(self) -> bool:
        return self.fits and self.within_budget and self.refusal is None and self.dataset.status == "ready"

    def job(self, stage: str) -> PlannedJob | None:
        return next((j for j in self.jobs if j.stage == stage), None)

    @property
    def flavor(self) -> str | None:
        train = self.job("train")
        return train.flavor if train else None

    @property
    def strategy(self) -> Literal["single", "ddp", "fsdp"] | None:
        return self.setup.strategy if self.setup else None

    @property
    def devices(self) -> int:
        return self.setup.world_size if self.setup else 0

    @property
    def memory_gb(self) -> float:
        return (self.setup.memory_gb or 0.0) if self.setup else 0.0

    @property
    def memory_capacity_gb(self) -> float | None:
        return self.setup.memory_capacity_gb if self.setup else None

    @property
    def hours(self) -> float:
        train = self.job("train")
        return round(train.hours, 4) if train else 0.0

    @property
    def timeout_seconds(self) -> int:
        train = self.job("train")
        return train.timeout_seconds if train else 0

    @property
    def train_cost_usd(self) -> float:
        return round(sum(j.cost_usd for j in self.jobs if j.stage == "train"), 4)

    @property
    def gguf_cost_usd(self) -> float:
        return round(sum(j.cost_usd for j in self.jobs if j.stage == "gguf"), 4)

    @property
    def cost_usd(self) -> float:
        return round(sum(j.cost_usd for j in self.jobs), 4)

    @property
    def max_cost_usd(self) -> float:
        return round(sum(j.max_cost_usd for j in self.jobs), 4)

    @property
    def runner_minutes(self) -> float:
        """Expected GitHub Actions runner minutes for this run."""
        return round(_runner_minutes(sum(j.hours for j in self.jobs)), 1) if self.jobs else 0.0


def plan(
    loaded: LoadedRecipe,
    report: DatasetReport,
    facts: ModelFacts,
    flavors: Sequence[HardwareFlavor],
    *,
    price_source: str = "built-in price table",
    history: Sequence[PastRun] = (),
) -> Plan:
    """The plan of one recipe: its workload, the flavor, the calibrated training job, the gate, assembled."""
    w = workload(loaded, report, facts, price_source)
    choice = choose_flavor(w, flavors)
    if choice.option is None:  # nothing to train on: what else the gate refuses still says what to fix
        return unplanned(loaded, w, choice.warnings, jobs_and_gate(loaded, w, flavors))
    timing = calibrate(loaded, w, choice.option, history)
    gate = jobs_and_gate(loaded, w, flavors, timing.train)
    return assemble(loaded, w, choice.option, timing, gate, choice.warnings)


@dataclass(frozen=True)
class Timing:
    """The training job on the chosen flavor, its hours scaled by past estimate errors when enough runs compare."""

    train: PlannedJob
    calibration: Calibration | None
    warnings: list[str]


def calibrate(loaded: LoadedRecipe, w: Workload, option: Option, history: Sequence[PastRun]) -> Timing:
    """The training job: the option's hours (scaled by the median actual/estimate of comparable past runs once
    there are enough), and the recipe's timeout or one with headroom over them."""
    found = calibration(history, w.method, option.flavor.accelerator)
    hours, notes = option.hours, []
    if found and found.applied:
        hours *= found.applied
        notes.append(f"time scaled by {found.applied:.2f}, the median actual/estimate of {found.comparable} past "
                     f"{w.method.upper()} runs on {option.flavor.accelerator or 'CPU'} flavors in this repository")
    timeout = loaded.recipe.timeout_seconds or recommended_timeout(hours)
    return Timing(planned_job("train", option.flavor, hours, timeout), found, notes)


@dataclass(frozen=True)
class Gate:
    """The jobs as submitted, every reason the spend gate refuses them, and what the plan says about both."""

    jobs: list[PlannedJob]
    refusal: str | None
    within_budget: bool
    warnings: list[str]


def jobs_and_gate(loaded: LoadedRecipe, w: Workload, flavors: Sequence[HardwareFlavor],
                  train: PlannedJob | None = None) -> Gate:
    """The training and GGUF jobs, gated on money, an output repo and a converter: what the merge would accept."""
    r = loaded.recipe
    jobs = [train] if train else []
    problems = [] if loaded.output_repo else [NO_OUTPUT]
    if r.gguf.enabled:
        converter = gguf_flavor(w.facts, flavors)
        if converter is None:
            problems.append(f"no flavor has the {gguf_memory_gb(w.facts):.0f} GB of RAM needed to convert this model "
                            "to GGUF; set `gguf.enabled: false` to train without the conversion")
        else:
            g_hours = gguf_hours(w.facts, len(r.gguf.quantizations), r.gguf.imatrix)
            jobs.append(planned_job("gguf", converter, g_hours, recommended_timeout(g_hours)))
    gated = spend_gate(jobs, r.budget_usd, loaded.defaults.max_budget_usd)
    total_cap = loaded.defaults.max_total_usd
    worst = sum(j.max_cost_usd for j in gated.jobs)
    if total_cap is not None and worst > total_cap:  # one recipe alone above what a whole merge may spend
        problems.append(f"worst case ${worst:.2f} is above max_total_usd ${total_cap:g} (the most one merge may "
                        f"spend, in {DEFAULTS_FILE}); lower the budget or raise the cap")
    refusal = "; ".join(problems + ([gated.refusal] if gated.refusal else [])) or None
    submitted = next((j for j in gated.jobs if j.stage == "train"), None)
    timeouts = _timeout_notes(r.timeout_seconds, submitted) if submitted else []
    return Gate(jobs=gated.jobs, refusal=refusal, within_budget=r.budget_usd is not None and gated.refusal is None,
                warnings=gated.notes + timeouts + ([refusal] if refusal else []))


def _timeout_notes(explicit: int | None, train: PlannedJob) -> list[str]:
    """A timeout the estimate does not fit, or fills beyond TIMEOUT_WARNING."""
    hours, timeout = train.hours, train.timeout_seconds
    estimate = hours * 3600
    if explicit and explicit < estimate * 1.1:
        return [f"timeout risk: timeout {explicit // 60} min is below the estimated {hours * 60:.0f} min "
                f"(recommended {recommended_timeout(hours) // 60} min)"]
    if estimate >= TIMEOUT_WARNING * timeout:
        return [f"timeout: the estimate ({hours * 60:.0f} min) is {estimate / timeout:.0%} of the "
                f"{timeout // 60}-min timeout; a run slower than estimated is cut off (and billed): raise `timeout` "
                "(and budget_usd with it) or shrink the run"]
    return []


def _recipe_fields(loaded: LoadedRecipe, w: Workload) -> dict[str, Any]:
    """What every plan says, whatever the flavor: the recipe, its model, its data."""
    r, f, shape = loaded.recipe, w.facts, w.job.model
    return dict(
        recipe=loaded.display, name=r.name, method=r.method, base_model=r.base_model, dataset_path=r.dataset.path,
        params=f.params, params_source=f.source, active_params=f.compute_params, lora=w.lora,
        learning_rate=w.learning_rate, learning_rate_source=w.learning_rate_source, dataset=w.verdict, rows=w.rows,
        eval_rows=w.evaluation.rows, budget_usd=r.budget_usd, output_repo=loaded.output_repo,
        price_source=w.price_source, guesses=list(w.guesses), image_tokens_per_row=w.image_tokens_per_row,
        sequence_tokens=w.sequence_tokens,
        model_shape=ModelShapeInfo(hidden_size=shape.hidden, num_layers=shape.layers, vocab_size=shape.vocab,
                                   architecture=f.architecture) if shape else None,
    )


def unplanned(loaded: LoadedRecipe, w: Workload, warnings: list[str], gate: Gate) -> Plan:
    """The plan when no flavor can train the workload (`warnings`: the choice's): nothing trains."""
    return Plan(**_recipe_fields(loaded, w), tokens=0, fits=False, jobs=gate.jobs, refusal=gate.refusal,
                within_budget=gate.within_budget, warnings=[*w.warnings, *warnings, *gate.warnings])


def assemble(loaded: LoadedRecipe, w: Workload, option: Option, timing: Timing, gate: Gate,
             warnings: list[str]) -> Plan:
    """The plan of a workload that trains on the chosen flavor (`warnings`: the choice's)."""
    return Plan(
        **_recipe_fields(loaded, w), tokens=int(option.tokens), fits=option.fits,
        eval_hours=round(option.eval_hours, 4), within_budget=gate.within_budget, jobs=gate.jobs,
        refusal=gate.refusal, calibration=timing.calibration, setup=option.setup,
        warnings=[*w.warnings, *warnings, *timing.warnings, *gate.warnings],
    )
