"""A workload priced on each flavor, and the flavor it trains on: the recipe's, or the lowest total cost
among those that fit (not the cheapest hour). The setup on each flavor is the training policy's
(runner/jobs/train_policy.py), the function the job script itself runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runner.estimate import (
    billed,
    eval_seconds,
    flops_per_token,
    generation_seconds,
    startup_seconds,
    training_throughput,
)
from runner.hardware import HardwareFlavor
from runner.jobs import train_policy as policy
from runner.workload import Workload

MAX_HOURS = 48.0  # a flavor that needs longer is not considered
MEMORY_WARNING = policy.MEMORY_TARGET  # a setup above the share micro-batches are sized to is tight
CHEAPER_BY = 0.8  # a fixed flavor gets a hint when `auto` would cost at most this share of it


@dataclass(frozen=True)
class Option:
    """The workload on one flavor: its setup, time and cost."""

    flavor: HardwareFlavor
    setup: policy.Setup
    hours: float
    eval_hours: float
    tokens: float  # training tokens the run processes
    fits: bool  # in memory, and within MAX_HOURS

    @property
    def cost(self) -> float:
        return billed(self.hours, self.flavor.usd_per_hour)


@dataclass(frozen=True)
class Choice:
    """The flavor the run trains on (None: nothing fits), and what the plan says about it."""

    option: Option | None
    warnings: list[str] = field(default_factory=list)


def price_on(flavor: HardwareFlavor, w: Workload) -> Option:
    """The workload's setup, time and cost on one flavor."""
    setup = policy.resolve(w.job, flavor.device)
    rows = w.rows_seen(setup.effective_batch)
    tokens = rows * w.row_tokens * w.sequences_per_row
    fpt = flops_per_token(w.facts.compute_params, lora=w.lora, checkpointing=setup.gradient_checkpointing,
                          method=w.method)
    seconds = tokens * fpt / training_throughput(flavor) + startup_seconds(w.facts)
    if w.method == "grpo":
        seconds += generation_seconds(w.facts, flavor, rows * w.generations * w.completion)
    steps = rows * w.sequences_per_row / max(setup.effective_batch, 1)
    evaluation = eval_seconds(w.evaluation, w.facts, flavor, steps)
    hours = (seconds + evaluation) / 3600
    return Option(flavor=flavor, setup=setup, hours=hours, eval_hours=evaluation / 3600, tokens=tokens,
                  fits=setup.fits and hours <= MAX_HOURS)


def choose_flavor(w: Workload, flavors: Sequence[HardwareFlavor]) -> Choice:
    """The recipe's flavor, or the lowest total cost among those that fit; None when nothing can run it."""
    if w.hardware == "auto":
        fitting = [o for o in (price_on(f, w) for f in flavors) if o.fits]
        if not fitting:
            return Choice(None, ["no hardware flavor fits this job; reduce batch_size or max_length, or enable LoRA"])
        chosen = min(fitting, key=lambda o: (o.cost, o.hours))
        return Choice(chosen, _setup_notes(chosen, w.lora))
    fixed = next((f for f in flavors if f.name == w.hardware), None)
    if fixed is None:
        return Choice(None, [f"hardware {w.hardware} has no price in the flavor table; use `hardware: auto`"])
    chosen = price_on(fixed, w)
    return Choice(chosen, _fixed_notes(chosen, w, flavors) + _setup_notes(chosen, w.lora))


def _fixed_notes(chosen: Option, w: Workload, flavors: Sequence[HardwareFlavor]) -> list[str]:
    """Whether the recipe's flavor runs the job, and whether `auto` would be much cheaper."""
    name, memory = chosen.flavor.name, chosen.setup.memory_gb or 0.0
    if memory > chosen.flavor.memory_gb:
        return [f"{name} does not fit: needs about {memory:.1f} GB per device, has {chosen.flavor.memory_gb:g} GB"]
    if not chosen.fits:
        return [f"{name} would need about {chosen.hours:.0f} h; pick a faster flavor"]
    cheaper = min((price_on(f, w) for f in flavors), key=lambda o: (not o.fits, o.cost, o.hours))
    if cheaper.fits and cheaper.flavor.name != name and cheaper.cost < chosen.cost * CHEAPER_BY:
        return [f"{cheaper.flavor.name} would cost about ${cheaper.cost:.2f} instead of ${chosen.cost:.2f}; consider "
                "`hardware: auto`"]
    return []


def _setup_notes(chosen: Option, lora: bool) -> list[str]:
    """Risks of the setup on the chosen flavor: fp16 without bf16, sharding, memory close to full."""
    flavor, s = chosen.flavor, chosen.setup
    notes = []
    if flavor.is_gpu and not flavor.bf16:
        kept = "fp32 LoRA adapters" if lora else "fp32 master weights"
        notes.append(f"{flavor.name} has no bf16; training runs under fp16 autocast with {kept} and loss scaling, "
                     "which can be less stable than bf16")
    if s.strategy == "fsdp":
        notes.append(f"the model does not fit one GPU; training is sharded with FSDP across {flavor.devices}")
    if s.fits and s.memory_gb and s.memory_gb >= MEMORY_WARNING * s.memory_capacity_gb:
        notes.append(f"memory: the estimated peak {s.memory_gb:.1f} GB is {s.memory_gb / s.memory_capacity_gb:.0%} "
                     f"of {flavor.name}'s {s.memory_capacity_gb:g} GB per device, and the estimate can be off: the job "
                     "may run out of memory; lower training.batch_size (with pin_batch) or max_length, set "
                     "gradient_checkpointing: true, or pick a flavor with more memory")
    return notes
