"""The JSON documents the job scripts read: recipe values travel as data, never as argv.

Pure functions: a validated recipe, its plan and where things live -> config dicts
matching the contracts of runner/jobs/train.py and runner/jobs/gguf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # the local job launcher imports JobSpec: keep the planner out of its start-up
    from runner.plan import Plan
    from runner.recipe import LoadedRecipe


JOBS_DIR = Path(__file__).resolve().parent / "jobs"


def script_path(name: str) -> Path:
    return JOBS_DIR / f"{name}.py"


# Modules the job scripts import as siblings (standard library only): a remote job ships them too.
JOB_MODULES: tuple[str, ...] = ("train_policy.py",)


def script_files(name: str) -> dict[str, Path]:
    """The files a job needs beside each other: the script and the sibling modules it imports."""
    return {f"{name}.py": script_path(name), **{m: JOBS_DIR / m for m in JOB_MODULES}}


class JobSpec(BaseModel):
    """A job to run: one of the scripts in runner/jobs with its JSON config."""

    script: Literal["train", "gguf"]
    config: dict[str, Any]
    flavor: str | None = None
    timeout_seconds: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    processes: int = 1  # data-parallel processes (torchrun) for the training job
    # Remote engines ship the script and these repo-local inputs (repo-relative path -> local file)
    # to `bundle_repo` under `bundle_dir`, and mount that folder into the job.
    bundle_repo: str | None = None
    bundle_dir: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


BUNDLE_DIR = "runner"  # folder of the model repo that holds each run's job bundle: runner/<run_id>/


@dataclass(frozen=True)
class Places:
    """Where a job reads and writes: local paths here, container paths on HF Jobs.

    On HF Jobs the repo-local inputs (a local dataset file, reward functions, a local base
    model) are shipped with the job script to the model repo under runner/<run_id>/ and
    that folder is mounted read-only at `mount`; outputs go to the Hub, scratch to `work_dir`.
    """

    model_dir: Path
    gguf_dir: Path
    work_dir: Path  # summaries and scratch
    mount: str | None = None


def hf_places(mount: str) -> Places:
    # Relative to the job's working directory inside the container.
    return Places(model_dir=Path("output/model"), gguf_dir=Path("output/gguf"), work_dir=Path("output"), mount=mount)


def bundle_dir(run_id: str) -> str:
    return f"{BUNDLE_DIR}/{run_id}"


def _input(loaded: LoadedRecipe, places: Places, value: str, is_local: bool) -> str:
    """A recipe input as the job sees it: a Hub id, a local path, or its mounted copy."""
    if not is_local:
        return value
    path = loaded.local(value)
    return f"{places.mount}/{path.relative_to(loaded.root).as_posix()}" if places.mount else str(path)


def shipped_files(loaded: LoadedRecipe) -> dict[str, Path]:
    """Repo-local inputs a remote job needs, by repo-relative path: they travel with the script."""
    r = loaded.recipe
    paths: list[Path] = []
    if r.dataset.is_local:
        paths.append(loaded.local(r.dataset.path))
    paths += [loaded.local(w.file) for w in r.rewards if w.file]
    if r.base_model_is_local:
        base = loaded.local(r.base_model)
        paths += sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
    return {p.relative_to(loaded.root).as_posix(): p for p in paths}


def _summary_upload(repo: str | None, run_id: str, name: str) -> dict[str, str] | None:
    return {"repo": repo, "path": f"{bundle_dir(run_id)}/{name}"} if repo else None


def _model(plan: Plan) -> dict[str, Any]:
    shape = plan.model_shape
    return {"params": plan.params, "active_params": plan.active_params,
            "hidden_size": shape.hidden_size if shape else None, "num_layers": shape.num_layers if shape else None,
            "vocab_size": shape.vocab_size if shape else None, "architecture": shape.architecture if shape else None}


def train_config(loaded: LoadedRecipe, plan: Plan, run_id: str, places: Places, *, push: bool,
                 resume: bool = False) -> dict[str, Any]:
    repo = loaded.output_repo if push else None
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
            rewards.append({"path": _input(loaded, places, reward.file, True), "function": reward.function})
    return {
        "run_id": run_id,
        "method": r.method,
        "base_model": _input(loaded, places, r.base_model, r.base_model_is_local),
        "dataset": {
            "source": _input(loaded, places, r.dataset.path, r.dataset.is_local),
            "config": r.dataset.config,
            "split": r.dataset.split,
            "revision": r.dataset.revision,
            "columns": r.dataset.columns,
            "eval_split": r.dataset.eval_split,
            "eval_fraction": r.dataset.held_out_fraction,
        },
        "evaluation": r.evaluation.model_dump(),
        "training": {
            "epochs": t.epochs,
            "max_steps": t.max_steps,
            "learning_rate": plan.learning_rate,
            "lr_scheduler": t.lr_scheduler,
            "warmup_ratio": t.warmup_ratio,
            "batch_size": t.batch_size,
            "grad_accum": t.grad_accum,
            "pin_batch": t.pin_batch,
            "max_length": t.max_length,
            "sequence_tokens": plan.sequence_tokens or None,
            "packing": t.packing,
            "seed": t.seed,
            "gradient_checkpointing": t.gradient_checkpointing,
            "save_steps": t.save_steps,
            "strategy": t.strategy,
            "beta": t.beta,
            "num_generations": t.num_generations or 8,
            "max_completion_length": t.max_completion_length or 256,
        },
        "lora": lora,
        # The model's size and shape as the plan priced them: the job sizes its batches with the same numbers.
        "model": _model(plan),
        "rewards": rewards,
        "output_dir": str(places.model_dir),
        "hub_repo": repo,
        "private": r.output.private,
        "tracking": {"project": loaded.tracking_project, "space_id": r.tracking.space},
        "summary_path": str(places.work_dir / "train-summary.json"),
        "summary_upload": _summary_upload(repo, run_id, "train-summary.json"),
        # A retry resumes from the checkpoint the failed attempt pushed (last-checkpoint/ in hub_repo).
        "resume_from_checkpoint": resume,
    }


def gguf_config(loaded: LoadedRecipe, places: Places, run_id: str, *, adapter: bool, push: bool) -> dict[str, Any]:
    r = loaded.recipe
    repo = loaded.output_repo if push else None
    return {
        "model_dir": str(places.model_dir),
        "model_repo": repo,  # when set, the job downloads the trained model from here into model_dir
        "base_model": _input(loaded, places, r.base_model, r.base_model_is_local) if adapter else None,
        "name": r.name,
        "quantizations": list(r.gguf.quantizations),
        "imatrix": r.gguf.imatrix,
        # the training data: calibration text for the importance matrix, a conversation for the template check
        "dataset": {"source": _input(loaded, places, r.dataset.path, r.dataset.is_local), "config": r.dataset.config,
                    "split": r.dataset.split, "revision": r.dataset.revision, "columns": r.dataset.columns,
                    "eval_split": r.dataset.eval_split},
        "model_id": loaded.output_repo or r.name,  # the GGUF card's base_model
        "output_dir": str(places.gguf_dir),
        "hub_repo": f"{repo}-GGUF" if repo else None,
        "private": r.output.private,
        "summary_path": str(places.work_dir / "gguf-summary.json"),
        "summary_upload": _summary_upload(repo, run_id, "gguf-summary.json"),
    }
