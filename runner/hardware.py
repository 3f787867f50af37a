"""Hugging Face Jobs hardware: the flavors, what they cost, and how fast they compute.

Prices are the Hub's published Jobs table (USD per hour, billed per minute); when a
token is available the plan refreshes them from the live hardware endpoint. Peak
throughput is the vendor's dense bf16 (fp16 on T4) tensor figure per accelerator, each
with its source; the plan applies a utilisation (MFU) per GPU family to it, each with its
reasoning (FAMILIES), so these are estimates, not promises. What each GPU can do (bf16, FlashAttention) comes from the
training policy the job script itself uses (runner/jobs/train_policy.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict

from runner.jobs.train_policy import GB, GPUS, Device, GiB  # noqa: F401 (GB, GiB: re-exported for the planner)


class HardwareFlavor(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    usd_per_hour: float
    accelerator: str | None  # None for CPU-only flavors
    count: int  # accelerators (GPUs); 0 for CPU flavors
    memory_gb: float  # per accelerator (VRAM), or system RAM for CPU flavors
    ram_gb: float
    peak_tflops: float  # per accelerator (or whole machine for CPU flavors), dense, no sparsity
    peak_source: str = ""  # where peak_tflops comes from (every built-in flavor cites one)
    mfu: float = 0.25  # model FLOPs utilisation the plan assumes: achieved / peak
    mfu_source: str = ""  # why that utilisation
    bf16: bool = True

    @property
    def is_gpu(self) -> bool:
        return self.count > 0

    @property
    def devices(self) -> int:
        return max(self.count, 1)

    @property
    def device(self) -> Device:
        """The training policy's view of this flavor (runner/jobs/train_policy.py)."""
        if not self.is_gpu:
            return Device("cpu", 1, self.memory_gb, bf16=False, flash_attention=False)
        key = str(self.accelerator).lower()
        gpu = GPUS[key]
        return Device(key, self.count, self.memory_gb, bf16=gpu.bf16, flash_attention=gpu.flash_attention)


class GpuFamily(BaseModel):
    """One accelerator family: its peak throughput and the share of it a fine-tune reaches, each with its source."""

    tflops: float  # dense tensor throughput in the precision the policy trains in there
    peak_source: str
    bandwidth_gbs: float  # memory bandwidth, GB/s (datasheet)
    mfu: float  # model FLOPs utilisation the plan assumes: achieved / peak
    mfu_source: str


# Utilisation is anchored on A100, where Llama pretraining with FlashAttention and FSDP reaches 38-57% MFU
# (PyTorch, "Maximizing training throughput using PyTorch FSDP", https://pytorch.org/blog/maximizing-training/);
# fine-tuning runs smaller batches, so 35%. The other families scale from it by FLOPs per byte of memory bandwidth
# (datasheets): the more compute per byte, the larger the share of a step spent in memory-bound work (norms,
# softmax, the optimizer, LoRA's thin matrices), so the lower the MFU. Turing (T4) also lacks FlashAttention.
_A100_RATIO = "A100's 153 FLOPs/byte (312 TFLOPS, 2,039 GB/s)"
FAMILIES: dict[str, GpuFamily] = {
    "T4": GpuFamily(
        tflops=65, bandwidth_gbs=320, mfu=0.20,
        peak_source="NVIDIA T4 datasheet: 65 TFLOPS mixed-precision FP16 tensor (no bf16) "
                    "https://www.nvidia.com/en-us/data-center/tesla-t4/",
        mfu_source=f"assumed 20%: 203 FLOPs/byte (65 TFLOPS, 320 GB/s) against {_A100_RATIO}, and no FlashAttention "
                   "on Turing (PyTorch SDPA, no padding-free packing) under fp16 loss scaling"),
    "L4": GpuFamily(
        tflops=121, bandwidth_gbs=300, mfu=0.22,
        peak_source="NVIDIA L4 datasheet: 242 TFLOPS BF16 tensor with sparsity, 121 dense "
                    "https://www.nvidia.com/en-us/data-center/l4/",
        mfu_source=f"assumed 22%: 403 FLOPs/byte (121 TFLOPS, 300 GB/s), 2.6x {_A100_RATIO}: memory-bound work "
                   "takes a far larger share of each step"),
    "A10G": GpuFamily(
        tflops=70, bandwidth_gbs=600, mfu=0.35,
        peak_source="AWS EC2 G5 (A10G, a lower-clocked A10): about 70 TFLOPS BF16 dense, below the A10 datasheet's "
                    "125 https://aws.amazon.com/ec2/instance-types/g5/",
        mfu_source=f"assumed 35%, as A100: 117 FLOPs/byte (70 TFLOPS, 600 GB/s), no more than {_A100_RATIO}"),
    "L40S": GpuFamily(
        tflops=362, bandwidth_gbs=864, mfu=0.22,
        peak_source="NVIDIA L40S datasheet: 733 TFLOPS BF16 tensor with sparsity, 362 dense "
                    "https://www.nvidia.com/en-us/data-center/l40s/",
        mfu_source=f"assumed 22%: 419 FLOPs/byte (362 TFLOPS, 864 GB/s), 2.7x {_A100_RATIO}: memory-bound work "
                   "takes a far larger share of each step"),
    "A100": GpuFamily(
        tflops=312, bandwidth_gbs=2039, mfu=0.35,
        peak_source="NVIDIA A100 datasheet: 312 TFLOPS BF16 tensor dense "
                    "https://www.nvidia.com/en-us/data-center/a100/",
        mfu_source="assumed 35%: below the 38-57% MFU PyTorch reports for Llama pretraining with FlashAttention "
                   "and FSDP on A100 (https://pytorch.org/blog/maximizing-training/), as fine-tuning batches are "
                   "smaller"),
    "H200": GpuFamily(
        tflops=989, bandwidth_gbs=4800, mfu=0.30,
        peak_source="NVIDIA H200 datasheet: 1,979 TFLOPS BF16 tensor with sparsity, 989 dense "
                    "https://www.nvidia.com/en-us/data-center/h200/",
        mfu_source=f"assumed 30%: 206 FLOPs/byte (989 TFLOPS, 4.8 TB/s), 1.3x {_A100_RATIO}: 3.2x the compute "
                   "with 2.4x the bandwidth"),
}
CPU_PEAK_SOURCE = ("assumed about 50 GFLOPS fp32 per vCPU (AVX2 FMA at ~3 GHz, 2 vCPU on cpu-basic, 8 on "
                   "cpu-upgrade); no vendor figure for shared vCPUs")
MFU_CPU = 0.25
MFU_CPU_SOURCE = "assumed 25% of the vCPUs' fp32 peak for PyTorch matmuls on shared cores"


def _gpu(name: str, price: float, acc: str, count: int, vram: float, ram: float) -> HardwareFlavor:
    family = FAMILIES[acc]
    return HardwareFlavor(
        name=name, usd_per_hour=price, accelerator=acc, count=count, memory_gb=vram, ram_gb=ram,
        peak_tflops=family.tflops, peak_source=family.peak_source, mfu=family.mfu, mfu_source=family.mfu_source,
        bf16=GPUS[acc.lower()].bf16,
    )


def _cpu(name: str, price: float, ram: float, tflops: float) -> HardwareFlavor:
    return HardwareFlavor(
        name=name, usd_per_hour=price, accelerator=None, count=0, memory_gb=ram, ram_gb=ram,
        peak_tflops=tflops, peak_source=CPU_PEAK_SOURCE, mfu=MFU_CPU, mfu_source=MFU_CPU_SOURCE, bf16=False,
    )


# Built-in catalog (hub docs, Jobs pricing); VRAM per GPU; bf16 and FlashAttention from the training policy.
BUILTIN_FLAVORS: tuple[HardwareFlavor, ...] = (
    _cpu("cpu-basic", 0.01, 16, 0.1),
    _cpu("cpu-upgrade", 0.03, 32, 0.4),
    _gpu("t4-small", 0.40, "T4", 1, 16, 15),
    _gpu("t4-medium", 0.60, "T4", 1, 16, 30),
    _gpu("l4x1", 0.80, "L4", 1, 24, 30),
    _gpu("l4x4", 3.80, "L4", 4, 24, 186),
    _gpu("a10g-small", 1.00, "A10G", 1, 24, 15),
    _gpu("a10g-large", 1.50, "A10G", 1, 24, 46),
    _gpu("a10g-largex2", 3.00, "A10G", 2, 24, 92),
    _gpu("a10g-largex4", 5.00, "A10G", 4, 24, 184),
    _gpu("l40sx1", 1.80, "L40S", 1, 48, 62),
    _gpu("l40sx4", 8.30, "L40S", 4, 48, 382),
    _gpu("l40sx8", 23.50, "L40S", 8, 48, 1534),
    _gpu("a100-large", 2.50, "A100", 1, 80, 142),
    _gpu("a100x4", 10.00, "A100", 4, 80, 568),
    _gpu("a100x8", 20.00, "A100", 8, 80, 1136),
    _gpu("h200", 5.00, "H200", 1, 141, 256),
    _gpu("h200x2", 10.00, "H200", 2, 141, 512),
    _gpu("h200x4", 20.00, "H200", 4, 141, 1024),
    _gpu("h200x8", 40.00, "H200", 8, 141, 2048),
)

FLAVOR_NAMES: tuple[str, ...] = tuple(f.name for f in BUILTIN_FLAVORS)


def catalog(live_prices: Mapping[str, float] | None = None) -> list[HardwareFlavor]:
    """The built-in flavors, with prices replaced by live ones where known."""
    live = live_prices or {}
    return [f.model_copy(update={"usd_per_hour": live[f.name]}) if f.name in live else f for f in BUILTIN_FLAVORS]


def live_prices_from(hardware: Iterable[object]) -> dict[str, float]:
    """USD/hour from huggingface_hub `JobHardwareInfo` records (priced per minute or hour)."""
    per = {"minute": 60.0, "hour": 1.0, "second": 3600.0}
    out: dict[str, float] = {}
    for hw in hardware:
        factor = per.get(str(getattr(hw, "unit_label", "")).lower())
        cost = getattr(hw, "unit_cost_usd", None)
        if factor and isinstance(cost, (int, float)) and cost >= 0:
            out[str(getattr(hw, "name", ""))] = round(float(cost) * factor, 6)
    return out
