"""Traps a newcomer walks into on the first day, each answered with one located line (issue 17)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import write_recipe

RECIPE = "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n"


def test_two_recipes_with_one_name_are_refused_with_both_locations(repo: Path, cli) -> None:
    write_recipe(repo, "a", "name: shared\n" + RECIPE)
    write_recipe(repo, "b", "# the same model, twice\nname: shared\n" + RECIPE)
    result = cli("validate", "recipes", cwd=repo)
    assert result.code == 1
    assert "recipes/a.yaml:1:1: name: 'shared' is also the name of recipes/b.yaml:2;" in result.err
    assert "recipes/b.yaml:2:1: name: 'shared' is also the name of recipes/a.yaml:1;" in result.err
    # Validating one of them alone still sees the other: a merge must not plan both.
    assert cli("plan", "recipes/a.yaml", cwd=repo).code == 1


def test_a_name_taken_from_the_file_name_says_so(repo: Path, cli) -> None:
    write_recipe(repo, "My Model", RECIPE)
    result = cli("validate", "recipes/My Model.yaml", cwd=repo)
    assert result.code == 1
    assert "'My Model' is not a slug" in result.err
    assert "(the name comes from the file name My Model.yaml: rename the file, or set `name:`)" in result.err


def test_a_glob_over_recipes_skips_the_defaults_and_the_schema(repo: Path, cli) -> None:
    write_recipe(repo, "demo", RECIPE)
    (repo / "recipes" / "_defaults.yaml").write_text("budget_usd: 3\n")
    (repo / "recipes" / "schema.json").write_text(cli("schema").out)
    files = sorted(str(p.relative_to(repo)) for p in (repo / "recipes").iterdir())  # what `recipes/*` expands to
    result = cli("validate", *files, cwd=repo)
    assert result.code == 0 and result.out.splitlines() == ["ok: recipes/demo.yaml"], result.err


def test_a_fresh_template_says_how_to_start_a_recipe(tmp_path: Path, cli) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "_defaults.yaml").write_text("budget_usd: 3\n")
    result = cli("validate", "recipes", cwd=tmp_path)
    assert result.code == 1 and "copy recipes/starter.yaml.example" in result.err


def test_an_unreachable_hub_is_one_line_and_quick(tmp_path: Path, cli) -> None:
    # conftest points the Hub and the viewer at a closed local port: nothing answers.
    start = time.monotonic()
    result = cli("inspect", "org/some-data", cwd=tmp_path)
    assert result.code == 1 and time.monotonic() - start < 10
    [line] = result.err.strip().splitlines()
    assert line.startswith("error: org/some-data: the Hugging Face Hub is unreachable at http://127.0.0.1:9")
    assert "HF_HUB_OFFLINE=1" in line and "report it" not in line and "Retry" not in result.err


def test_an_unknown_evaluation_task_fails_validate_not_the_paid_job(repo: Path, cli) -> None:
    write_recipe(repo, "bench", RECIPE + "evaluation:\n  tasks: [gsm8k, ifevl]\n")
    result = cli("validate", "recipes/bench.yaml", cwd=repo)
    assert result.code == 1
    [line] = result.err.strip().splitlines()
    assert line.startswith("recipes/bench.yaml:5:") and "evaluation.tasks" in line
    assert "'ifevl' is not a task of lm-eval" in line and "did you mean ifeval" in line
    write_recipe(repo, "bench", RECIPE + "evaluation:\n  tasks: [gsm8k, ifeval, mmlu]\n")
    assert cli("validate", "recipes/bench.yaml", cwd=repo).code == 0


@pytest.mark.slow
def test_the_shipped_task_list_is_the_locked_lm_evals() -> None:
    pytest.importorskip("lm_eval")
    from importlib.metadata import version

    from lm_eval.tasks import TaskManager

    from runner.benchmarks import known_tasks

    shipped_version, names = known_tasks()
    assert shipped_version == f"lm-eval {version('lm-eval')}"  # refresh: python -m runner.benchmarks
    assert names == frozenset(TaskManager().all_tasks)
