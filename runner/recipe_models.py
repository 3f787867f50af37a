"""The recipe models: what to train, on what, how, and for how much (pydantic, strict, frozen).

Repo-wide defaults live in `recipes/_defaults.yaml` (RepoDefaults) and are deep-merged under each recipe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runner import sweep as sweeps
from runner.gates import Gate
from runner.hardware import FLAVOR_NAMES
from runner.recipe_shapes import (BUILTIN_REWARDS, COLUMN, DATA_SUFFIXES, DEFAULT_EVAL_FRACTION, GGUF_TYPES, HUB_ID,
                                   IDENT, SLUG, SPLIT, TASK, did_you_mean, display, git_revision, hub_id,
                                   looks_local_dataset, parse_duration, repo_path)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Dataset(_Strict):
    """The training data: a Hub dataset or a file in the repository."""

    path: str = Field(description="Hub dataset id ('owner/name'), or a .jsonl/.json/.csv/.parquet file relative to "
                      "the repository root, e.g. data/train.jsonl")
    config: str | None = Field(None, description="Hub dataset configuration (subset) name")
    split: str = Field("train", description="split to train on")
    revision: str | None = Field(None, description="Hub dataset git revision (branch, tag or commit) to pin")
    columns: dict[str, str] | None = Field(
        default=None, description="rename columns before training, source -> TRL column, e.g. {question: prompt, "
        "answer: completion}; `runner inspect DATASET --method M` prints the mapping a dataset needs")
    eval_split: str | None = Field(None, description="held-out split (e.g. test, or train[95%:] of a local file)")
    eval_fraction: float | None = Field(None, ge=0, le=0.5, description=(
        f"share of `split` held out for evaluation when there is no eval_split; default {DEFAULT_EVAL_FRACTION}, "
        "0 turns evaluation off"))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return repo_path(v, DATA_SUFFIXES) if looks_local_dataset(v) else hub_id(v, "dataset")

    @field_validator("split", "eval_split", "config")
    @classmethod
    def _split(cls, v: str | None) -> str | None:
        if v is not None and not SPLIT.match(v):
            raise ValueError(f"'{v}' is not a valid name (letters, digits, '_', '-', '.')")
        return v

    @field_validator("eval_fraction", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _held_out(self) -> Dataset:
        if self.eval_split is not None and self.eval_fraction is not None:
            raise ValueError("set eval_split or eval_fraction, not both: eval_split is the held-out data")
        if self.eval_split is not None and self.eval_split == self.split:
            raise ValueError(f"eval_split '{self.eval_split}' is the training split: the model would be evaluated "
                             "on rows it trained on")
        return self

    @property
    def held_out_fraction(self) -> float:
        """The share of the training split held out (0 when an eval_split is given or evaluation is off)."""
        if self.eval_split is not None:
            return 0.0
        return DEFAULT_EVAL_FRACTION if self.eval_fraction is None else self.eval_fraction

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        return git_revision(v)

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for src, dst in (v or {}).items():
            for name in (src, dst):
                if not COLUMN.match(name):
                    raise ValueError(f"'{name}' is not a valid column name")
        if v and len(set(v.values())) != len(v):
            raise ValueError("two columns are mapped to the same target")
        return v

    @property
    def is_local(self) -> bool:
        return looks_local_dataset(self.path)


class Training(_Strict):
    """Hyperparameters; unset ones take the defaults shown."""

    epochs: float = Field(1.0, gt=0, le=100, description="passes over the dataset (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="optimizer steps; overrides epochs")
    learning_rate: float | None = Field(None, gt=0, le=1.0, description="peak learning rate; default 2e-4 with LoRA, "
                                        "2e-5 without")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr"] = Field(
        "cosine", description="learning-rate schedule after warm-up")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of the steps spent warming up")
    batch_size: int = Field(4, ge=1, le=1024, description="rows per device per step, as written (see pin_batch)")
    grad_accum: int = Field(4, ge=1, le=1024, description="gradient accumulation steps; batch_size x grad_accum is "
                            "the batch of one optimizer step")
    pin_batch: bool = Field(False, description="keep batch_size and grad_accum per device as written; by default "
                            "their product is the global batch, re-split to fill the GPU")
    max_length: int = Field(1024, ge=16, le=262_144, description="longest sequence in tokens; longer rows are "
                            "truncated (the plan warns how many)")
    packing: Literal["auto"] | bool = Field("auto", description="pack rows into full sequences without padding: "
                                            "auto where FlashAttention runs, or true / false")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="random seed")
    gradient_checkpointing: Literal["auto"] | bool = Field("auto", description="recompute activations in the backward "
                                                           "pass to save memory: auto only when memory needs it, or "
                                                           "true / false")
    save_steps: int = Field(100, ge=1, le=10_000_000, description="checkpoint every N steps (what a retry resumes "
                            "from)")
    strategy: Literal["auto", "ddp", "fsdp"] = Field("auto", description="multi-GPU: auto = FSDP only when a "
                                                     "replica does not fit one GPU")
    beta: float | None = Field(None, gt=0, le=100, description="DPO only: KL penalty strength; TRL's default 0.1")
    num_generations: int | None = Field(None, ge=2, le=256, description="GRPO only: completions sampled per prompt; "
                                        "default 8")
    max_completion_length: int | None = Field(None, ge=1, le=131_072, description="GRPO only: longest generated "
                                              "completion in tokens; default 256")

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("packing", "gradient_checkpointing", mode="before")
    @classmethod
    def _auto_or_bool(cls, v: Any) -> Any:
        if v not in ("auto", True, False) or isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError(f"must be auto, true or false, not {v!r}")
        return v


class Adapter(_Strict):
    """LoRA: train a small adapter instead of every weight."""

    lora: Literal["auto"] | bool = Field("auto", description="train a LoRA adapter (true), the whole model (false), "
                                         "or let the plan decide (auto: LoRA above 3B parameters)")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling alpha")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear', or a list of module names "
                                            "such as [q_proj, v_proj]")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        ok = v == "all-linear" or (isinstance(v, list) and v and all(isinstance(m, str) and IDENT.match(m) for m in v))
        if not ok:
            raise ValueError("must be 'all-linear' or a list of module names such as [q_proj, v_proj]")
        return v

    @field_validator("lora", mode="before")
    @classmethod
    def _lora(cls, v: Any) -> Any:
        if v not in ("auto", True, False) or isinstance(v, (int, float)) and not isinstance(v, bool):
            raise ValueError(f"must be auto, true or false, not {v!r}")
        return v

    @field_validator("dropout", mode="before")
    @classmethod
    def _float(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class Reward(_Strict):
    """A GRPO reward: a built-in by name, or `function` in a repo-local Python `file`."""

    builtin: str | None = Field(None, description=f"a built-in reward: {', '.join(BUILTIN_REWARDS)}; "
                                "exact_answer needs an 'answer' column")
    file: str | None = Field(None, description="a repo-relative .py file holding the reward function")
    function: str | None = Field(None, description="the function in `file`: (completions, **kwargs) -> list[float]")

    @model_validator(mode="after")
    def _one_form(self) -> Reward:
        if self.builtin is not None:
            if self.file is not None or self.function is not None:
                raise ValueError("give either 'builtin' or 'file' with 'function', not both")
            if self.builtin not in BUILTIN_REWARDS:
                hint = did_you_mean(self.builtin, BUILTIN_REWARDS)
                raise ValueError(f"unknown built-in reward '{self.builtin}'{hint}"
                                 f"; built-ins are {', '.join(BUILTIN_REWARDS)}")
        elif self.file is None or self.function is None:
            raise ValueError("a reward needs 'builtin: NAME', or 'file: PATH.py' with 'function: NAME'")
        else:
            repo_path(self.file, (".py",))
            if not IDENT.match(self.function):
                raise ValueError(f"'{self.function}' is not a Python function name")
        return self


class Output(_Strict):
    """Where the trained model is pushed."""

    repo: str | None = Field(None, description="Hub model repo id; default <namespace>/<name>, with namespace "
                             "from recipes/_defaults.yaml")
    private: bool = Field(True, description="create the model repos private")

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        return None if v is None else hub_id(v, "model")


class Gguf(_Strict):
    """GGUF conversion for llama.cpp, LM Studio and Ollama."""

    enabled: bool = Field(True, description="convert the trained model to GGUF into <repo>-GGUF")
    quantizations: list[Literal[GGUF_TYPES]] = Field(  # type: ignore[valid-type]  # a Literal over the tuple
        default_factory=lambda: ["Q4_K_M"], min_length=1, description="GGUF files to produce, all from one f16; "
        "default [Q4_K_M]; IQ types need imatrix: true")
    imatrix: bool = Field(False, description="compute an importance matrix from the training data and quantize with it")

    @field_validator("quantizations", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return [q.upper() if isinstance(q, str) else q for q in v] if isinstance(v, list) else v

    @field_validator("quantizations")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"lists a quantization twice: {', '.join(v)}")
        return v

    @model_validator(mode="after")
    def _iq_needs_imatrix(self) -> Gguf:
        # llama.cpp refuses IQ1_*, IQ2_*, IQ3_XXS and IQ3_XS without an importance matrix; the other
        # IQ types are designed to be weighted by one.
        iq = [q for q in self.quantizations if q.startswith("IQ")]
        if iq and not self.imatrix:
            raise ValueError(f"{', '.join(iq)} need{'s' if len(iq) == 1 else ''} an importance matrix: "
                             "set gguf.imatrix: true")
        return self


class Evaluation(_Strict):
    """Before/after evaluation on held-out data, side-by-side samples, optional benchmark tasks."""

    max_rows: int = Field(256, ge=1, le=100_000, description="cap on held-out rows evaluated")
    every_steps: int | None = Field(None, ge=1, le=10_000_000, description="also evaluate every N steps")
    samples: int = Field(3, ge=0, le=32, description="held-out prompts answered by the base and the tuned model")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="length bound of each sample answer (greedy)")
    tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks run after training")
    task_limit: int = Field(100, ge=1, le=100_000, description="samples per benchmark task")
    gate: Gate | None = Field(None, description="what the run must show to publish as the recipe's current model "
                              "(see docs/gates.md)")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        from runner.benchmarks import task_problem

        for task in v:
            if not TASK.match(task):
                raise ValueError(f"'{task}' is not a task name (lowercase letters, digits, '_', '-', '.')")
            if problem := task_problem(task):
                raise ValueError(problem)
        if len(set(v)) != len(v):
            raise ValueError("a task is listed twice")
        return v


class Tracking(_Strict):
    """Trackio experiment tracking."""

    project: str | None = Field(None, description="Trackio project; default: the recipe name")
    space: str | None = Field(None, description="Trackio Space id, always created private")

    @field_validator("project")
    @classmethod
    def _project(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$", v):
            raise ValueError(f"'{v}' is not a valid project name (letters, digits, '_', '-', '.')")
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v: str | None) -> str | None:
        return None if v is None else hub_id(v, "Space")


Method = Literal["sft", "dpo", "grpo"]


class Recipe(_Strict):
    """A fine-tuning recipe: recipes/<name>.yaml (see README.md, "Recipes")."""

    name: str = Field(description="a slug (lowercase letters, digits, '-'); default: the file name; names the "
                      "model repo and runs/<name>.json")
    base_model: str = Field(description="Hub model id ('owner/name'), or ./path/to/model inside the repository")
    base_model_revision: str | None = Field(None, description="Hub base model git revision (branch, tag or commit) "
                                            "to pin; `runner watch` proposes a new commit when the model moves")
    method: Method = Field(description="sft (demonstrations), dpo (chosen/rejected pairs) or grpo (prompts and "
                           "reward functions)")
    dataset: Dataset = Field(description="the training data; a string is short for {path: ...}")
    training: Training = Field(Training(), description="hyperparameters")
    adapter: Adapter = Field(Adapter(), description="LoRA settings")
    rewards: list[Reward] = Field(default_factory=list, description="GRPO only: reward functions, at least one")
    hardware: str = Field("auto", description="a Hugging Face Jobs flavor, or auto: the cheapest estimated total "
                          "cost that fits")
    timeout: str | int = Field("auto", description="job timeout such as 90m, 2h, 1h30m (5 minutes to 7 days), or "
                               "auto: the estimate with headroom")
    output: Output = Field(Output(), description="where the trained model goes")
    gguf: Gguf = Field(Gguf(), description="GGUF conversion after training")
    evaluation: Evaluation = Field(Evaluation(), description="before/after evaluation on held-out data, samples, "
                                   "benchmark tasks")
    tracking: Tracking = Field(Tracking(), description="Trackio experiment tracking")
    budget_usd: float | None = Field(None, gt=0, le=1_000_000, description="most this recipe may cost in USD; the "
                                     "plan fails above it (capped by max_budget_usd in recipes/_defaults.yaml)")
    sweep: sweeps.Sweep | None = Field(None, description="train several trials that override a few hyperparameters "
                                       "and keep the best (see docs/sweeps.md)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"'{v}' is not a slug: use lowercase letters, digits and '-', at most 64 characters")
        return v

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, v: str) -> str:
        if v.startswith("./"):
            repo_path(v)
            return v  # keep './': it is what marks a local model
        return hub_id(v, "model")

    @field_validator("base_model_revision")
    @classmethod
    def _base_revision(cls, v: str | None) -> str | None:
        return git_revision(v)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("hardware")
    @classmethod
    def _hardware(cls, v: str) -> str:
        if v != "auto" and v not in FLAVOR_NAMES:
            raise ValueError(f"unknown hardware flavor '{v}'{did_you_mean(v, FLAVOR_NAMES)}; use 'auto' or one of "
                             f"{', '.join(FLAVOR_NAMES)}")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str | int) -> str | int:
        if v != "auto":
            parse_duration(v)
        return v

    @field_validator("budget_usd", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _method_fields(self) -> Recipe:
        t = self.training
        if self.method != "dpo" and t.beta is not None:
            raise ValueError("training.beta applies only to method 'dpo': remove it, or set method: dpo")
        if self.method != "grpo":
            if t.num_generations is not None or t.max_completion_length is not None:
                raise ValueError("training.num_generations and max_completion_length apply only to method 'grpo': "
                                 "remove them, or set method: grpo")
            if self.rewards:
                raise ValueError("rewards apply only to method 'grpo': remove them, or set method: grpo")
        elif not self.rewards:
            raise ValueError("method 'grpo' needs at least one reward in 'rewards', "
                             "e.g. rewards: [{builtin: exact_answer}]")
        if self.base_model_revision is not None and self.base_model_is_local:
            raise ValueError("base_model_revision pins a Hub model; a local base_model is pinned by the repository")
        return self

    @property
    def timeout_seconds(self) -> int | None:
        return None if self.timeout == "auto" else parse_duration(self.timeout)

    @property
    def base_model_is_local(self) -> bool:
        return self.base_model.startswith("./")


class RepoDefaults(_Strict):
    """`recipes/_defaults.yaml`: repo-wide settings plus recipe fields every recipe inherits."""

    namespace: str | None = None
    max_budget_usd: float | None = Field(None, gt=0)
    max_total_usd: float | None = Field(None, gt=0, description="the most all recipes of one merge may cost together "
                                        "in the worst case, USD; the plan check fails above it")
    max_sweep_trials: int = Field(sweeps.DEFAULT_MAX_TRIALS, ge=1, le=64, description="the most trials a recipe's "
                                  "sweep may list")

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str | None) -> str | None:
        if v is not None and (not HUB_ID.match(v) or "/" in v):
            raise ValueError(f"'{v}' is not a valid Hub user or organization name")
        return v


REPO_KEYS = set(RepoDefaults.model_fields)


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with where it came from."""

    recipe: Recipe
    path: Path  # the recipe file
    root: Path  # the repository root that relative paths resolve against
    defaults: RepoDefaults

    @property
    def display(self) -> str:
        return display(self.path, self.root)

    @property
    def output_repo(self) -> str | None:
        if self.recipe.output.repo:
            return self.recipe.output.repo
        return f"{self.defaults.namespace}/{self.recipe.name}" if self.defaults.namespace else None

    @property
    def tracking_project(self) -> str:
        return self.recipe.tracking.project or self.recipe.name

    def local(self, relative: str) -> Path:
        """Resolve a repo-relative path and refuse one that escapes through a symlink."""
        p = (self.root / relative).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise ValueError(f"'{relative}' resolves outside the repository")
        return p
