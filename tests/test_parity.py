"""Plan = merge: whatever the pull request's check passes, the merge's `run --dry-run --backend hf` accepts,
and the other way round (issue 17). Every example recipe and a set of broken ones go through both."""

from __future__ import annotations

import json

import pytest
from conftest import copy_examples

EXAMPLES = ["tiny-sft", "tiny-dpo", "tiny-grpo", "tiny-vlm-dpo"]
BROKEN = {
    "no-output-repo": ("namespace: alice\n", ""),  # the defaults lose the namespace: nowhere to push
    "over-budget": ("budget_usd: 5", "budget_usd: 0.000001"),
    "no-budget": ("budget_usd: 5", "budget_usd: null"),
    "cap": ("max_budget_usd: 100", "max_budget_usd: 0.5\nbudget_usd: 1"),
}


@pytest.fixture
def team(tmp_path, hub):
    """The examples laid out as a team's repository with a namespace, planned against the Hub stand-in."""
    repo = copy_examples(tmp_path / "team", "recipes", "rewards", "data", "tiny-model", "tiny-vlm")
    defaults = repo / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + "namespace: alice\n")
    return repo


def verdicts(cli, repo, name: str) -> tuple[bool, bool]:
    check = cli("plan", f"recipes/{name}.yaml", cwd=repo)
    merge = cli("run", f"recipes/{name}.yaml", "--backend", "hf", "--dry-run", cwd=repo)
    return check.code == 0, merge.code == 0


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_passes_both(team, cli, name: str) -> None:
    assert verdicts(cli, team, name) == (True, True)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_recipe_fails_both(team, cli, case: str) -> None:
    old, new = BROKEN[case]
    defaults = team / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text().replace(old, new))
    assert verdicts(cli, team, "tiny-sft") == (False, False), case


def test_the_missing_output_repo_is_named_with_the_field_to_set(team, cli) -> None:
    defaults = team / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text().replace("namespace: alice\n", ""))
    out = cli("plan", "recipes/tiny-sft.yaml", cwd=team)
    assert out.code == 1 and "output.repo" in out.out + out.err and "namespace" in out.out + out.err


@pytest.mark.parametrize("case", ["duplicate-name", "unknown-field", "dataset-not-ready", "max-total"])
def test_a_broken_recipe_file_fails_both(team, cli, case: str) -> None:
    recipe = team / "recipes" / "tiny-sft.yaml"
    text = recipe.read_text()
    if case == "duplicate-name":
        (team / "recipes" / "copy.yaml").write_text(text)
    elif case == "unknown-field":
        recipe.write_text(text + "trainin:\n  epochs: 1\n")
    elif case == "dataset-not-ready":
        recipe.write_text(text.replace("path: data/sft.jsonl", "path: data/dpo.jsonl"))
    else:  # one recipe alone above the merge's total cap
        defaults = team / "recipes" / "_defaults.yaml"
        defaults.write_text(defaults.read_text() + "max_total_usd: 0.000001\n")
    assert verdicts(cli, team, "tiny-sft") == (False, False), case


def test_recipes_merged_together_above_the_total_cap_fail_both(team, cli, hub) -> None:
    """Each recipe within every cap alone, the two together above `max_total_usd`: the pull request's check
    fails, and so does every recipe's run at the merge, which is told the merge's other recipes."""
    recipes = ["recipes/tiny-sft.yaml", "recipes/tiny-dpo.yaml"]
    worst = [p["max_cost_usd"] for p in json.loads(cli("plan", *recipes, "--json", cwd=team).out)["plans"]]
    defaults = team / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + f"max_total_usd: {max(worst) * 1.01:.6f}\n")
    check = cli("plan", *recipes, cwd=team)
    assert check.code == 1 and "max_total_usd" in check.err
    for recipe in recipes:
        assert cli("plan", recipe, cwd=team).code == 0  # alone, within the cap
        assert cli("run", recipe, "--backend", "hf", "--dry-run", cwd=team).code == 0
        merge = cli("run", recipe, "--backend", "hf", "--dry-run", "--merged-with", *recipes, cwd=team)
        assert merge.code == 1 and "max_total_usd" in merge.out + merge.err, merge
        real = cli("run", recipe, "--backend", "hf", "--merged-with", *recipes, cwd=team)
        assert real.code == 1 and "nothing submitted" in real.out + real.err
    assert not hub.state.jobs and not hub.state.repos
