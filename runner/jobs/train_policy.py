"""How one training job runs on one device: precision, attention, kernels, batch split, sharding.

Pure functions, shared by the planner (runner/plan.py prices memory, time and cost with
them) and the job script (runner/jobs/train.py builds its TrainingArguments from them),
so what the plan prices is what the job runs. Standard library only: train.py imports
this file as its sibling, on machines without the `runner` package, and ships with it.

The decisions, in one place:
- precision: a full fine-tune keeps fp32 master weights and fp32 AdamW states under bf16
  autocast (fp16 with a gradient scaler on GPUs without bf16, e.g. T4: the scaler refuses
  fp16 parameters); LoRA keeps the frozen base in bf16 (fp16 on T4) and the adapters in
  fp32 (PEFT upcasts them). CPUs train in fp32.
- attention: FlashAttention 2 from the Hub's `kernels` package (a pinned revision) on Ampere
  and later, else PyTorch SDPA.
- SFT packing: best-fit-decreasing packing, padding-free, where the attention keeps packed
  sequences apart (FlashAttention); else batches of similar lengths (`group_by_length`).
- Liger kernels on every CUDA GPU.
- batch: the recipe's batch_size x grad_accum is the global batch per optimizer step; on a
  GPU it is re-split into the largest micro-batch that fits in MEMORY_TARGET of the memory
  times accumulation, across the processes, unless the recipe pins it (`training.pin_batch:
  true`). On a CPU it is re-split (same global batch, same loss) into micro-batches of at
  most CPU_MICRO_TOKENS tokens: a full 8 x 512 fp32 micro-batch cost more memory than TRL's
  defaults, for no speed.
- activation checkpointing only when no micro-batch fits without it (`auto`).
- multi-GPU: data-parallel (DDP) when a replica fits one GPU, else FSDP (`strategy: auto`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Literal

GiB = 1024**3
GB = 1000**3  # memory sizes are listed in GB (decimal), as the Hub lists them; capacities compare in bytes
# FlashAttention 2 built for the `kernels` package (trl-jobs' presets), fetched from the Hub by the job next to
# HF_TOKEN: pinned to one commit, so a later push to the kernel repo never runs in a job unreviewed.
# transformers reads `repo@revision` as get_kernel(repo, revision=...). To refresh, take the head of the version
# branch this transformers loads (FLASH_ATTN_KERNEL_VERSIONS in transformers/modeling_flash_attention_utils.py,
# 4 -> branch v4), review the diff, and paste the full sha that prints:
#   python -c "import huggingface_hub as h; print(h.model_info('kernels-community/flash-attn2', revision='v4').sha)"
FLASH_ATTENTION_REPO = "kernels-community/flash-attn2"
FLASH_ATTENTION_REVISION = "81fb77c12b2ad5d69380669b46739d5868614502"
FLASH_ATTENTION = f"{FLASH_ATTENTION_REPO}@{FLASH_ATTENTION_REVISION}"  # what the job passes as attn_implementation
SDPA = "sdpa"
GPU_OVERHEAD = 1.5 * GiB  # CUDA context, allocator slack
CPU_OVERHEAD = 1.0 * GiB
LOGPROB_CHUNK = 32_768  # TRL >= 1.16 scores the vocabulary in chunks of this many logits (fused LM head)
DEFAULT_VOCAB = 128_000
MAX_MICRO_BATCH = 64
# Micro-batches are sized to fill at most this share of a device: the memory model is an estimate, and the rest is
# headroom for what it does not count (fragmentation, kernels' workspaces). A setup above it still fits, with a warning.
MEMORY_TARGET = 0.9
# On a CPU a micro-batch holds at most this many tokens (rows x expected length): activations and the padded
# attention scores grow with it, and a CPU's matrix products are already full at this size.
CPU_MICRO_TOKENS = 1024
# Architectures (config class-name prefixes) Liger patches; on others it does nothing and we count no saving.
LIGER_ARCHITECTURES = ("Llama", "Mistral", "Mixtral", "Gemma", "Qwen2", "Qwen3", "Phi3", "Granite", "Olmo2",
                       "Glm4", "SmolLM3")

Method = Literal["sft", "dpo", "grpo"]


@dataclass(frozen=True)
class Gpu:
    """What a GPU family can do, as far as the training setup cares."""

    name: str
    memory_gb: float
    bf16: bool  # bf16 tensor cores: Ampere (sm80) and later
    flash_attention: bool  # FlashAttention 2 kernels need sm80+


# Keys are what `--device` accepts (and what HF flavor names start with).
GPUS: dict[str, Gpu] = {
    "t4": Gpu("T4", 16, bf16=False, flash_attention=False),  # Turing, sm75
    "l4": Gpu("L4", 24, bf16=True, flash_attention=True),  # Ada, sm89
    "a10g": Gpu("A10G", 24, bf16=True, flash_attention=True),  # Ampere, sm86
    "l40s": Gpu("L40S", 48, bf16=True, flash_attention=True),  # Ada, sm89
    "a100": Gpu("A100", 80, bf16=True, flash_attention=True),  # Ampere, sm80
    "h100": Gpu("H100", 80, bf16=True, flash_attention=True),  # Hopper, sm90
    "h200": Gpu("H200", 141, bf16=True, flash_attention=True),  # Hopper, sm90
}


@dataclass(frozen=True)
class Device:
    """Where the job runs: `count` devices of one kind (CPU processes count as devices)."""

    kind: str  # "cpu", or a GPU family key / name
    count: int
    memory_gb: float  # per device
    bf16: bool
    flash_attention: bool

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    @property
    def name(self) -> str:
        return self.kind if self.count == 1 else f"{self.kind}x{self.count}"


def device(spec: str, *, cpu_memory_gb: float = 16.0) -> Device:
    """`cpu`, `t4`, `a100`, or a count such as `a100x4` / `cpux2`. Raises ValueError naming the choices."""
    m = re.fullmatch(r"([a-z0-9]+?)(?:x(\d+))?", spec.strip().lower())
    kind, count = (m.group(1), int(m.group(2) or 1)) if m else (spec, 0)
    if kind == "cpu" and count >= 1:
        return Device("cpu", count, cpu_memory_gb, bf16=False, flash_attention=False)
    gpu = GPUS.get(kind)
    if gpu is None or count < 1:
        raise ValueError(f"unknown device {spec!r}: use cpu or one of {', '.join(GPUS)}, optionally with a count "
                         "such as a100x4")
    return Device(kind, count, gpu.memory_gb, gpu.bf16, gpu.flash_attention)


def gpu_device(name: str, count: int, *, memory_gb: float, capability: int) -> Device:
    """The device torch reports (e.g. 'NVIDIA A100-SXM4-80GB', sm major 8), matched to a known family if any."""
    lowered = name.lower()
    kind = next((k for k in sorted(GPUS, key=len, reverse=True) if re.search(rf"\b{k}", lowered)), lowered)
    return Device(kind, max(count, 1), memory_gb, bf16=capability >= 8, flash_attention=capability >= 8)


# --- precision -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    model_dtype: Literal["float32", "bfloat16", "float16"]  # what from_pretrained loads
    autocast: Literal["bf16", "fp16", "none"]
    optimizer_dtype: Literal["float32"]  # AdamW moments (they follow the trainable parameters' dtype)

    @property
    def weight_bytes(self) -> int:
        return 4 if self.model_dtype == "float32" else 2

    @property
    def activation_bytes(self) -> int:
        return 4 if self.autocast == "none" else 2


def precision(dev: Device, method: str, lora: bool) -> Precision:
    """The precision a job trains in on `dev`: load dtype, autocast and optimizer-state dtype.

    The same for every method: DPO's reference copy and GRPO's generation use the loaded dtype.
    """
    del method  # no method needs a different precision today; kept so callers state it
    if not dev.is_gpu:
        return Precision("float32", "none", "float32")
    half: Literal["bf16", "fp16"] = "bf16" if dev.bf16 else "fp16"
    if lora:  # the frozen base in half precision; PEFT keeps the trainable adapters in fp32
        return Precision("bfloat16" if dev.bf16 else "float16", half, "float32")
    # Full fine-tune: fp32 master weights. fp16 parameters would make the gradient scaler refuse to
    # unscale ("Attempting to unscale FP16 gradients"); bf16 ones would lose updates below bf16's precision.
    return Precision("float32", half, "float32")


# --- model size and memory -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    params: int  # total: what memory holds
    active_params: int  # per token: what compute costs (less than params for mixture-of-experts)
    hidden: int
    layers: int
    vocab: int
    liger: bool  # Liger has kernels for this architecture


def model_shape(params: int, *, active_params: int | None = None, hidden: int | None = None,
                layers: int | None = None, vocab: int | None = None, architecture: str | None = None) -> ModelShape:
    """The shape from the config when known, else a dense-decoder rule of thumb from the size."""
    compute = active_params or params
    h = hidden or max(256, int(4096 * math.sqrt(compute / 8e9) / 128) * 128)
    n = layers or max(2, round(compute / (12 * h * h)))
    liger = bool(architecture) and str(architecture).startswith(LIGER_ARCHITECTURES)
    return ModelShape(params, compute, h, n, vocab or DEFAULT_VOCAB, liger)


def lora_params(shape: ModelShape, r: int) -> int:
    """Trainable LoRA parameters at rank r."""
    # all-linear on a Llama-style block: q,k,v,o + gate,up,down ~ 18 x hidden inputs+outputs per rank.
    return min(int(18 * shape.hidden * r * shape.layers), shape.params)


def peak_memory(shape: ModelShape, dev: Device, prec: Precision, *, lora: bool, r: int, method: str,
                micro_batch: int, seq: float, checkpointing: bool, completion_tokens: int, generations: int,
                shards: int = 1, liger: bool = False) -> float:
    """Estimated peak bytes on one device for one micro-batch of `seq`-token sequences."""
    w = prec.weight_bytes
    if lora:
        states: float = shape.params * w + lora_params(shape, r) * 16  # fp32 adapter, its gradient, two AdamW moments
    else:
        opt = 4 if prec.optimizer_dtype == "float32" else 2
        states = shape.params * (2 * w + 2 * opt)  # weights + gradients + AdamW moments
        if prec.autocast != "none" and w == 4:
            states += shape.params * 2  # autocast keeps a half-precision copy of the weights it casts
        if method == "dpo":
            states += shape.params * w  # a frozen reference copy
    states /= shards
    a = prec.activation_bytes
    sequences = 2 if method == "dpo" else 1
    tokens = micro_batch * seq * sequences
    per_layer = 34 * shape.hidden * a / 2  # Korthikanti et al., flash attention (no s^2 term)
    if liger:
        per_layer *= 0.6  # fused RMSNorm / SwiGLU / RoPE keep fewer intermediates (Liger paper: about -60% total)
    layers = shape.layers
    acts = tokens * (2 * shape.hidden * a * layers + per_layer) if checkpointing else tokens * per_layer * layers
    logits = tokens * min(shape.vocab, LOGPROB_CHUNK) * 4 * 2  # one fp32 chunk of logits and its gradient
    kv = 0.0
    if method == "grpo":
        kv = generations * (seq + completion_tokens) * 2 * layers * (shape.hidden / 4) * a
    overhead = GPU_OVERHEAD if dev.is_gpu else CPU_OVERHEAD
    return (states + acts + logits + kv + overhead) * 1.1


# --- the resolved setup --------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What the recipe asks of the trainer, as the job config carries it."""

    method: str
    lora: bool
    lora_r: int = 16
    batch_size: int = 4
    grad_accum: int = 4
    pin_batch: bool = False
    max_length: int = 1024
    sequence_tokens: float | None = None  # longest sequence expected without packing (the plan's sample)
    packing: bool | Literal["auto"] = "auto"
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    completion_tokens: int = 256
    generations: int = 8
    model: ModelShape | None = None  # unknown: the recipe's batch split is kept as given


@dataclass(frozen=True)
class Setup:
    """The training setup on one device; field names follow TrainingArguments where they exist."""

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
    effective_batch: int  # per_device x accumulation x world_size
    strategy: Literal["single", "ddp", "fsdp"]
    fsdp: bool
    batch_source: Literal["memory model", "recipe"]
    memory_gb: float | None  # estimated peak per device, GB (None: model size unknown)
    memory_capacity_gb: float
    fits: bool

    def as_dict(self) -> dict[str, object]:
        """The setup as JSON-ready data (what --explain prints)."""
        return asdict(self)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(min(n, MAX_MICRO_BATCH), 0, -1) if n % d == 0]


StrategyName = Literal["single", "ddp", "fsdp"]


def _strategies(job: Job, dev: Device) -> list[StrategyName]:
    """The multi-device strategies to try, cheapest first."""
    if dev.count == 1:
        return ["single"]
    if not dev.is_gpu or job.strategy == "ddp":
        return ["ddp"]
    return ["fsdp"] if job.strategy == "fsdp" else ["ddp", "fsdp"]


def _checkpointing(job: Job, dev: Device) -> list[bool]:
    """Activation checkpointing settings to try, without it first."""
    if not dev.is_gpu:
        return [False]  # plenty of RAM, and recomputation only slows a CPU down
    return [False, True] if job.gradient_checkpointing == "auto" else [bool(job.gradient_checkpointing)]


def _micro_batches(job: Job, dev: Device, seq: float) -> tuple[list[int], int, bool]:
    """(micro-batch sizes to try, largest first; rows per process per step; whether the memory model sized them)."""
    per_process = job.batch_size * job.grad_accum
    sized = dev.is_gpu and job.model is not None and not job.pin_batch
    if sized:
        per_process = max(1, math.ceil(job.batch_size * job.grad_accum / dev.count))
        if job.method == "grpo" and (per_process * dev.count) % job.generations:
            sized = False  # GRPO needs whole groups of generations per step; keep the recipe's split
            per_process = job.batch_size * job.grad_accum
    micros = _divisors_desc(per_process) if sized else [job.batch_size]
    if not dev.is_gpu and not job.pin_batch and job.method != "grpo":  # GRPO's batch is groups of generations
        # Rows one micro-batch at a time cost the same per token on a CPU; fewer at once keep the
        # activations (fp32, no checkpointing) below what a wide padded batch holds.
        tokens = seq * (2 if job.method == "dpo" else 1)
        micros = [next(d for d in _divisors_desc(per_process) if d * tokens <= CPU_MICRO_TOKENS or d == 1)]
        sized = True
    return micros, per_process, sized


def resolve(job: Job, dev: Device) -> Setup:
    """The setup `job` trains with on `dev`: the one function the plan and the job script both call."""
    prec = precision(dev, job.method, job.lora)
    packing = job.method == "sft" and (dev.flash_attention if job.packing == "auto" else bool(job.packing))
    seq = float(job.max_length) if packing else float(min(job.sequence_tokens or job.max_length, job.max_length))
    strategies, checkpoints = _strategies(job, dev), _checkpointing(job, dev)
    micros, per_process, sized = _micro_batches(job, dev, seq)

    def memory(micro: int, ckpt: bool, strategy: str) -> float | None:
        if job.model is None:
            return None
        return peak_memory(job.model, dev, prec, lora=job.lora, r=job.lora_r, method=job.method, micro_batch=micro,
                           seq=seq, checkpointing=ckpt, completion_tokens=job.completion_tokens,
                           generations=job.generations, shards=dev.count if strategy == "fsdp" else 1,
                           liger=dev.is_gpu and job.model.liger)

    candidates = [(s, c, m) for s in strategies for c in checkpoints for m in micros]
    capacity = dev.memory_gb * GB
    # The first setup within the target, else the first within the whole memory (the plan warns), else none fits.
    choice = next(((s, c, m, mem) for limit in (capacity * MEMORY_TARGET, capacity) for s, c, m in candidates
                   if (mem := memory(m, c, s)) is None or mem <= limit), None)
    fits = choice is not None
    if choice is None:
        s, c, m = strategies[-1], checkpoints[-1], micros[-1]
        choice = (s, c, m, memory(m, c, s))
    strategy, ckpt, micro, mem = choice
    accum = per_process // micro if sized else job.grad_accum
    return Setup(
        device=dev.name, world_size=dev.count, model_dtype=prec.model_dtype, autocast=prec.autocast,
        optimizer_dtype=prec.optimizer_dtype, bf16=prec.autocast == "bf16", fp16=prec.autocast == "fp16",
        attn_implementation=FLASH_ATTENTION if dev.flash_attention else SDPA, use_liger_kernel=dev.is_gpu,
        # TRL's BFD packing always runs padding-free; only FlashAttention keeps the packed rows apart.
        packing=packing, padding_free=packing, group_by_length=job.method == "sft" and not packing,
        gradient_checkpointing=ckpt, per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
        effective_batch=micro * accum * dev.count, strategy=strategy, fsdp=strategy == "fsdp",
        batch_source="memory model" if sized else "recipe",
        memory_gb=None if mem is None else round(mem / GB, 2), memory_capacity_gb=dev.memory_gb, fits=fits,
    )


def without_flash_attention(dev: Device) -> Device:
    """The same device when the `kernels` package is missing: SDPA, so no padding-free packing."""
    return replace(dev, flash_attention=False)


def job_from_config(config: dict) -> Job:
    """The Job a train.py config describes (runner/jobspec.py TrainJobConfig: TRL's field names and ours)."""
    shape = None
    if config.get("model_params"):
        shape = model_shape(int(config["model_params"]), active_params=config.get("model_active_params"),
                            hidden=config.get("model_hidden_size"), layers=config.get("model_num_layers"),
                            vocab=config.get("model_vocab_size"), architecture=config.get("model_architecture"))
    return Job(
        method=config.get("method", "sft"), lora=bool(config.get("use_peft")), lora_r=int(config.get("lora_r", 16)),
        batch_size=int(config.get("per_device_train_batch_size", 4)),
        grad_accum=int(config.get("gradient_accumulation_steps", 4)),
        pin_batch=bool(config.get("pin_batch", False)),
        # GRPO's TRL config has no max_length: its sequences are what the plan sampled, as the plan sizes them.
        max_length=int(config.get("max_length") or config.get("sequence_tokens") or 1024),
        sequence_tokens=config.get("sequence_tokens"), packing=config.get("packing_mode", "auto"),
        gradient_checkpointing=config.get("gradient_checkpointing_mode", "auto"),
        strategy=config.get("strategy", "auto"), completion_tokens=int(config.get("max_completion_length") or 256),
        generations=int(config.get("num_generations") or 8), model=shape,
    )
