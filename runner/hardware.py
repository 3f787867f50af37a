"""Hugging Face Jobs hardware: the flavors, what they cost, and how fast they compute.

Prices are the Hub's published Jobs table (USD per hour, billed per minute); when a
token is available the plan refreshes them from the live hardware endpoint. Peak
throughput is the vendor's dense bf16 (fp16 on T4) tensor figure per accelerator;
the plan applies a stated utilisation to it, so these are estimates, not promises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, ConfigDict

GiB = 1024**3
GB = 1000**3  # the Hub lists memory in GB (decimal); capacities are compared in bytes


class HardwareFlavor(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    usd_per_hour: float
    accelerator: str | None  # None for CPU-only flavors
    count: int  # accelerators (GPUs); 0 for CPU flavors
    memory_gb: float  # per accelerator (VRAM), or system RAM for CPU flavors
    ram_gb: float
    peak_tflops: float  # per accelerator (or whole machine for CPU flavors)
    bf16: bool = True

    @property
    def is_gpu(self) -> bool:
        return self.count > 0

    @property
    def devices(self) -> int:
        return max(self.count, 1)


def _gpu(name: str, price: float, acc: str, count: int, vram: float, ram: float, tflops: float, bf16: bool = True):
    return HardwareFlavor(
        name=name, usd_per_hour=price, accelerator=acc, count=count, memory_gb=vram, ram_gb=ram,
        peak_tflops=tflops, bf16=bf16,
    )


def _cpu(name: str, price: float, ram: float, tflops: float):
    return HardwareFlavor(
        name=name, usd_per_hour=price, accelerator=None, count=0, memory_gb=ram, ram_gb=ram,
        peak_tflops=tflops, bf16=False,
    )


# Built-in catalog (hub docs, Jobs pricing). TFLOPs: T4 65 fp16 (no bf16), L4 121,
# A10G 70, L40S 362, A100 312, H200 989; CPU flavors ~50 GFLOPs per vCPU in fp32.
BUILTIN_FLAVORS: tuple[HardwareFlavor, ...] = (
    _cpu("cpu-basic", 0.01, 16, 0.1),
    _cpu("cpu-upgrade", 0.03, 32, 0.4),
    _gpu("t4-small", 0.40, "T4", 1, 16, 15, 65, bf16=False),
    _gpu("t4-medium", 0.60, "T4", 1, 16, 30, 65, bf16=False),
    _gpu("l4x1", 0.80, "L4", 1, 24, 30, 121),
    _gpu("l4x4", 3.80, "L4", 4, 24, 186, 121),
    _gpu("a10g-small", 1.00, "A10G", 1, 24, 15, 70),
    _gpu("a10g-large", 1.50, "A10G", 1, 24, 46, 70),
    _gpu("a10g-largex2", 3.00, "A10G", 2, 24, 92, 70),
    _gpu("a10g-largex4", 5.00, "A10G", 4, 24, 184, 70),
    _gpu("l40sx1", 1.80, "L40S", 1, 48, 62, 362),
    _gpu("l40sx4", 8.30, "L40S", 4, 48, 382, 362),
    _gpu("l40sx8", 23.50, "L40S", 8, 48, 1534, 362),
    _gpu("a100-large", 2.50, "A100", 1, 80, 142, 312),
    _gpu("a100x4", 10.00, "A100", 4, 80, 568, 312),
    _gpu("a100x8", 20.00, "A100", 8, 80, 1136, 312),
    _gpu("h200", 5.00, "H200", 1, 141, 256, 989),
    _gpu("h200x2", 10.00, "H200", 2, 141, 512, 989),
    _gpu("h200x4", 20.00, "H200", 4, 141, 1024, 989),
    _gpu("h200x8", 40.00, "H200", 8, 141, 2048, 989),
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
            out[str(getattr(hw, "name"))] = round(float(cost) * factor, 6)
    return out
