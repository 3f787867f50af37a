"""The job scripts on their own: the tiny model, GGUF correctness, and one-line job errors."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import JOBS, ROOT, job_env

from runner import recipe

# Trains, quantizes or builds a model: the slow tier (`pytest -m "not slow"` skips it).
pytestmark = pytest.mark.slow


def run_job(script: str, config: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{script}-config.json"
    path.write_text(json.dumps(config))
    return subprocess.run([sys.executable, str(JOBS / f"{script}.py"), "--config", str(path)], env=job_env(),
                          capture_output=True, text=True, timeout=600)


def test_job_scripts_are_self_contained_pep723() -> None:
    for script in ("train.py", "gguf.py"):
        text = (JOBS / script).read_text()
        assert text.startswith("# /// script\n") and "# ///\n" in text
        tree = ast.parse(text)
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "runner" not in imported, f"{script} must not import the runner package"


def test_builtin_reward_names_match_the_recipe_schema() -> None:
    tree = ast.parse((JOBS / "train.py").read_text())
    registry = next(n for n in ast.walk(tree) if isinstance(n, ast.AnnAssign)
                    and getattr(n.target, "id", "") == "BUILTIN_REWARDS")
    names = tuple(k.value for k in registry.value.keys)
    assert names == recipe.BUILTIN_REWARDS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_tiny_model.py"), "--out", str(out)], check=True,
                   env=job_env(), capture_output=True, timeout=300)
    return out


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_tiny_model_build_is_deterministic_and_matches_the_committed_one(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_tiny_model.py"), "--out", str(again)], check=True,
                   env=job_env(), capture_output=True, timeout=300)
    assert digests(tiny) == digests(again)
    committed = json.loads((ROOT / "examples" / "tiny-model" / "config.json").read_text())
    built = json.loads((tiny / "config.json").read_text())
    assert {k: committed[k] for k in ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers")} == {
        k: built[k] for k in ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers")}
    assert built["hidden_size"] == 256 and built["intermediate_size"] == 512  # so K-quants are real


@pytest.fixture(scope="module")
def converted(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("llama_cpp")
    tmp = tmp_path_factory.mktemp("gguf")
    config = {"model_dir": str(tiny), "base_model": None, "name": "tiny", "quantizations": ["F16", "Q4_K_M"],
              "output_dir": str(tmp / "out"), "hub_repo": None, "private": True, "summary_path": str(tmp / "s.json")}
    proc = run_job("gguf", config, tmp)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((tmp / "s.json").read_text())


def test_f16_gguf_agrees_with_transformers_on_tokens_and_greedy_steps(tiny: Path, converted: dict) -> None:
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    f16 = next(f["path"] for f in converted["files"] if f["quantization"] == "F16")
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "What is 12 + 30?"}],
                                     tokenize=False, add_generation_prompt=True)
    hf_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    llm = Llama(model_path=f16, n_ctx=256, verbose=False, seed=0, logits_all=False)
    cpp_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert cpp_ids == hf_ids
    # The ChatML markers are single tokens on both sides, not spelled out.
    assert hf_ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3

    hf_next = model.generate(torch.tensor([hf_ids]), max_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0][len(hf_ids):].tolist()
    cpp_next = []
    for token in llm.generate(cpp_ids, temp=0.0, top_k=1):
        cpp_next.append(token)
        if len(cpp_next) == len(hf_next):
            break
    assert cpp_next == hf_next


def test_q4_k_m_is_really_k_quantized_and_runs(converted: dict) -> None:
    from gguf import GGUFReader

    q4 = next(f for f in converted["files"] if f["quantization"] == "Q4_K_M")
    reader = GGUFReader(q4["path"])
    types = {t.tensor_type.name for t in reader.tensors if t.name.endswith(".weight") and "norm" not in t.name}
    assert "Q4_K" in types and "F16" not in types
    assert hashlib.sha256(Path(q4["path"]).read_bytes()).hexdigest() == q4["sha256"]
    assert isinstance(q4["smoke_test"], str) and q4["smoke_test"]


def test_merged_lora_adapter_differs_from_base(tiny: Path, converted: dict, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    config = {"model_dir": str(adapter), "base_model": str(tiny), "name": "merged", "quantizations": ["F16"],
              "output_dir": str(tmp_path / "out"), "hub_repo": None, "private": True,
              "summary_path": str(tmp_path / "s.json")}
    proc = run_job("gguf", config, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["merged_adapter"] is True
    base_f16 = next(f for f in converted["files"] if f["quantization"] == "F16")
    assert summary["files"][0]["sha256"] != base_f16["sha256"]


def test_gguf_missing_model_dir_is_one_line(tmp_path: Path) -> None:
    config = {"model_dir": str(tmp_path / "nope"), "name": "x", "quantizations": ["Q4_K_M"],
              "output_dir": str(tmp_path), "summary_path": str(tmp_path / "s.json")}
    proc = run_job("gguf", config, tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines() == [f"error: model_dir {tmp_path / 'nope'} holds no model "
                                                "(no config.json or adapter_config.json)"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(learning_rate=0), "error: learning_rate must be in (0, 1], got 0"),
    (lambda c: c.update(epochs=1), "error: job config: Some keys are not used by the HfArgumentParser: ['epochs']"),
    (lambda c: c.update(dataset_columns={"question": "prompt"}),
     "error: dataset column 'question' named in the column mapping does not exist (columns: messages)"),
    (lambda c: c.update(dataset_columns={"messages": "conversation"}),
     "error: SFT needs columns messages or text or prompt+completion after the column mapping (columns: conversation)"),
])
def test_train_user_errors_are_one_line(tiny: Path, tmp_path: Path, change, message: str) -> None:
    config = {"run_id": "t", "method": "sft", "model_name_or_path": str(tiny),
              "dataset_name": str(ROOT / "examples" / "data" / "sft.jsonl"),
              "num_train_epochs": 1, "max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 2,
              "gradient_accumulation_steps": 1, "max_length": 64, "output_dir": str(tmp_path / "m"),
              "project": "t", "summary_path": str(tmp_path / "s.json")}
    change(config)
    proc = run_job("train", config, tmp_path)
    assert proc.returncode == 1
    assert message in proc.stdout.splitlines(), proc.stdout[-1500:]
    assert "Traceback" not in proc.stdout + proc.stderr
