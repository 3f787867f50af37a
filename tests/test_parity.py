"""Plan = merge: whatever the pull request's check passes, the merge's `run --dry-run --backend hf` accepts,
and the other way round (issue 17). Every example recipe and a set of broken ones go through both."""

from __future__ import annotations

import json

import pytest

EXAMPLES = ["tiny-sft", "tiny-dpo", "tiny-grpo", "tiny-vlm-dpo"]
BROKEN = {
    "no-output-repo": ("namespace: alice\n", ""),  # the defaults lose the namespace: nowhere to push
    "over-budget": ("budget_usd: 5", "budget_usd: 0.000001"),
    "no-budget": ("budget_usd: 5", "budget_usd: null"),
    "cap": ("max_budget_usd: 100", "max_budget_usd: 0.5\nbudget_usd: 1"),
}


def verdicts(cli, repo, name: str) -> tuple[bool, bool]:
    check = cli("plan", f"recipes/{name}.yaml", cwd=repo)
    merge = cli("run", f"recipes/{name}.yaml", "--backend", "hf", "--dry-run", cwd=repo)
    return check.code == 0, merge.code == 0


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_passes_both(workspace, hub, cli, name: str) -> None:
    assert verdicts(cli, workspace, name) == (True, True)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_recipe_fails_both(workspace, hub, cli, case: str) -> None:
    old, new = BROKEN[case]
    defaults = workspace / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text().replace(old, new))
    assert verdicts(cli, workspace, "tiny-sft") == (False, False), case


def test_the_missing_output_repo_is_named_with_the_field_to_set(workspace, hub, cli) -> None:
    defaults = workspace / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text().replace("namespace: alice\n", ""))
    out = cli("plan", "recipes/tiny-sft.yaml", cwd=workspace)
    assert out.code == 1 and "output.repo" in out.out + out.err and "namespace" in out.out + out.err


@pytest.mark.parametrize("case", ["duplicate-name", "unknown-field", "dataset-not-ready", "max-total"])
def test_a_broken_recipe_file_fails_both(workspace, hub, cli, case: str) -> None:
    recipe = workspace / "recipes" / "tiny-sft.yaml"
    text = recipe.read_text()
    if case == "duplicate-name":
        (workspace / "recipes" / "copy.yaml").write_text(text)
    elif case == "unknown-field":
        recipe.write_text(text + "trainin:\n  epochs: 1\n")
    elif case == "dataset-not-ready":
        recipe.write_text(text.replace("path: data/sft.jsonl", "path: data/dpo.jsonl"))
    else:  # one recipe alone above the merge's total cap
        defaults = workspace / "recipes" / "_defaults.yaml"
        defaults.write_text(defaults.read_text() + "max_total_usd: 0.000001\n")
    assert verdicts(cli, workspace, "tiny-sft") == (False, False), case


def test_recipes_merged_together_above_the_total_cap_fail_both(workspace, cli, hub) -> None:
    """Each recipe within every cap alone, the two together above `max_total_usd`: the pull request's check
    fails, and so does every recipe's run at the merge, which is told the merge's other recipes."""
    recipes = ["recipes/tiny-sft.yaml", "recipes/tiny-dpo.yaml"]
    worst = [p["max_cost_usd"] for p in json.loads(cli("plan", *recipes, "--json", cwd=workspace).out)["plans"]]
    defaults = workspace / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + f"max_total_usd: {max(worst) * 1.01:.6f}\n")
    check = cli("plan", *recipes, cwd=workspace)
    assert check.code == 1 and "max_total_usd" in check.err
    for recipe in recipes:
        assert cli("plan", recipe, cwd=workspace).code == 0  # alone, within the cap
        assert cli("run", recipe, "--backend", "hf", "--dry-run", cwd=workspace).code == 0
        merge = cli("run", recipe, "--backend", "hf", "--dry-run", "--merged-with", *recipes, cwd=workspace)
        assert merge.code == 1 and "max_total_usd" in merge.out + merge.err, merge
        real = cli("run", recipe, "--backend", "hf", "--merged-with", *recipes, cwd=workspace)
        assert real.code == 1 and "nothing submitted" in real.out + real.err
    assert not hub.state.jobs and not hub.state.repos


def test_a_sweep_counts_every_trial_toward_the_merge_total(workspace, cli, hub) -> None:
    """A sweep may cost all its trials: the merge total counts them, in the plan check and at the merge alike."""
    sft = workspace / "recipes" / "tiny-sft.yaml"
    sft.write_text(sft.read_text() + "sweep:\n  grid:\n    training.learning_rate: [1e-4, 2e-4]\n"
                                     "    training.seed: [1, 2]\n")
    recipes = ["recipes/tiny-sft.yaml", "recipes/tiny-dpo.yaml"]
    doc = json.loads(cli("plan", *recipes, "--json", cwd=workspace).out)
    single = {p["recipe"]: p["max_cost_usd"] for p in doc["plans"]}
    sweep_worst = doc["sweeps"]["recipes/tiny-sft.yaml"]["worst_usd"]
    cap = (sweep_worst + single["recipes/tiny-dpo.yaml"]) * 0.99  # above one trial's share, below all four
    assert cap > sum(single.values())
    defaults = workspace / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + f"max_total_usd: {cap:.6f}\n")
    check = cli("plan", *recipes, cwd=workspace)
    assert check.code == 1 and "max_total_usd" in check.err
    merge = cli("run", "recipes/tiny-dpo.yaml", "--backend", "hf", "--dry-run", "--merged-with", *recipes,
                cwd=workspace)
    assert merge.code == 1 and "max_total_usd" in merge.out + merge.err, merge
