"""The workload: what one recipe asks of the hardware, decided from the recipe, its data and its model
before any flavor is priced. Frozen: every later phase of the plan reads it, none changes it.

Building it is where the recipe's traps are named: LoRA forced off on a large model, a learning rate
of the wrong scale, `epochs` beside `max_steps`, data that is not ready, truncated rows, an empty dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from runner.dataset import DatasetReport
from runner.errors import UserError
from runner.estimate import EvalWork, eval_work
from runner.formats import MethodVerdict
from runner.jobs import train_policy as policy
from runner.modelfacts import ModelFacts, VisionFacts
from runner.recipe import LORA_AUTO_THRESHOLD, LoadedRecipe, Recipe
from runner.tokens import image_notes, image_tokens_per_row, sequence_stats

UNKNOWN_ROWS = 10_000  # what the estimate assumes when the row count is unknown
LORA_LEARNING_RATE = 2e-4
FULL_LEARNING_RATE = 2e-5  # a full fine-tune moves every weight: a tenth of LoRA's rate
LORA_SIZED_RATE = 1e-4  # a full fine-tune's learning rate at or above this is LoRA-sized


@dataclass(frozen=True)
class Workload:
    """One recipe's training run, sized: what every flavor is priced for."""

    method: str
    hardware: str  # "auto" or the recipe's flavor
    facts: ModelFacts
    lora: bool  # resolved (`lora: auto` decided by the model's size)
    learning_rate: float
    learning_rate_source: str  # "recipe", or which default and why
    verdict: MethodVerdict  # is the data ready for the method
    rows: int | None  # counted or estimated (None: unknown)
    epochs: float
    max_steps: int | None
    generations: int  # GRPO: completions per prompt
    completion: int  # GRPO: tokens per completion
    row_tokens: float  # mean tokens per row after truncation
    sequence_tokens: int  # longest sampled sequence after truncation: what unpacked batches are sized by
    image_tokens_per_row: float | None
    job: policy.Job  # what the job script resolves its setup from on each device
    evaluation: EvalWork
    price_source: str  # where the flavors' prices come from
    warnings: tuple[str, ...]
    guesses: tuple[str, ...]

    @property
    def sequences_per_row(self) -> int:
        """Sequences one row trains as: GRPO's group of generations, else one."""
        return self.generations if self.method == "grpo" else 1

    def rows_seen(self, effective_batch: int) -> float:
        """Rows the run trains on: max_steps batches when set (it wins over epochs), else every row per epoch."""
        if self.max_steps:
            return self.max_steps * effective_batch / self.sequences_per_row
        return (self.rows if self.rows is not None else UNKNOWN_ROWS) * self.epochs


@dataclass
class _Notes:
    warnings: list[str] = field(default_factory=list)
    guesses: list[str] = field(default_factory=list)


def workload(loaded: LoadedRecipe, report: DatasetReport, facts: ModelFacts, price_source: str) -> Workload:
    """The recipe's run on its data and model, with what was warned and guessed on the way."""
    r, t = loaded.recipe, loaded.recipe.training
    notes = _Notes(guesses=["tokens (about 4 characters per token)"])
    if facts.is_guess:
        how = "a table of well-known models" if facts.source == "table" else "the model's name"
        notes.guesses.append(f"params (from {how})")
    if not price_source.startswith("live"):
        notes.guesses.append(f"prices ({price_source})")
    lora, lr, lr_source = _adapter(r, facts, notes)
    verdict = _verdict(r, report, facts, notes)
    rows = _rows(loaded, report, notes)
    completion, generations = t.max_completion_length or 256, t.num_generations or 8
    row_tokens, longest = _lengths(r, report, facts.vision, completion, notes)
    if t.max_steps and "epochs" in t.model_fields_set:
        notes.warnings.append(f"training.epochs {t.epochs:g} is ignored: training.max_steps {t.max_steps} is also set "
                              "and wins (the run stops after that many steps); remove one of them")
    sequence_tokens = max(math.ceil(longest), 1)  # the job config carries it as an integer
    job = policy.Job(
        method=r.method, lora=lora, lora_r=r.adapter.r, batch_size=t.batch_size, grad_accum=t.grad_accum,
        pin_batch=t.pin_batch, max_length=t.max_length, sequence_tokens=sequence_tokens, packing=t.packing,
        gradient_checkpointing=t.gradient_checkpointing, strategy=t.strategy, completion_tokens=completion,
        generations=generations, model=model_shape(facts),
    )
    return Workload(
        method=r.method, hardware=r.hardware, facts=facts, lora=lora, learning_rate=lr, learning_rate_source=lr_source,
        verdict=verdict, rows=rows, epochs=t.epochs, max_steps=t.max_steps, generations=generations,
        completion=completion, row_tokens=row_tokens, sequence_tokens=sequence_tokens,
        image_tokens_per_row=image_tokens_per_row(report, facts.vision), job=job,
        evaluation=eval_work(loaded, rows if rows is not None else UNKNOWN_ROWS, row_tokens),
        price_source=price_source, warnings=tuple(notes.warnings), guesses=tuple(notes.guesses),
    )


def model_shape(facts: ModelFacts) -> policy.ModelShape:
    """Total and active parameters, hidden size, layers and vocabulary, as the memory model reads them."""
    return policy.model_shape(facts.params, active_params=facts.active_params, hidden=facts.hidden_size,
                              layers=facts.num_layers, vocab=facts.vocab_size, architecture=facts.architecture)


def _adapter(r: Recipe, facts: ModelFacts, notes: _Notes) -> tuple[bool, float, str]:
    """(LoRA or not, the learning rate, where the rate comes from): a full fine-tune never keeps LoRA's default."""
    auto = not isinstance(r.adapter.lora, bool)
    lora = facts.params > LORA_AUTO_THRESHOLD if auto else bool(r.adapter.lora)
    billions = facts.params / 1e9
    if r.adapter.lora is False and facts.params > LORA_AUTO_THRESHOLD:
        notes.warnings.append(f"LoRA is forced off on a {billions:.1f}B-parameter model: full fine-tuning needs far "
                              "more memory and money; consider `adapter.lora: auto`")
    rate = r.training.learning_rate
    if rate is not None:
        if auto and not lora and rate >= LORA_SIZED_RATE:
            notes.warnings.append(
                f"training.learning_rate {rate:g} is a LoRA-sized rate, but `adapter.lora: auto` chose a full "
                f"fine-tune of this {billions:.1f}B-parameter model, which usually trains at about "
                f"{FULL_LEARNING_RATE:g}: lower it (or remove it for that default), or set `adapter.lora: true`")
        return lora, rate, "recipe"
    if lora:
        return lora, LORA_LEARNING_RATE, "LoRA default"
    why = f"; `lora: auto` chose a full fine-tune below {LORA_AUTO_THRESHOLD / 1e9:g}B parameters" if auto else ""
    return lora, FULL_LEARNING_RATE, f"full fine-tune default, not LoRA's {LORA_LEARNING_RATE:g}{why}"


def _verdict(r: Recipe, report: DatasetReport, facts: ModelFacts, notes: _Notes) -> MethodVerdict:
    """Whether the data is ready for the method (a column mapping suggested where one fixes it)."""
    verdict = report.methods[r.method]
    if verdict.status == "needs_mapping" and verdict.mapping:
        pairs = ", ".join(f"{k}: {v}" for k, v in verdict.mapping.items())
        verdict = verdict.model_copy(update={"reason": f"{verdict.reason}; add `dataset.columns: {{{pairs}}}`"})
    if report.images and facts.vision is None:
        verdict = MethodVerdict(status="incompatible", reason=f"the dataset has images ('{report.images.column}') but "
                                f"{r.base_model} is a text-only model; use a vision-language base model such as "
                                "Qwen/Qwen2.5-VL-3B-Instruct or HuggingFaceTB/SmolVLM-Instruct")
    if verdict.status != "ready":
        notes.warnings.append(f"dataset not ready for {r.method.upper()}: {verdict.reason}")
    if report.truncated_cells:
        notes.warnings.append("the dataset viewer truncated some cells; token estimates are a lower bound")
    return verdict


def _rows(loaded: LoadedRecipe, report: DatasetReport, notes: _Notes) -> int | None:
    """The row count; an empty dataset is an error, not a plan with invented figures."""
    if report.rows == 0:
        d = loaded.recipe.dataset
        raise UserError(f"{loaded.display}: dataset: '{d.path}' (split '{d.split}') has no rows: nothing to train "
                        "on; add rows to it or point `dataset` at data that has some")
    if report.rows is None:
        notes.guesses.append(f"rows (row count unknown; assumed {UNKNOWN_ROWS:,})")
    elif not report.rows_exact:
        notes.guesses.append("rows (estimated from file size)")
    return report.rows


def _lengths(r: Recipe, report: DatasetReport, vision: VisionFacts | None, completion: int,
             notes: _Notes) -> tuple[float, float]:
    """(mean tokens per row, longest sequence) after truncation, from the sample (or assumed without one)."""
    t = r.training
    if report.images and vision is not None:
        warnings, guesses = image_notes(report, vision, t.max_length)
        notes.warnings += warnings
        notes.guesses += guesses
    if r.method == "grpo":
        notes.guesses.append(f"completion length (assumes completions reach max_completion_length {completion})")
    if not report.sample:
        notes.guesses.append(f"row length (no sample; assumed half of max_length {t.max_length})")
        return t.max_length / 2, float(t.max_length)
    row_tokens, longest, truncated = sequence_stats(report.sample, r.method, t.max_length, completion, vision)
    if truncated > 0:
        notes.warnings.append(f"{truncated:.0%} of sampled rows are longer than max_length {t.max_length} and will "
                              "be truncated")
    return row_tokens, longest
