"""Why a job failed, in words a person can act on.

Pure: the job's final status, the tail of its log and what the run fixed when it submitted
the job (its flavor, timeout and config) -> a kind and a one-line reason. The kinds:

- timeout: the limit, the step reached of the total, the recipe field to change, the checkpoint;
- oom: the flavor and its memory, the batch size, and the smallest change that should fit;
- data: the job's own `error:` line (bad rows, a missing column, a broken reward file);
- canceled: canceled, and by whom when the Hub says;
- infrastructure: anything else, with the Hub's (or the local launcher's) own message.

A reason never ends with whatever the last log line happened to be: that line is kept
in the record's log tail, not glued onto the reason.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from runner.hardware import BUILTIN_FLAVORS, HardwareFlavor
from runner.jobspec import JobConfig, TrainJobConfig

Kind = Literal["timeout", "oom", "data", "canceled", "infrastructure", "missing_output"]

# The job's progress line (runner/jobs/train.py): step, total and, when logged, the loss.
PROGRESS = re.compile(r"^progress step=(\d+)/(\d+)(?:.*?\bloss=([-+0-9.eE]+|nan|inf))?")
TIMEOUT = re.compile(r"time(d)?[ -]?out", re.IGNORECASE)
OOM = re.compile(r"out of memory|OutOfMemoryError|OOMKilled|\bMemoryError\b|exit code 137|code -9\b",
                 re.IGNORECASE)


class Diagnosis(BaseModel):
    kind: Kind
    reason: str
    step: int | None = None  # the last step the job reported, of `total_steps`
    total_steps: int | None = None


def duration(seconds: float) -> str:
    """90 -> '1m30s', 5400 -> '1h30m': the recipe's own way of writing a timeout."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s and not h else "")
    return text or "0s"


def progress(tail: list[str]) -> tuple[int, int] | None:
    """The last `progress step=S/T` line the job printed (see runner/jobs/train.py)."""
    for line in reversed(tail):
        m = PROGRESS.match(line.strip())
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def _flavor(name: str | None) -> HardwareFlavor | None:
    return next((f for f in BUILTIN_FLAVORS if f.name == name), None)


def _next_flavor(current: HardwareFlavor | None) -> HardwareFlavor | None:
    """The cheapest flavor with more memory per device than `current`."""
    if current is None:
        return None
    bigger = [f for f in BUILTIN_FLAVORS if f.is_gpu and f.memory_gb > current.memory_gb]
    return min(bigger, key=lambda f: (f.usd_per_hour, f.memory_gb), default=None)


def _oom_advice(config: TrainJobConfig, flavor: HardwareFlavor | None) -> str:
    """The smallest change first: batch size, then checkpointing, LoRA, and only then a bigger flavor."""
    batch = config.per_device_train_batch_size
    accum = config.gradient_accumulation_steps
    if batch > 1:
        half = batch // 2
        return (f"set training.batch_size: {half} with training.grad_accum: {accum * batch // half} "
                "(the same effective batch)")
    if not config.gradient_checkpointing_mode:
        return "set training.gradient_checkpointing: true"
    if not config.use_peft:
        return "set adapter.lora: true (train a LoRA adapter instead of every weight)"
    bigger = _next_flavor(flavor)
    if bigger:
        return f"set hardware: {bigger.name} ({bigger.memory_gb:.0f} GB per GPU)"
    return "shorten training.max_length or pick a smaller base model"


def diagnose(stage: str, job_stage: str, message: str | None, tail: list[str], *, recipe: str,
             flavor: str | None, config: JobConfig | None, timeout_seconds: int | None,
             checkpoint: str | None) -> Diagnosis:
    """Classify a job that ended other than COMPLETED; `checkpoint` says where one was saved, if any."""
    message = (message or "").strip()
    where = progress(tail)
    step, total = where if where else (None, None)
    job = "training job" if stage == "train" else "GGUF job"

    if job_stage == "CANCELED":
        by = f" ({message})" if message and message.lower() != "canceled" else ""
        return Diagnosis(kind="canceled", reason=f"the {job} was canceled{by}", step=step, total_steps=total)

    if TIMEOUT.search(message):
        limit = f"its {duration(timeout_seconds)} ({timeout_seconds} s) limit" if timeout_seconds else "its time limit"
        at = f" at step {step} of {total}" if where else ""
        if stage == "train":
            fix = f"raise `timeout` in {recipe}"
            if step and total and timeout_seconds:
                fix += f" (about {duration(timeout_seconds * total / step * 1.2)} at this pace)"
            fix += " or lower training.max_steps"
        else:
            fix = "the GGUF conversion has a fixed limit; report it"
        reason = f"the {job} ran out of time: it hit {limit}{at}; {fix}"
        if checkpoint:
            reason += f"; a checkpoint was saved at {checkpoint}"
        return Diagnosis(kind="timeout", reason=reason, step=step, total_steps=total)

    if OOM.search(message) or any(OOM.search(line) for line in tail):
        known = _flavor(flavor)
        on = (f"{known.name} ({known.memory_gb:.0f} GB per {'GPU' if known.is_gpu else 'machine'})"
              if known else (flavor or "this machine"))
        train = config if isinstance(config, TrainJobConfig) else None
        batch = f" at batch_size {train.per_device_train_batch_size}" if train else ""
        reason = f"the {job} ran out of memory on {on}{batch}"
        if train is not None:
            reason += f"; smallest change: {_oom_advice(train, known)} in {recipe}"
        return Diagnosis(kind="oom", reason=reason, step=step, total_steps=total)

    errors = [line.strip() for line in tail if line.strip().startswith(("error:", "gguf: error:"))]
    if errors:
        said = errors[-1].split("error:", 1)[1].strip()
        return Diagnosis(kind="data", reason=f"the {job} stopped on its input: {said}", step=step, total_steps=total)

    said = message or job_stage.lower()
    return Diagnosis(kind="infrastructure", reason=f"the {job} ended {job_stage}: {said}", step=step,
                     total_steps=total)
