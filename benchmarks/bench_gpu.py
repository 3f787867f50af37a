"""GPU benchmark: Qwen3-0.6B SFT with our settings against the trainer skill's plain ones.

Both train the same model on the same public chat dataset for the same number of steps
and the same global batch. "Plain" is the Hugging Face trainer skill's SFT example:
SFTTrainer with its defaults (no packing, default attention, no Liger). "Ours" is
runner/jobs/train.py exactly as `runner run` launches it, with the setup the training
policy (runner/jobs/train_policy.py) resolves for this GPU: precision, FlashAttention
from the `kernels` Hub, padding-free packing, Liger, the batch split that fills the GPU.

Reported per run: effective (non-padding) tokens per second; MFU, the planner's model
FLOPs per token (runner/plan.py `flops_per_token`, 6 x params for a full fine-tune) times
tokens/s over the GPU's dense peak (runner/hardware.py); and peak allocated GPU memory.
Then ours/plain as ratios. It needs a CUDA GPU and network access to the Hub; without a
GPU it says so and exits 2. For instance, on Hugging Face Jobs (the repo cloned inside):

    python benchmarks/bench_gpu.py [--steps 30] [--batch 4] [--grad-accum 4] [--max-length 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "Qwen/Qwen3-0.6B"
DATASET = "trl-lib/Capybara"

PLAIN = r"""
import json, sys, torch
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer
cfg = json.loads(sys.argv[1])
data = load_dataset(cfg["dataset"], split="train")
args = SFTConfig(output_dir=cfg["out"], max_steps=cfg["steps"], per_device_train_batch_size=cfg["batch"],
                 gradient_accumulation_steps=cfg["grad_accum"], learning_rate=2e-5, max_length=cfg["max_length"],
                 logging_steps=10, save_strategy="no", report_to=[], include_num_input_tokens_seen="non_padding",
                 seed=42)
trainer = SFTTrainer(model=cfg["model"], args=args, train_dataset=data)
out = trainer.train()
print(json.dumps({"tokens": int(trainer.state.num_input_tokens_seen), "seconds": out.metrics["train_runtime"],
                  "peak_bytes": int(torch.cuda.max_memory_allocated())}))
"""


def gpu() -> tuple[str, int] | None:
    """(device name, count) of the CUDA GPUs here, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0), torch.cuda.device_count()


def env() -> dict[str, str]:
    return dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def run_plain(tmp: Path, args: argparse.Namespace) -> dict:
    cfg = {"dataset": args.dataset, "out": str(tmp / "plain"), "steps": args.steps, "batch": args.batch,
           "grad_accum": args.grad_accum, "max_length": args.max_length, "model": MODEL}
    proc = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(cfg)], env=env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"plain run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def our_config(tmp: Path, args: argparse.Namespace) -> dict:
    """The job config `runner run` would write for this recipe (model facts as the plan knows them)."""
    from runner.modelfacts import KNOWN_PARAMS

    from runner.jobspec import SFTJobConfig

    return SFTJobConfig(
        run_id="bench-gpu", model_name_or_path=MODEL, dataset_name=args.dataset, num_train_epochs=1,
        max_steps=args.steps, learning_rate=2e-5, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum, max_length=args.max_length, sequence_tokens=args.max_length,
        model_params=KNOWN_PARAMS[MODEL], model_hidden_size=1024, model_num_layers=28, model_vocab_size=151_936,
        model_architecture="Qwen3ForCausalLM", output_dir=str(tmp / "ours"), project="bench-gpu",
        summary_path=str(tmp / "ours.json"),
    ).model_dump(mode="json")


def run_ours(tmp: Path, args: argparse.Namespace) -> dict:
    (tmp / "ours-config.json").write_text(json.dumps(our_config(tmp, args)))
    e = env()
    e["TRACKIO_DIR"] = str(tmp / "trackio")
    proc = subprocess.run([sys.executable, str(ROOT / "runner" / "jobs" / "train.py"), "--config",
                           str(tmp / "ours-config.json")], env=e, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"our run failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    s = json.loads((tmp / "ours.json").read_text())
    return {"tokens": s["tokens_seen"], "seconds": s["train_runtime_s"], "peak_bytes": s["peak_memory_bytes"],
            "setup": s.get("setup")}


def peak_flops(name: str, count: int) -> tuple[float, str]:
    """Dense peak FLOP/s of all GPUs here, from the planner's catalog, and the GPU family it used."""
    from runner.hardware import FAMILIES
    from runner.jobs import train_policy as policy

    kind = policy.gpu_device(name, count, memory_gb=0, capability=8).kind
    family = policy.GPUS[kind].name if kind in policy.GPUS else None
    if family not in FAMILIES:
        raise SystemExit(f"no peak throughput on record for {name!r}: add it to runner/hardware.py FAMILIES")
    return FAMILIES[family].tflops * 1e12 * count, family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--dataset", default=DATASET)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    found = gpu()
    if found is None:
        print("bench_gpu.py needs a CUDA GPU and none is visible here (torch.cuda.is_available() is False); "
              "run it on a GPU machine or a Hugging Face Jobs GPU flavor. On CPU, see bench_sft_throughput.py.",
              file=sys.stderr)
        raise SystemExit(2)
    name, count = found
    from runner.plan import flops_per_token
    from runner.modelfacts import KNOWN_PARAMS

    peak, family = peak_flops(name, 1)  # one process: the plain run is single-GPU, so ours is too
    fpt = flops_per_token(KNOWN_PARAMS[MODEL], lora=False, checkpointing=False, method="sft")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        plain = run_plain(tmp, args)
        ours = run_ours(tmp, args)
    for r in (plain, ours):
        r["tokens_per_second"] = r["tokens"] / r["seconds"]
        r["mfu"] = r["tokens_per_second"] * fpt / peak
    result = {
        "gpu": name, "family": family, "gpus_visible": count, "model": MODEL, "dataset": args.dataset,
        "steps": args.steps, "plain": plain, "ours": ours,
        "ratio": {"tokens_per_second": ours["tokens_per_second"] / plain["tokens_per_second"],
                  "mfu": ours["mfu"] / plain["mfu"], "peak_memory": ours["peak_bytes"] / plain["peak_bytes"]},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{name} ({family}, peak {peak / 1e12:.0f} TFLOPS dense); {MODEL} SFT on {args.dataset}, {args.steps} steps")
    print(f"{'config':<8}{'eff. tokens':>12}{'train s':>9}{'eff. tok/s':>12}{'MFU':>7}{'peak GiB':>10}")
    for key in ("plain", "ours"):
        r = result[key]
        print(f"{key:<8}{r['tokens']:>12}{r['seconds']:>9.1f}{r['tokens_per_second']:>12.0f}{r['mfu']:>7.1%}"
              f"{r['peak_bytes'] / 2**30:>10.2f}")
    ratio = result["ratio"]
    print(f"ours/plain: tokens/s {ratio['tokens_per_second']:.2f}x, MFU {ratio['mfu']:.2f}x, "
          f"peak memory {ratio['peak_memory']:.2f}x")
    if ours.get("setup"):
        print("our setup: " + json.dumps(ours["setup"]))


if __name__ == "__main__":
    main()
