"""The recipe: what to train, on what, how, and for how much.

A recipe is data from a pull request. Every string is checked for shape (slugs, Hub
ids, repo-relative paths) so that no value can reach outside the repository or be
spliced into a shell command or a workflow expression. Repo-wide defaults live in
`recipes/_defaults.yaml` and are deep-merged under each recipe.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runner import sweep as sweeps
from runner import yamlsafe
from runner.errors import Problem, RecipeInvalid
from runner.gates import Gate
from runner.hardware import FLAVOR_NAMES

DEFAULTS_FILE = "_defaults.yaml"
SCHEMA_FILE = "schema.json"  # recipes/schema.json: the published JSON Schema, `runner schema`
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
GGUF_TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_L", "Q3_K_M",
              "Q3_K_S", "Q2_K", "IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS",
              "IQ2_XXS", "IQ1_M", "IQ1_S")
# Must match BUILTIN_REWARDS in runner/jobs/train.py (a test checks it).
BUILTIN_REWARDS = ("exact_answer", "think_format", "concise")
LORA_AUTO_THRESHOLD = 3_000_000_000  # parameters; `lora: auto` turns LoRA on above this

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
SPLIT = re.compile(r"^[A-Za-z0-9_.\-\[\]:%]{1,128}$")
TASK = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
DEFAULT_EVAL_FRACTION = 0.02  # of the training split, when the recipe names no eval_split
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def hub_id(value: str, what: str) -> str:
    if not HUB_ID.match(value) or ".." in value or "--" in value:
        raise ValueError(f"'{value}' is not a valid Hub {what} id (expected 'owner/name')")
    return value


def _repo_path(value: str, suffixes: tuple[str, ...] | None = None) -> str:
    """A path relative to the repository root that cannot step outside it."""
    p = value[2:] if value.startswith("./") else value
    if not p or p.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", p):
        raise ValueError(f"'{value}' must be a path relative to the repository root")
    parts = p.replace("\\", "/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"'{value}' must not contain '..', '.' or empty path segments")
    if any(not re.match(r"^[A-Za-z0-9_.@+-]+$", part) for part in parts):
        raise ValueError(f"'{value}' has characters not allowed in a path (use letters, digits, '_', '-', '.')")
    if suffixes and not p.endswith(suffixes):
        raise ValueError(f"'{value}' must end with one of {', '.join(suffixes)}")
    return p


def looks_local_dataset(path: str) -> bool:
    return path.startswith("./") or path.lower().endswith(DATA_SUFFIXES)


def parse_duration(value: str | int) -> int:
    """'2h', '90m', '1h30m', '45s', '1d' or a number of seconds -> seconds."""
    if isinstance(value, int):
        seconds = value
    else:
        m = DURATION.match(value.strip())
        if not value.strip() or not m:
            raise ValueError(f"'{value}' is not a duration; use e.g. 90m, 2h, 1h30m or 'auto'")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = d * 86400 + h * 3600 + mi * 60 + s
    if not 300 <= seconds <= 7 * 86400:
        raise ValueError("must be between 5 minutes and 7 days")
    return seconds


def git_revision(v: str | None) -> str | None:
    """A branch, tag or commit name that cannot step anywhere else (no '..', no leading punctuation)."""
    if v is not None and (not REVISION.match(v) or ".." in v):
        raise ValueError(f"'{v}' is not a valid git revision")
    return v


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
        return _repo_path(v, DATA_SUFFIXES) if looks_local_dataset(v) else hub_id(v, "dataset")

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
                hint = _did_you_mean(self.builtin, BUILTIN_REWARDS)
                raise ValueError(f"unknown built-in reward '{self.builtin}'{hint}"
                                 f"; built-ins are {', '.join(BUILTIN_REWARDS)}")
        elif self.file is None or self.function is None:
            raise ValueError("a reward needs 'builtin: NAME', or 'file: PATH.py' with 'function: NAME'")
        else:
            _repo_path(self.file, (".py",))
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
    quantizations: list[Literal[GGUF_TYPES]] = Field(  # type: ignore[valid-type]
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
            _repo_path(v)
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
            raise ValueError(f"unknown hardware flavor '{v}'{_did_you_mean(v, FLAVOR_NAMES)}; use 'auto' or one of "
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


# The runner's shape rules, as JSON Schema patterns (ECMA-262 and Python `re` alike), so editors and agents
# refuse what `runner validate` refuses: a test checks both give the same verdicts on a corpus.
_SEGMENT = r"[A-Za-z0-9_.@+-]+"
_LOCAL = rf"(?:\./)?(?!(?:.*/)?\.{{1,2}}(?:/|$)){_SEGMENT}(?:/{_SEGMENT})*"
_HUB = r"(?!.*\.\.)(?!.*--)(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
_DATA_SUFFIX = r"\.(?:[jJ][sS][oO][nN][lL]?|[cC][sS][vV]|[pP][aA][rR][qQ][uU][eE][tT])"
_UNSAFE = r"\$\{\{|[\u0000-\u001f\u007f]"  # GitHub expressions, control characters


def _refuse_unsafe_strings(node: Any) -> None:
    """Every string in the schema refuses `${{` and control characters, as the loader does."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "not" not in node:
            node["not"] = {"pattern": _UNSAFE}
        for value in node.values():
            _refuse_unsafe_strings(value)
    elif isinstance(node, list):
        for value in node:
            _refuse_unsafe_strings(value)


def json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema, as published in recipes/schema.json for editors and agents."""
    schema = Recipe.model_json_schema()
    props = schema["properties"]
    defs = schema["$defs"]
    props["base_model"]["pattern"] = rf"^(?:\./(?!(?:.*/)?\.{{1,2}}(?:/|$)){_SEGMENT}(?:/{_SEGMENT})*|{_HUB})$"
    defs["Dataset"]["properties"]["path"]["pattern"] = (
        rf"^(?:(?=.*{_DATA_SUFFIX}$){_LOCAL}|(?!\./)(?!.*{_DATA_SUFFIX}$){_HUB})$")
    defs["Reward"]["properties"]["file"]["anyOf"][0]["pattern"] = (
        rf"^(?:\./)?{REWARDS_DIR}/(?!(?:.*/)?\.{{1,2}}(?:/|$)){_SEGMENT}(?:/{_SEGMENT})*\.py$")
    defs["Gguf"]["if"] = {"properties": {"quantizations": {"contains": {"pattern": "^[Ii][Qq]"}}},
                          "required": ["quantizations"]}
    defs["Gguf"]["then"] = {"properties": {"imatrix": {"const": True}}, "required": ["imatrix"]}
    # Rewards belong to GRPO, and GRPO needs at least one.
    schema["allOf"] = [
        {"if": {"properties": {"method": {"const": "grpo"}}, "required": ["method"]},
         "then": {"properties": {"rewards": {"minItems": 1}}, "required": ["rewards"]},
         "else": {"properties": {"rewards": {"maxItems": 0}}}}]
    # What the loader accepts around the model: `name` defaults to the file name, `dataset` may be a bare path.
    schema["required"] = [k for k in schema["required"] if k != "name"]
    dataset = props["dataset"]
    path_pattern = defs["Dataset"]["properties"]["path"]["pattern"]
    props["dataset"] = {"anyOf": [{"type": "string", "pattern": path_pattern}, {"$ref": dataset.pop("$ref")}],
                        **dataset}
    props["hardware"]["enum"] = ["auto", *FLAVOR_NAMES]
    props["name"]["pattern"] = SLUG.pattern
    props["timeout"]["anyOf"][0]["pattern"] = r"^(?:auto|(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?)$"
    _refuse_unsafe_strings(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with where it came from."""

    recipe: Recipe
    path: Path  # the recipe file
    root: Path  # the repository root that relative paths resolve against
    defaults: RepoDefaults

    @property
    def display(self) -> str:
        return _display(self.path, self.root)

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


def find_root(recipe_path: Path) -> Path:
    """The repository root: the parent of the nearest `recipes/` directory, else the cwd."""
    for parent in recipe_path.resolve().parents:
        if parent.name == "recipes":
            return parent.parent
    return Path.cwd().resolve()


def defaults_file(recipe_path: Path, root: Path) -> Path:
    """The repo defaults a recipe inherits: recipes/_defaults.yaml for any recipe under recipes/, at any depth."""
    recipes = root / "recipes"
    here = Path(os.path.abspath(recipe_path)).parent
    return recipes / DEFAULTS_FILE if here == recipes or recipes in here.parents else here / DEFAULTS_FILE


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def load(path: Path | str, *, root: Path | None = None) -> LoadedRecipe:
    """Load and validate one recipe; raises RecipeInvalid listing every problem found."""
    path = Path(path)
    root = (root or find_root(path)).resolve()
    display = _display(path, root)
    recipes = root / "recipes"
    unresolved = Path(os.path.abspath(path))
    if (path.is_symlink() and not path.resolve().is_relative_to(root)) or \
            (unresolved.is_relative_to(recipes) and not path.resolve().is_relative_to(recipes)):
        # Never read (or echo) a file through a recipe-shaped link, nor let one pick other repo defaults.
        raise RecipeInvalid([Problem(display, 1, 1, "", "is a symlink to a file outside recipes/; a recipe must be "
                                                        "a regular file under recipes/")])
    if path.name == DEFAULTS_FILE:
        raise RecipeInvalid([Problem(display, 1, 1, "", f"{DEFAULTS_FILE} holds repo defaults, not a recipe")])
    if path.name == SCHEMA_FILE:
        raise RecipeInvalid([Problem(display, 1, 1, "", f"{SCHEMA_FILE} is the recipes' JSON Schema (written by "
                                     "`runner schema`), not a recipe; recipes are .yaml files")])
    doc = yamlsafe.load(path, display=display)

    defaults_doc = None
    defaults_path = defaults_file(path, root)
    if defaults_path.is_file():
        defaults_doc = yamlsafe.load(defaults_path, display=_display(defaults_path, root))

    problems: list[Problem] = []
    repo_defaults = RepoDefaults()
    inherited: dict[str, Any] = {}
    if defaults_doc is not None:
        repo_part = {k: v for k, v in defaults_doc.data.items() if k in REPO_KEYS}
        inherited = {k: v for k, v in defaults_doc.data.items() if k not in REPO_KEYS}
        try:
            repo_defaults = RepoDefaults.model_validate(repo_part)
        except ValidationError as e:
            problems += _problems(e, [defaults_doc])
        for key in ("name", "base_model", "method", "dataset"):
            if key in inherited:
                problems.append(defaults_doc.problem((key,), f"'{key}' is per recipe; it cannot be a repo default",
                                                     key=True))
        for key in [k for k in inherited if k not in Recipe.model_fields]:
            problems.append(defaults_doc.problem((key,), f"unknown field '{key}'{_did_you_mean(key, _fields_at(()))}",
                                                 key=True))

    data = _deep_merge(inherited, doc.data)
    data.setdefault("name", path.stem)
    docs = [doc] + ([defaults_doc] if defaults_doc else [])
    recipe = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        found = _problems(e, docs)
        if "name" not in doc.data:  # the name came from the file: say so, and what to change
            found = [replace(p, message=f"{p.message} (the name comes from the file name {path.name}: rename the "
                             "file, or set `name:`)") if p.field == "name" else p for p in found]
        problems += found
    problems += _scan_strings(doc)
    if recipe is not None:
        loaded = LoadedRecipe(recipe, path, root, repo_defaults)
        problems += _check_files(loaded, doc)
        problems += _name_clashes(loaded, doc)
        problems += sweeps.problems(recipe, doc, repo_defaults.max_sweep_trials)
        cap = repo_defaults.max_budget_usd
        if cap is not None and recipe.budget_usd is not None and recipe.budget_usd > cap:
            problems.append(doc.problem(("budget_usd",), f"{recipe.budget_usd:g} USD is above the repository cap "
                                        f"max_budget_usd {cap:g} in {DEFAULTS_FILE}"))
    if problems:
        order = {d.file: i for i, d in enumerate(docs)}
        raise RecipeInvalid(sorted(_dedupe(problems), key=lambda p: (order.get(p.file, 9), p.line, p.col)))
    assert recipe is not None
    return LoadedRecipe(recipe, path, root, repo_defaults)


def _name_clashes(loaded: LoadedRecipe, doc: yamlsafe.Located) -> list[Problem]:
    """Another recipe under recipes/ with the same name would share runs/<name>.json and the model repo."""
    folder = loaded.root / "recipes"
    if not Path(os.path.abspath(loaded.path)).is_relative_to(folder):
        return []
    mine = Path(os.path.abspath(loaded.path))
    out = []
    for other in recipe_files([str(folder)]):
        if other.name == SCHEMA_FILE or Path(os.path.abspath(other)) == mine or other.is_symlink():
            continue
        try:
            theirs = yamlsafe.load(other, display=_display(other, loaded.root))
        except (RecipeInvalid, OSError):
            continue  # that file reports its own problems
        name = theirs.data.get("name", other.stem)
        if name == loaded.recipe.name:
            line = (theirs.where(("name",), key=True) or (1, 1))[0] if "name" in theirs.data else 1
            origin = "" if "name" in doc.data else f" (from the file name {loaded.path.name})"
            out.append(doc.problem(("name",), f"'{name}'{origin} is also the name of {theirs.file}:{line}; each recipe "
                                   "needs its own name (it names runs/<name>.json and the model repo)", key=True))
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def _scan_strings(doc: yamlsafe.Located) -> list[Problem]:
    """Refuse values that look like workflow expressions or carry control characters."""
    out: list[Problem] = []

    def walk(value: Any, path: tuple) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, path + (i,))
        elif isinstance(value, str):
            if "${{" in value:
                out.append(doc.problem(path, "GitHub expressions '${{' are not allowed in recipe values"))
            elif re.search(r"[\x00-\x1f\x7f]", value):
                out.append(doc.problem(path, "control characters and line breaks are not allowed here"))

    walk(doc.data, ())
    return out


def _check_files(loaded: LoadedRecipe, doc: yamlsafe.Located) -> list[Problem]:
    """Local files the recipe names must exist inside the repo; reward functions are parsed, never imported."""
    r = loaded.recipe
    out: list[Problem] = []

    def inside(relative: str, path: tuple) -> Path | None:
        try:
            return loaded.local(relative)
        except ValueError as e:
            out.append(doc.problem(path, str(e)))
            return None

    if r.dataset.is_local:
        p = inside(r.dataset.path, ("dataset", "path"))
        if p is not None and (link := first_symlink(loaded.root, r.dataset.path)):
            out.append(doc.problem(("dataset", "path"), _LINK.format(link=link)))
        elif p is not None and not p.is_file():
            out.append(doc.problem(("dataset", "path"), f"file '{r.dataset.path}' not found in the repository; "
                                   "add it, or fix the path (relative to the repository root)"))
    if r.base_model_is_local:
        p = inside(r.base_model, ("base_model",))
        if p is not None and (link := first_symlink(loaded.root, r.base_model)):
            out.append(doc.problem(("base_model",), _LINK.format(link=link)))
        elif p is not None and not (p / "config.json").is_file():
            out.append(doc.problem(("base_model",), f"'{r.base_model}' is not a model directory (no config.json); "
                                   "point base_model at the folder with config.json and the weights"))
    for i, reward in enumerate(r.rewards):
        if reward.file is None or reward.function is None:
            continue
        p = inside(reward.file, ("rewards", i, "file"))
        if p is None:
            continue
        if not p.is_relative_to((loaded.root / REWARDS_DIR).resolve()):
            # A reward runs inside the job beside the Hub token: only code under rewards/ (CODEOWNERS) may ship.
            out.append(doc.problem(("rewards", i, "file"), f"reward files live under {REWARDS_DIR}/ (which "
                                   f"CODEOWNERS reviews); move '{reward.file}' to {REWARDS_DIR}/"))
            continue
        if link := first_symlink(loaded.root, reward.file):
            out.append(doc.problem(("rewards", i, "file"), _LINK.format(link=link)))
            continue
        message = reward_function_problem(p, reward.function)
        if message:
            out.append(doc.problem(("rewards", i, "file" if "file" in message else "function"), message))
    return out


REWARDS_DIR = "rewards"
_LINK = ("'{link}' is a symbolic link; files a job ships must be regular files in the repository "
         "(replace the link with the file itself)")


def first_symlink(root: Path, relative: str) -> str | None:
    """The first symbolic link on the way to `relative` or anywhere below it (a shipped folder), repo-relative.

    A link is refused even when it points inside the repository: what is shipped must be what was reviewed,
    and a link (to /proc/self/environ, say) would upload whatever the runner can read."""
    root = Path(os.path.abspath(root))
    path = Path(os.path.abspath(root / relative))
    for candidate in [*reversed(path.parents), path]:
        if candidate.is_relative_to(root) and candidate != root and candidate.is_symlink():
            return candidate.relative_to(root).as_posix()
    if path.is_dir():
        for folder, dirs, files in os.walk(path):  # os.walk does not follow links: they show up as entries
            for name in sorted(dirs + files):
                if (Path(folder) / name).is_symlink():
                    return (Path(folder) / name).relative_to(root).as_posix()
    return None


def reward_function_problem(path: Path, function: str) -> str | None:
    """Check by parsing (never importing) that `function` is defined with a usable signature."""
    if not path.is_file():
        return f"reward file '{path.name}' not found in the repository"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        return f"reward file '{path.name}' does not parse: {getattr(e, 'msg', e)}"
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    node = defs.get(function)
    if node is None:
        return f"no top-level function '{function}' in {path.name}{_did_you_mean(function, list(defs))}"
    if isinstance(node, ast.AsyncFunctionDef):
        return f"'{function}' must be a plain (not async) function"
    names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    if "completions" not in names or node.args.kwarg is None:
        return f"'{function}' must accept (completions, **kwargs) like a TRL reward function"
    return None


# --- turning pydantic errors into located one-liners -------------------------------------


def _did_you_mean(word: str, candidates: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The recipe model that holds the fields at a location (Recipe at the top), if any."""
    model: type[BaseModel] | None = Recipe
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return model


def _fields_at(path: tuple) -> list[str]:
    """Field names allowed at a location in the recipe, for 'did you mean'."""
    model = _model_at(path)
    return list(model.model_fields) if model else []


def _description(loc: tuple) -> str | None:
    """The schema description of the field at `loc`, to say what a missing field wants."""
    model = _model_at(loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model and loc else None
    return field.description if field else None


_EXPECTED = {
    "int_type": "a whole number", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "int_from_float": "a whole number",
}


def _describe(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "a mapping", type(None): "nothing (null)"}
    kind = kinds.get(type(value), type(value).__name__)
    return kind if isinstance(value, (dict, list, type(None))) else f"{kind} {value!r}"


def _problems(error: ValidationError, docs: list[yamlsafe.Located]) -> list[Problem]:
    out = []
    for e in error.errors():
        loc = tuple(e["loc"])
        doc = next((d for d in docs if loc in d.values or loc in d.keys), docs[0])
        kind = e["type"]
        if kind == "extra_forbidden":
            key = loc[-1]
            out.append(doc.problem(loc, f"unknown field '{key}'{_did_you_mean(str(key), _fields_at(loc[:-1]))}",
                                   key=True))
        elif kind == "missing":
            wanted = _description(loc)
            out.append(doc.problem(loc, "required field is missing" + (f"; add it: {wanted}" if wanted else "")))
        elif kind == "literal_error":
            expected = re.findall(r"'([^']*)'", e["ctx"]["expected"])
            out.append(doc.problem(loc, f"{e['input']!r} is not one of {', '.join(expected)}"
                                   f"{_did_you_mean(str(e['input']), expected)}"))
        elif kind in _EXPECTED:
            out.append(doc.problem(loc, f"expected {_EXPECTED[kind]}, found {_describe(e['input'])}"))
        else:
            message = e["msg"].removeprefix("Value error, ")
            out.append(doc.problem(loc, message))
    return out


def recipe_files(args: Sequence[str]) -> list[Path]:
    """Expand directories to their recipe files (not the repo defaults)."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*.y*ml") if f.suffix in (".yaml", ".yml") and f.name != DEFAULTS_FILE)
        elif not (len(args) > 1 and p.name in (DEFAULTS_FILE, SCHEMA_FILE) and p.is_file()):
            out.append(p)  # `recipes/*` by glob names the defaults and the schema too: skipped; alone, explained
    return out


def name_of(arg: str) -> str:
    """A recipe given by file (its `name`) or by name."""
    return load(arg).recipe.name if arg.endswith((".yaml", ".yml")) and Path(arg).is_file() else arg
