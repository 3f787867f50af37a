"""The template trains nothing by accident: its examples live where `changed` and the train workflow never look."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ROOT, git, set_namespace


def test_setting_the_namespace_trains_nothing(template: Path, cli) -> None:
    repo = template  # the repository as "Use this template" gives it: every tracked file, one commit
    assert sorted(p.name for p in (repo / "recipes").iterdir()) == ["_defaults.yaml", "schema.json",
                                                                      "starter.yaml.example"]
    # README step: set the namespace in recipes/_defaults.yaml and commit it (the defaults change: every recipe).
    set_namespace(repo, "alice")
    git(repo, "commit", "-qam", "set the namespace")
    result = cli("changed", "--base", "HEAD~1", "--head", "HEAD", "--json", cwd=repo)
    assert result.code == 0 and json.loads(result.out) == []
    # A new branch (no "before" commit) lists every recipe: still none.
    result = cli("changed", "--json", cwd=repo)
    assert result.code == 0 and json.loads(result.out) == []


def test_changed_reads_paths_from_the_recipes_root_even_in_a_subfolder(template: Path, cli) -> None:
    """Run from examples/ (a recipes root inside the repository), `changed` names what a commit changed there, in
    the same root-relative form as the recipe list; run from the top, the examples stay out of it."""
    recipe = template / "examples" / "recipes" / "tiny-sft.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps: 30", "max_steps: 31"))
    git(template, "commit", "-qam", "more steps")
    result = cli("changed", "--base", "HEAD~1", "--head", "HEAD", "--json", cwd=template / "examples")
    assert result.code == 0 and json.loads(result.out) == ["recipes/tiny-sft.yaml"], result.out + result.err
    result = cli("changed", "--base", "HEAD~1", "--head", "HEAD", "--json", cwd=template)
    assert result.code == 0 and json.loads(result.out) == []


def test_the_examples_are_a_repository_of_their_own(cli) -> None:
    result = cli("validate", "examples/recipes", cwd=ROOT)
    assert result.code == 0, result.err
    assert {f"ok: recipes/{n}.yaml" for n in ("tiny-sft", "tiny-dpo", "tiny-grpo", "tiny-vlm-dpo")} == set(
        result.out.splitlines())
    # The starter is not a recipe until it is copied to a .yaml name.
    assert cli("changed", "--json", cwd=ROOT).out.strip() == "[]"
