"""`runner validate`: recipes are strict data, and every problem is one located line."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import BASE_RECIPE, ROOT, write_recipe

from runner import recipe as recipe_mod

BASE = BASE_RECIPE


def test_minimal_recipe_is_valid_and_gets_defaults(repo: Path, cli) -> None:
    write_recipe(repo, "demo", BASE)
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 0, result.err
    assert result.out.strip() == "ok: recipes/demo.yaml"
    loaded = recipe_mod.load(repo / "recipes" / "demo.yaml")
    r = loaded.recipe
    assert (r.training.epochs, r.training.batch_size, r.adapter.lora, r.gguf.quantizations) == (1.0, 4, "auto", ["Q4_K_M"])
    assert r.output.private is True
    assert r.hardware == "auto" and r.timeout == "auto"


def test_name_defaults_to_file_stem_and_yaml12_floats_parse(repo: Path) -> None:
    text = BASE.replace("name: demo\n", "") + "training:\n  learning_rate: 2e-4\n"
    loaded = recipe_mod.load(write_recipe(repo, "my-run", text))
    assert loaded.recipe.name == "my-run"
    assert loaded.recipe.training.learning_rate == pytest.approx(2e-4)


def test_dataset_shorthand_string(repo: Path) -> None:
    loaded = recipe_mod.load(write_recipe(repo, "demo", BASE.replace("dataset:\n  path: data/sft.jsonl", "dataset: data/sft.jsonl")))
    assert loaded.recipe.dataset.path == "data/sft.jsonl" and loaded.recipe.dataset.is_local


def test_defaults_file_is_inherited_and_recipe_wins(repo: Path) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text(
        "namespace: acme\nmax_budget_usd: 40\nbudget_usd: 7\ntraining:\n  batch_size: 2\n  seed: 7\n"
        "tracking:\n  project: team\n")
    loaded = recipe_mod.load(write_recipe(repo, "demo", BASE + "training:\n  seed: 1\n"))
    r = loaded.recipe
    assert (r.budget_usd, r.training.batch_size, r.training.seed) == (7.0, 2, 1)
    assert loaded.output_repo == "acme/demo"
    assert loaded.tracking_project == "team"


def test_directory_argument_skips_defaults_file(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("budget_usd: 3\n")
    write_recipe(repo, "a", BASE.replace("demo", "a"))
    write_recipe(repo, "b", BASE.replace("demo", "b"))
    result = cli("validate", "recipes", cwd=repo)
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["ok: recipes/a.yaml", "ok: recipes/b.yaml"]


# Each bad input: (recipe text, expected "line:col: field:" prefix, expected message fragment)
BAD = {
    "unknown top key": (BASE + "learning_rate: 1\n", "6:1: learning_rate:", "unknown field 'learning_rate'"),
    "misspelt nested key": (BASE + "training:\n  learnin_rate: 1e-4\n", "7:3: training.learnin_rate:",
                            "did you mean 'learning_rate'?"),
    "misspelt method": (BASE.replace("method: sft", "method: sftt"), "3:9: method:",
                        "'sftt' is not one of sft, dpo, grpo (did you mean 'sft'?)"),
    "wrong type": (BASE + "training:\n  batch_size: \"8\"\n", "7:15: training.batch_size:",
                   "expected a whole number, found a string '8'"),
    "negative lr": (BASE + "training:\n  learning_rate: -1\n", "7:18: training.learning_rate:", "greater than 0"),
    "missing method": (BASE.replace("method: sft\n", ""), "1:1: method:", "required field is missing"),
    "name not slug": (BASE.replace("name: demo", "name: Demo_Run"), "1:7: name:", "is not a slug"),
    "dataset path escapes": (BASE.replace("data/sft.jsonl", "../outside.jsonl"), "5:9: dataset.path:",
                             "must not contain '..'"),
    "absolute dataset path": (BASE.replace("data/sft.jsonl", "/etc/passwd.json"), "5:9: dataset.path:",
                              "relative to the repository root"),
    "missing dataset file": (BASE.replace("data/sft.jsonl", "data/none.jsonl"), "5:9: dataset.path:",
                             "file 'data/none.jsonl' not found"),
    "bad hub model id": (BASE.replace("./models/tiny", "a/b/c"), "2:13: base_model:", "not a valid Hub model id"),
    "local model without config": (BASE.replace("./models/tiny", "./data"), "2:13: base_model:",
                                   "not a model directory"),
    "shell in model id": (BASE.replace("./models/tiny", "'x; rm -rf /'"), "2:13: base_model:",
                          "not a valid Hub model id"),
    "workflow expression": (BASE + "tracking:\n  project: '${{ secrets.HF_TOKEN }}'\n", "7:12: tracking.project:",
                            "not a valid project name"),
    "unknown hardware": (BASE + "hardware: a10g-smal\n", "6:11: hardware:", "did you mean 'a10g-small'?"),
    "bad timeout": (BASE + "timeout: forever\n", "6:10: timeout:", "is not a duration"),
    "timeout too short": (BASE + "timeout: 1m\n", "6:10: timeout:", "between 5 minutes and 7 days"),
    "bad lora value": (BASE + "adapter:\n  lora: yes please\n", "7:9: adapter.lora:", "must be auto, true or false"),
    "bad quantization": (BASE + "gguf:\n  quantizations: [Q4_KM]\n", "7:19: gguf.quantizations[0]:",
                         "did you mean 'Q4_K_M'?"),
    "iq quant without imatrix": (BASE + "gguf:\n  quantizations: [Q4_K_M, IQ4_XS]\n", "7:3: gguf:",
                                 "IQ4_XS needs an importance matrix: set gguf.imatrix: true"),
    "quantization twice": (BASE + "gguf:\n  quantizations: [Q8_0, q8_0]\n", "7:18: gguf.quantizations:",
                           "lists a quantization twice"),
    "beta on sft": (BASE + "training:\n  beta: 0.1\n", "1:1:", "training.beta applies only to method 'dpo'"),
    "grpo without rewards": (BASE.replace("method: sft", "method: grpo"), "1:1:", "needs at least one reward"),
    "unknown builtin reward": (BASE.replace("method: sft", "method: grpo") + "rewards:\n  - builtin: exact\n",
                               "7:5: rewards[0]:", "did you mean 'exact_answer'?"),
    "list document": ("- a\n- b\n", "1:1:", "expected a mapping of recipe fields, found a list"),
    "duplicate key": (BASE + "method: dpo\n", "6:1:", "duplicate key 'method'"),
    "syntax error": (BASE + "training: [1,\n", "7:1:", "invalid YAML"),
    "two documents": (BASE + "---\nname: other\n", "7:1:", "several YAML documents"),
    "empty file": ("", "1:1:", "file is empty"),
    "alias": (BASE + "x: &a [1]\ny: *a\n", "6:4:", "anchors and aliases are not allowed"),
    "python tag": (BASE + "training: !!python/object/apply:os.system ['id']\n", "6:11:", "invalid value"),
    "control char": (BASE + "tracking:\n  space: \"org/a\\u0007b\"\n", "7:10: tracking.space:", ""),
    "columns to same target": (BASE + "  columns: {a: prompt, b: prompt}\n", "6:12: dataset.columns:",
                               "mapped to the same target"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_located_line(repo: Path, cli, case: str) -> None:
    text, where, fragment = BAD[case]
    write_recipe(repo, "demo", text)
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert lines, "no error printed"
    match = [ln for ln in lines if ln.startswith(f"recipes/demo.yaml:{where}")]
    assert match, f"expected a line at {where}, got:\n{result.err}"
    assert fragment in match[0], match[0]
    assert result.out == ""


def test_all_problems_reported_at_once_in_line_order(repo: Path, cli) -> None:
    write_recipe(repo, "demo", "name: Bad Name\nbase_model: ./models/tiny\nmethod: sfft\ndataset: data/sft.jsonl\n"
                 "training:\n  epocs: 2\n")
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    lines = result.err.strip().splitlines()
    assert [ln.split(":")[1] for ln in lines] == ["1", "3", "6"]


def test_budget_above_repo_cap(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("max_budget_usd: 20\n")
    write_recipe(repo, "demo", BASE + "budget_usd: 50\n")
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1
    assert "recipes/demo.yaml:6:13: budget_usd: 50 USD is above the repository cap" in result.err


def test_problem_in_defaults_points_at_defaults_file(repo: Path, cli) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("budget_usd: 3\ntraining:\n  epohcs: 2\nname: x\n")
    write_recipe(repo, "demo", BASE)
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1
    assert "recipes/_defaults.yaml:3:3: training.epohcs: unknown field 'epohcs' (did you mean 'epochs'?)" in result.err
    assert "recipes/_defaults.yaml:4:1: name: 'name' is per recipe" in result.err


def test_symlink_escape_is_refused(repo: Path, cli, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.jsonl"
    outside.write_text('{"text": "secret"}\n')
    os.symlink(outside, repo / "data" / "link.jsonl")
    write_recipe(repo, "demo", BASE.replace("data/sft.jsonl", "data/link.jsonl"))
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1
    assert "recipes/demo.yaml:5:9: dataset.path: 'data/link.jsonl' resolves outside the repository" in result.err


REWARD_CASES = {
    "missing function": ("def other(completions, **kwargs):\n    return []\n", "function",
                         "no top-level function 'score'"),
    "syntax error": ("def score(:\n", "file", "does not parse"),
    "wrong signature": ("def score(prompts):\n    return []\n", "function", "must accept (completions, **kwargs)"),
    "async": ("async def score(completions, **kwargs):\n    return []\n", "function", "plain (not async)"),
}


@pytest.mark.parametrize("case", list(REWARD_CASES))
def test_reward_function_is_checked_by_parsing_never_importing(repo: Path, cli, case: str) -> None:
    source, field, fragment = REWARD_CASES[case]
    marker = repo / "imported"
    # Any import of the file would create the marker; the check must only parse it.
    (repo / "rewards").mkdir()
    (repo / "rewards" / "r.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + source)
    text = BASE.replace("method: sft", "method: grpo") + "rewards:\n  - file: rewards/r.py\n    function: score\n"
    write_recipe(repo, "demo", text)
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1
    assert f"rewards[0].{field}:" in result.err and fragment in result.err, result.err
    assert not marker.exists()


def test_valid_repo_local_reward(repo: Path, cli) -> None:
    (repo / "rewards").mkdir()
    (repo / "rewards" / "r.py").write_text("def score(completions, answer=None, **kwargs):\n    return [0.0]\n")
    text = BASE.replace("method: sft", "method: grpo") + "rewards:\n  - file: rewards/r.py\n    function: score\n" \
        "  - builtin: concise\n"
    write_recipe(repo, "demo", text)
    assert cli("validate", "recipes/demo.yaml", cwd=repo).code == 0


def test_alias_bomb_is_refused_fast(repo: Path, cli) -> None:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    write_recipe(repo, "demo", "\n".join(lines) + "\n")
    start = time.perf_counter()
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert time.perf_counter() - start < 2.0
    assert result.code == 1 and "anchors and aliases are not allowed" in result.err


def test_huge_file_is_refused_without_parsing(repo: Path, cli) -> None:
    write_recipe(repo, "demo", BASE + "# " + "x" * 400_000 + "\n")
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1 and "recipes/demo.yaml:1:1: file is larger than 256 KiB" in result.err


@pytest.mark.parametrize("payload,fragment", [
    (b"\x00\x01\x02garbage", "file is binary"),
    (b"name: \xff\xfe\n", "not valid UTF-8"),
    (bytes(range(1, 32)) * 3, "invalid YAML"),
])
def test_binary_garbage_is_refused(repo: Path, cli, payload: bytes, fragment: str) -> None:
    (repo / "recipes" / "demo.yaml").write_bytes(payload)
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1 and fragment in result.err
    assert result.err.count("\n") == 1


def test_deep_nesting_is_refused(repo: Path, cli) -> None:
    write_recipe(repo, "demo", BASE + "x: " + "[" * 40 + "]" * 40 + "\n")
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1 and "nesting deeper than" in result.err


def test_missing_file_and_directory(repo: Path, cli) -> None:
    result = cli("validate", "recipes/nope.yaml", cwd=repo)
    assert result.code == 1 and "recipes/nope.yaml:1:1: file not found" in result.err


def test_no_recipes_found(repo: Path, cli) -> None:
    result = cli("validate", "recipes", cwd=repo)
    assert result.code == 1 and "no recipe files" in result.err


def test_example_recipes_are_valid(cli) -> None:
    if not (ROOT / "examples" / "tiny-model" / "config.json").exists():
        pytest.skip("tiny model not built")  # built by examples/build_tiny_model.py
    result = cli("validate", "examples/recipes", cwd=ROOT)
    assert result.code == 0, result.err
    assert {"ok: recipes/tiny-sft.yaml", "ok: recipes/tiny-dpo.yaml", "ok: recipes/tiny-grpo.yaml"} <= set(
        result.out.splitlines())


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None


if given is not None:

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(payload=st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)))
    def test_fuzzed_input_never_crashes(repo: Path, payload: bytes) -> None:
        path = repo / "recipes" / "fuzz.yaml"
        path.write_bytes(payload)
        try:
            recipe_mod.load(path)
        except recipe_mod.RecipeInvalid as e:
            assert e.problems and all(str(p).startswith("recipes/fuzz.yaml:") for p in e.problems)
            assert all("\n" not in str(p) for p in e.problems)
