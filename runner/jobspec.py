"""The JSON documents the job scripts read: recipe values travel as data, never as argv.

Pure functions: a validated recipe, its plan and where things live -> config dicts
matching the contracts of runner/jobs/train.py and runner/jobs/gguf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.plan import Plan
from runner.recipe import LoadedRecipe


@dataclass(frozen=True)
class Places:
    """Where a job reads and writes (local paths here; mounted paths on HF Jobs)."""

    model_dir: Path  # the trained model or adapter
    gguf_dir: Path
    work_dir: Path  # summaries and scratch


def _local_or_id(loaded: LoadedRecipe, value: str, is_local: bool) -> str:
    return str(loaded.local(value)) if is_local else value


def train_config(loaded: LoadedRecipe, plan: Plan, run_id: str, places: Places, *, push: bool) -> dict[str, Any]:
    r = loaded.recipe
    t = r.training
    lora = None
    if plan.lora:
        a = r.adapter
        lora = {"r": a.r, "alpha": a.alpha, "dropout": a.dropout, "target_modules": a.target_modules}
    rewards: list[dict[str, str]] = []
    for reward in r.rewards:
        if reward.builtin:
            rewards.append({"name": reward.builtin})
        else:
            assert reward.file and reward.function
            rewards.append({"path": str(loaded.local(reward.file)), "function": reward.function})
    return {
        "run_id": run_id,
        "method": r.method,
        "base_model": _local_or_id(loaded, r.base_model, r.base_model_is_local),
        "dataset": {
            "source": _local_or_id(loaded, r.dataset.path, r.dataset.is_local),
            "config": r.dataset.config,
            "split": r.dataset.split,
            "revision": r.dataset.revision,
            "columns": r.dataset.columns,
            "eval_split": r.dataset.eval_split,
        },
        "training": {
            "epochs": t.epochs,
            "max_steps": t.max_steps,
            "learning_rate": plan.learning_rate,
            "lr_scheduler": t.lr_scheduler,
            "warmup_ratio": t.warmup_ratio,
            "batch_size": t.batch_size,
            "grad_accum": t.grad_accum,
            "max_length": t.max_length,
            "packing": t.packing,
            "seed": t.seed,
            "gradient_checkpointing": t.gradient_checkpointing,
            "beta": t.beta,
            "num_generations": t.num_generations or 8,
            "max_completion_length": t.max_completion_length or 256,
        },
        "lora": lora,
        "rewards": rewards,
        "output_dir": str(places.model_dir),
        "hub_repo": loaded.output_repo if push else None,
        "private": r.output.private,
        "tracking": {"project": loaded.tracking_project, "space_id": r.tracking.space},
        "summary_path": str(places.work_dir / "train-summary.json"),
    }


def gguf_config(loaded: LoadedRecipe, places: Places, *, adapter: bool, push: bool) -> dict[str, Any]:
    r = loaded.recipe
    repo = loaded.output_repo
    return {
        "model_dir": str(places.model_dir),
        "base_model": _local_or_id(loaded, r.base_model, r.base_model_is_local) if adapter else None,
        "name": r.name,
        "quantizations": list(r.gguf.quantizations),
        "output_dir": str(places.gguf_dir),
        "hub_repo": f"{repo}-GGUF" if (push and repo) else None,
        "private": r.output.private,
        "summary_path": str(places.work_dir / "gguf-summary.json"),
    }
