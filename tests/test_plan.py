"""`runner plan`: model facts, flavor choice by total cost, budget and readiness verdicts."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_subprocess, write_jsonl, write_recipe
from hubstub import HubStub

from runner import hardware, modelfacts
from runner.plan import billed

LOCAL = """\
name: {name}
base_model: ./models/tiny
method: sft
dataset: data/sft.jsonl
budget_usd: 5
output:
  repo: acme/{name}
"""

HUB = """\
name: {name}
base_model: {model}
method: sft
dataset: data/sft.jsonl
budget_usd: {budget}
output:
  repo: acme/{name}
"""


def plan_json(cli, repo: Path, *recipes: str) -> tuple[int, dict]:
    result = cli("plan", *recipes, "--json", cwd=repo)
    return result.code, json.loads(result.out)


def test_local_model_plan_has_the_promised_fields(repo: Path, cli) -> None:
    write_recipe(repo, "demo", LOCAL.format(name="demo"))
    code, doc = plan_json(cli, repo, "recipes/demo.yaml")
    assert code == 0 and doc["ok"] is True and doc["errors"] == []
    (p,) = doc["plans"]
    for key in ("flavor", "lora", "params", "tokens", "hours", "cost_usd", "timeout_seconds", "within_budget",
                "warnings"):
        assert key in p
    # Exact count from the safetensors header: embed 1000x256 + 2 layers x (512x256 + 256x256).
    assert p["params"] == 1000 * 256 + 2 * (512 * 256 + 256 * 256) and p["params_source"] == "local"
    assert p["lora"] is False  # auto: LoRA only above 3B
    assert p["flavor"] == "cpu-basic"  # a tiny model is cheapest on a CPU
    assert p["rows"] == 40 and p["tokens"] > 0
    assert p["dataset"]["status"] == "ready"
    assert p["within_budget"] is True and p["timeout_seconds"] == 1800


def test_flavor_is_lowest_total_cost_not_cheapest_hour(repo: Path, cli) -> None:
    # Many long rows on a 1.5B model: a T4 is cheaper per hour, an L40S is cheaper per token.
    long_rows = [{"messages": [{"role": "user", "content": "q " * 600}, {"role": "assistant", "content": "a " * 900}]}]
    write_jsonl(repo / "data" / "sft.jsonl", long_rows * 200)
    knobs = "adapter:\n  lora: true\ntraining:\n  epochs: 100\n  max_length: 2048\nbudget_usd"
    write_recipe(repo, "auto", HUB.format(name="auto", model="Qwen/Qwen2.5-1.5B-Instruct", budget=500)
                 .replace("budget_usd", knobs))
    write_recipe(repo, "t4", HUB.format(name="t4", model="Qwen/Qwen2.5-1.5B-Instruct", budget=500)
                 .replace("budget_usd", "hardware: a10g-small\n" + knobs))
    code, doc = plan_json(cli, repo, "recipes/auto.yaml", "recipes/t4.yaml")
    auto, fixed = doc["plans"]
    prices = {f.name: f.usd_per_hour for f in hardware.catalog()}
    assert auto["fits"] and fixed["fits"]
    assert prices[auto["flavor"]] > prices["a10g-small"]  # not the cheapest hour...
    assert auto["train_cost_usd"] < fixed["train_cost_usd"]  # ...but the cheapest run
    assert any("would cost about" in w and "hardware: auto" in w for w in fixed["warnings"])


def test_large_model_gets_lora_and_a_big_enough_gpu(repo: Path, cli) -> None:
    write_recipe(repo, "big", HUB.format(name="big", model="meta-llama/Llama-3.1-8B-Instruct", budget=50))
    code, doc = plan_json(cli, repo, "recipes/big.yaml")
    (p,) = doc["plans"]
    assert p["params"] == modelfacts.KNOWN_PARAMS["meta-llama/Llama-3.1-8B-Instruct"]
    assert p["lora"] is True and p["learning_rate"] == pytest.approx(2e-4)
    assert p["flavor"] not in ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium")
    assert p["memory_gb"] <= p["memory_capacity_gb"]
    assert "params (from a table of well-known models)" in p["guesses"]


def test_lora_forced_off_on_large_model_warns_and_may_shard(repo: Path, cli) -> None:
    text = HUB.format(name="full", model="meta-llama/Llama-3.1-8B-Instruct", budget=500) + "adapter:\n  lora: false\n"
    write_recipe(repo, "full", text)
    code, doc = plan_json(cli, repo, "recipes/full.yaml")
    (p,) = doc["plans"]
    assert p["lora"] is False
    assert any("LoRA is forced off on a 8.0B-parameter model" in w for w in p["warnings"])
    # 8B x 12 bytes of weights+grads+Adam is ~96 GB: only an H200 holds it whole, or FSDP shards it.
    assert p["flavor"] in ("h200",) or p["strategy"] == "fsdp"


def test_over_budget_exits_1(repo: Path, cli) -> None:
    write_recipe(repo, "big", HUB.format(name="big", model="Qwen/Qwen3-8B", budget=0.01))
    result = cli("plan", "recipes/big.yaml", cwd=repo)
    assert result.code == 1
    assert "[BLOCKED]" in result.out and "over budget" in result.out


def test_unready_dataset_exits_1_and_mapping_fixes_it(repo: Path, cli) -> None:
    write_jsonl(repo / "data" / "qa.jsonl", [{"question": "2+2?", "answer": "4"}] * 10)
    text = LOCAL.format(name="qa").replace("data/sft.jsonl", "data/qa.jsonl")
    write_recipe(repo, "qa", text)
    result = cli("plan", "recipes/qa.yaml", "--markdown", cwd=repo)
    assert result.code == 1
    assert "**SFT: NEEDS\\_MAPPING - " in result.out and "dataset.columns: {question: prompt, answer: completion}" \
        in result.out.replace("\\", "")
    write_recipe(repo, "qa", text.replace("data/qa.jsonl", "\n  path: data/qa.jsonl\n  columns: {question: prompt, "
                                          "answer: completion}"))
    code, doc = plan_json(cli, repo, "recipes/qa.yaml")
    assert code == 0 and doc["plans"][0]["dataset"]["status"] == "ready"


def test_mapping_of_a_missing_column(repo: Path, cli) -> None:
    write_recipe(repo, "m", LOCAL.format(name="m").replace(
        "data/sft.jsonl", "\n  path: data/sft.jsonl\n  columns: {conversation: messages}"))
    code, doc = plan_json(cli, repo, "recipes/m.yaml")
    assert code == 1 and "maps 'conversation', which is not a column" in doc["plans"][0]["dataset"]["reason"]


def test_explicit_short_timeout_warns(repo: Path, cli) -> None:
    text = HUB.format(name="slow", model="Qwen/Qwen3-4B", budget=500) + "timeout: 5m\nhardware: t4-small\n"
    write_jsonl(repo / "data" / "sft.jsonl",
                [{"messages": [{"role": "user", "content": "q " * 300}, {"role": "assistant", "content": "a " * 300}]}] * 2000)
    write_recipe(repo, "slow", text)
    code, doc = plan_json(cli, repo, "recipes/slow.yaml")
    (p,) = doc["plans"]
    assert p["timeout_seconds"] == 300
    assert any(w.startswith("timeout risk: timeout 5 min is below the estimated") for w in p["warnings"])


def test_no_output_repo_fails_the_plan_and_the_merge_and_namespace_fixes_both(repo: Path, cli) -> None:
    write_recipe(repo, "nohub", LOCAL.format(name="nohub").replace("output:\n  repo: acme/nohub\n", ""))
    code, doc = plan_json(cli, repo, "recipes/nohub.yaml")
    (p,) = doc["plans"]
    assert code == 1 and doc["ok"] is False and p["output_repo"] is None
    assert p["refusal"].startswith("no Hub output: set `output.repo`") and "`namespace`" in p["refusal"]
    assert any(w.startswith("no Hub output") for w in p["warnings"])
    # The merge's gate refuses what the check refused: nothing would be submitted.
    merge = cli("run", "recipes/nohub.yaml", "--dry-run", "--backend", "hf", cwd=repo)
    assert merge.code == 1 and "no Hub output" in merge.err and merge.out == ""
    (repo / "recipes" / "_defaults.yaml").write_text("namespace: acme\n")
    code, doc = plan_json(cli, repo, "recipes/nohub.yaml")
    assert code == 0 and doc["plans"][0]["output_repo"] == "acme/nohub" and doc["plans"][0]["refusal"] is None
    merge = cli("run", "recipes/nohub.yaml", "--dry-run", "--backend", "hf", "--json", cwd=repo)
    assert merge.code == 0 and json.loads(merge.out)["jobs"][0]["config"]["hub_model_id"] == "acme/nohub"


def test_long_rows_truncation_warning(repo: Path, cli) -> None:
    write_jsonl(repo / "data" / "sft.jsonl", [{"text": "word " * 400}] * 4)
    write_recipe(repo, "t", LOCAL.format(name="t").replace("data/sft.jsonl", "data/sft.jsonl\ntraining:\n  max_length: 64"))
    code, doc = plan_json(cli, repo, "recipes/t.yaml")
    assert any("100% of sampled rows are longer than max_length 64" in w for w in doc["plans"][0]["warnings"])


def test_invalid_recipe_in_plan_is_reported_with_others(repo: Path, cli) -> None:
    write_recipe(repo, "good", LOCAL.format(name="good"))
    write_recipe(repo, "bad", LOCAL.format(name="bad") + "epochs: 3\n")
    code, doc = plan_json(cli, repo, "recipes")
    assert code == 1 and len(doc["plans"]) == 1
    assert doc["errors"] == ["recipes/bad.yaml:8:1: epochs: unknown field 'epochs'"]


def test_markdown_escapes_untrusted_text(repo: Path, cli) -> None:
    write_jsonl(repo / "data" / "x.jsonl", [{"<img src=x onerror=alert(1)>": "a", "col|pipe": "b"}])
    write_recipe(repo, "x", LOCAL.format(name="x").replace("data/sft.jsonl", "data/x.jsonl"))
    result = cli("plan", "recipes/x.yaml", "--markdown", cwd=repo)
    assert result.code == 1
    assert "<img" not in result.out and "&lt;img src=x onerror=alert(1)&gt;" in result.out
    assert "col\\|pipe" in result.out
    assert result.out.startswith("<!-- recipes-runner:plan -->")


def test_billing_is_per_started_minute() -> None:
    assert billed(61 / 3600, 60.0) == pytest.approx(2.0)
    assert billed(0.5, 1.0) == pytest.approx(0.5)


# --- the Hub side, through the real HfApi against the stand-in -----------------------------------


def test_params_from_hub_safetensors_metadata(repo: Path, cli, hub: HubStub) -> None:
    hub.state.models["acme/custom-model"] = {"params": 2_500_000_000}
    write_recipe(repo, "c", HUB.format(name="c", model="acme/custom-model", budget=50))
    code, doc = plan_json(cli, repo, "recipes/c.yaml")
    p = doc["plans"][0]
    assert p["params"] == 2_500_000_000 and p["params_source"] == "hub"
    assert not any(g.startswith("params") for g in p["guesses"])
    req = next(r for r in hub.state.requests if r.path == "/api/models/acme/custom-model")
    assert set(req.query["expand"]) == {"safetensors", "config"}


@pytest.mark.parametrize("setup,fragment", [
    (lambda s: None, "acme/ghost: model not found on the Hub"),
    (lambda s: s.gated.add("acme/ghost"), "acme/ghost: gated model"),
])
def test_missing_or_gated_model_is_a_clear_error(repo: Path, cli, hub: HubStub, setup, fragment: str) -> None:
    setup(hub.state)
    write_recipe(repo, "g", HUB.format(name="g", model="acme/ghost", budget=5))
    result = cli("plan", "recipes/g.yaml", cwd=repo)
    assert result.code == 1 and fragment in result.err


def test_hub_outage_falls_back_to_known_sizes(repo: Path, cli, hub: HubStub) -> None:
    hub.state.faults["/api/models/"] = [503] * 20
    write_recipe(repo, "q", HUB.format(name="q", model="Qwen/Qwen3-0.6B", budget=5))
    code, doc = plan_json(cli, repo, "recipes/q.yaml")
    p = doc["plans"][0]
    assert code == 0 and p["params"] == modelfacts.KNOWN_PARAMS["Qwen/Qwen3-0.6B"]
    assert any("model facts not read from the Hub" in w for w in p["warnings"])


def test_live_prices_with_token_and_token_never_printed(repo: Path, cli, hub: HubStub,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_live_price_token_for_tests_0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    hub.state.hardware_prices["cpu-basic"] = 1_000_000  # $1/minute: no longer the cheapest
    write_recipe(repo, "demo", LOCAL.format(name="demo"))
    result = cli("plan", "recipes/demo.yaml", "--json", cwd=repo)
    p = json.loads(result.out)["plans"][0]
    assert p["price_source"] == "live Hub hardware prices"
    assert p["flavor"] != "cpu-basic"
    hw = next(r for r in hub.state.requests if r.path == "/api/jobs/hardware")
    assert hw.headers.get("authorization") == f"Bearer {token}"
    for mode in ((), ("--markdown",), ("--json",)):
        out = cli("plan", "recipes/demo.yaml", *mode, cwd=repo)
        assert token not in out.out + out.err


def test_hardware_endpoint_failure_keeps_builtin_prices(repo: Path, cli, hub: HubStub,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_x_token_for_tests_only_000000000000")
    hub.state.faults["/api/jobs/hardware"] = [500]
    write_recipe(repo, "demo", LOCAL.format(name="demo"))
    code, doc = plan_json(cli, repo, "recipes/demo.yaml")
    p = doc["plans"][0]
    assert p["price_source"] == "built-in price table"
    assert any("could not refresh prices from the Hub" in w for w in p["warnings"])


def test_hub_dataset_in_plan(repo: Path, cli, hub: HubStub) -> None:
    hub.state.datasets["acme/chat"] = {("default", "train"): [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 20}
    write_recipe(repo, "h", LOCAL.format(name="h").replace("data/sft.jsonl", "acme/chat"))
    code, doc = plan_json(cli, repo, "recipes/h.yaml")
    assert code == 0 and doc["plans"][0]["rows"] == 20


def test_offline_plan_completes_and_says_what_it_guessed(repo: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_recipe(repo, "o", HUB.format(name="o", model="Qwen/Qwen3-1.7B", budget=5).replace("data/sft.jsonl",
                                                                                          "acme/chat"))
    code, doc = plan_json(cli, repo, "recipes/o.yaml")
    p = doc["plans"][0]
    assert code == 1  # the data could not be checked, so the plan cannot pass
    assert p["dataset"]["status"] == "unknown" and "cannot be sampled offline" in p["dataset"]["reason"]
    assert p["flavor"] and p["cost_usd"] > 0
    assert "rows (row count unknown; assumed 10,000)" in p["guesses"]
    assert "prices (built-in price table)" in p["guesses"]


def test_unknown_model_offline_is_an_error(repo: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_recipe(repo, "u", HUB.format(name="u", model="acme/mystery", budget=5))
    result = cli("plan", "recipes/u.yaml", cwd=repo)
    assert result.code == 1 and "cannot tell the size of 'acme/mystery' (offline)" in result.err


def test_name_based_guess() -> None:
    facts = modelfacts.from_name("someone/Fancy-3.5B-Chat")
    assert facts is not None and facts.params == 3_500_000_000 and facts.is_guess
    assert modelfacts.from_name("someone/SmolThing-135M").params == 135_000_000
    assert modelfacts.from_name("someone/no-size") is None


def test_validate_and_plan_import_no_training_stack(repo: Path) -> None:
    write_recipe(repo, "demo", LOCAL.format(name="demo"))
    code = ("import sys, runner.cli\n"
            "rc = runner.cli.main(['validate', 'recipes/demo.yaml'])\n"
            "rc |= runner.cli.main(['plan', 'recipes/demo.yaml', '--json'])\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n"
            "raise SystemExit(rc)\n")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(repo / ".hf")})
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_module_entry_point(repo: Path) -> None:
    write_recipe(repo, "demo", LOCAL.format(name="demo"))
    proc = run_subprocess("validate", "recipes/demo.yaml", cwd=repo)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok: recipes/demo.yaml"
    proc = run_subprocess("plan", cwd=repo)
    assert proc.returncode == 2 and "the following arguments are required" in proc.stderr


def test_example_recipes_plan_offline(cli) -> None:
    if not (ROOT / "examples" / "tiny-model" / "config.json").exists():
        pytest.skip("tiny model not built")
    code, doc = plan_json(cli, ROOT, "examples/recipes")
    assert doc["errors"] == []
    assert {p["name"] for p in doc["plans"]} >= {"tiny-sft", "tiny-dpo", "tiny-grpo"}
    assert all(p["dataset"]["status"] == "ready" for p in doc["plans"])


# --- traps a newcomer walks into: each one said in the plan ----------------------------------------------


def test_empty_dataset_fails_with_a_located_message_and_no_invented_figures(repo: Path, cli) -> None:
    (repo / "data" / "empty.jsonl").write_text("")
    write_recipe(repo, "e", LOCAL.format(name="e").replace("data/sft.jsonl", "data/empty.jsonl"))
    code, doc = plan_json(cli, repo, "recipes/e.yaml")
    assert code == 1 and doc["plans"] == []
    assert doc["errors"] == ["recipes/e.yaml: dataset: 'data/empty.jsonl' (split 'train') has no rows: nothing to "
                             "train on; add rows to it or point `dataset` at data that has some"]
    text = cli("plan", "recipes/e.yaml", cwd=repo)
    assert text.code == 1 and "10,000" not in text.out + text.err and "tokens:" not in text.out


def test_epochs_beside_max_steps_warns_that_max_steps_wins(repo: Path, cli) -> None:
    write_recipe(repo, "both", LOCAL.format(name="both") + "training:\n  epochs: 3\n  max_steps: 20\n")
    write_recipe(repo, "steps", LOCAL.format(name="steps") + "training:\n  max_steps: 20\n")
    _, doc = plan_json(cli, repo, "recipes/both.yaml", "recipes/steps.yaml")
    both, steps = doc["plans"]
    assert [w for w in both["warnings"] if "max_steps" in w] == [
        "training.epochs 3 is ignored: training.max_steps 20 is also set and wins (the run stops after that many "
        "steps); remove one of them"]
    assert not any("max_steps" in w for w in steps["warnings"])
    assert both["tokens"] == steps["tokens"]  # max_steps decides what is trained, as the warning says


@pytest.mark.parametrize(("model", "adapter", "rate", "expected", "source"), [
    ("./models/tiny", "", "", 2e-5, "full fine-tune default, not LoRA's 0.0002; `lora: auto` chose a full "
                                    "fine-tune below 3B parameters"),
    ("meta-llama/Llama-3.1-8B-Instruct", "", "", 2e-4, "LoRA default"),
    ("./models/tiny", "adapter:\n  lora: true\n", "", 2e-4, "LoRA default"),
    ("./models/tiny", "adapter:\n  lora: false\n", "", 2e-5, "full fine-tune default, not LoRA's 0.0002"),
    ("./models/tiny", "", "training:\n  learning_rate: 5e-5\n", 5e-5, "recipe"),
])
def test_learning_rate_defaults_to_the_adapter_the_plan_chose(repo: Path, cli, model: str, adapter: str, rate: str,
                                                              expected: float, source: str) -> None:
    write_recipe(repo, "lr", HUB.format(name="lr", model=model, budget=50) + adapter + rate)
    _, doc = plan_json(cli, repo, "recipes/lr.yaml")
    (p,) = doc["plans"]
    assert p["learning_rate"] == pytest.approx(expected) and p["learning_rate_source"] == source
    assert not any("LoRA-sized" in w for w in p["warnings"])
    markdown = cli("plan", "recipes/lr.yaml", "--markdown", cwd=repo).out
    line = next(x for x in markdown.splitlines() if x.startswith("| Method |"))
    assert f"lr {expected:g}" in line and (source == "recipe" or "default" in line)


def test_a_lora_sized_rate_on_an_auto_full_finetune_is_warned(repo: Path, cli) -> None:
    write_recipe(repo, "hot", LOCAL.format(name="hot") + "training:\n  learning_rate: 2e-4\n")
    _, doc = plan_json(cli, repo, "recipes/hot.yaml")
    (p,) = doc["plans"]
    assert p["lora"] is False and p["learning_rate"] == pytest.approx(2e-4)  # the recipe's rate is kept...
    assert any(w.startswith("training.learning_rate 0.0002 is a LoRA-sized rate, but `adapter.lora: auto` chose a "
                            "full fine-tune") for w in p["warnings"])  # ...and said to be a LoRA rate


def _t4_plan(repo: Path, batch: int):
    from runner import planning, recipe

    text = (HUB.format(name="m", model="Qwen/Qwen3-1.7B", budget=50) + "hardware: t4-small\nadapter:\n  lora: true\n"
            f"training:\n  batch_size: {batch}\n  grad_accum: 1\n  pin_batch: true\n  max_length: 2048\n"
            "  gradient_checkpointing: false\n")
    write_recipe(repo, "m", text)
    return planning.plan_recipe(recipe.load(repo / "recipes" / "m.yaml"), token=None, price_table=planning.prices(None))


def test_memory_at_90_percent_of_the_gpu_is_warned(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [{"messages": [{"role": "user", "content": "q " * 400}, {"role": "assistant", "content": "a " * 800}]}]
    write_jsonl(repo / "data" / "sft.jsonl", rows * 50)
    tight = 0
    for batch in range(6, 12):  # pinned micro-batches of long rows: from roomy to over a T4's 16 GB
        p = _t4_plan(repo, batch)
        share = p.memory_gb / (p.memory_capacity_gb or 1)
        warned = [w for w in p.warnings if w.startswith("memory: the estimated peak")]
        assert bool(warned) == (p.fits and share >= 0.9), (batch, share, p.warnings)
        tight += bool(warned)
        if warned:
            assert f"{share:.0%} of t4-small's 16 GB" in warned[0]
    assert tight >= 1  # the sweep crosses the band where the warning is due


def test_an_estimate_close_to_the_timeout_is_warned(repo: Path, cli) -> None:
    write_jsonl(repo / "data" / "sft.jsonl",
                [{"messages": [{"role": "user", "content": "q " * 300}, {"role": "assistant", "content": "a " * 300}]}]
                * 2000)
    base = HUB.format(name="slow", model="Qwen/Qwen3-4B", budget=500) + "hardware: t4-small\n"
    write_recipe(repo, "slow", base)
    _, doc = plan_json(cli, repo, "recipes/slow.yaml")
    roomy = doc["plans"][0]
    assert not any(w.startswith(("timeout:", "timeout risk")) for w in roomy["warnings"])  # the recommended timeout
    minutes = math.ceil(roomy["hours"] * 60 / 0.8)  # the estimate at about 80% of it
    write_recipe(repo, "slow", base + f"timeout: {minutes}m\n")
    _, doc = plan_json(cli, repo, "recipes/slow.yaml")
    (p,) = doc["plans"]
    share = p["hours"] * 3600 / p["timeout_seconds"]
    assert 0.7 <= share < 1 / 1.1
    assert f"timeout: the estimate ({p['hours'] * 60:.0f} min) is {share:.0%} of the {minutes}-min timeout" in \
        " ".join(p["warnings"])


def test_recipes_of_one_pull_request_are_totalled_and_capped_together(repo: Path, cli) -> None:
    for name in ("a", "b"):
        write_recipe(repo, name, LOCAL.format(name=name))
    code, doc = plan_json(cli, repo, "recipes/a.yaml", "recipes/b.yaml")
    assert code == 0 and doc["errors"] == []
    worst = [p["max_cost_usd"] for p in doc["plans"]]
    total = round(sum(worst), 2)
    markdown = cli("plan", "recipes/a.yaml", "recipes/b.yaml", "--markdown", cwd=repo)
    assert (f"**Total of 2 recipes:** ${sum(p['cost_usd'] for p in doc['plans']):.2f} estimated, ${total:.2f} worst "
            "case") in markdown.out
    cap = total * 0.75  # each recipe fits it, both together do not
    assert all(w <= cap for w in worst)
    (repo / "recipes" / "_defaults.yaml").write_text(f"max_total_usd: {cap}\n")
    code, doc = plan_json(cli, repo, "recipes/a.yaml", "recipes/b.yaml")
    assert code == 1 and len(doc["plans"]) == 2 and all(p["ok"] for p in doc["plans"])
    assert doc["errors"] == [
        f"recipes/_defaults.yaml: max_total_usd: the 2 recipes of this pull request may cost ${total:.2f} together in "
        f"the worst case (recipes/a.yaml ${worst[0]:.2f}, recipes/b.yaml ${worst[1]:.2f}), above max_total_usd "
        f"${cap:.2f}; lower their budgets or timeouts, split the pull request, or raise max_total_usd"]
    assert plan_json(cli, repo, "recipes/a.yaml")[0] == 0  # one of them alone is within the cap
    (repo / "recipes" / "_defaults.yaml").write_text(f"max_total_usd: {total}\n")
    assert plan_json(cli, repo, "recipes/a.yaml", "recipes/b.yaml")[0] == 0
    (repo / "recipes" / "_defaults.yaml").write_text("max_total_usd: 0\n")
    bad = cli("validate", "recipes/a.yaml", cwd=repo)
    assert bad.code == 1 and "recipes/_defaults.yaml:1:16: max_total_usd: Input should be greater than 0" in \
        bad.out + bad.err


def test_a_plan_round_trips_through_its_json(repo: Path, cli) -> None:
    """Records keep the plan a run started from: the JSON carries the derived figures and loads back the same."""
    from runner.jobs.train_policy import Setup
    from runner.plan import Plan

    write_recipe(repo, "demo", LOCAL.format(name="demo"))
    _, doc = plan_json(cli, repo, "recipes/demo.yaml")
    raw = {k: v for k, v in doc["plans"][0].items() if k != "ok"}
    back = Plan.model_validate(raw)
    assert isinstance(back.setup, Setup) and back.model_dump(mode="json") == raw
    assert raw["flavor"] == raw["jobs"][0]["flavor"] and raw["cost_usd"] == round(
        sum(j["cost_usd"] for j in raw["jobs"]), 4)
    assert raw["devices"] == raw["setup"]["world_size"] and raw["memory_gb"] == raw["setup"]["memory_gb"]


def test_a_sweep_is_planned_once_per_plan(repo: Path, cli, hub: HubStub) -> None:
    """The merge total and the sweep's table come from one planning of its trials: each plans its model's facts
    once, so `runner plan` asks the Hub for the base model once for the recipe and once per trial."""
    hub.state.models["acme/swept"] = {"params": 500_000_000}
    write_recipe(repo, "s", HUB.format(name="s", model="acme/swept", budget=50)
                 + "sweep:\n  grid:\n    training.learning_rate: [1e-4, 2e-4]\n    adapter.r: [8, 16]\n")
    code, doc = plan_json(cli, repo, "recipes/s.yaml")
    assert code == 0, doc["errors"]
    trials = doc["sweeps"]["recipes/s.yaml"]["trials"]
    assert len(trials) == 4
    asked = [r for r in hub.state.requests if r.method == "GET" and r.path == "/api/models/acme/swept"]
    assert len(asked) == 1 + len(trials)
