"""The training policy: precision, kernels, batch split and sharding per GPU, checked without a GPU."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, write_jsonl, write_recipe

from runner import hardware, modelfacts, render
from runner.jobspec import JOB_MODULES
from runner.planning import plan_recipe, prices
from runner.jobs import train_policy as policy
from runner.jobspec import Places, train_config
from runner.recipe import load

JOBS = ROOT / "runner" / "jobs"
METHODS = ("sft", "dpo", "grpo")
DEVICES = ("cpu", "t4", "l4", "a10g", "l40s", "a100", "h200", "a100x4", "l4x4", "h200x8")
EXPLAIN_KEYS = {"model_dtype", "bf16", "fp16", "attn_implementation", "use_liger_kernel", "packing", "padding_free",
                "gradient_checkpointing", "per_device_train_batch_size", "gradient_accumulation_steps", "world_size",
                "fsdp"}
QWEN_06B = policy.model_shape(751_632_384, hidden=1024, layers=28, vocab=151_936, architecture="Qwen3ForCausalLM")


def families() -> list[hardware.HardwareFlavor]:
    """One flavor per accelerator family (and CPU), single and multi-GPU."""
    seen: dict[tuple[str | None, bool], hardware.HardwareFlavor] = {}
    for f in hardware.BUILTIN_FLAVORS:
        seen.setdefault((f.accelerator, f.count > 1), f)
    return list(seen.values())


# --- precision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", hardware.BUILTIN_FLAVORS, ids=lambda f: f.name)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_precision_for_every_flavor_method_and_adapter(flavor, method: str, lora: bool) -> None:
    p = policy.precision(flavor.device, method, lora)
    assert p.optimizer_dtype == "float32"
    if not flavor.is_gpu:
        assert (p.model_dtype, p.autocast) == ("float32", "none")
        return
    # Every bf16-capable GPU trains under bf16; the others (T4) under fp16 autocast, never bf16.
    assert p.autocast == ("bf16" if flavor.bf16 else "fp16")
    if not lora:
        # A full fine-tune keeps fp32 master weights: the fp16 scaler refuses fp16 parameters.
        assert p.model_dtype == "float32"
    else:
        assert p.model_dtype == ("bfloat16" if flavor.bf16 else "float16")
    assert not (p.model_dtype == "float16" and p.autocast == "fp16" and not lora)
    assert p.model_dtype != "bfloat16" or flavor.bf16


def test_bf16_and_flash_attention_follow_the_gpu_generation() -> None:
    gpus = {f.accelerator: f for f in hardware.BUILTIN_FLAVORS if f.is_gpu}
    assert not gpus["T4"].bf16 and not gpus["T4"].device.flash_attention
    for name in ("L4", "A10G", "L40S", "A100", "H200"):
        assert gpus[name].bf16 and gpus[name].device.flash_attention


def test_t4_full_finetune_counts_fp32_master_weights() -> None:
    t4 = policy.device("t4")
    kw = dict(r=16, method="sft", micro_batch=1, seq=512.0, checkpointing=True, completion_tokens=256, generations=8)
    full = policy.peak_memory(QWEN_06B, t4, policy.precision(t4, "sft", False), lora=False, **kw)
    lora = policy.peak_memory(QWEN_06B, t4, policy.precision(t4, "sft", True), lora=True, **kw)
    # fp32 weights + fp32 gradients + two fp32 AdamW moments + the fp16 autocast copy: 18 bytes per parameter.
    assert full >= QWEN_06B.params * 18
    assert lora < full / 3  # LoRA: a frozen fp16 base, fp32 adapters only
    setup = policy.resolve(policy.Job(method="sft", lora=False, max_length=512, sequence_tokens=512, model=QWEN_06B),
                           t4)
    assert (setup.model_dtype, setup.fp16, setup.bf16) == ("float32", True, False)
    assert setup.memory_gb is not None and setup.memory_gb * policy.GB >= QWEN_06B.params * 18


# --- speed settings and the batch split ----------------------------------------------------------


@pytest.mark.parametrize("flavor", families(), ids=lambda f: f.name)
@pytest.mark.parametrize("method", METHODS)
def test_setup_per_flavor_family(flavor, method: str) -> None:
    job = policy.Job(method=method, lora=False, batch_size=4, grad_accum=8, max_length=1024, sequence_tokens=700,
                     generations=4, model=QWEN_06B)
    s = policy.resolve(job, flavor.device)
    flash = flavor.is_gpu and flavor.bf16
    assert s.attn_implementation == (policy.FLASH_ATTENTION if flash else "sdpa")
    assert s.use_liger_kernel is flavor.is_gpu
    # Padding-free packing only where FlashAttention keeps packed rows apart; otherwise length-grouped batches.
    assert s.packing is (method == "sft" and flash) and s.padding_free is s.packing
    assert s.group_by_length is (method == "sft" and not flash)
    assert s.world_size == flavor.devices
    assert s.bf16 is (flavor.is_gpu and flavor.bf16) and s.fp16 is (flavor.is_gpu and not flavor.bf16)
    if flavor.is_gpu and s.fits:
        # The recipe's global batch survives the re-split, and the chosen micro-batch fits.
        assert s.effective_batch == 32 and s.batch_source == "memory model"
        assert s.memory_gb is not None and s.memory_gb <= flavor.memory_gb
    if not flavor.is_gpu:
        assert s.gradient_checkpointing is False
        if method == "grpo":  # whole groups of generations: the recipe's split
            assert (s.per_device_train_batch_size, s.gradient_accumulation_steps) == (4, 8)
        else:  # 700-token rows: one per micro-batch, the global batch of 32 kept
            assert (s.per_device_train_batch_size, s.gradient_accumulation_steps) == (1, 32)


@pytest.mark.parametrize(("max_length", "micro"), [(128, 8), (256, 4), (512, 2), (1024, 1), (4096, 1)])
def test_cpu_micro_batch_holds_a_bounded_number_of_tokens(max_length: int, micro: int) -> None:
    """On a CPU the recipe's batch is re-split so a micro-batch holds at most CPU_MICRO_TOKENS: the activations
    of a wide fp32 batch cost memory (more than TRL's own bf16 + checkpointing defaults) and buy no speed."""
    job = policy.Job(method="sft", lora=False, batch_size=8, grad_accum=2, max_length=max_length)
    s = policy.resolve(job, policy.device("cpu"))
    assert (s.per_device_train_batch_size, s.gradient_accumulation_steps, s.effective_batch) == (micro, 16 // micro, 16)
    assert micro * max_length <= policy.CPU_MICRO_TOKENS or micro == 1
    assert 2 * micro * max_length > policy.CPU_MICRO_TOKENS or micro == 8  # the largest such split of the batch
    # DPO holds a chosen and a rejected sequence per row; a pinned batch is kept as written.
    dpo = policy.resolve(policy.Job(method="dpo", lora=False, batch_size=8, grad_accum=2, max_length=512),
                         policy.device("cpu"))
    assert dpo.per_device_train_batch_size == 1 and dpo.effective_batch == 16
    pinned = policy.resolve(policy.Job(method="sft", lora=False, batch_size=8, grad_accum=2, max_length=max_length,
                                       pin_batch=True), policy.device("cpu"))
    assert (pinned.per_device_train_batch_size, pinned.gradient_accumulation_steps) == (8, 2)


def _memory(job: policy.Job, dev: policy.Device, micro: int, ckpt: bool) -> float:
    assert job.model is not None
    prec = policy.precision(dev, job.method, job.lora)
    seq = float(job.max_length if policy.resolve(job, dev).packing else job.sequence_tokens or job.max_length)
    return policy.peak_memory(job.model, dev, prec, lora=job.lora, r=job.lora_r, method=job.method, micro_batch=micro,
                              seq=seq, checkpointing=ckpt, completion_tokens=job.completion_tokens,
                              generations=job.generations, liger=job.model.liger)


@pytest.mark.parametrize("spec", ["t4", "l4", "a10g", "a100"])
def test_checkpointing_only_when_memory_needs_it(spec: str) -> None:
    dev = policy.device(spec)
    job = policy.Job(method="sft", lora=False, batch_size=8, grad_accum=4, max_length=4096, sequence_tokens=4096,
                     model=QWEN_06B)
    s = policy.resolve(job, dev)
    target = dev.memory_gb * policy.GB * policy.MEMORY_TARGET  # sized with headroom: the memory model estimates
    if s.gradient_checkpointing:
        assert _memory(job, dev, 1, False) > target  # not even one sequence fits without it
    else:
        assert _memory(job, dev, s.per_device_train_batch_size, False) <= target
        bigger = [d for d in range(s.per_device_train_batch_size + 1, 33) if 32 % d == 0]
        assert all(_memory(job, dev, d, False) > target for d in bigger)  # the largest micro-batch that fits
    pinned = policy.resolve(policy.Job(method="sft", lora=False, batch_size=8, grad_accum=4, max_length=4096,
                                       sequence_tokens=4096, gradient_checkpointing=True, model=QWEN_06B), dev)
    assert pinned.gradient_checkpointing is True  # an explicit setting is kept


def test_pinned_batch_is_kept_as_written() -> None:
    job = policy.Job(method="sft", lora=False, batch_size=3, grad_accum=5, pin_batch=True, model=QWEN_06B)
    s = policy.resolve(job, policy.device("a100x4"))
    assert (s.per_device_train_batch_size, s.gradient_accumulation_steps, s.batch_source) == (3, 5, "recipe")
    assert s.effective_batch == 3 * 5 * 4


def test_multi_gpu_splits_the_global_batch_across_processes() -> None:
    job = policy.Job(method="sft", lora=False, batch_size=4, grad_accum=8, model=QWEN_06B)
    s = policy.resolve(job, policy.device("a100x4"))
    assert s.world_size == 4 and s.effective_batch == 32 and s.strategy == "ddp" and not s.fsdp
    assert s.per_device_train_batch_size * s.gradient_accumulation_steps == 8


def test_strategy_knob_and_fsdp_when_a_replica_does_not_fit() -> None:
    big = policy.model_shape(8_190_735_360, hidden=4096, layers=36, vocab=151_936, architecture="Qwen3ForCausalLM")
    base = dict(method="sft", lora=False, batch_size=2, grad_accum=8, max_length=2048, model=big)
    auto = policy.resolve(policy.Job(**base), policy.device("a100x8"))
    assert auto.fsdp and auto.strategy == "fsdp" and auto.fits  # 8B x 18 bytes does not fit one 80 GB GPU
    ddp = policy.resolve(policy.Job(**base, strategy="ddp"), policy.device("a100x8"))
    assert not ddp.fsdp and not ddp.fits
    small = dict(base, model=QWEN_06B)
    assert not policy.resolve(policy.Job(**small), policy.device("a100x4")).fsdp
    assert policy.resolve(policy.Job(**small, strategy="fsdp"), policy.device("a100x4")).fsdp
    assert not policy.resolve(policy.Job(**small, strategy="fsdp"), policy.device("a100")).fsdp  # one GPU: no sharding


def test_grpo_keeps_whole_groups_of_generations() -> None:
    job = policy.Job(method="grpo", lora=False, batch_size=4, grad_accum=2, generations=8, model=QWEN_06B)
    for spec in ("l4", "a100", "a100x4", "a10g"):
        s = policy.resolve(job, policy.device(spec))
        assert s.effective_batch % 8 == 0


def test_runtime_gpu_names_map_to_the_same_policy() -> None:
    a100 = policy.gpu_device("NVIDIA A100-SXM4-80GB", 1, memory_gb=79.2, capability=8)
    l40s = policy.gpu_device("NVIDIA L40S", 1, memory_gb=44.5, capability=8)
    t4 = policy.gpu_device("Tesla T4", 1, memory_gb=14.6, capability=7)
    assert (a100.kind, l40s.kind, t4.kind) == ("a100", "l40s", "t4")
    assert not t4.bf16 and a100.bf16 and l40s.flash_attention
    unknown = policy.gpu_device("NVIDIA B200", 2, memory_gb=180, capability=10)
    assert unknown.bf16 and unknown.flash_attention and unknown.count == 2


# --- the job script: --explain and its dependencies ----------------------------------------------


def _config(tmp_path: Path, **fields) -> Path:
    """A training job config as the runner writes it (runner/jobspec.py TrainJobConfig's keys)."""
    config = {
        "run_id": "r", "method": "sft", "model_name_or_path": "Qwen/Qwen3-0.6B", "dataset_name": "trl-lib/Capybara",
        "num_train_epochs": 1, "learning_rate": 2e-5, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4, "max_length": 2048, "sequence_tokens": 900,
        "model_params": QWEN_06B.params, "model_hidden_size": 1024, "model_num_layers": 28,
        "model_vocab_size": 151_936, "model_architecture": "Qwen3ForCausalLM",
        "output_dir": "out", "summary_path": "out/summary.json", **fields,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_explain_prints_one_json_object_per_device_without_torch(tmp_path: Path) -> None:
    config = _config(tmp_path)
    # One interpreter runs the script's entry point for every device, then checks nothing heavy was imported.
    code = (
        "import io, json, runpy, sys, contextlib\n"
        f"script, config, devices = {str(JOBS / 'train.py')!r}, {str(config)!r}, {list(DEVICES)!r}\n"
        "out = {}\n"
        "for dev in devices:\n"
        "    buf = io.StringIO()\n"
        "    sys.argv = [script, '--config', config, '--explain', '--device', dev]\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            runpy.run_path(script, run_name='__main__')\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (dev, e.code, buf.getvalue())\n"
        "    out[dev] = buf.getvalue()\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]\n"
        "print(json.dumps({'out': out, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    for dev, text in result["out"].items():
        lines = text.strip().splitlines()
        assert len(lines) == 1, (dev, text)
        setup = json.loads(lines[0])
        assert EXPLAIN_KEYS <= set(setup), dev
        flavor_dev = policy.device(dev)
        assert setup["world_size"] == flavor_dev.count
        assert setup["bf16"] is flavor_dev.bf16 and setup["fp16"] is (flavor_dev.is_gpu and not flavor_dev.bf16)
        assert setup["model_dtype"] == "float32"  # a full fine-tune: fp32 master weights everywhere
    assert json.loads(result["out"]["h200x8"])["world_size"] == 8


def test_explain_cli_and_a_bad_device(tmp_path: Path) -> None:
    config = _config(tmp_path, pin_batch=True, packing_mode=False, gradient_checkpointing_mode=True)
    ok = subprocess.run([sys.executable, str(JOBS / "train.py"), "--config", str(config), "--explain", "--device",
                         "a100x4"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    setup = json.loads(ok.stdout)
    split = (setup["per_device_train_batch_size"], setup["gradient_accumulation_steps"], setup["world_size"])
    assert split == (4, 4, 4)
    assert setup["packing"] is False and setup["gradient_checkpointing"] is True
    assert setup["attn_implementation"] == policy.FLASH_ATTENTION and setup["use_liger_kernel"] is True
    bad = subprocess.run([sys.executable, str(JOBS / "train.py"), "--config", str(config), "--explain", "--device",
                          "v100"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stdout.strip().splitlines() == [bad.stdout.strip()] and "unknown device 'v100'" in bad.stdout


def _pep723_dependencies(text: str) -> set[str]:
    block = re.search(r"^# /// script\n(.*?)^# ///$", text, re.S | re.M)
    assert block, "no PEP 723 block"
    deps = re.findall(r'^#[ \t]+"([^"]+)",?[ \t]*(?:#.*)?$', block.group(1), re.M)
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def _used_modules(tree: ast.AST) -> set[str]:
    """Top-level modules a file imports, plus those it probes with importlib.util.find_spec("...")."""
    used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    used |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
             and not n.level}
    used |= {n.args[0].value.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", getattr(n.func, "id", "")) == "find_spec"
             and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)}
    return used


def test_every_import_of_the_gpu_path_is_declared_in_the_pep723_header() -> None:
    text = (JOBS / "train.py").read_text()
    declared = _pep723_dependencies(text)
    siblings = {Path(m).stem for m in JOB_MODULES}
    used = _used_modules(ast.parse(text)) - set(sys.stdlib_module_names) - siblings - {"__future__"}
    distribution = {"PIL": "pillow", "yaml": "pyyaml"}  # import names that differ from the package's
    missing = {m for m in used if distribution.get(m, m).lower().replace("_", "-") not in declared}
    assert not missing, f"train.py imports {sorted(missing)} without declaring them in its PEP 723 header"
    assert {"liger-kernel", "kernels"} <= declared  # the GPU path: Liger, and attention kernels from the Hub
    assert policy.FLASH_ATTENTION.startswith("kernels-community/")  # loaded through `kernels`
    # The shared policy ships beside the script and must run anywhere: standard library only.
    for module in JOB_MODULES:
        tree = ast.parse((JOBS / module).read_text())
        extra = _used_modules(tree) - set(sys.stdlib_module_names) - {"__future__"}
        assert not extra, f"{module} imports {sorted(extra)}"


# --- the planner prices what the job runs --------------------------------------------------------


QWEN = """\
name: {name}
base_model: Qwen/Qwen3-0.6B
method: sft
dataset: data/chat.jsonl
budget_usd: 50
hardware: {hardware}
training:
  max_steps: {steps}
"""


def _long_chat(repo: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Explain the numbers. " * 40 + str(i)},
                          {"role": "assistant", "content": "They add up. " * 120}]} for i in range(64)]
    write_jsonl(repo / "data" / "chat.jsonl", rows)


@pytest.mark.parametrize("hw", ["auto", "t4-small", "l4x1", "a100x4"])
def test_qwen3_sft_plan_has_a_valid_precision_path_and_the_job_resolves_the_same_setup(
        repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hw: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(repo)
    _long_chat(repo)
    write_recipe(repo, "q", QWEN.format(name="q", hardware=hw, steps=2000))
    loaded = load(repo / "recipes" / "q.yaml")
    plan = plan_recipe(loaded, token=None, price_table=prices(None))
    assert plan.flavor and plan.setup, plan.warnings
    if hw == "t4-small":  # 18 bytes per parameter of fp32 master state leave a 16 GB T4 little room
        assert plan.fits or any("t4-small does not fit" in w for w in plan.warnings)
    else:
        assert plan.fits, plan.warnings
    flavor = next(f for f in hardware.BUILTIN_FLAVORS if f.name == plan.flavor)
    s = plan.setup
    if hw == "auto":
        assert flavor.is_gpu  # 2,000 steps of long rows: a GPU is cheaper than a CPU
    if flavor.is_gpu:
        assert s.model_dtype == "float32" and s.bf16 is flavor.bf16 and s.fp16 is (not flavor.bf16)
        assert s.effective_batch == 16  # the recipe's default 4 x 4
    if flavor.device.flash_attention:  # the plan names the pinned kernel by its short sha
        short = f"{policy.FLASH_ATTENTION_REPO}@{policy.FLASH_ATTENTION_REVISION[:7]} attention"
        assert short in (render.setup_line(plan) or "") and policy.FLASH_ATTENTION not in render.plan_text(plan)
    # The job script, given the config the runner writes, resolves the very setup the plan priced.
    config = train_config(loaded, plan, "r1", Places(tmp_path / "m", tmp_path / "g", tmp_path), push=False)
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json())
    out = subprocess.run([sys.executable, str(JOBS / "train.py"), "--config", str(path), "--explain", "--device",
                          flavor.device.name], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == s.as_dict()


def test_plan_time_follows_the_flop_formula(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(repo)
    _long_chat(repo)
    write_recipe(repo, "t", QWEN.format(name="t", hardware="a100-large", steps=20000))
    plan = plan_recipe(load(repo / "recipes" / "t.yaml"), token=None, price_table=prices(None))
    a100 = next(f for f in hardware.BUILTIN_FLAVORS if f.name == "a100-large")
    formula = 6 * plan.active_params * plan.tokens / (a100.peak_tflops * 1e12 * a100.mfu)
    assert 0.5 <= plan.hours * 3600 / formula <= 2.0


def test_every_flavor_cites_its_throughput() -> None:
    for f in hardware.BUILTIN_FLAVORS:
        assert f.peak_tflops > 0 and 0 < f.mfu < 1
        assert len(f.peak_source) > 20 and len(f.mfu_source) > 20
        if f.is_gpu:
            assert "https://" in f.peak_source
            assert str(int(f.peak_tflops)) in f.peak_source.replace(",", "")


def test_mfu_is_per_gpu_family_with_its_reasoning() -> None:
    """One utilisation per family, each from its FLOPs per byte of bandwidth (datasheets) against the A100 anchor."""
    mfu = {f.accelerator: f.mfu for f in hardware.BUILTIN_FLAVORS if f.is_gpu}
    assert {"T4", "L4", "A10G", "L40S", "A100", "H200"} <= set(mfu)
    for slower in ("T4", "L4", "L40S", "H200"):  # more compute per byte of bandwidth, or no FlashAttention (T4)
        assert mfu[slower] < mfu["A100"], slower
    for f in hardware.BUILTIN_FLAVORS:
        if not f.is_gpu:
            continue
        family = hardware.FAMILIES[f.accelerator or ""]
        assert (f.mfu, f.mfu_source) == (family.mfu, family.mfu_source)  # every flavor of a family alike
        assert f"{f.mfu:.0%}" in f.mfu_source
        ratio = family.tflops * 1000 / family.bandwidth_gbs  # FLOPs per byte, as the source states it
        assert f"{ratio:.0f} FLOPs/byte" in f.mfu_source or "pytorch.org" in f.mfu_source


def test_the_attention_kernel_is_pinned_to_a_commit_the_job_passes(tmp_path: Path) -> None:
    """The FlashAttention kernel is fetched from the Hub beside HF_TOKEN: by a full commit sha, never a branch."""
    import importlib.util

    from transformers.integrations.hub_kernels import is_kernel

    assert re.fullmatch(r"[0-9a-f]{40}", policy.FLASH_ATTENTION_REVISION)
    spec = importlib.util.spec_from_file_location("train_job_kernel", JOBS / "train.py")
    assert spec and spec.loader
    train = importlib.util.module_from_spec(spec)
    sys.modules["train_job_kernel"] = train
    spec.loader.exec_module(train)
    raw = json.loads(_config(tmp_path).read_text())
    for dev in ("l4", "a10g", "a100x4", "h200"):
        setup = train.training_setup(raw, policy.device(dev))
        passed = train.model_init_kwargs(setup)["attn_implementation"]
        repo, _, revision = passed.partition("@")  # how transformers reads it: get_kernel(repo, revision=...)
        assert is_kernel(passed) and repo == "kernels-community/flash-attn2"
        assert revision == policy.FLASH_ATTENTION_REVISION
    t4 = train.training_setup(raw, policy.device("t4"))
    assert "attn_implementation" not in train.model_init_kwargs(t4)  # no kernel fetched where it cannot run


def test_moe_compute_follows_active_params_and_memory_the_total(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = modelfacts.from_name("Qwen/Qwen3-30B-A3B")
    assert facts and facts.params > 30e9 and facts.active_params and facts.active_params < 4e9
    guessed = modelfacts.from_name("someone/Qwen3-Coder-30B-A3B-Instruct")
    assert guessed and guessed.params == 30e9 and guessed.active_params == 3e9
    config = {"hidden_size": 2048, "num_hidden_layers": 48, "num_experts": 128, "num_experts_per_tok": 8,
              "moe_intermediate_size": 768}
    active = modelfacts.active_from_config(config, 30_532_122_624)
    assert active and 2.5e9 < active < 4e9
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(repo)
    _long_chat(repo)
    plans = {}
    for name, model in (("moe", "Qwen/Qwen3-30B-A3B"), ("dense", "someone/Dense-30B")):
        write_recipe(repo, name, QWEN.format(name=name, hardware="h200", steps=2000).replace("Qwen/Qwen3-0.6B", model))
        plans[name] = plan_recipe(load(repo / "recipes" / f"{name}.yaml"), token=None, price_table=prices(None))
    moe, dense = plans["moe"], plans["dense"]
    assert moe.active_params < moe.params / 5 and dense.active_params == dense.params
    # Compute: about active/total of the dense time (start-up aside); memory: the whole model is held.
    assert (moe.hours * 3600 - 300) < (dense.hours * 3600 - 300) / 5
    assert moe.memory_gb > moe.params * 2 / policy.GB


def test_gpu_benchmark_says_clearly_when_there_is_no_gpu() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--steps", "1"],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                            "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "needs a CUDA GPU" in proc.stderr and proc.stdout == ""


def test_recipe_knobs_are_validated_with_file_and_line(repo: Path, cli) -> None:
    body = "name: k\nbase_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\ntraining:\n  {}\n"
    write_recipe(repo, "k", body.format("strategy: fsdp\n  packing: auto\n  gradient_checkpointing: auto\n"
                                        "  pin_batch: true"))
    assert cli("validate", "recipes/k.yaml", cwd=repo).code == 0
    for knob, field in (("strategy: zero3", "training.strategy"), ("packing: maybe", "training.packing"),
                        ("gradient_checkpointing: 1", "training.gradient_checkpointing")):
        write_recipe(repo, "k", body.format(knob))
        result = cli("validate", "recipes/k.yaml", cwd=repo)
        assert result.code == 1 and "recipes/k.yaml:6:" in result.out + result.err and field in result.out + result.err


def test_gpu_setups_build_valid_trl_configs(tmp_path: Path) -> None:
    """Every family's setup turns into TRL configs the installed TRL/transformers accept (argument names, FSDP)."""
    import importlib.util

    import dataclasses

    spec = importlib.util.spec_from_file_location("train_job", JOBS / "train.py")
    assert spec and spec.loader
    train = importlib.util.module_from_spec(spec)
    sys.modules["train_job"] = train  # its dataclasses resolve their module through sys.modules
    spec.loader.exec_module(train)
    base = json.loads(_config(tmp_path).read_text()) | {"output_dir": str(tmp_path / "out")}
    per_method = {"sft": {}, "dpo": {},
                  "grpo": {"max_length": None, "num_generations": 4, "max_completion_length": 64,
                           "rewards": [{"name": "concise"}]}}
    for dev in ("t4", "l4", "a100", "a100x4", "h200x8"):
        for method, strategy in (("sft", "auto"), ("sft", "fsdp"), ("dpo", "auto"), ("grpo", "auto")):
            if method == "grpo" and dev.count("x"):
                continue  # GRPO's group check reads the real process count, which is 1 here
            raw = {k: v for k, v in (base | per_method[method]).items() if v is not None}
            config = train.parse_config(raw | {"method": method, "strategy": strategy})
            setup = train.training_setup(config.raw, policy.device(dev))
            # No CUDA here: precision off, the rest is what a GPU job passes.
            c = train.trl_args(config, dataclasses.replace(setup, bf16=False, fp16=False), gpu=False)
            if method == "sft":
                assert c.packing is setup.packing and (not c.packing or c.packing_strategy == "bfd")
            assert (c.per_device_train_batch_size, c.gradient_accumulation_steps) == (
                setup.per_device_train_batch_size, setup.gradient_accumulation_steps)
            assert bool(c.fsdp) is setup.fsdp


def test_the_attention_kernel_is_fetched_at_a_pinned_commit() -> None:
    """The kernel repo runs beside HF_TOKEN: the job names it by a full commit, never a moving branch or tag."""
    import re

    kernels = {device: policy.resolve(policy.Job(method="sft", lora=False, batch_size=8, grad_accum=4, max_length=4096,
                                                 sequence_tokens=4096, model=QWEN_06B),
                                      policy.device(device)).attn_implementation for device in ("a100", "h200")}
    for device, kernel in kernels.items():
        assert re.fullmatch(r"kernels-community/[\w.-]+@[0-9a-f]{40}", kernel), (device, kernel)
