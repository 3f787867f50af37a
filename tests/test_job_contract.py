"""The job configs are one contract on both sides: what the runner emits is what the job scripts accept.

The runner writes the configs (runner/jobspec.py); train.py reads its config with
HfArgumentParser over (JobArguments, TRL's SFTConfig/DPOConfig/GRPOConfig, ModelConfig) and
gguf.py over GgufArguments, with allow_extra_keys=False. These tests build the configs the
runner submits for real recipes of all three methods and read them with the scripts' own code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from runner import jobspec, planning, recipe

JOBS = ROOT / "runner" / "jobs"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    return _script("train")


@pytest.fixture(scope="module")
def gguf():
    return _script("gguf")


def _emitted(tmp_path: Path, name: str, *, lora: bool, push: bool) -> tuple[dict, dict]:
    """The train and GGUF configs the runner submits for recipes/<name>.yaml, as JSON."""
    loaded = recipe.load(ROOT / "recipes" / f"{name}.yaml")
    r = loaded.recipe
    loaded = dataclasses.replace(loaded, recipe=r.model_copy(update={"adapter": r.adapter.model_copy(update={"lora": lora})}))
    plan = planning.plan_recipe(loaded, token=None, price_table=planning.prices(None))
    assert plan.lora is lora
    places = jobspec.hf_places("/data") if push else jobspec.Places(tmp_path / "m", tmp_path / "g", tmp_path)
    train = jobspec.train_config(loaded, plan, "r1", places, push=push, resume=push)
    gguf = jobspec.gguf_config(loaded, places, "r1", adapter=lora, push=push)
    return json.loads(train.model_dump_json()), json.loads(gguf.model_dump_json())


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


@pytest.mark.parametrize("name", ["tiny-sft", "tiny-dpo", "tiny-grpo"])
@pytest.mark.parametrize("lora,push", [(False, False), (True, True)])
def test_runner_emits_exactly_what_the_training_script_reads(train, tmp_path: Path, name: str, lora: bool,
                                                             push: bool) -> None:
    from trl import ModelConfig

    raw, _ = _emitted(tmp_path, name, lora=lora, push=push)
    method = raw["method"]
    trl_class = train.config_class(method)
    # Every key is a field of one of the parser's dataclasses: TRL's own names, or ours.
    ours, trl_fields, model_fields = _names(train.JobArguments), _names(trl_class), _names(ModelConfig)
    assert set(raw) <= ours | trl_fields | model_fields, sorted(set(raw) - ours - trl_fields - model_fields)
    # Everything of ours is sent (no field left to a default the runner never chose), and nothing else of ours.
    assert ours <= set(raw), sorted(ours - set(raw))
    assert set(raw) - ours <= trl_fields | model_fields
    config = train.parse_config(raw)
    # The values reach the fields TRL reads, under TRL's names.
    assert config.args.learning_rate == raw["learning_rate"] and config.args.seed == raw["seed"]
    assert config.args.per_device_train_batch_size == raw["per_device_train_batch_size"]
    assert config.model.use_peft is lora and config.base_model == raw["model_name_or_path"]
    assert config.hub_repo == (raw["hub_model_id"] if push else None)
    assert config.args.resume_from_checkpoint == ("last-checkpoint" if push else None)
    # And the strict parser builds TRL's own config from them, on this machine's setup.
    setup = train.training_setup(config.raw, train.policy.device("cpu"))
    built = train.trl_args(config, setup, gpu=False)
    assert type(built) is trl_class and built.learning_rate == raw["learning_rate"]
    assert built.max_steps == raw["max_steps"] and built.output_dir == raw["output_dir"]
    if method == "dpo":
        assert built.beta == raw.get("beta", 0.1)
    if method == "grpo":
        assert built.num_generations == raw["num_generations"]


@pytest.mark.parametrize("name", ["tiny-sft", "tiny-dpo"])
def test_runner_emits_exactly_what_the_gguf_script_reads(gguf, tmp_path: Path, name: str) -> None:
    _, raw = _emitted(tmp_path, name, lora=name == "tiny-dpo", push=name == "tiny-dpo")
    assert set(raw) == _names(gguf.GgufArguments)
    config = gguf.parse_config(raw)
    assert config.quantizations == raw["quantizations"] and config.hub_repo == raw["hub_repo"]


def test_unknown_or_misspelled_keys_fail_loudly(train, gguf, tmp_path: Path) -> None:
    raw, gguf_raw = _emitted(tmp_path, "tiny-sft", lora=False, push=False)
    with pytest.raises(train.JobError, match=r"not used by the HfArgumentParser: \['epochs'\]"):
        train.parse_config(raw | {"epochs": 3})
    with pytest.raises(train.JobError, match=r"\['beta'\]"):  # a DPO field in an SFT job
        train.parse_config(raw | {"beta": 0.2})
    with pytest.raises(gguf.JobError, match=r"not used by the HfArgumentParser: \['quantization'\]"):
        gguf.parse_config(gguf_raw | {"quantization": ["Q8_0"]})
    # The runner's side is closed too: a config it would write with a stray key does not validate.
    with pytest.raises(ValueError, match="epochs"):
        jobspec.SFTJobConfig.model_validate(raw | {"epochs": 3})


def test_the_job_script_refuses_a_stray_key_in_one_line(tmp_path: Path) -> None:
    raw, _ = _emitted(tmp_path, "tiny-sft", lora=False, push=False)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw | {"warmup_ratio": 0.1}))
    proc = subprocess.run([sys.executable, str(JOBS / "train.py"), "--config", str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == \
        "error: job config: Some keys are not used by the HfArgumentParser: ['warmup_ratio']"
