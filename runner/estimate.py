"""Time and money arithmetic of one run: FLOPs, evaluation, the GGUF job, billing, timeouts, runner minutes.

Pure functions of the model's facts, a flavor and sizes; runner/pricing.py applies them to a workload.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel

from runner.hardware import GB, HardwareFlavor
from runner.modelfacts import ModelFacts
from runner.recipe import LoadedRecipe

GENERATION_UTILISATION = 0.05  # GRPO decoding is memory-bound
MULTI_DEVICE_SCALING = 0.9
STARTUP_SECONDS = 300  # image pull, dependency install, dataset load
DOWNLOAD_BYTES_PER_SECOND = 200e6
TIMEOUT_HEADROOM = 1.5
# GitHub runner minutes: `train` follows a job for this long, then detaches; `reconcile` (every
# RECONCILE_INTERVAL minutes) carries it on with a light check (one billed minute) until it ends.
FOLLOW_MINUTES = 15
RECONCILE_INTERVAL = 30
SETUP_MINUTES = 2  # checkout, locked install, submission; the record job adds one more
FINISH_MINUTES = 3  # the reconcile that converts/records and commits back
IMATRIX_TOKENS = 32_768  # the GGUF job's calibration text (64 chunks of 512 tokens at most)
GGUF_CPU_FLOPS = 1e11  # what the conversion job's CPUs sustain for the imatrix forward pass
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


def flops_per_token(params: int, *, lora: bool, checkpointing: bool, method: str) -> float:
    """Training FLOPs per token for `params` parameters per token (a mixture-of-experts' active ones)."""
    f = (4 if lora else 6) * params
    if checkpointing:
        f += 2 * params
    if method == "dpo":
        f += 2 * params
    return f


def training_throughput(flavor: HardwareFlavor) -> float:
    """FLOP/s a training step reaches on all of the flavor's devices."""
    n = flavor.devices
    return flavor.peak_tflops * 1e12 * flavor.mfu * n * (MULTI_DEVICE_SCALING if n > 1 else 1.0)


def generation_seconds(facts: ModelFacts, flavor: HardwareFlavor, tokens: float) -> float:
    """Sampling `tokens` tokens (GRPO's completions), memory-bound."""
    return tokens * 2 * facts.compute_params / (flavor.peak_tflops * 1e12 * GENERATION_UTILISATION * flavor.devices)


def startup_seconds(facts: ModelFacts) -> float:
    """Image pull, installs, dataset load and the model download."""
    return STARTUP_SECONDS + facts.params * 2 / DOWNLOAD_BYTES_PER_SECOND


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


def recommended_timeout(hours: float) -> int:
    """The estimate with TIMEOUT_HEADROOM and ten minutes more, in whole ten minutes, at least half an hour."""
    seconds = hours * 3600 * TIMEOUT_HEADROOM + 600
    return max(1800, math.ceil(seconds / 600) * 600)


def runner_minutes(hours: float) -> float:
    """GitHub runner minutes a run holds: set-up, a bounded follow, a light reconcile check per interval, the finish."""
    minutes = hours * 60
    follow = min(minutes, FOLLOW_MINUTES)
    if minutes <= FOLLOW_MINUTES:
        return SETUP_MINUTES + 1 + follow
    checks = math.ceil((minutes - FOLLOW_MINUTES) / RECONCILE_INTERVAL)
    return SETUP_MINUTES + 1 + follow + checks + FINISH_MINUTES


# --- evaluation ----------------------------------------------------------------------------------


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


def _task_seconds(work: EvalWork, facts: ModelFacts, flavor: HardwareFlavor, forward: float) -> float:
    """The lm-eval benchmark tasks after training."""
    seconds = float(HARNESS_STARTUP_SECONDS)
    for task in work.tasks:
        prompt, generated = TASK_TOKENS.get(task, MULTIPLE_CHOICE_TOKENS)
        seconds += work.task_limit * prompt * 2 * facts.compute_params / forward
        if generated:
            seconds += _decode_seconds(facts, flavor, math.ceil(work.task_limit / HARNESS_BATCH), generated,
                                       HARNESS_BATCH)
    return seconds


def eval_seconds(work: EvalWork, facts: ModelFacts, flavor: HardwareFlavor, steps: float) -> float:
    """Wall time evaluation adds to the training job on one flavor."""
    if work.rows == 0 and not work.tasks:
        return 0.0
    forward = flavor.peak_tflops * 1e12 * flavor.mfu * flavor.devices
    passes = 2 + (int(steps // work.every_steps) if work.every_steps else 0)  # before, after, every N steps
    if work.method == "grpo":  # each held-out prompt: num_generations completions, then the rewards
        seconds = passes * _decode_seconds(facts, flavor, math.ceil(work.rows / 8), work.completion,
                                           8 * work.generations)
    else:  # DPO scores chosen and rejected with the policy and the reference
        sequences = 4 if work.method == "dpo" else 1
        seconds = passes * work.rows * work.row_tokens * sequences * 2 * facts.compute_params / forward
    if work.samples:
        seconds += 2 * _decode_seconds(facts, flavor, 1, work.max_new_tokens, work.samples)
    return seconds + (_task_seconds(work, facts, flavor, forward) if work.tasks else 0.0)
