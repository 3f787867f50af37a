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
import importlib.util
import json
import math
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_policy.py ships beside this file
import train_policy as policy  # noqa: E402

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


def load_config(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> dict[str, Any]:
    args = args or parse_args(argv)
    try:
        text = args.config.read_text(encoding="utf-8") if args.config else os.environ["RUNNER_JOB_CONFIG"]
        config = json.loads(text)
    except KeyError:
        raise JobError("no --config given and RUNNER_JOB_CONFIG is not set") from None
    except (OSError, ValueError) as e:
        raise JobError(f"cannot read the job config: {e}") from None
    check_config(config)
    return config


def check_config(config: dict[str, Any]) -> None:
    for key in ("method", "base_model", "dataset", "training", "output_dir", "summary_path"):
        if key not in config:
            raise JobError(f"job config is missing '{key}'")
    if config["method"] not in ("sft", "dpo", "grpo"):
        raise JobError(f"unknown method {config['method']!r}")
    t = config["training"]
    bounds = {"learning_rate": (0, 1), "epochs": (0, 1000), "batch_size": (0, 100_000), "grad_accum": (0, 100_000),
              "max_length": (0, 10_000_000)}
    for key, (low, high) in bounds.items():
        value = t.get(key)
        if not isinstance(value, (int, float)) or not (low < value <= high):
            raise JobError(f"training.{key} must be in ({low}, {high}], got {value!r}")
    if config["method"] == "grpo":
        if not config.get("rewards"):
            raise JobError("GRPO needs at least one reward function")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        g = t.get("num_generations") or 8
        if (t["batch_size"] * world * t["grad_accum"]) % g:
            raise JobError(f"batch_size x processes x grad_accum ({t['batch_size']} x {world} x {t['grad_accum']}) "
                           f"must be divisible by num_generations ({g})")


# --- data --------------------------------------------------------------------------------------


def load_data(spec: dict[str, Any]):
    from datasets import load_dataset

    source = spec["source"]
    suffix = Path(source).suffix.lower()
    try:
        if suffix in LOCAL_SUFFIXES and Path(source).exists():
            data = load_dataset(LOCAL_SUFFIXES[suffix], data_files=source, split="train")
        else:
            data = load_dataset(source, spec.get("config"), split=spec.get("split") or "train",
                                revision=spec.get("revision"))
    except FileNotFoundError as e:
        raise JobError(f"dataset {source}: {e}") from None
    columns = spec.get("columns") or {}
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


def vision_trainer(config: dict[str, Any], data, args: dict[str, Any], model_kwargs: dict[str, Any], peft,
                   callbacks: list):
    """DPOTrainer over a vision-language model with its processor (images become pixel values per batch)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    if config["method"] != "dpo":
        raise JobError(f"the dataset has images; vision-language training supports method dpo, not "
                       f"{config['method']}")
    t = config["training"]
    try:
        # The slow (PIL) image processor: the fast one needs torchvision, which the job does not install.
        processor = AutoProcessor.from_pretrained(config["base_model"], use_fast=False)
        model = AutoModelForImageTextToText.from_pretrained(config["base_model"], **model_kwargs)
    except ValueError as e:  # transformers' answer for a model that has no image-text-to-text class
        raise JobError(f"{config['base_model']} is not a vision-language model ({str(e).splitlines()[0]})") from None
    extra = {"beta": t["beta"]} if t.get("beta") is not None else {}
    dpo_args = DPOConfig(**args, max_length=t["max_length"], **extra)
    return DPOTrainer(model=model, args=dpo_args, train_dataset=data, processing_class=processor,
                      peft_config=peft, callbacks=callbacks)


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
        raise JobError(f"{method.upper().replace('VISION-', 'vision ')} needs columns {wanted} after the column mapping "
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
        if "name" in spec:
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


def common_args(config: dict[str, Any], gpu: bool) -> dict[str, Any]:
    t = config["training"]
    hub_repo = config.get("hub_repo")
    tracking = config.get("tracking") or {}
    steps = t.get("max_steps")
    args: dict[str, Any] = {
        "output_dir": config["output_dir"],
        "num_train_epochs": t["epochs"],
        "max_steps": steps or -1,
        "learning_rate": t["learning_rate"],
        "lr_scheduler_type": t.get("lr_scheduler", "cosine"),
        # transformers 5 takes a ratio (< 1) or a step count in warmup_steps.
        "warmup_steps": t.get("warmup_ratio", 0.0),
        "seed": t.get("seed", 42),
        # On CPU, use_cpu is what lets accelerate join torchrun's processes (gloo); without it each trains alone.
        "use_cpu": not gpu,
        "logging_steps": 1 if steps and steps <= 200 else 10,
        "report_to": ["trackio"],
        "project": tracking.get("project") or "recipes-runner",
        "run_name": config.get("run_id"),
        "trackio_space_id": tracking.get("space_id"),
        # Without a Space, stay local: no static dashboard sync at push time.
        "trackio_static_space_id": None if tracking.get("space_id") else False,
        "hub_private_repo": bool(config.get("private", True)),
        "include_num_input_tokens_seen": "non_padding",
        "disable_tqdm": not sys.stdout.isatty(),
        "dataloader_num_workers": 0,
        # Checkpoints every save_steps, on disk and (with a repo) on the Hub: what a retry resumes from.
        "save_strategy": "steps",
        "save_steps": t.get("save_steps") or 100,
        "save_total_limit": 2,
        "push_to_hub": bool(hub_repo),
        "hub_model_id": hub_repo,
        # Every save goes to the Hub, so a job that times out leaves its last checkpoint behind.
        "hub_strategy": "checkpoint" if hub_repo else "every_save",
    }
    return args


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


def training_setup(config: dict[str, Any], dev: policy.Device) -> policy.Setup:
    """The setup this job trains with on `dev` (pure: also what --explain prints)."""
    return policy.resolve(policy.job_from_config(config), dev)


def setup_args(config: dict[str, Any], setup: policy.Setup) -> dict[str, Any]:
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


def explain(config: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The resolved setup for `device` (or this machine) as a JSON-ready dict."""
    try:
        dev = policy.device(device) if device else runtime_device()
    except ValueError as e:
        raise JobError(str(e)) from None
    return training_setup(config, dev).as_dict()


def peft_config(lora: dict[str, Any] | None):
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"], task_type="CAUSAL_LM")


def build_trainer(config: dict[str, Any], data):
    from transformers import PrinterCallback

    trainer = _trainer(config, data)
    trainer.remove_callback(PrinterCallback)  # our Progress lines replace its raw dicts
    return trainer


def _trainer(config: dict[str, Any], data):
    import torch

    gpu = torch.cuda.is_available()
    t = config["training"]
    method = config["method"]
    setup = training_setup(config, runtime_device())
    log("setup: " + json.dumps(setup.as_dict()))
    args = {**common_args(config, gpu), **setup_args(config, setup)}
    model_kwargs = model_init_kwargs(setup)
    peft = peft_config(config.get("lora"))
    callbacks = [progress_callback()]
    if is_vision(data):
        return vision_trainer(config, data, args, model_kwargs, peft, callbacks)
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        # Packing (BFD, padding-free) is exact only with FlashAttention, which keeps packed sequences apart;
        # without it, batches of similar lengths cut padding while staying exact on any device.
        extra = {"train_sampling_strategy": "group_by_length"} if setup.group_by_length else {}
        sft_args = SFTConfig(**args, **extra, max_length=t["max_length"], packing=setup.packing,
                             padding_free=setup.padding_free, model_init_kwargs=model_kwargs)
        return SFTTrainer(model=config["base_model"], args=sft_args, train_dataset=data, peft_config=peft,
                          callbacks=callbacks)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        extra = {"beta": t["beta"]} if t.get("beta") is not None else {}
        dpo_args = DPOConfig(**args, max_length=t["max_length"], model_init_kwargs=model_kwargs, **extra)
        return DPOTrainer(model=config["base_model"], args=dpo_args, train_dataset=data, peft_config=peft,
                          callbacks=callbacks)
    from trl import GRPOConfig, GRPOTrainer

    grpo_args = GRPOConfig(**args, num_generations=t.get("num_generations") or 8,
                           max_completion_length=t.get("max_completion_length") or 256,
                           model_init_kwargs=model_kwargs, log_completions=False)
    return GRPOTrainer(model=config["base_model"], args=grpo_args, train_dataset=data, peft_config=peft,
                       reward_funcs=reward_functions(config["rewards"]), callbacks=callbacks)


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def resume_checkpoint(config: dict[str, Any]) -> str | None:
    """The checkpoint a retry resumes from: last-checkpoint/ on the Hub, else the newest one on disk."""
    if not config.get("resume_from_checkpoint"):
        return None
    repo = config.get("hub_repo")
    if repo:
        from huggingface_hub import snapshot_download

        local = Path(config["summary_path"]).parent / "resume"
        snapshot_download(repo_id=repo, allow_patterns=["last-checkpoint/*"], local_dir=str(local))
        path = local / "last-checkpoint"
    else:
        found = sorted(Path(config["output_dir"]).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        path = found[-1] if found else Path()
    if not (path / "trainer_state.json").is_file():
        log("no checkpoint to resume from; training from the start")
        return None
    log(f"resuming from {path}")
    return str(path)


def train(config: dict[str, Any]) -> dict[str, Any] | None:
    data = load_data(config["dataset"])
    check_rows("vision-dpo" if is_vision(data) else config["method"], data)
    log(f"loaded {len(data)} rows; training {config['method'].upper()} on {config['base_model']}")
    trainer = build_trainer(config, data)
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    wall = time.monotonic() - start
    trainer.save_model(config["output_dir"])
    if not trainer.is_world_process_zero():
        return None
    pushed = None
    if config.get("hub_repo"):
        info = trainer.push_to_hub(commit_message=f"recipes-runner run {config.get('run_id')}")
        # Exactly where the model went: the runner checks it is there before it records the run.
        pushed = {"repo": config["hub_repo"], "commit": getattr(info, "oid", None)}
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    last = next((e for e in reversed(trainer.state.log_history) if "loss" in e), {})
    if "loss" in last:
        metrics["final_loss"] = last["loss"]
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    runtime = metrics.get("train_runtime", wall)
    return {
        "method": config["method"],
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_runtime_s": runtime,
        "tokens_seen": tokens,
        "tokens_per_second": tokens / runtime if runtime else 0.0,
        "final_metrics": metrics,
        "log_history": trainer.state.log_history,
        "adapter": config.get("lora") is not None,
        "vision": is_vision(data),
        "world_size": trainer.args.world_size,
        "setup": training_setup(config, runtime_device()).as_dict(),
        "peak_memory_bytes": peak_memory_bytes(),
        "pushed": pushed,
    }


def relaunch_data_parallel(argv: list[str] | None) -> None:
    """With RUNNER_NPROC=N (> 1) and not yet under torchrun, become N torchrun processes."""
    n = int(os.environ.get("RUNNER_NPROC", "1") or 1)
    if n > 1 and "LOCAL_RANK" not in os.environ:
        args = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={n}", os.path.abspath(__file__), *args])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.explain:
            print(json.dumps(explain(load_config(args=args), args.device)), flush=True)
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
        path = Path(config["summary_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, path)
        target = config.get("summary_upload")
        if target:  # a remote job's summary reaches the runner through the model repo
            from huggingface_hub import HfApi

            HfApi().upload_file(path_or_fileobj=str(path), path_in_repo=target["path"], repo_id=target["repo"],
                                commit_message="recipes-runner: training summary")
        log(f"done: {summary['steps']} steps, {summary['tokens_seen']} tokens, model in {config['output_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
