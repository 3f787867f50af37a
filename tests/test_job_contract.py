"""The job configs are one contract on both sides: what the runner emits is what the job scripts accept.

The runner writes the configs (runner/jobspec.py); train.py reads its config with
HfArgumentParser over (JobArguments, TRL's SFTConfig/DPOConfig/GRPOConfig, ModelConfig) and
gguf.py over GgufArguments, with allow_extra_keys=False. These tests build the configs the
runner submits for real recipes of all three methods and read them with the scripts' own code.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import JOBS, ROOT, load_job

from runner import jobspec, planning, recipe

@pytest.fixture(scope="module")
def train():
    return load_job("train")


@pytest.fixture(scope="module")
def gguf():
    return load_job("gguf")


# Values no default has, so a key the runner drops or misnames cannot pass by falling back to TRL's default.
TRAINING = {"save_steps": 7, "seed": 3, "warmup_ratio": 0.05, "lr_scheduler": "linear"}
PER_METHOD = {"dpo": {"beta": 0.25}, "grpo": {"num_generations": 2, "max_completion_length": 12}, "sft": {}}


def _loaded(name: str, *, lora: bool):
    """recipes/<name>.yaml with non-default training, LoRA and tracking values."""
    loaded = recipe.load(ROOT / "examples" / "recipes" / f"{name}.yaml")
    r = loaded.recipe
    training = r.training.model_copy(update=TRAINING | PER_METHOD[r.method])
    adapter = r.adapter.model_copy(update={"lora": lora, "r": 4, "alpha": 8, "dropout": 0.1,
                                           "target_modules": ["q_proj"]})
    tracking = r.tracking.model_copy(update={"space": "alice/trackio"})
    output = r.output.model_copy(update={"repo": f"alice/{r.name}", "private": False})
    return dataclasses.replace(loaded, recipe=r.model_copy(update={"training": training, "adapter": adapter,
                                                                   "tracking": tracking, "output": output}))


def _emitted(tmp_path: Path, name: str, *, lora: bool, push: bool) -> tuple[dict, dict]:
    """The train and GGUF configs the runner submits for recipes/<name>.yaml, as JSON."""
    loaded = _loaded(name, lora=lora)
    plan = planning.plan_recipe(loaded, token=None, price_table=planning.prices(None))
    assert plan.lora is lora
    places = jobspec.hf_places("/data") if push else jobspec.Places(tmp_path / "m", tmp_path / "g", tmp_path)
    branch = "trial-0123abcd-89abcdef" if push else None  # a sweep's trial pushes to a branch of its own
    train = jobspec.train_config(loaded, plan, "r1", places, push=push, resume=push, branch=branch)
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
    # And the strict parser builds TRL's own config from them, on this machine's setup: the recipe's values arrive.
    setup = train.training_setup(config.raw, train.policy.device("cpu"))
    built = train.trl_args(config, setup, gpu=False)
    r = _loaded(name, lora=lora).recipe
    assert type(built) is trl_class and built.learning_rate == raw["learning_rate"]
    assert built.max_steps == r.training.max_steps and built.output_dir == raw["output_dir"]
    assert (built.save_steps, built.seed, built.warmup_steps) == (7, 3, 0.05)
    assert str(getattr(built.lr_scheduler_type, "value", built.lr_scheduler_type)) == "linear"
    assert built.trackio_space_id == "alice/trackio" and built.project == "tiny-" + name.split("-", 1)[1]
    assert built.push_to_hub is push and built.hub_model_id == (f"alice/{name}" if push else None)
    assert built.hub_revision == ("trial-0123abcd-89abcdef" if push else None)  # what Trainer pushes to
    assert built.hub_private_repo is False
    if method == "dpo":
        assert built.beta == 0.25
    if method == "grpo":
        assert (built.num_generations, built.max_completion_length) == (2, 12)
        assert [w.get("name") or w.get("function") for w in config.job.rewards] == ["concise", "contains_answer"]
    else:
        assert built.max_length == r.training.max_length
    peft = train.peft_config(config)
    if lora:  # a one-module list stays a list (a plain string would be a regex PEFT matches against full names)
        assert peft.target_modules == {"q_proj"} and (peft.r, peft.lora_alpha, peft.lora_dropout) == (4, 8, 0.1)
    else:
        assert peft is None


def test_a_retry_resumes_from_the_checkpoint_on_its_own_branch(train, hub, tmp_path: Path) -> None:
    """A sweep's trial resumes from last-checkpoint/ of the branch it pushes to, never main's or another trial's."""
    raw, _ = _emitted(tmp_path, "tiny-sft", lora=False, push=True)
    raw["summary_path"] = str(tmp_path / "work" / "train-summary.json")
    repo, branch = raw["hub_model_id"], raw["hub_revision"]
    hub.commit(repo, {"last-checkpoint/trainer_state.json": b'{"from": "main"}'})
    hub.state.repos[repo].branches["trial-other-00000000"] = hub.state.repos[repo].branches["main"]
    hub.commit(repo, {"last-checkpoint/trainer_state.json": b'{"from": "another trial"}'},
               revision="trial-other-00000000")
    hub.state.repos[repo].branches[branch] = hub.state.repos[repo].branches["main"]
    hub.commit(repo, {"last-checkpoint/trainer_state.json": b'{"from": "this trial"}'}, revision=branch)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    # In a process of its own, as a job runs: huggingface_hub reads HF_ENDPOINT (the stand-in) when imported.
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import train; "
            "print(train.resume_checkpoint(train.parse_config(json.load(open(sys.argv[2])))))")
    proc = subprocess.run([sys.executable, "-c", code, str(JOBS), str(tmp_path / "config.json")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert json.loads((path / "trainer_state.json").read_text()) == {"from": "this trial"}


def test_a_local_retry_resumes_from_the_newest_complete_checkpoint(train, tmp_path: Path) -> None:
    """A job killed while saving leaves a newer checkpoint folder without its state: the retry resumes from the one
    before it, not from the start (numbered, so checkpoint-100 is newer than checkpoint-20)."""
    raw, _ = _emitted(tmp_path, "tiny-sft", lora=False, push=False)
    raw["resume_from_checkpoint"] = "last-checkpoint"
    out = Path(raw["output_dir"])
    for step, complete in ((20, True), (100, True), (110, False)):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert train.resume_checkpoint(train.parse_config(raw)) == str(out / "checkpoint-100")


@pytest.mark.parametrize("name", ["tiny-sft", "tiny-dpo", "tiny-grpo"])
def test_the_job_resolves_the_setup_the_plan_priced(train, tmp_path: Path, name: str) -> None:
    """Batch split, checkpointing and precision come from one policy on both sides, fed the same numbers."""
    loaded = _loaded(name, lora=False)
    plan = planning.plan_recipe(loaded, token=None, price_table=planning.prices(None))
    raw, _ = _emitted(tmp_path, name, lora=False, push=True)
    assert plan.setup is not None and plan.flavor is not None
    job = train.training_setup(raw, train.policy.device(plan.setup.device))
    assert job.as_dict() == plan.setup.as_dict(), (job.as_dict(), plan.setup.as_dict())


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
