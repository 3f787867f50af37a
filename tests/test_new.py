"""`runner new`: a recipe from a model and a dataset, inspected, planned and validated, or nothing at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_header_only_model, write_jsonl, write_recipe

from runner import recipe as recipe_mod

EDITOR_COMMENT = "# yaml-language-server: $schema=./schema.json"


DEFAULTS = "namespace: acme\nmax_budget_usd: 100\nbudget_usd: 5\n"


@pytest.fixture(autouse=True)
def _defaults(repo: Path) -> None:
    """Repo defaults as the template has them once set up: a namespace (a run on the Hub needs an output repo),
    a budget every recipe inherits, under a cap."""
    (repo / "recipes" / "_defaults.yaml").write_text(DEFAULTS)


def recipes_dir(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "recipes").iterdir() if p.name != "_defaults.yaml")


def test_writes_a_valid_recipe_and_prints_its_plan(repo: Path, cli) -> None:
    result = cli("new", "support-bot", "--model", "models/tiny", "--dataset", "data/sft.jsonl", "--epochs", "3",
                 "--budget", "12", cwd=repo)
    assert result.code == 0, result.err
    path = repo / "recipes" / "support-bot.yaml"
    assert path.read_text(encoding="utf-8").splitlines()[0] == EDITOR_COMMENT
    assert result.out.splitlines()[0] == "wrote recipes/support-bot.yaml"
    assert "recipes/support-bot.yaml: support-bot [OK]" in result.out
    assert "SFT: READY" in result.out and "hardware:" in result.out and "cost:" in result.out
    r = recipe_mod.load(path).recipe
    assert (r.name, r.base_model, r.method, r.dataset.path) == ("support-bot", "./models/tiny", "sft", "data/sft.jsonl")
    assert (r.training.epochs, r.budget_usd, r.dataset.columns) == (3.0, 12.0, None)
    # Only what was asked for or needed: hardware, timeout and LoRA stay for the plan to decide.
    assert (r.hardware, r.timeout, r.adapter.lora) == ("auto", "auto", "auto")
    assert cli("validate", "recipes/support-bot.yaml", cwd=repo).code == 0
    plan = json.loads(cli("plan", "--json", "recipes/support-bot.yaml", cwd=repo).out)
    assert plan["ok"] is True
    assert recipes_dir(repo) == ["support-bot.yaml"]  # no temporary file left behind


def test_fills_the_column_mapping_the_data_needs(repo: Path, cli) -> None:
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i + 1}"} for i in range(30)]
    write_jsonl(repo / "data" / "qa.jsonl", rows)
    result = cli("new", "qa", "--model", "./models/tiny", "--dataset", "data/qa.jsonl", cwd=repo)
    assert result.code == 0, result.err
    r = recipe_mod.load(repo / "recipes" / "qa.yaml").recipe
    assert r.dataset.columns == {"question": "prompt", "answer": "completion"}
    assert "SFT: READY" in result.out
    assert "question -> prompt" in result.out


def test_accepts_an_absolute_dataset_path_inside_the_repo(repo: Path, cli) -> None:
    result = cli("new", "abs", "--model", str(repo / "models" / "tiny"), "--dataset", str(repo / "data" / "sft.jsonl"),
                 cwd=repo)
    assert result.code == 0, result.err
    r = recipe_mod.load(repo / "recipes" / "abs.yaml").recipe
    assert (r.base_model, r.dataset.path) == ("./models/tiny", "data/sft.jsonl")


def test_refuses_data_that_does_not_fit_the_method_and_writes_nothing(repo: Path, cli) -> None:
    result = cli("new", "prefs", "--model", "models/tiny", "--dataset", "data/sft.jsonl", "--method", "dpo", cwd=repo)
    assert result.code == 1
    assert result.err.startswith("error: --dataset data/sft.jsonl: not usable for DPO: ")
    assert "'chosen' and 'rejected'" in result.err and "it fits --method sft" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert recipes_dir(repo) == []


def test_refuses_to_overwrite(repo: Path, cli) -> None:
    existing = write_recipe(repo, "taken", "# mine\nbase_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n")
    before = existing.read_bytes()
    result = cli("new", "taken", "--model", "models/tiny", "--dataset", "data/sft.jsonl", cwd=repo)
    assert result.code == 1 and "recipes/taken.yaml already exists; not overwriting it" in result.err
    assert existing.read_bytes() == before
    assert recipes_dir(repo) == ["taken.yaml"]


def test_refuses_a_name_another_recipe_already_has(repo: Path, cli) -> None:
    write_recipe(repo, "old-file", "name: bot\nbase_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n")
    result = cli("new", "bot", "--model", "models/tiny", "--dataset", "data/sft.jsonl", cwd=repo)
    assert result.code == 1 and "recipes/old-file.yaml already has name: bot; pick another NAME" in result.err
    assert recipes_dir(repo) == ["old-file.yaml"]


@pytest.mark.parametrize("args, fragment", [
    (["Bad_Name", "--model", "models/tiny", "--dataset", "data/sft.jsonl"], "NAME 'Bad_Name' is not a slug"),
    (["x", "--model", "models/tiny", "--dataset", "data/none.jsonl"], "--dataset data/none.jsonl: cannot be read"),
    (["x", "--model", "models/tiny", "--dataset", "../outside.jsonl"], "--dataset ../outside.jsonl: is outside the "
     "repository"),
    (["x", "--model", "models/tiny", "--dataset", "data/sft.jsonl", "--epochs", "0"],
     "--epochs (training.epochs): Input should be greater than 0"),
    (["x", "--model", "not a model", "--dataset", "data/sft.jsonl"], "--model (base_model): 'not a model' is not a "
     "valid Hub model id"),
    (["x", "--model", "models/tiny", "--dataset", "my-org/support-conversations"],
     "--dataset my-org/support-conversations: cannot be read"),
])
def test_bad_arguments_name_the_argument_and_write_nothing(repo: Path, cli, args, fragment) -> None:
    result = cli("new", *args, cwd=repo)
    assert result.code == 1
    assert fragment in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert recipes_dir(repo) == []


def test_refuses_over_budget_and_says_what_budget_would_do(repo: Path, cli) -> None:
    write_header_only_model(repo / "models" / "big", hidden=4096, layers=40, vocab=32000)
    long_rows = [{"messages": [{"role": "user", "content": "q" * 400}, {"role": "assistant", "content": "a" * 4000}]}
                 for _ in range(2000)]
    write_jsonl(repo / "data" / "long.jsonl", long_rows)
    result = cli("new", "big", "--model", "models/big", "--dataset", "data/long.jsonl", "--epochs", "3",
                 "--budget", "0.01", cwd=repo)
    assert result.code == 1
    assert "recipes/big.yaml not written: over budget: estimated $" in result.err and "pass --budget " in result.err
    suggested = result.err.split("pass --budget ")[1].split()[0]
    assert cli("new", "big", "--model", "models/big", "--dataset", "data/long.jsonl", "--epochs", "3",
               "--budget", suggested, cwd=repo).code == 0


def test_pins_lora_only_when_a_full_fine_tune_is_over_budget(repo: Path, cli) -> None:
    write_header_only_model(repo / "models" / "big", hidden=4096, layers=40, vocab=32000)  # ~2.1B: auto = full
    long_rows = [{"messages": [{"role": "user", "content": "q" * 400}, {"role": "assistant", "content": "a" * 4000}]}
                 for _ in range(2000)]
    write_jsonl(repo / "data" / "long.jsonl", long_rows)
    base = "base_model: ./models/big\nmethod: sft\ndataset: data/long.jsonl\ntraining:\n  epochs: 3\n"
    write_recipe(repo, "full", base + "adapter:\n  lora: false\n")
    write_recipe(repo, "lora", base + "adapter:\n  lora: true\n")
    plans = {p["name"]: p for p in json.loads(cli("plan", "--json", "recipes", cwd=repo).out)["plans"]}
    full, lora = plans["full"]["cost_usd"], plans["lora"]["cost_usd"]
    # The spend gate wants room for the estimate (25%) below the budget: a budget LoRA meets and a full run does not.
    assert lora * 1.3 < full, "precondition: LoRA must be clearly cheaper here"
    budget = f"{(lora * 1.3 + full) / 2:.2f}"
    for p in ("full", "lora"):
        (repo / "recipes" / f"{p}.yaml").unlink()

    result = cli("new", "big", "--model", "models/big", "--dataset", "data/long.jsonl", "--epochs", "3",
                 "--budget", budget, cwd=repo)
    assert result.code == 0, result.err
    text = (repo / "recipes" / "big.yaml").read_text()
    assert recipe_mod.load(repo / "recipes" / "big.yaml").recipe.adapter.lora is True
    assert "# adapter.lora pinned to true: a full fine-tune" in text and "over the budget" in text
    assert "LoRA" in result.out

    # With room for the full fine-tune, nothing is pinned.
    result = cli("new", "roomy", "--model", "models/big", "--dataset", "data/long.jsonl", "--epochs", "3",
                 "--budget", f"{full * 3:.2f}", cwd=repo)
    assert result.code == 0, result.err
    assert recipe_mod.load(repo / "recipes" / "roomy.yaml").recipe.adapter.lora == "auto"


def test_refuses_without_a_budget(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("namespace: acme\n")  # no budget anywhere
    result = cli("new", "free", "--model", "models/tiny", "--dataset", "data/sft.jsonl", cwd=repo)
    assert result.code == 1 and "no budget: pass --budget USD" in result.err
    assert recipes_dir(repo) == []
    assert cli("new", "free", "--model", "models/tiny", "--dataset", "data/sft.jsonl", "--budget", "2",
               cwd=repo).code == 0


def test_without_an_output_repo_writes_and_names_the_setting_the_plan_needs(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text(DEFAULTS.replace("namespace: acme\n", ""))
    result = cli("new", "fresh", "--model", "models/tiny", "--dataset", "data/sft.jsonl", cwd=repo)
    assert result.code == 0 and recipes_dir(repo) == ["fresh.yaml"]  # the recipe is right; the repo is not set up
    assert "no output repo yet: set `namespace: <your Hub user or organization>` in recipes/_defaults.yaml" \
        in result.out
    assert cli("plan", "recipes/fresh.yaml", cwd=repo).code == 1  # the check still says so, as the merge would
    (repo / "recipes" / "_defaults.yaml").write_text(DEFAULTS)
    assert cli("plan", "recipes/fresh.yaml", cwd=repo).code == 0


def test_grpo_gets_the_exact_answer_reward_from_an_answer_column(repo: Path, cli) -> None:
    write_jsonl(repo / "data" / "math.jsonl", [{"question": f"What is {i} * 2?", "solution": str(2 * i)}
                                               for i in range(20)])
    result = cli("new", "math", "--model", "models/tiny", "--dataset", "data/math.jsonl", "--method", "grpo", cwd=repo)
    assert result.code == 0, result.err
    r = recipe_mod.load(repo / "recipes" / "math.yaml").recipe
    assert r.dataset.columns == {"question": "prompt", "solution": "answer"}
    assert [w.builtin for w in r.rewards] == ["exact_answer"]
    assert "GRPO: READY" in result.out


def test_grpo_without_an_answer_is_refused_with_the_way_forward(repo: Path, cli) -> None:
    write_jsonl(repo / "data" / "prompts.jsonl", [{"prompt": f"Write a haiku about {i}."} for i in range(20)])
    result = cli("new", "haiku", "--model", "models/tiny", "--dataset", "data/prompts.jsonl", "--method", "grpo",
                 cwd=repo)
    assert result.code == 1
    assert "GRPO needs a reward" in result.err and "rewards/x.py" in result.err
    assert recipes_dir(repo) == []


def test_needs_the_recipes_folder(tmp_path: Path, cli) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("new", "x", "--model", "a/b", "--dataset", "c/d", cwd=elsewhere)
    assert result.code == 1 and "no recipes/ folder" in result.err


def test_new_and_schema_import_no_training_stack(repo: Path) -> None:
    code = ("import sys, runner.cli\n"
            "rc = runner.cli.main(['new', 'light', '--model', 'models/tiny', '--dataset', 'data/sft.jsonl'])\n"
            "rc |= runner.cli.main(['schema'])\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n"
            "raise SystemExit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(repo / ".hf"),
                               "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert (repo / "recipes" / "light.yaml").is_file()
