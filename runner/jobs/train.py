# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "trl>=1.16,<2",
#     "peft>=0.17",
#     "transformers>=5,<6",
#     "accelerate>=1.4",
#     "datasets>=4",
#     "pyarrow>=15",  # read directly to count images without decoding them (datasets brings it too)
#     "trackio>=0.40",
#     "torch>=2.6",
#     "torchvision",  # Qwen2-VL-family processors load a video processor that needs it
#     "pillow>=10",  # images: datasets Image decoding and the image processors
#     "sentencepiece>=0.2",
#     "protobuf>=5",
#     "huggingface_hub>=2.4,<2.5",
#     "liger-kernel>=0.6",
#     "kernels>=0.10",
#     "lm-eval[ifeval]>=0.4.8,<0.5",
# ]
# [tool.uv]
# # The resolution is pinned to a date: a job resolves the same versions whenever it runs.
# exclude-newer = "2026-11-24T00:00:00Z"
# ///
"""Train one recipe with TRL: SFT, DPO or GRPO, full or LoRA, metrics to Trackio.

Runs unchanged under `uv run` on a Hugging Face Jobs container and with the project's
Python locally, in one process or data-parallel under `torchrun --nproc_per_node N`.
It reads one JSON document (`--config FILE`, else env RUNNER_JOB_CONFIG) written by
the runner (see runner/jobspec.py for the keys), and writes a JSON summary.

How it trains on the device it finds (precision, attention kernels, packing, Liger, batch
split, FSDP) comes from train_policy.py, shipped beside this file; the planner prices the
same decisions. `--explain --device a100x4` prints that setup as one JSON object without
loading weights or touching CUDA.

This file must not import the `runner` package: it runs on machines that do not have it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def _sibling(name: str):
    """A module shipped beside this file, loaded by path: sys.path stays as it was (no shadowed packages)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{name}.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


policy = _sibling("train_policy")  # train_policy.py ships beside this file

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


class JobError(Exception):
    """The user's input is wrong: reported as one `error:` line, exit 1."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def log(message: str) -> None:
    if rank() == 0:
        print(message, flush=True)


# --- config ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train one recipe with TRL.")
    parser.add_argument("--config", type=Path, help="JSON config (default: env RUNNER_JOB_CONFIG)")
    parser.add_argument("--explain", action="store_true",
                        help="print the resolved training setup as JSON and exit: no weights, no CUDA")
    parser.add_argument("--device", help="with --explain: cpu, t4, l4, a10g, l40s, a100, h100, h200, or a count "
                                         "such as a100x4 (default: this machine)")
    return parser.parse_args(argv)


@dataclass
class JobArguments:
    """What the runner sends besides TRL's own fields (runner/jobspec.py TrainJobConfig is the other side)."""

    run_id: str
    method: str
    dataset_name: str
    summary_path: str
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_test_split: str | None = None
    dataset_revision: str | None = None
    dataset_columns: dict | None = None
    eval_fraction: float = 0.0
    evaluation: dict | None = None
    rewards: list[dict] = field(default_factory=list)
    pin_batch: bool = False
    packing_mode: str | None = "auto"  # "auto", True or False
    gradient_checkpointing_mode: str | None = "auto"
    strategy: str = "auto"
    sequence_tokens: float | None = None
    model_params: int | None = None
    model_active_params: int | None = None
    model_hidden_size: int | None = None
    model_num_layers: int | None = None
    model_vocab_size: int | None = None
    model_architecture: str | None = None
    summary_repo: str | None = None
    summary_repo_path: str | None = None


@dataclass(frozen=True)
class Config:
    """The job config, read: ours, TRL's ModelConfig, and the TRL method config's fields as sent.

    `args` shows TRL's fields (what the runner sent, TRL's defaults elsewhere) without building TRL's
    config yet: TrainingArguments sets up the process group when built, so it is built once, with the
    device's setup, by trl_args().
    """

    job: JobArguments
    model: Any  # trl.ModelConfig
    args: SimpleNamespace
    trl: dict[str, Any]  # the TRL method config's fields the runner sent
    raw: dict[str, Any]

    @property
    def method(self) -> str:
        return self.job.method

    @property
    def base_model(self) -> str:
        return self.model.model_name_or_path

    @property
    def output_dir(self) -> str:
        return self.args.output_dir

    @property
    def hub_repo(self) -> str | None:
        return self.args.hub_model_id if self.args.push_to_hub else None


def config_class(method: str):
    """TRL's config dataclass for `method`."""
    import trl

    classes = {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}
    if method not in classes:
        raise JobError(f"unknown method {method!r}")
    return classes[method]


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _defaults(cls) -> dict[str, Any]:
    out = {}
    for name, f in _fields(cls).items():
        if f.default is not dataclasses.MISSING:
            out[name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = f.default_factory()
    return out


def parser(method: str):
    """The HfArgumentParser over what a `method` job reads: ours, TRL's method config, ModelConfig."""
    from transformers import HfArgumentParser
    from trl import ModelConfig

    return HfArgumentParser((JobArguments, config_class(method), ModelConfig))


def parse_config(raw: dict[str, Any]) -> Config:
    """The runner's JSON, checked against the dataclasses the job reads with: an unknown key fails here, loudly."""
    from trl import ModelConfig

    if not isinstance(raw, dict):
        raise JobError("the job config must be a JSON object")
    cls = config_class(str(raw.get("method")))
    known = set(_fields(JobArguments)) | set(_fields(cls)) | set(_fields(ModelConfig))
    unknown = sorted(set(raw) - known)
    if unknown:  # HfArgumentParser's own words, before anything is built
        raise JobError(f"job config: Some keys are not used by the HfArgumentParser: {unknown}")
    ours = {k: v for k, v in raw.items() if k in _fields(JobArguments) or k in _fields(ModelConfig)}
    try:
        from transformers import HfArgumentParser

        job, model = HfArgumentParser((JobArguments, ModelConfig)).parse_dict(ours, allow_extra_keys=False)
    except (TypeError, ValueError) as e:  # a required key missing, a value ModelConfig refuses
        raise JobError(f"job config: {str(e).splitlines()[0]}") from None
    trl = {k: v for k, v in raw.items() if k in _fields(cls) and k not in ours}
    config = Config(job=job, model=model, args=SimpleNamespace(**(_defaults(cls) | trl)), trl=trl, raw=raw)
    check_config(config)
    return config


def read_config(args: argparse.Namespace) -> dict[str, Any]:
    """The job config's JSON, unparsed (--explain reads only what the policy needs, without importing torch)."""
    try:
        text = args.config.read_text(encoding="utf-8") if args.config else os.environ["RUNNER_JOB_CONFIG"]
        return json.loads(text)
    except KeyError:
        raise JobError("no --config given and RUNNER_JOB_CONFIG is not set") from None
    except (OSError, ValueError) as e:
        raise JobError(f"cannot read the job config: {e}") from None


def load_config(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> Config:
    return parse_config(read_config(args or parse_args(argv)))


def check_config(config: Config) -> None:
    """What TRL accepts but cannot train: the same bounds as the recipe's (runner/recipe_models.py)."""
    if not config.base_model:
        raise JobError("job config: model_name_or_path is missing")
    a = config.args
    bounds = {"learning_rate": (0, 1), "num_train_epochs": (0, 100), "per_device_train_batch_size": (0, 4096),
              "gradient_accumulation_steps": (0, 4096), "max_length": (0, 1_048_576)}
    for key, (low, high) in bounds.items():
        value = getattr(a, key, None)
        if key == "max_length" and value is None:  # GRPO bounds its completions instead
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (low < value <= high):
            raise JobError(f"{key} must be in ({low}, {high}], got {value!r}")
    if config.method == "grpo":
        if not config.job.rewards:
            raise JobError("GRPO needs at least one reward function")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        g = a.num_generations
        b, acc = a.per_device_train_batch_size, a.gradient_accumulation_steps
        if (b * world * acc) % g:
            raise JobError(f"per_device_train_batch_size x processes x gradient_accumulation_steps "
                           f"({b} x {world} x {acc}) must be divisible by num_generations ({g})")


# --- data --------------------------------------------------------------------------------------


def load_data(job: JobArguments, split: str | None = None):
    """The dataset's `split` (default: the training split), columns mapped. A local file has one
    split, `train`; a slice of it (`train[:95%]`, `train[95%:]`) selects rows."""
    from datasets import load_dataset

    source = job.dataset_name
    suffix = Path(source).suffix.lower()
    split = split or job.dataset_train_split or "train"
    try:
        if suffix in LOCAL_SUFFIXES and Path(source).exists():
            data = load_dataset(LOCAL_SUFFIXES[suffix], data_files=source, split=split)
        else:
            data = load_dataset(source, job.dataset_config, split=split, revision=job.dataset_revision)
    except (FileNotFoundError, ValueError) as e:
        raise JobError(f"dataset {source} split {split}: {e}") from None
    columns = job.dataset_columns or {}
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise JobError(f"dataset column '{missing[0]}' named in the column mapping does not exist "
                       f"(columns: {', '.join(data.column_names)})")
    if columns:
        data = data.rename_columns(columns)
    if "images" in data.column_names or "image" in data.column_names:
        return vision_data(data, Path(source).parent if suffix in LOCAL_SUFFIXES else None)
    if "messages" in data.column_names and _is_sharegpt(data[0]["messages"]):
        data = data.map(lambda row: {"messages": [{"role": SHAREGPT_ROLES.get(m["from"], m["from"]),
                                                   "content": m["value"]} for m in row["messages"]]})
    return data


# --- vision-language DPO -------------------------------------------------------------------------


def is_vision(data) -> bool:
    return "images" in data.column_names


def vision_data(data, base: Path | None):
    """TRL's vision preference format: `images` a list of images, and conversational prompt/chosen/rejected.

    A single `image` column becomes a one-image list; image paths are relative to the data file.
    Plain-string turns become messages, so TRL's collator can put the image placeholders in the
    user turn and render the model's own chat template.
    """
    from datasets import Features, Image, List, Value

    if "image" in data.column_names and "images" not in data.column_names:
        data = data.rename_column("image", "images")
    feature = data.features["images"]
    single = not isinstance(feature, List)
    inner = feature if single else feature.feature
    if isinstance(inner, Value):  # paths or URLs, as in JSON Lines
        data = data.map(lambda images: {"images": _absolute(images, base)}, input_columns=["images"])
    if single:
        data = data.cast_column("images", Image(decode=False))
        data = data.map(lambda image: {"images": [image]}, input_columns=["images"],
                        features=Features({**data.features, "images": List(Image(decode=False))}))
    texts = [c for c in ("prompt", "chosen", "rejected") if c in data.column_names]
    data = data.map(_conversational, input_columns=texts, fn_kwargs={"names": texts})  # images stay encoded
    return data.cast_column("images", List(Image()))


def _absolute(value: Any, base: Path | None) -> Any:
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if base is None or not isinstance(value, str) or value.startswith(("http://", "https://", "data:")):
        return value
    return str(base / value) if not Path(value).is_absolute() else value


def _conversational(*values: Any, names: list[str]) -> dict[str, Any]:
    roles = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
    return {name: [{"role": roles[name], "content": value}] for name, value in zip(names, values)
            if isinstance(value, str)}


def vision_trainer(config: Config, data, args, model_kwargs: dict[str, Any], peft, callbacks: list, held=None):
    """DPOTrainer over a vision-language model with its processor (images become pixel values per batch)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOTrainer

    if config.method != "dpo":
        raise JobError(f"the dataset has images; vision-language training supports method dpo, not {config.method}")
    try:
        # The slow (PIL) image processor: the fast one needs torchvision, which the job does not install.
        processor = AutoProcessor.from_pretrained(config.base_model, use_fast=False,
                                                  revision=model_kwargs.get("revision"))
        model = AutoModelForImageTextToText.from_pretrained(config.base_model, **model_kwargs)
    except ValueError as e:  # transformers' answer for a model that has no image-text-to-text class
        raise JobError(f"{config.base_model} is not a vision-language model ({str(e).splitlines()[0]})") from None
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=processor,
                      peft_config=peft, eval_dataset=held, callbacks=callbacks)


def _is_sharegpt(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "from" in value[0]


REQUIRED = {
    "sft": [("messages",), ("text",), ("prompt", "completion")],
    "dpo": [("prompt", "chosen", "rejected"), ("chosen", "rejected")],
    "grpo": [("prompt",)],
    "vision-dpo": [("images", "prompt", "chosen", "rejected")],
}


def check_rows(method: str, data) -> None:
    """Every row must have the columns the trainer will read (the plan only saw a sample)."""
    form = next((cols for cols in REQUIRED[method] if all(c in data.column_names for c in cols)), None)
    if form is None:
        wanted = " or ".join("+".join(cols) for cols in REQUIRED[method])
        shown = method.upper().replace("VISION-", "vision ")
        raise JobError(f"{shown} needs columns {wanted} after the column mapping "
                       f"(columns: {', '.join(data.column_names)})")
    for column in form:
        if column == "images":  # counted in Arrow: reading the column would decode every image
            _check_images(data)
            continue
        for i, value in enumerate(data[column]):
            if value is None or (isinstance(value, (str, list)) and len(value) == 0):
                raise JobError(f"row {i}: column '{column}' is empty or missing")


def _check_images(data) -> None:
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.list_value_length(data.data.column("images")), 0).to_pylist()
    empty = next((i for i, n in enumerate(lengths) if n == 0), None)
    if empty is not None:
        raise JobError(f"row {empty}: column 'images' has no image")


# --- rewards -----------------------------------------------------------------------------------


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: a list of messages
        return " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def exact_answer(completions: list[Any], answer: list[Any] | None = None, **kwargs: Any) -> list[float]:
    """1.0 when the last number in the completion equals the row's `answer`."""
    if answer is None:
        raise ValueError("the exact_answer reward needs an 'answer' column")
    out = []
    for completion, expected in zip(completions, answer):
        numbers = re.findall(r"-?\d+(?:\.\d+)?", _text(completion))
        out.append(1.0 if numbers and numbers[-1] == str(expected).strip() else 0.0)
    return out


def think_format(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 for `<think>...</think>` followed by an answer (TRL's check, on plain text too)."""
    pattern = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL)
    return [1.0 if pattern.match(_text(c)) else 0.0 for c in completions]


def concise(completions: list[Any], **kwargs: Any) -> list[float]:
    """A small penalty that grows with completion length (0 to -1 over 1,000 characters)."""
    return [-min(len(_text(c)) / 1000.0, 1.0) for c in completions]


BUILTIN_REWARDS: dict[str, Callable[..., list[float]]] = {
    "exact_answer": exact_answer,
    "think_format": think_format,
    "concise": concise,
}


def reward_functions(specs: list[dict[str, str]]) -> list[Callable[..., list[float]]]:
    funcs = []
    for spec in specs:
        if spec.get("name"):
            if spec["name"] not in BUILTIN_REWARDS:
                raise JobError(f"unknown built-in reward {spec['name']!r}")
            funcs.append(BUILTIN_REWARDS[spec["name"]])
            continue
        path = Path(spec["path"])
        module_spec = importlib.util.spec_from_file_location(f"reward_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise JobError(f"cannot load reward file {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        func = getattr(module, spec["function"], None)
        if not callable(func):
            raise JobError(f"{path.name} has no function {spec['function']!r}")
        funcs.append(func)
    return funcs


# --- training ----------------------------------------------------------------------------------


def progress_callback():
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One flushed line per log: the runner streams these as progress."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items()
                                 if isinstance(v, (int, float)) and k in ("loss", "reward", "learning_rate",
                                                                          "grad_norm", "rewards/accuracies"))
                print(f"progress step={state.global_step}/{state.max_steps} {shown}", flush=True)

    return Progress()


def common_args(config: Config, gpu: bool) -> dict[str, Any]:
    """The TrainingArguments every run trains with, on top of what the runner sent."""
    steps = config.args.max_steps
    return {
        # On CPU, use_cpu is what lets accelerate join torchrun's processes (gloo); without it each trains alone.
        "use_cpu": not gpu,
        "logging_steps": 1 if 0 < steps <= 200 else 10,
        "report_to": ["trackio"],
        # Without a Space, stay local: no static dashboard sync at push time.
        "trackio_static_space_id": None if config.args.trackio_space_id else False,
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": not sys.stdout.isatty(),
        "dataloader_num_workers": 0,
        # Checkpoints every save_steps, on disk and (with a repo) on the Hub: what a retry resumes from.
        "save_strategy": "steps",
        "save_total_limit": 2,
        # Every save goes to the Hub, so a job that times out leaves its last checkpoint behind.
        "hub_strategy": "checkpoint" if config.hub_repo else "every_save",
    }


# --- the device and its setup (runner/jobs/train_policy.py decides; the plan prices the same) ---------------


def runtime_device() -> policy.Device:
    """The device this process trains on, as torch reports it; without `kernels`, no FlashAttention."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if not torch.cuda.is_available():
        return policy.device(f"cpux{world}")
    props = torch.cuda.get_device_properties(0)
    dev = policy.gpu_device(props.name, world, memory_gb=props.total_memory / policy.GB, capability=props.major)
    if dev.flash_attention and importlib.util.find_spec("kernels") is None:
        log("the `kernels` package is missing: attention falls back to SDPA, without padding-free packing")
        dev = policy.without_flash_attention(dev)
    return dev


def training_setup(raw: dict[str, Any], dev: policy.Device) -> policy.Setup:
    """The setup this job trains with on `dev`, from the config's JSON (pure: also what --explain prints)."""
    return policy.resolve(policy.job_from_config(raw), dev)


def setup_args(setup: policy.Setup) -> dict[str, Any]:
    """The TrainingArguments the setup decides: batch split, precision, kernels, checkpointing, FSDP."""
    args: dict[str, Any] = {
        "per_device_train_batch_size": setup.per_device_train_batch_size,
        "gradient_accumulation_steps": setup.gradient_accumulation_steps,
        "bf16": setup.bf16,
        "fp16": setup.fp16,
        "activation_checkpointing": setup.gradient_checkpointing,
    }
    if setup.use_liger_kernel:
        if importlib.util.find_spec("liger_kernel") is not None:
            args["use_liger_kernel"] = True
        else:
            log("the `liger-kernel` package is missing: training without Liger kernels")
    if setup.fsdp:
        # Shard weights, gradients and optimizer state when one GPU cannot hold a replica.
        # transformers 5: fsdp=True (full shard, transformer-based auto wrap) configured through fsdp_config.
        args["fsdp"] = True
        args["fsdp_config"] = {"reshard_after_forward": True, "activation_checkpointing": setup.gradient_checkpointing}
        args["activation_checkpointing"] = False  # FSDP's own checkpointing replaces the trainer's
    return args


def model_init_kwargs(setup: policy.Setup) -> dict[str, Any]:
    """How from_pretrained loads the model: the policy's dtype, and a Hub attention kernel where one applies."""
    import torch

    kwargs: dict[str, Any] = {"dtype": getattr(torch, setup.model_dtype)}
    if setup.attn_implementation != policy.SDPA:  # SDPA is transformers' own default wherever a model supports it
        kwargs["attn_implementation"] = setup.attn_implementation
    return kwargs


def explain(raw: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The resolved setup for `device` (or this machine) as a JSON-ready dict."""
    try:
        dev = policy.device(device) if device else runtime_device()
    except ValueError as e:
        raise JobError(str(e)) from None
    return training_setup(raw, dev).as_dict()


def peft_config(config: Config):
    """TRL's LoraConfig from ModelConfig (None unless use_peft), with the recipe's module list kept a list:
    ModelConfig turns a one-name list into a string, which PEFT reads as a regex over full module names."""
    from trl import get_peft_config

    peft = get_peft_config(config.model)
    modules = config.raw.get("lora_target_modules")
    if peft is not None and isinstance(modules, list):
        peft.target_modules = set(modules)
    return peft


def build_trainer(config: Config, data, held=None):
    from transformers import PrinterCallback

    trainer = _trainer(config, data, held)
    trainer.remove_callback(PrinterCallback)  # our Progress lines replace its raw dicts
    return trainer


def trl_args(config: Config, setup: policy.Setup, *, gpu: bool, held=None, model_init_kwargs=None):
    """TRL's config as this job trains with it: what the runner sent, the job's own settings, the device's setup."""
    args = {**config.trl, **common_args(config, gpu), **setup_args(setup)}
    args |= eval_args(config, held, args["per_device_train_batch_size"])
    if model_init_kwargs is not None:
        args["model_init_kwargs"] = model_init_kwargs
    if config.method == "sft":
        # Packing (BFD, padding-free) is exact only with FlashAttention, which keeps packed sequences apart;
        # without it, batches of similar lengths cut padding while staying exact on any device.
        if setup.group_by_length:
            args["train_sampling_strategy"] = "group_by_length"
        args |= {"packing": setup.packing, "padding_free": setup.padding_free}
    if config.method == "grpo":
        args["log_completions"] = False
    try:  # the one place TRL's config is built, through the same parser, strict
        return parser(config.method).parse_dict({**config.raw, **args}, allow_extra_keys=False)[1]
    except (TypeError, ValueError) as e:
        raise JobError(f"job config: {str(e).splitlines()[0]}") from None


def _trainer(config: Config, data, held=None):
    import torch

    setup = training_setup(config.raw, runtime_device())
    log("setup: " + json.dumps(setup.as_dict()))
    gpu = torch.cuda.is_available()
    peft = peft_config(config)
    callbacks = [progress_callback()]
    # TRL loads the model and its processor at model_init_kwargs["revision"]: the commit the run resolved.
    revision = {"revision": config.model.model_revision} if config.model.model_revision else {}
    if is_vision(data):  # the processor loads the model itself (no model_init_kwargs)
        return vision_trainer(config, data, trl_args(config, setup, gpu=gpu, held=held),
                              model_init_kwargs(setup) | revision, peft, callbacks, held)
    args = trl_args(config, setup, gpu=gpu, held=held, model_init_kwargs=model_init_kwargs(setup) | revision)
    common = {"model": config.base_model, "args": args, "train_dataset": data, "peft_config": peft,
              "eval_dataset": held, "callbacks": callbacks}
    if config.method == "sft":
        from trl import SFTTrainer

        return SFTTrainer(**common)
    if config.method == "dpo":
        from trl import DPOTrainer

        return DPOTrainer(**common)
    from trl import GRPOTrainer

    return GRPOTrainer(**common, reward_funcs=reward_functions(config.job.rewards))


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def resume_checkpoint(config: Config) -> str | None:
    """The checkpoint a retry resumes from: `resume_from_checkpoint` in the Hub repo, on the branch the job pushes
    to (TRL pushes last-checkpoint/ there; a sweep's trial reads its own), else the newest checkpoint-* on disk."""
    wanted = config.args.resume_from_checkpoint
    if not wanted:
        return None
    if config.hub_repo:
        from huggingface_hub import snapshot_download

        local = Path(config.job.summary_path).parent / "resume"
        snapshot_download(repo_id=config.hub_repo, revision=getattr(config.args, "hub_revision", None),
                          allow_patterns=[f"{wanted}/*"], local_dir=str(local))
        path = local / wanted
    else:  # the newest complete checkpoint: a job killed while saving leaves a newer one without its state
        saved = [p for p in Path(config.output_dir).glob("checkpoint-*")
                 if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
        path = max(saved, key=lambda p: int(p.name.split("-")[-1]), default=Path())
    if not (path / "trainer_state.json").is_file():
        log("no checkpoint to resume from; training from the start")
        return None
    log(f"resuming from {path}")
    return str(path)


def train(config: Config) -> dict[str, Any] | None:
    data = load_data(config.job)
    check_rows("vision-dpo" if is_vision(data) else config.method, data)
    if eval_settings(config)["tasks"]:
        check_tasks(eval_settings(config)["tasks"])  # before paying for training
    data, held, held_from = split_held_out(config, data)
    log(f"loaded {len(data)} rows; training {config.method.upper()} on {config.base_model}")
    trainer = build_trainer(config, data, held)
    ev = Evaluator(config, trainer, held, held_from)
    ev.before()
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    wall = time.monotonic() - start
    ev.after()
    trainer.save_model(config.output_dir)
    if not trainer.is_world_process_zero():
        return None
    pushed = None
    if config.hub_repo:
        info = trainer.push_to_hub(commit_message=f"recipes-runner run {config.job.run_id}")
        # Exactly where the model went: the runner checks it is there before it records the run.
        pushed = {"repo": config.hub_repo, "commit": getattr(info, "oid", None)}
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    last = next((e for e in reversed(trainer.state.log_history) if "loss" in e), {})
    if "loss" in last:
        metrics["final_loss"] = last["loss"]
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    runtime = metrics.get("train_runtime", wall)
    return {
        "method": config.method,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_runtime_s": runtime,
        "tokens_seen": tokens,
        "tokens_per_second": tokens / runtime if runtime else 0.0,
        "final_metrics": metrics,
        "log_history": trainer.state.log_history,
        "adapter": bool(config.model.use_peft),
        "vision": is_vision(data),
        "world_size": trainer.args.world_size,
        "setup": training_setup(config.raw, runtime_device()).as_dict(),
        "peak_memory_bytes": peak_memory_bytes(),
        "pushed": pushed,
        "evaluation": ev.summary(),
    }


# --- evaluation --------------------------------------------------------------------------------
# Held-out data (an eval split, else a seeded fraction of the training split, capped in rows), the
# trainer's own metrics on it before the first step and after the last, greedy answers of the base
# and the tuned model to a few held-out prompts, and optional lm-evaluation-harness tasks.

EVAL_DEFAULTS: dict[str, Any] = {"max_rows": 256, "every_steps": None, "samples": 3, "max_new_tokens": 128,
                                 "tasks": [], "task_limit": 100}
# The metrics that speak for each method, first one first (GRPO adds one per reward function).
HEADLINE = {"sft": ["eval_loss", "eval_mean_token_accuracy"],
            "dpo": ["eval_rewards/margins", "eval_rewards/accuracies", "eval_loss"],
            "grpo": ["eval_reward"]}


def eval_settings(config: Config) -> dict[str, Any]:
    return EVAL_DEFAULTS | (config.job.evaluation or {})


def held_out_rows(rows: int, fraction: float, cap: int, samples: int) -> int:
    """Rows held out of the training split: the fraction, at least enough for the samples (never more
    than a tenth of the data for their sake), at most the cap, never every row. Same rule as the planner."""
    if fraction <= 0 or rows < 2:
        return 0
    n = max(math.ceil(fraction * rows), min(samples, rows // 10))
    return max(0, min(n, cap, rows - 1))


def split_held_out(config: Config, data):
    """(training rows, held-out rows or None, where they came from). Deterministic by the recipe's seed."""
    job = config.job
    settings = eval_settings(config)
    seed = config.args.seed
    if job.dataset_test_split:
        held = load_data(job, split=job.dataset_test_split)
        check_rows("vision-dpo" if is_vision(held) else config.method, held)
        if len(held) > settings["max_rows"]:
            held = held.shuffle(seed=seed).select(range(settings["max_rows"]))
        return data, held, f"split {job.dataset_test_split}"
    fraction = float(job.eval_fraction or 0.0)
    n = held_out_rows(len(data), fraction, settings["max_rows"], settings["samples"])
    if n == 0:
        return data, None, ""
    parts = data.train_test_split(test_size=n, seed=seed, shuffle=True)
    where = f"{fraction:g} of {job.dataset_train_split or 'train'} held out by seed {seed}, never trained on"
    return parts["train"], parts["test"], where


def eval_args(config: Config, held, micro_batch: int) -> dict[str, Any]:
    """The trainer's evaluation arguments: every N steps when the recipe asks, else only when we call it;
    batches of the training micro-batch, which is known to fit."""
    if held is None:
        return {"eval_strategy": "no"}
    every = eval_settings(config)["every_steps"]
    # GRPO evaluates whole groups: each process's eval batch holds all completions of a prompt.
    batch = config.args.num_generations if config.method == "grpo" else micro_batch
    args: dict[str, Any] = {"eval_strategy": "steps" if every else "no", "per_device_eval_batch_size": batch}
    if every:
        args["eval_steps"] = every
    return args


def prompt_of(row: dict[str, Any]) -> tuple[Any, str | None] | None:
    """(prompt, reference answer) of a held-out row: a message list for conversations, else text."""
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if not last:
            return None
        return messages[:last], messages[last].get("content")
    if "prompt" in row:
        prompt = row["prompt"]
        reference = next((row[k] for k in ("completion", "chosen", "answer") if row.get(k) is not None), None)
        return prompt, None if reference is None else _text(reference)
    if isinstance(row.get("chosen"), list) and len(row["chosen"]) > 1:  # DPO with the prompt inside
        return row["chosen"][:-1], _text(row["chosen"][-1:])
    if isinstance(row.get("text"), str) and len(row["text"]) > 1:
        half = len(row["text"]) // 2
        return row["text"][:half], row["text"][half:]
    return None


def render_prompt(tokenizer, prompt: Any) -> str:
    """A prompt as the trainer shows it to the model: conversations through the chat template."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return str(prompt)


def generate(model, tokenizer, texts: list[str], max_new_tokens: int, *, chat: bool) -> list[str]:
    """Greedy answers, batched with left padding, at most `max_new_tokens` each."""
    import torch
    from transformers import GenerationConfig

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        # A rendered chat template carries its own special tokens; plain text gets the tokenizer's.
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
    finally:
        tokenizer.padding_side = side
    eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(**batch, generation_config=config)
    finally:
        model.train(training)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


SMALL_MODEL_PARAMS = 100_000_000


@contextlib.contextmanager
def small_model_threads(model):
    """One CPU thread for a small model's inference: its matrices are too small to split, and threads
    that wait on each other cost more than they compute (10x slower on a busy 2-core machine)."""
    import torch

    if torch.cuda.is_available() or sum(p.numel() for p in model.parameters()) >= SMALL_MODEL_PARAMS:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Evaluator:
    """Measures the model on the held-out rows before the first step and after the last."""

    def __init__(self, config: Config, trainer, held, held_from: str) -> None:
        self.config, self.trainer, self.held, self.held_from = config, trainer, held, held_from
        self.settings = eval_settings(config)
        self.metrics: dict[str, dict[str, float]] = {}
        self.answers: dict[str, list[str]] = {}
        self.prompts: list[tuple[str, str | None]] = []
        self.seconds = 0.0
        self.chat, self.tokenizer = False, None
        self.sharded = bool(trainer.args.fsdp)
        if held is not None and self.settings["samples"] and not self.sharded and not is_vision(held):
            # FSDP shards the weights across processes: no one process can generate alone. Vision
            # prompts need their images, which text generation here does not feed.
            found = [p for p in (prompt_of(row) for row in held.select(range(min(len(held), 64)))) if p]
            self.chat = bool(found) and isinstance(found[0][0], list)
            tokenizer = trainer.processing_class
            tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
            self.tokenizer = tokenizer
            self.prompts = [(render_prompt(tokenizer, p), ref) for p, ref in found[: self.settings["samples"]]]

    def before(self) -> None:
        if self.sharded:
            # The trainer would shard the model for evaluation and then again for training; it is not
            # made for that order. Sharded runs report the tuned model only.
            log("eval before training: skipped (FSDP)")
            return
        self._measure("before")

    def after(self) -> None:
        self._measure("after")

    def _measure(self, when: str) -> None:
        if self.held is None:
            return
        start = time.monotonic()
        self._reporting_ready()
        with small_model_threads(self.trainer.model):
            raw = self._just_evaluated() if when == "after" else None
            raw = raw or self.trainer.evaluate()  # every process takes part; the trainer gathers
            if self.prompts and self.trainer.is_world_process_zero():
                self.answers[when] = generate(self.trainer.model, self.tokenizer, [p for p, _ in self.prompts],
                                              self.settings["max_new_tokens"], chat=self.chat)
        self.metrics[when] = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.seconds += time.monotonic() - start
        shown = " ".join(f"{k}={v:.4g}" for k, v in self.metrics[when].items() if k in self._headline())
        log(f"eval {when} training: {shown}")

    def _just_evaluated(self) -> dict[str, Any] | None:
        """The trainer's own evaluation at the last step (every_steps divides the steps): no need for another."""
        state = self.trainer.state
        last = next((e for e in reversed(state.log_history) if any(k.startswith("eval_") for k in e)), None)
        return last if last and last.get("step") == state.global_step else None

    def _reporting_ready(self) -> None:
        """Start the trackers outside train(): they start lazily on the first log, but GRPO's profiler
        logs to Trackio directly before that (and after train() has finished the run)."""
        t = self.trainer
        for callback in t.callback_handler.callbacks:
            if hasattr(callback, "setup") and getattr(callback, "_initialized", True) is False:
                callback.setup(t.args, t.state, t.model)

    def _headline(self) -> list[str]:
        names = list(HEADLINE[self.config.method])
        seen = set(self.metrics.get("before", {})) | set(self.metrics.get("after", {}))
        names += sorted(k for k in seen if k.startswith("eval_rewards/") and k.endswith("/mean"))
        return [n for n in names if n in seen]

    def summary(self) -> dict[str, Any] | None:
        if self.held is None:
            return None
        before, after = self.metrics.get("before", {}), self.metrics.get("after", {})
        head = self._headline()
        samples = [{"prompt": p, "reference": ref, "base": b, "tuned": a} for (p, ref), b, a in
                   zip(self.prompts, self.answers.get("before", []), self.answers.get("after", []))]
        return {"held_out": self.held_from, "rows": len(self.held),
                "metrics": [{"name": k, "before": before.get(k), "after": after.get(k)} for k in head],
                "samples": samples, "benchmarks": [], "benchmark_error": None, "seconds": round(self.seconds, 3)}


@functools.cache
def task_manager():
    """lm-eval's index of its tasks (built from the YAML files it ships: offline, ~20 s of CPU), built once."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise JobError(f"evaluation.tasks needs lm-eval (pip install 'lm-eval[ifeval]'): {e}") from None
    return TaskManager()


def check_tasks(tasks: list[str]) -> None:
    """Every benchmark task must be one the harness knows: fail now, not after training."""
    known = set(task_manager().all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise JobError(f"evaluation.tasks: lm-eval has no task {unknown[0]!r}")


def harness_kwargs(config: Config, *, adapter: bool, chat: bool) -> dict[str, Any]:
    """The lm-eval `simple_evaluate` call for the tuned model saved in output_dir."""
    import torch

    settings = eval_settings(config)
    model_args: dict[str, Any] = {"pretrained": config.base_model, "peft": config.output_dir} if adapter else \
        {"pretrained": config.output_dir}
    if adapter and config.model.model_revision:  # the adapter sits on the base commit it trained from
        model_args["revision"] = config.model.model_revision
    model_args["dtype"] = "auto"
    return {
        "model": "hf",
        "model_args": model_args,
        "tasks": list(settings["tasks"]),
        "limit": settings["task_limit"],
        "batch_size": 16,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "apply_chat_template": chat,
        "random_seed": config.args.seed,
        "log_samples": False,
        "bootstrap_iters": 1000,  # standard errors: 1,000 resamples are plenty for a few hundred samples
    }


def benchmark_scores(results: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """lm-eval's results -> a score per task and metric ('exact_match,strict-match' -> 'exact_match (strict-match)')."""
    out = []
    configs = results.get("configs") or {}
    for task, values in (results.get("results") or {}).items():
        for key, value in values.items():
            if "_stderr" in key or key == "alias" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, flt = key.partition(",")
            stderr = values.get(f"{metric}_stderr,{flt}" if flt else f"{metric}_stderr")
            out.append({"task": task, "metric": f"{metric} ({flt})" if flt and flt != "none" else metric,
                        "value": float(value), "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                        "limit": limit, "dataset": (configs.get(task) or {}).get("dataset_path")})
    return out


# What torchrun tells its processes; the harness runs as one plain process, outside their group.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                   "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RUNNER_NPROC")


def run_benchmarks(config: Config, evaluation: dict[str, Any], *, adapter: bool) -> None:
    """Run the recipe's tasks on the saved tuned model in a fresh process (alone on the device, and
    outside the trainer's process group); a harness failure is recorded, the trained model is kept."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "benchmarks.json"
        env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and not k.startswith("TORCHELASTIC")}
        env.update(RUNNER_JOB_CONFIG=json.dumps(config.raw), RUNNER_BENCHMARKS_OUT=str(out),
                   RUNNER_BENCHMARKS_ADAPTER="1" if adapter else "")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, check=False)
        result = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {
            "benchmarks": [], "benchmark_error": f"the benchmark process exited with code {proc.returncode}"}
    evaluation.update(result)
    evaluation["seconds"] = round(evaluation.get("seconds", 0.0) + time.monotonic() - start, 3)
    if evaluation["benchmark_error"]:
        log(f"benchmark tasks failed: {evaluation['benchmark_error']}")
    for b in evaluation["benchmarks"]:
        log(f"benchmark {b['task']} {b['metric']}={b['value']:.4g}")


def benchmarks_main(out: Path) -> int:
    """The benchmark process: the harness on the tuned model, its scores (or its failure) to `out`."""
    result: dict[str, Any] = {"benchmarks": [], "benchmark_error": None}
    try:
        config = parse_config(json.loads(os.environ["RUNNER_JOB_CONFIG"]))
        import lm_eval

        kwargs = harness_kwargs(config, adapter=bool(os.environ.get("RUNNER_BENCHMARKS_ADAPTER")),
                                chat=_has_template(config))
        results = lm_eval.simple_evaluate(**kwargs, task_manager=task_manager())
        result["benchmarks"] = benchmark_scores(results or {}, eval_settings(config)["task_limit"])
    except Exception as e:  # noqa: BLE001 - whatever the harness raises, the run keeps its model
        result["benchmark_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


def _has_template(config: Config) -> bool:
    """Whether the saved model has a chat template: then the harness prompts it as a chat model."""
    path = Path(config.output_dir)
    settings = path / "tokenizer_config.json"
    return (path / "chat_template.jinja").exists() or (
        settings.exists() and "chat_template" in json.loads(settings.read_text(encoding="utf-8")))


def relaunch_data_parallel(argv: list[str] | None) -> None:
    """With RUNNER_NPROC=N (> 1) and not yet under torchrun, become N torchrun processes."""
    n = int(os.environ.get("RUNNER_NPROC", "1") or 1)
    if n > 1 and "LOCAL_RANK" not in os.environ:
        args = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={n}", os.path.abspath(__file__), *args])


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("RUNNER_BENCHMARKS_OUT"):
        return benchmarks_main(Path(os.environ["RUNNER_BENCHMARKS_OUT"]))
    args = parse_args(argv)
    try:
        if args.explain:
            print(json.dumps(explain(read_config(args), args.device)), flush=True)
            return 0
        if args.device:
            raise JobError("--device only goes with --explain; training uses the device it finds")
        relaunch_data_parallel(argv)
        config = load_config(args=args)
        summary = train(config)
    except JobError as e:
        print(f"error: {e}", flush=True)
        return 1
    if summary is not None:
        if summary["evaluation"] and eval_settings(config)["tasks"]:
            # After the trainer (and its copy of the model) is gone: the harness loads the saved model.
            run_benchmarks(config, summary["evaluation"], adapter=summary["adapter"])
        path = Path(config.job.summary_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, path)
        if config.job.summary_repo:  # a remote job's summary reaches the runner through the model repo
            from huggingface_hub import HfApi

            HfApi().upload_file(path_or_fileobj=str(path), path_in_repo=config.job.summary_repo_path,
                                repo_id=config.job.summary_repo, commit_message="recipes-runner: training summary")
        log(f"done: {summary['steps']} steps, {summary['tokens_seen']} tokens, model in {config.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
