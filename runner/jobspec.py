"""The jobs a run submits and the JSON configs the job scripts read: values travel as data, never as argv.

The configs are flat, typed and closed (`extra="forbid"`). The training config uses TRL's own field
names (TrainingArguments / SFTConfig / DPOConfig / GRPOConfig and ModelConfig) plus a few of ours, so
runner/jobs/train.py reads it with `HfArgumentParser(...).parse_dict(..., allow_extra_keys=False)`:
a key either side does not know fails loudly (tests/test_job_contract.py checks both sides agree).
Pure functions: a validated recipe, its plan and where things live -> those configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from runner import imagefiles
from runner.errors import UserError
from runner.recipe import Evaluation, first_symlink

if TYPE_CHECKING:  # the local job launcher imports JobSpec: keep the planner out of its start-up
    from runner.plan import Plan
    from runner.recipe import LoadedRecipe
    from runner.revisions import Resolved


JOBS_DIR = Path(__file__).resolve().parent / "jobs"


def script_path(name: str) -> Path:
    return JOBS_DIR / f"{name}.py"


# Modules the job scripts import as siblings (standard library only): a remote job ships them too.
JOB_MODULES: tuple[str, ...] = ("train_policy.py",)


def script_files(name: str) -> dict[str, Path]:
    """The files a job needs beside each other: the script and the sibling modules it imports."""
    return {f"{name}.py": script_path(name), **{m: JOBS_DIR / m for m in JOB_MODULES}}


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
        data = loaded.local(r.dataset.path)
        paths += [data, *imagefiles.named_by(data, f"{loaded.display}: dataset {r.dataset.path}", r.dataset.columns)]
    paths += [loaded.local(w.file) for w in r.rewards if w.file]
    if r.base_model_is_local:
        base = loaded.local(r.base_model)
        paths += sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
    # Defence in depth (validate refuses these first): never read a file through a link when shipping.
    for value in [r.dataset.path if r.dataset.is_local else None, r.base_model if r.base_model_is_local else None,
                  *(w.file for w in r.rewards)]:
        if value and (link := first_symlink(loaded.root, value)):
            raise UserError(f"{loaded.display}: '{link}' is a symbolic link; nothing is shipped through a link")
    return {p.relative_to(loaded.root).as_posix(): p for p in paths}


class RewardRef(BaseModel):
    """A reward function as the job loads it: a built-in by name, or `function` from the file at `path`."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    path: str | None = None
    function: str | None = None


class _JobConfig(BaseModel):
    """What every job config has: where it writes, and where its summary goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    output_dir: str
    summary_path: str  # written by the job on its own disk
    summary_repo: str | None = None  # ... and uploaded to this repo (HF Jobs), at summary_repo_path
    summary_repo_path: str | None = None
    # Each kind also says `repo` (the Hub repo it pushes its output to; None: output_dir here) and `private`.


class TrainJobConfig(_JobConfig):
    """runner/jobs/train.py's config: TRL's field names, plus ours (see JobArguments in train.py)."""

    # ours: what the run is and what TRL has no field for
    run_id: str
    method: Literal["sft", "dpo", "grpo"]
    dataset_name: str  # a Hub id or a path the job can read
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_test_split: str | None = None  # a held-out split to evaluate on
    dataset_revision: str | None = None
    dataset_columns: dict[str, str] | None = None
    eval_fraction: float = 0.0  # else this share of the training split is held out
    evaluation: Evaluation = Field(default_factory=Evaluation)
    rewards: list[RewardRef] = Field(default_factory=list)
    pin_batch: bool = False
    packing_mode: Literal["auto"] | bool = "auto"  # resolved per device into TRL's packing / padding_free
    gradient_checkpointing_mode: Literal["auto"] | bool = "auto"  # resolved per device (memory)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    sequence_tokens: float | None = None  # the plan's sequence length estimate (sizes the batch)
    # the model's size and shape as the plan priced them: the job sizes its batches with the same numbers
    model_params: int | None = None
    model_active_params: int | None = None
    model_hidden_size: int | None = None
    model_num_layers: int | None = None
    model_vocab_size: int | None = None
    model_architecture: str | None = None
    # TRL ModelConfig
    model_name_or_path: str
    model_revision: str | None = None  # the base model's commit the run resolved (None: local, or main)
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] | None = None
    # transformers TrainingArguments (as TRL's configs extend it)
    num_train_epochs: float
    max_steps: int = -1
    learning_rate: float
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.0  # transformers 5: a ratio when < 1
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    seed: int = 42
    save_steps: float = 100
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_revision: str | None = None  # the branch push_to_hub and the checkpoint pushes go to (None: main)
    hub_private_repo: bool = True
    project: str = "recipes-runner"  # Trackio
    trackio_space_id: str | None = None
    run_name: str | None = None
    resume_from_checkpoint: str | None = None  # "last-checkpoint": the previous attempt's (Hub or disk)

    @property
    def repo(self) -> str | None:
        """The model repo the job pushes to; None: output_dir on this machine."""
        return self.hub_model_id

    @property
    def branch(self) -> str | None:
        """The branch of `repo` the job pushes to; None: main."""
        return self.hub_revision

    @property
    def private(self) -> bool:
        """Whether the repos the job creates are private."""
        return self.hub_private_repo


class SFTJobConfig(TrainJobConfig):
    method: Literal["sft"] = "sft"
    max_length: int


class DPOJobConfig(TrainJobConfig):
    method: Literal["dpo"] = "dpo"
    max_length: int
    beta: float = 0.1


class GRPOJobConfig(TrainJobConfig):
    method: Literal["grpo"] = "grpo"
    num_generations: int = 8
    max_completion_length: int = 256


TrainConfig = Annotated[SFTJobConfig | DPOJobConfig | GRPOJobConfig, Field(discriminator="method")]


class GgufJobConfig(_JobConfig):
    """runner/jobs/gguf.py's config (GgufArguments there)."""

    name: str
    model_dir: str  # where the trained model is (downloaded there from model_repo when set)
    model_repo: str | None = None
    # The commit of model_repo the training job pushed: filled in when the GGUF job is submitted (the one
    # thing not known at the start), so a later push to the same repo is never the model converted.
    model_revision: str | None = None
    base_model: str | None = None  # set when the model is a LoRA adapter: merged into this base first
    base_model_revision: str | None = None  # ... at the commit training started from
    quantizations: list[str]
    imatrix: bool = False
    # the training data: calibration text for the importance matrix, a conversation for the template check
    dataset_name: str
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_test_split: str | None = None
    dataset_revision: str | None = None
    dataset_columns: dict[str, str] | None = None
    model_id: str  # the GGUF card's base_model
    hub_repo: str | None = None
    private: bool = True

    @property
    def repo(self) -> str | None:
        """The GGUF repo the job pushes to; None: output_dir on this machine."""
        return self.hub_repo

    @property
    def branch(self) -> str | None:
        """A GGUF job always pushes to its repo's main."""
        return None


JobConfig = TrainConfig | GgufJobConfig


class JobConfigs(BaseModel):
    """The configs a run fixed when it started: what its jobs run with, whatever the recipe says later."""

    model_config = ConfigDict(extra="forbid")
    train: TrainConfig | None = None
    gguf: GgufJobConfig | None = None  # None: the run converts nothing


class JobSpec(BaseModel):
    """A job to run: one of the scripts in runner/jobs with its JSON config."""

    script: Literal["train", "gguf"]
    config: JobConfig
    flavor: str | None = None
    timeout_seconds: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    processes: int = 1  # data-parallel processes (torchrun) for the training job
    # Remote engines ship the script and these repo-local inputs (repo-relative path -> local file)
    # to `bundle_repo` under `bundle_dir`, and mount that folder into the job.
    bundle_repo: str | None = None
    bundle_dir: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


def _summary_target(repo: str | None, run_id: str, name: str) -> dict[str, str | None]:
    return {"summary_repo": repo, "summary_repo_path": f"{bundle_dir(run_id)}/{name}" if repo else None}


def _model(plan: Plan) -> dict[str, int | str | None]:
    shape = plan.model_shape
    return {"model_params": plan.params, "model_active_params": plan.active_params,
            "model_hidden_size": shape.hidden_size if shape else None,
            "model_num_layers": shape.num_layers if shape else None,
            "model_vocab_size": shape.vocab_size if shape else None,
            "model_architecture": shape.architecture if shape else None}


def _dataset(loaded: LoadedRecipe, places: Places, resolved: Resolved | None) -> dict[str, object]:
    d = loaded.recipe.dataset
    # The commit the run resolved, else the recipe's pin (a run from before revisions were recorded).
    revision = resolved.dataset if resolved and resolved.dataset else d.revision
    return {"dataset_name": _input(loaded, places, d.path, d.is_local), "dataset_config": d.config,
            "dataset_train_split": d.split, "dataset_test_split": d.eval_split, "dataset_revision": revision,
            "dataset_columns": d.columns}


def _base_revision(loaded: LoadedRecipe, resolved: Resolved | None) -> str | None:
    return resolved.base_model if resolved and resolved.base_model else loaded.recipe.base_model_revision


CONFIG_CLASSES: dict[str, type[SFTJobConfig] | type[DPOJobConfig] | type[GRPOJobConfig]] = {
    "sft": SFTJobConfig, "dpo": DPOJobConfig, "grpo": GRPOJobConfig}


def trial_branch(trial: str, version: str) -> str:
    """The branch of the model repo a sweep's trial pushes to: its own, so trials training at once never push over
    each other's model or checkpoint; the version keeps a retry on its own checkpoint, not an older recipe's."""
    return f"trial-{trial}-{version[:8]}"


def train_config(loaded: LoadedRecipe, plan: Plan, run_id: str, places: Places, *, push: bool,
                 resume: bool = False, resolved: Resolved | None = None, branch: str | None = None) -> TrainConfig:
    """The training job's config for this recipe and plan; pushed to `branch` of the repo when given, else main."""
    repo = loaded.output_repo if push else None
    r = loaded.recipe
    t = r.training
    a = r.adapter
    rewards = [RewardRef(name=w.builtin) if w.builtin else
               RewardRef(path=_input(loaded, places, w.file or "", True), function=w.function) for w in r.rewards]
    method_fields: dict[str, dict[str, object]] = {
        "sft": {"max_length": t.max_length},
        "dpo": {"max_length": t.max_length} | ({"beta": t.beta} if t.beta is not None else {}),
        "grpo": {"num_generations": t.num_generations or 8, "max_completion_length": t.max_completion_length or 256},
    }
    per_method = method_fields[r.method]
    return CONFIG_CLASSES[r.method](
        run_id=run_id, **_dataset(loaded, places, resolved), eval_fraction=r.dataset.held_out_fraction,
        evaluation=r.evaluation, rewards=rewards, pin_batch=t.pin_batch, packing_mode=t.packing,
        gradient_checkpointing_mode=t.gradient_checkpointing, strategy=t.strategy,
        sequence_tokens=plan.sequence_tokens or None, **_model(plan),
        model_name_or_path=_input(loaded, places, r.base_model, r.base_model_is_local),
        model_revision=_base_revision(loaded, resolved), use_peft=plan.lora,
        lora_r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, lora_target_modules=a.target_modules,
        num_train_epochs=t.epochs, max_steps=t.max_steps or -1, learning_rate=plan.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, seed=t.seed, save_steps=t.save_steps or 100,
        push_to_hub=bool(repo), hub_model_id=repo, hub_revision=branch if repo else None,
        hub_private_repo=r.output.private,
        project=loaded.tracking_project, trackio_space_id=r.tracking.space, run_name=run_id,
        # A retry resumes from the checkpoint the failed attempt left (last-checkpoint/ in the repo, or on disk).
        resume_from_checkpoint="last-checkpoint" if resume else None,
        output_dir=str(places.model_dir), summary_path=str(places.work_dir / "train-summary.json"),
        **_summary_target(repo, run_id, "train-summary.json"), **per_method,
    )


def gguf_config(loaded: LoadedRecipe, places: Places, run_id: str, *, adapter: bool, push: bool,
                resolved: Resolved | None = None) -> GgufJobConfig:
    """The GGUF job's config: convert (merging an adapter first) and quantize the trained model."""
    r = loaded.recipe
    repo = loaded.output_repo if push else None
    return GgufJobConfig(
        name=r.name, model_dir=str(places.model_dir),
        model_repo=repo,  # when set, the job downloads the trained model from here into model_dir
        base_model=_input(loaded, places, r.base_model, r.base_model_is_local) if adapter else None,
        base_model_revision=_base_revision(loaded, resolved) if adapter else None,
        quantizations=list(r.gguf.quantizations), imatrix=r.gguf.imatrix, **_dataset(loaded, places, resolved),
        model_id=loaded.output_repo or r.name, hub_repo=f"{repo}-GGUF" if repo else None, private=r.output.private,
        output_dir=str(places.gguf_dir), summary_path=str(places.work_dir / "gguf-summary.json"),
        **_summary_target(repo, run_id, "gguf-summary.json"),
    )
