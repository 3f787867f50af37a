"""The cost plan: pure arithmetic from recipe, dataset report, model facts and flavors.

The estimate is deliberately simple and stated, so a reviewer can check it:
- tokens: mean sampled row length (about 4 characters per token, plus each image's tokens as the
  model's processor settings make them) x rows x epochs;
- compute: 6 FLOPs per active parameter per token for full fine-tuning, 4 with LoRA (no
  weight gradients), +2 with gradient checkpointing, +2 for DPO's reference pass;
- time: compute over the flavor's peak throughput at its stated utilisation (MFU), plus
  start-up (image, model download);
- memory and the training setup: runner/jobs/train_policy.py, the same functions the job
  script runs with: the precision (fp32 master weights under autocast for full fine-tunes),
  weights, gradients and AdamW states (sharded by FSDP when one GPU is not enough),
  activations of the micro-batch that fills the GPU (checkpointed only when needed), overhead;
- flavor: the lowest estimated total cost among those that fit, not the cheapest hour.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from runner.dataset import DatasetReport
from runner.formats import MethodVerdict
from runner.hardware import GB, HardwareFlavor
from runner.images import ImageInfo, images_in
from runner.jobs import train_policy as policy
from runner.modelfacts import ASSUMED_IMAGE, ModelFacts, VisionFacts
from runner.recipe import LORA_AUTO_THRESHOLD, LoadedRecipe

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4  # chat-template markup around each turn
GENERATION_UTILISATION = 0.05  # GRPO decoding is memory-bound
MULTI_DEVICE_SCALING = 0.9
STARTUP_SECONDS = 300  # image pull, dependency install, dataset load
DOWNLOAD_BYTES_PER_SECOND = 200e6
MAX_HOURS = 48.0  # a flavor that needs longer is not considered
UNKNOWN_ROWS = 10_000
TIMEOUT_HEADROOM = 1.5
# A timeout the spend gate lowers to fit the budget must still leave the estimate this much room.
GATE_MARGIN = 1.25
MIN_TIMEOUT = 300  # the Hub's and the recipe's floor
# GitHub runner minutes: `train` follows a job for this long, then detaches; `reconcile` (every
# RECONCILE_INTERVAL minutes) carries it on with a light check (one billed minute) until it ends.
FOLLOW_MINUTES = 15
RECONCILE_INTERVAL = 30
SETUP_MINUTES = 2  # checkout, locked install, submission; the record job adds one more
FINISH_MINUTES = 3  # the reconcile that converts/records and commits back


CALIBRATION_MIN_RUNS = 3  # comparable finished runs before past errors scale the estimate
CALIBRATION_BOUNDS = (0.5, 3.0)  # the scale applied, whatever past records say
IMATRIX_TOKENS = 32_768  # the GGUF job's calibration text (64 chunks of 512 tokens at most)
GGUF_CPU_FLOPS = 1e11  # what the conversion job's CPUs sustain for the imatrix forward pass


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


class PlannedJob(BaseModel):
    """One job the run will submit, exactly as the pipeline submits it."""

    stage: Literal["train", "gguf"]
    flavor: str
    timeout_seconds: int
    usd_per_hour: float
    hours: float
    cost_usd: float  # the estimate
    max_cost_usd: float  # the worst case: the whole timeout, billed
# Evaluation. Greedy decoding with transformers' generate is bound by per-step overhead on small
# models, not FLOPs: one step of a batch takes at least this long on a GPU (~40 tokens/s at batch 1).
DECODE_STEP_SECONDS = 0.025
HARNESS_STARTUP_SECONDS = 60  # lm-eval reloads the model and fetches each task's data
HARNESS_BATCH = 16
# lm-eval tasks: (prompt tokens, generated tokens) per sample; unknown tasks are read as multiple
# choice (four loglikelihood passes over ~500 tokens, nothing generated).
TASK_TOKENS = {"gsm8k": (900, 256), "gsm8k_cot": (1000, 256), "ifeval": (100, 1280), "mbpp": (600, 256),
               "humaneval": (200, 512), "minerva_math": (1200, 512), "bbh": (1000, 256)}
MULTIPLE_CHOICE_TOKENS = (2000, 0)


class ModelShapeInfo(BaseModel):
    """The shape the memory model used (the config's, or a rule of thumb from the size): the job reuses it."""

    hidden_size: int
    num_layers: int
    vocab_size: int
    architecture: str | None


class TrainingSetup(BaseModel):
    """How the job trains on the chosen flavor (runner/jobs/train_policy.py `Setup`): what train.py runs with."""

    device: str
    world_size: int
    model_dtype: str
    autocast: str
    optimizer_dtype: str
    bf16: bool
    fp16: bool
    attn_implementation: str
    use_liger_kernel: bool
    packing: bool
    padding_free: bool
    group_by_length: bool
    gradient_checkpointing: bool
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    effective_batch: int
    strategy: Literal["single", "ddp", "fsdp"]
    fsdp: bool
    batch_source: Literal["memory model", "recipe"]
    memory_gb: float | None
    memory_capacity_gb: float
    fits: bool


# Run records keep the plan a run started from (runner/ledger.py): a field added here needs a
# default, or the records already committed stop loading.
class Plan(BaseModel):
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
    dataset: MethodVerdict
    rows: int | None
    tokens: int
    flavor: str | None
    strategy: Literal["single", "ddp", "fsdp"] | None
    devices: int
    memory_gb: float
    memory_capacity_gb: float | None
    fits: bool
    hours: float
    eval_hours: float = 0.0  # part of `hours`: held-out evaluation, samples and benchmark tasks
    eval_rows: int = 0  # held-out rows evaluated before and after training
    train_cost_usd: float
    gguf_cost_usd: float
    cost_usd: float
    max_cost_usd: float
    timeout_seconds: int
    budget_usd: float | None
    within_budget: bool
    jobs: list[PlannedJob]
    refusal: str | None  # why the spend gate would refuse this run (None: it would submit)
    runner_minutes: float  # expected GitHub Actions runner minutes for this run
    calibration: Calibration | None = None  # past estimate errors in this repo, and the scale applied
    output_repo: str | None
    price_source: str
    # Defaults: older run records kept their plan without these two.
    warnings: list[str] = []
    guesses: list[str] = []
    image_tokens_per_row: float | None = None  # a vision-language run: mean tokens the images take
    setup: TrainingSetup | None = None  # precision, kernels, batch split on the chosen flavor
    sequence_tokens: int = 0  # longest sampled sequence after truncation: what the job sizes unpacked batches by
    model_shape: ModelShapeInfo | None = None

    @property
    def ok(self) -> bool:
        return self.fits and self.within_budget and self.refusal is None and self.dataset.status == "ready"

    def job(self, stage: str) -> PlannedJob | None:
        return next((j for j in self.jobs if j.stage == stage), None)


# --- tokens ------------------------------------------------------------------------------------


def _text_tokens(value: Any) -> float:
    if isinstance(value, ImageInfo) or images_in(value):
        return 0.0  # counted by image_tokens
    if isinstance(value, str):
        return len(value) / CHARS_PER_TOKEN
    if isinstance(value, list):  # a conversation
        return sum(_text_tokens(m.get("content", "")) + TOKENS_PER_MESSAGE if isinstance(m, dict) else _text_tokens(m)
                   for m in value)
    if isinstance(value, dict):
        return sum(_text_tokens(v) for v in value.values())
    return 0.0 if value is None else len(str(value)) / CHARS_PER_TOKEN


def image_tokens(row: dict[str, Any], vision: VisionFacts | None) -> int:
    """Tokens the row's images take in the prompt (none for a text-only model, which cannot see them)."""
    if vision is None:
        return 0
    return sum(vision.tokens(i.width, i.height) for v in row.values() for i in images_in(v))


def row_sequences(row: dict[str, Any], method: str, completion_tokens: int,
                  vision: VisionFacts | None = None) -> list[float]:
    """Token lengths of the sequences one row becomes in training, before truncation."""
    if method == "dpo":  # images sit in the prompt, which both the chosen and the rejected sequence repeat
        prompt = _text_tokens(row.get("prompt")) + image_tokens(row, vision)
        return [prompt + _text_tokens(row.get("chosen")), prompt + _text_tokens(row.get("rejected"))]
    if method == "sft":
        if "messages" in row:
            return [_text_tokens(row["messages"])]
        if "text" in row:
            return [_text_tokens(row["text"])]
        return [_text_tokens(row.get("prompt")) + _text_tokens(row.get("completion")) + 2 * TOKENS_PER_MESSAGE]
    if method == "grpo":
        return [_text_tokens(row.get("prompt")) + completion_tokens]
    return [_text_tokens(row)]


def sequence_stats(rows: Sequence[dict], method: str, max_length: int, completion_tokens: int,
                   vision: VisionFacts | None = None) -> tuple[float, float, float]:
    """(mean tokens per row, longest sequence, fraction of rows truncated), all after truncation."""
    if not rows:
        return 0.0, 0.0, 0.0
    per_row, longest, truncated = [], 0.0, 0
    for row in rows:
        seqs = row_sequences(row, method, completion_tokens, vision)
        truncated += any(s > max_length for s in seqs)
        clipped = [min(s, max_length) for s in seqs]
        per_row.append(sum(clipped))
        longest = max(longest, *clipped)
    return sum(per_row) / len(per_row), longest, truncated / len(rows)


# --- shape and memory --------------------------------------------------------------------------


def model_shape(facts: ModelFacts) -> policy.ModelShape:
    """Total and active parameters, hidden size, layers and vocabulary, as the memory model reads them."""
    return policy.model_shape(facts.params, active_params=facts.active_params, hidden=facts.hidden_size,
                              layers=facts.num_layers, vocab=facts.vocab_size, architecture=facts.architecture)


def lora_params(facts: ModelFacts, r: int) -> int:
    return policy.lora_params(model_shape(facts), r)


def peak_memory(
    facts: ModelFacts, flavor: HardwareFlavor, *, lora: bool, r: int, method: str, batch: int, seq: float,
    checkpointing: bool, completion_tokens: int, generations: int, strategy: str,
) -> float:
    """Estimated peak bytes on one device, in the precision the training policy picks for this flavor."""
    device = flavor.device
    return policy.peak_memory(
        model_shape(facts), device, policy.precision(device, method, lora), lora=lora, r=r, method=method,
        micro_batch=batch, seq=seq, checkpointing=checkpointing, completion_tokens=completion_tokens,
        generations=generations, shards=flavor.devices if strategy == "fsdp" else 1,
    )


# --- time and cost ---------------------------------------------------------------------------


def flops_per_token(params: int, *, lora: bool, checkpointing: bool, method: str) -> float:
    """Training FLOPs per token for `params` parameters per token (a mixture-of-experts' active ones)."""
    f = (4 if lora else 6) * params
    if checkpointing:
        f += 2 * params
    if method == "dpo":
        f += 2 * params
    return f


def billed(hours: float, usd_per_hour: float) -> float:
    """Jobs bill per started minute."""
    return math.ceil(hours * 60) * usd_per_hour / 60


def gguf_memory_gb(facts: ModelFacts) -> float:
    """RAM (GB) the conversion needs: the f16 model loaded, merged and written, plus headroom."""
    return facts.params * 2 * 2.5 / GB + 2


def gguf_flavor(facts: ModelFacts, flavors: Sequence[HardwareFlavor]) -> HardwareFlavor | None:
    """The cheapest flavor whose RAM holds the conversion: CPU flavors first, then a GPU flavor's host RAM."""
    need = gguf_memory_gb(facts)
    fitting = [f for f in flavors if f.ram_gb >= need]
    return min(fitting, key=lambda f: (f.is_gpu, f.usd_per_hour), default=None)


def gguf_hours(facts: ModelFacts, quantizations: int = 1, imatrix: bool = False) -> float:
    """Download, f16 conversion and one quantization with its smoke test, more per quantization, plus the imatrix."""
    billions = facts.params / 1e9
    minutes = 5 + 1.5 * billions + 0.75 * billions * max(quantizations - 1, 0)
    if imatrix:
        minutes += 2 * facts.params * IMATRIX_TOKENS / GGUF_CPU_FLOPS / 60
    return minutes / 60


def planned_job(stage: Literal["train", "gguf"], flavor: HardwareFlavor, hours: float, timeout: int) -> PlannedJob:
    return PlannedJob(stage=stage, flavor=flavor.name, timeout_seconds=timeout, usd_per_hour=flavor.usd_per_hour,
                      hours=hours, cost_usd=round(billed(hours, flavor.usd_per_hour), 4),
                      max_cost_usd=round(billed(timeout / 3600, flavor.usd_per_hour), 4))


def spend_gate(jobs: list[PlannedJob], budget: float | None, cap: float | None) -> tuple[list[PlannedJob], str | None,
                                                                                          list[str]]:
    """(jobs, refusal, notes): every job's worst case (timeout x price) within the budget, the budget within the cap.

    Where the worst case is over the budget, the training timeout is lowered to what the budget allows,
    as long as that leaves the estimate GATE_MARGIN of room; otherwise the run is refused with the numbers.
    """
    if budget is None:
        return jobs, ("no budget: set `budget_usd` in the recipe or in recipes/_defaults.yaml; nothing is "
                      "submitted to Hugging Face Jobs without one"), []
    if cap is not None and budget > cap:
        return jobs, f"budget_usd ${budget:.2f} is above the repository cap max_budget_usd ${cap:.2f}", []
    estimate = sum(j.cost_usd for j in jobs)
    if estimate > budget:
        return jobs, f"over budget: estimated ${estimate:.2f} exceeds budget_usd ${budget:.2f}", []
    worst = sum(j.max_cost_usd for j in jobs)
    if worst <= budget:
        return jobs, None, []
    train = next((j for j in jobs if j.stage == "train"), None)
    others = sum(j.max_cost_usd for j in jobs if j is not train)
    if train is None or train.usd_per_hour <= 0:
        return jobs, f"worst case ${worst:.2f} exceeds budget_usd ${budget:.2f}", []
    allowed = int((budget - others) * 60 / train.usd_per_hour) * 60  # whole billed minutes
    needed = max(math.ceil(train.hours * 3600 * GATE_MARGIN), MIN_TIMEOUT)
    if allowed >= needed:
        lowered = planned_job("train", _flavor_of(train), train.hours, min(allowed, train.timeout_seconds))
        note = (f"timeout lowered from {train.timeout_seconds // 60} to {lowered.timeout_seconds // 60} min so the "
                f"worst case (${lowered.max_cost_usd + others:.2f}) stays within budget_usd ${budget:.2f}")
        return [lowered if j is train else j for j in jobs], None, [note]
    floor = billed(needed / 3600, train.usd_per_hour) + others
    return jobs, (f"worst case ${worst:.2f} ({train.flavor} ${train.usd_per_hour:g}/h for the whole "
                  f"{train.timeout_seconds // 60}-min timeout{' + GGUF' if others else ''}) exceeds budget_usd "
                  f"${budget:.2f}, and the budget leaves no timeout with room for the estimated "
                  f"{train.hours * 60:.0f} min: raise budget_usd to at least ${floor:.2f} or shrink the run"), []


def _flavor_of(job: PlannedJob) -> HardwareFlavor:
    return HardwareFlavor(name=job.flavor, usd_per_hour=job.usd_per_hour, accelerator=None, count=0, memory_gb=0,
                          ram_gb=0, peak_tflops=0)


def runner_minutes(hours: float) -> float:
    """GitHub runner minutes a run holds: set-up, a bounded follow, a light reconcile check per interval, the finish."""
    minutes = hours * 60
    follow = min(minutes, FOLLOW_MINUTES)
    if minutes <= FOLLOW_MINUTES:
        return SETUP_MINUTES + 1 + follow
    checks = math.ceil((minutes - FOLLOW_MINUTES) / RECONCILE_INTERVAL)
    return SETUP_MINUTES + 1 + follow + checks + FINISH_MINUTES


class EvalWork(BaseModel):
    """What the training job evaluates, in sizes the clock cares about."""

    rows: int  # held-out rows, each evaluated before and after training (and every N steps)
    row_tokens: float
    method: str
    generations: int
    completion: int
    samples: int
    max_new_tokens: int
    every_steps: int | None
    tasks: list[str]
    task_limit: int


def eval_work(loaded: LoadedRecipe, rows: int, row_tokens: float) -> EvalWork:
    """The held-out rows and the rest of the evaluation a recipe asks for (mirrors runner/jobs/train.py)."""
    r = loaded.recipe
    e = r.evaluation
    if r.dataset.eval_split is not None:
        held = e.max_rows
    else:
        held = held_out_rows(rows, r.dataset.held_out_fraction, e.max_rows, e.samples)
    return EvalWork(rows=held, row_tokens=row_tokens, method=r.method, generations=r.training.num_generations or 8,
                    completion=r.training.max_completion_length or 256, samples=min(e.samples, held),
                    max_new_tokens=e.max_new_tokens, every_steps=e.every_steps, tasks=list(e.tasks),
                    task_limit=e.task_limit)


def held_out_rows(rows: int, fraction: float, cap: int, samples: int) -> int:
    """Rows held out of the training split: the fraction, at least enough for the samples, at most the cap.

    Never more than a tenth of the data for the samples' sake, and never every row. The job script
    applies the same rule (runner/jobs/train.py `held_out_rows`).
    """
    if fraction <= 0 or rows < 2:
        return 0
    n = max(math.ceil(fraction * rows), min(samples, rows // 10))
    return max(0, min(n, cap, rows - 1))


def _decode_seconds(facts: ModelFacts, flavor: HardwareFlavor, batches: float, tokens: int, batch: int) -> float:
    """Greedy decoding of `batches` batches of `batch` sequences, `tokens` steps each."""
    per_step = max(DECODE_STEP_SECONDS,
                   batch * 2 * facts.compute_params / (flavor.peak_tflops * 1e12 * GENERATION_UTILISATION))
    return batches * tokens * per_step


def eval_seconds(work: EvalWork, facts: ModelFacts, flavor: HardwareFlavor, steps: float) -> float:
    """Wall time evaluation adds to the training job on one flavor."""
    if work.rows == 0 and not work.tasks:
        return 0.0
    forward = flavor.peak_tflops * 1e12 * flavor.mfu * flavor.devices
    passes = 2 + (int(steps // work.every_steps) if work.every_steps else 0)  # before, after, every N steps
    seconds = 0.0
    if work.method == "grpo":  # each held-out prompt: num_generations completions, then the rewards
        seconds += passes * _decode_seconds(facts, flavor, math.ceil(work.rows / 8), work.completion,
                                            8 * work.generations)
    else:  # DPO scores chosen and rejected with the policy and the reference
        sequences = 4 if work.method == "dpo" else 1
        seconds += passes * work.rows * work.row_tokens * sequences * 2 * facts.compute_params / forward
    seconds += 2 * _decode_seconds(facts, flavor, 1, work.max_new_tokens, work.samples) if work.samples else 0.0
    if work.tasks:
        seconds += HARNESS_STARTUP_SECONDS
        for task in work.tasks:
            prompt, generated = TASK_TOKENS.get(task, MULTIPLE_CHOICE_TOKENS)
            seconds += work.task_limit * prompt * 2 * facts.compute_params / forward
            if generated:
                seconds += _decode_seconds(facts, flavor, math.ceil(work.task_limit / HARNESS_BATCH), generated,
                                           HARNESS_BATCH)
    return seconds


class _Option(BaseModel):
    flavor: HardwareFlavor
    setup: TrainingSetup
    hours: float
    eval_hours: float = 0.0
    cost: float
    tokens: float
    fits: bool

    @property
    def memory(self) -> float:
        return (self.setup.memory_gb or 0.0) * GB

    @property
    def strategy(self) -> Literal["single", "ddp", "fsdp"]:
        return self.setup.strategy


def _evaluate(flavor: HardwareFlavor, ctx: dict[str, Any]) -> _Option:
    facts: ModelFacts = ctx["facts"]
    n = flavor.devices
    setup = TrainingSetup(**policy.resolve(ctx["job"], flavor.device).as_dict())
    if ctx["max_steps"]:
        samples = ctx["max_steps"] * setup.effective_batch
        rows_seen = samples / ctx["generations"] if ctx["method"] == "grpo" else samples
    else:
        rows_seen = ctx["rows"] * ctx["epochs"]
    tokens = rows_seen * ctx["row_tokens"] * (ctx["generations"] if ctx["method"] == "grpo" else 1)
    fpt = flops_per_token(facts.compute_params, lora=ctx["lora"], checkpointing=setup.gradient_checkpointing,
                          method=ctx["method"])
    throughput = flavor.peak_tflops * 1e12 * flavor.mfu * n * (MULTI_DEVICE_SCALING if n > 1 else 1.0)
    seconds = tokens * fpt / throughput
    if ctx["method"] == "grpo":
        generated = rows_seen * ctx["generations"] * ctx["completion"]
        seconds += generated * 2 * facts.compute_params / (flavor.peak_tflops * 1e12 * GENERATION_UTILISATION * n)
    seconds += STARTUP_SECONDS + facts.params * 2 / DOWNLOAD_BYTES_PER_SECOND
    steps = rows_seen / max(setup.effective_batch, 1) * (ctx["generations"] if ctx["method"] == "grpo" else 1)
    evaluation = eval_seconds(ctx["eval"], facts, flavor, steps)
    hours = (seconds + evaluation) / 3600
    return _Option(flavor=flavor, setup=setup, hours=hours, eval_hours=evaluation / 3600,
                   cost=billed(hours, flavor.usd_per_hour), tokens=tokens, fits=setup.fits and hours <= MAX_HOURS)


def _image_notes(report: DatasetReport, vision: VisionFacts, max_length: int, guesses: list[str]) -> list[str]:
    """Guesses and warnings about image tokens (appends the guesses, returns the warnings)."""
    if vision.kind == "qwen_vl":
        how = (f"patch {vision.patch_size} x merge {vision.merge_size}, {vision.min_pixels:,}-{vision.max_pixels:,} "
               "pixels")
    else:
        how = (f"{vision.image_seq_len} per {vision.tile_size}px tile, longest edge {vision.longest_edge}"
               + ("" if vision.splitting else ", no splitting"))
    guesses.append(f"image tokens (from the processor settings: {how})")
    unknown = sum(1 for r in report.sample for v in r.values() for i in images_in(v) if not i.pixels)
    if unknown:
        guesses.append(f"image size ({unknown} sampled image(s) of unknown size assumed "
                       f"{ASSUMED_IMAGE[0]}x{ASSUMED_IMAGE[1]})")
    most = max((image_tokens(r, vision) for r in report.sample), default=0)
    if most >= max_length:
        return [f"a sampled row's images take {most} tokens, more than max_length {max_length}: truncation would "
                "cut image tokens and training fails; raise training.max_length or use smaller images"]
    return []


def recommended_timeout(hours: float) -> int:
    seconds = hours * 3600 * TIMEOUT_HEADROOM + 600
    return max(1800, math.ceil(seconds / 600) * 600)


def plan(
    loaded: LoadedRecipe,
    report: DatasetReport,
    facts: ModelFacts,
    flavors: Sequence[HardwareFlavor],
    *,
    price_source: str = "built-in price table",
    history: Sequence[PastRun] = (),
) -> Plan:
    r = loaded.recipe
    t = r.training
    warnings: list[str] = []
    guesses: list[str] = ["tokens (about 4 characters per token)"]
    if facts.is_guess:
        how = "a table of well-known models" if facts.source == "table" else "the model's name"
        guesses.append(f"params (from {how})")
    if not price_source.startswith("live"):
        guesses.append(f"prices ({price_source})")

    lora = r.adapter.lora if isinstance(r.adapter.lora, bool) else facts.params > LORA_AUTO_THRESHOLD
    if r.adapter.lora is False and facts.params > LORA_AUTO_THRESHOLD:
        warnings.append(f"LoRA is forced off on a {facts.params / 1e9:.1f}B-parameter model: full fine-tuning needs "
                        "far more memory and money; consider `adapter.lora: auto`")
    lr = t.learning_rate or (2e-4 if lora else 2e-5)

    verdict = report.methods[r.method]
    if verdict.status == "needs_mapping" and verdict.mapping:
        pairs = ", ".join(f"{k}: {v}" for k, v in verdict.mapping.items())
        verdict = verdict.model_copy(update={"reason": f"{verdict.reason}; add `dataset.columns: {{{pairs}}}`"})
    if verdict.status != "ready":
        warnings.append(f"dataset not ready for {r.method.upper()}: {verdict.reason}")
    if report.truncated_cells:
        warnings.append("the dataset viewer truncated some cells; token estimates are a lower bound")

    rows = report.rows
    if rows is None:
        guesses.append(f"rows (row count unknown; assumed {UNKNOWN_ROWS:,})")
    elif not report.rows_exact:
        guesses.append("rows (estimated from file size)")
    completion = t.max_completion_length or 256
    generations = t.num_generations or 8
    vision = facts.vision
    if report.images and vision is None:
        verdict = MethodVerdict(status="incompatible", reason=f"the dataset has images ('{report.images.column}') but "
                                f"{r.base_model} is a text-only model; use a vision-language base model such as "
                                "Qwen/Qwen2.5-VL-3B-Instruct or HuggingFaceTB/SmolVLM-Instruct")
        warnings.append(f"dataset not ready for {r.method.upper()}: {verdict.reason}")
    if report.images and vision is not None:
        warnings += _image_notes(report, vision, t.max_length, guesses)
    row_tokens, longest, truncated = sequence_stats(report.sample, r.method, t.max_length, completion, vision)
    if not report.sample:
        row_tokens, longest = t.max_length / 2, float(t.max_length)
        guesses.append(f"row length (no sample; assumed half of max_length {t.max_length})")
    if truncated > 0:
        warnings.append(f"{truncated:.0%} of sampled rows are longer than max_length {t.max_length} and will be "
                        "truncated")
    if r.method == "grpo":
        guesses.append(f"completion length (assumes completions reach max_completion_length {completion})")
    shape = model_shape(facts)
    seq_tokens = max(math.ceil(longest), 1)  # the job config carries it as an integer
    job = policy.Job(
        method=r.method, lora=lora, lora_r=r.adapter.r, batch_size=t.batch_size, grad_accum=t.grad_accum,
        pin_batch=t.pin_batch, max_length=t.max_length, sequence_tokens=seq_tokens, packing=t.packing,
        gradient_checkpointing=t.gradient_checkpointing, strategy=t.strategy, completion_tokens=completion,
        generations=generations, model=shape,
    )
    ctx = {
        "facts": facts, "method": r.method, "rows": rows or UNKNOWN_ROWS, "epochs": t.epochs,
        "max_steps": t.max_steps, "generations": generations, "completion": completion, "row_tokens": row_tokens,
        "lora": lora, "job": job,
        "eval": eval_work(loaded, rows or UNKNOWN_ROWS, row_tokens),
    }
    options = [_evaluate(f, ctx) for f in flavors if r.hardware in ("auto", f.name)]
    fitting = [o for o in options if o.fits]
    if r.hardware != "auto":
        chosen = options[0] if options else None
        if chosen and chosen.memory > chosen.flavor.memory_gb * GB:
            warnings.append(f"{r.hardware} does not fit: needs about {chosen.memory / GB:.1f} GB per device, has "
                            f"{chosen.flavor.memory_gb:g} GB")
        elif chosen and not chosen.fits:
            warnings.append(f"{r.hardware} would need about {chosen.hours:.0f} h; pick a faster flavor")
        if fitting and chosen is not None:
            cheaper = min((_evaluate(f, ctx) for f in flavors), key=lambda o: (not o.fits, o.cost, o.hours))
            if cheaper.fits and cheaper.flavor.name != r.hardware and cheaper.cost < chosen.cost * 0.8:
                warnings.append(f"{cheaper.flavor.name} would cost about ${cheaper.cost:.2f} instead of "
                                f"${chosen.cost:.2f}; consider `hardware: auto`")
    else:
        chosen = min(fitting, key=lambda o: (o.cost, o.hours)) if fitting else None
        if chosen is None:
            warnings.append("no hardware flavor fits this job; reduce batch_size or max_length, or enable LoRA")
    if chosen and chosen.flavor.is_gpu and not chosen.flavor.bf16:
        kept = "fp32 master weights" if not lora else "fp32 LoRA adapters"
        warnings.append(f"{chosen.flavor.name} has no bf16; training runs under fp16 autocast with {kept} and loss "
                        "scaling, which can be less stable than bf16")
    if chosen and chosen.strategy == "fsdp":
        warnings.append(f"the model does not fit one GPU; training is sharded with FSDP across {chosen.flavor.devices}")

    hours = chosen.hours if chosen else 0.0
    calibrated = calibration(history, r.method, chosen.flavor.accelerator if chosen else None)
    if calibrated and calibrated.applied and chosen:
        hours *= calibrated.applied
        warnings.append(f"time scaled by {calibrated.applied:.2f}, the median actual/estimate of "
                        f"{calibrated.comparable} past {r.method.upper()} runs on {chosen.flavor.accelerator or 'CPU'} "
                        "flavors in this repository")
    explicit = r.timeout_seconds
    timeout = explicit or recommended_timeout(hours)
    if explicit and chosen and explicit < hours * 3600 * 1.1:
        warnings.append(f"timeout risk: timeout {explicit // 60} min is below the estimated {hours * 60:.0f} min "
                        f"(recommended {recommended_timeout(hours) // 60} min)")
    jobs: list[PlannedJob] = [planned_job("train", chosen.flavor, hours, timeout)] if chosen else []
    problems: list[str] = []
    if r.gguf.enabled:
        converter = gguf_flavor(facts, flavors)
        if converter is None:
            problems.append(f"no flavor has the {gguf_memory_gb(facts):.0f} GB of RAM needed to convert this model "
                            "to GGUF; set `gguf.enabled: false` to train without the conversion")
        else:
            g_hours = gguf_hours(facts, len(r.gguf.quantizations), r.gguf.imatrix)
            jobs.append(planned_job("gguf", converter, g_hours, recommended_timeout(g_hours)))

    output_repo = loaded.output_repo
    if output_repo is None:
        warnings.append("no Hub output: set `output.repo` (or `namespace` in recipes/_defaults.yaml), or the trained "
                        "model is lost when the HF job ends")
    budget = r.budget_usd
    jobs, refusal, notes = spend_gate(jobs, budget, loaded.defaults.max_budget_usd)
    warnings += notes
    if problems:
        refusal = "; ".join(problems + ([refusal] if refusal else []))
    if refusal:
        warnings.append(refusal)
    train_job = next((j for j in jobs if j.stage == "train"), None)
    train_cost = train_job.cost_usd if train_job else 0.0
    gguf_cost = sum(j.cost_usd for j in jobs if j.stage == "gguf")
    cost = round(train_cost + gguf_cost, 4)
    max_cost = round(sum(j.max_cost_usd for j in jobs), 4)
    timeout = train_job.timeout_seconds if train_job else timeout
    within = budget is not None and refusal is None

    return Plan(
        recipe=loaded.display, name=r.name, method=r.method, base_model=r.base_model, dataset_path=r.dataset.path,
        params=facts.params,
        params_source=facts.source, active_params=facts.compute_params, lora=lora, learning_rate=lr, dataset=verdict, rows=rows,
        tokens=int(chosen.tokens if chosen else 0), flavor=chosen.flavor.name if chosen else None,
        strategy=chosen.strategy if chosen else None, devices=chosen.flavor.devices if chosen else 0,
        memory_gb=round((chosen.memory if chosen else 0) / GB, 2),
        memory_capacity_gb=chosen.flavor.memory_gb if chosen else None, fits=bool(chosen and chosen.fits),
        hours=round(hours, 4), eval_hours=round(chosen.eval_hours if chosen else 0.0, 4),
        eval_rows=ctx["eval"].rows, train_cost_usd=round(train_cost, 4), gguf_cost_usd=round(gguf_cost, 4),
        cost_usd=cost, max_cost_usd=max_cost, timeout_seconds=timeout, budget_usd=budget, within_budget=within,
        jobs=jobs, refusal=refusal, runner_minutes=round(runner_minutes(sum(j.hours for j in jobs)), 1),
        calibration=calibrated,
        output_repo=output_repo, price_source=price_source, warnings=warnings, guesses=guesses,
        image_tokens_per_row=round(sum(image_tokens(r, vision) for r in report.sample) / len(report.sample), 1)
        if report.images and vision and report.sample else None,
        setup=chosen.setup if chosen else None, sequence_tokens=seq_tokens,
        model_shape=ModelShapeInfo(hidden_size=shape.hidden, num_layers=shape.layers, vocab_size=shape.vocab,
                                   architecture=facts.architecture),
    )
