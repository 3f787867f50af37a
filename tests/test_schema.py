"""The recipe JSON Schema (`runner schema`, recipes/schema.json) and `runner validate --json`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
from conftest import ROOT, write_jsonl, write_recipe

from runner import yamlsafe

SCHEMA = ROOT / "recipes" / "schema.json"
EDITOR_COMMENT = "# yaml-language-server: $schema=./schema.json"
REGENERATE = "runner schema > recipes/schema.json"


def example_recipes() -> list[Path]:
    return sorted(p for p in (ROOT / "examples" / "recipes").glob("*.yaml") if p.name != "_defaults.yaml")


def validator(cli) -> jsonschema.Draft202012Validator:
    result = cli("schema")
    assert result.code == 0, result.err
    schema = json.loads(result.out)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_published_schema_is_in_sync_with_the_recipe_model(cli) -> None:
    printed = cli("schema").out
    assert SCHEMA.is_file(), f"recipes/schema.json is missing; generate it with `{REGENERATE}`"
    assert SCHEMA.read_text(encoding="utf-8") == printed, (
        f"recipes/schema.json is out of date with the recipe model in runner/recipe_models.py; regenerate it with "
        f"`{REGENERATE}` (from the repository root) and commit it")


def test_schema_describes_every_field_with_its_default(cli) -> None:
    schema = json.loads(cli("schema").out)
    models = [schema, *schema["$defs"].values()]
    for model in models:
        for name, prop in model["properties"].items():
            assert prop.get("description"), (f"{model.get('title')}.{name} has no description: give it "
                                             f"Field(description=...) in runner/recipe_models.py, then `{REGENERATE}`")
    training = schema["$defs"]["Training"]["properties"]
    assert training["batch_size"]["default"] == 4 and training["lr_scheduler"]["default"] == "cosine"
    hardware = schema["properties"]["hardware"]
    assert hardware["default"] == "auto" and "a10g-large" in hardware["enum"]
    # What the loader allows beyond the model: no `name` (the file name), a bare dataset path.
    assert schema["required"] == ["base_model", "method", "dataset"]


@pytest.mark.parametrize("path", example_recipes(), ids=lambda p: p.name)
def test_example_recipes_point_editors_at_the_schema_and_pass_it(cli, path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    prefix = EDITOR_COMMENT.removesuffix("./schema.json")
    assert first.startswith(prefix), f"{path.name} must start with `{EDITOR_COMMENT}` (editors read the schema from it)"
    assert (path.parent / first.removeprefix(prefix)).resolve() == SCHEMA  # the published schema, wherever the file is
    # The project's YAML loader: YAML 1.2 numbers (2e-4), as editors' yaml-language-server reads them.
    errors = [e.message for e in validator(cli).iter_errors(yamlsafe.load(path).data)]
    assert errors == []


@pytest.mark.parametrize("doc, fragment", [
    ({"base_model": "a/b", "method": "sft", "dataset": "d.jsonl", "trainin": {}}, "'trainin' was unexpected"),
    ({"base_model": "a/b", "method": "sftt", "dataset": "d.jsonl"}, "'sftt' is not one of"),
    ({"base_model": "a/b", "method": "sft", "dataset": {"path": "d.jsonl"}, "hardware": "a10g-smal"}, "a10g-smal"),
    ({"base_model": "a/b", "method": "sft", "dataset": {"path": "d.jsonl"}, "training": {"batch_size": "8"}},
     "'8' is not of type 'integer'"),
    ({"method": "sft", "dataset": "d.jsonl"}, "'base_model' is a required property"),
    ({"name": "Bad Name", "base_model": "a/b", "method": "sft", "dataset": "d.jsonl"}, "does not match"),
    ({"base_model": "a/b", "method": "sft", "dataset": "d.jsonl", "timeout": "forever"}, "is not valid under any"),
])
def test_schema_refuses_what_the_loader_refuses(cli, doc: dict, fragment: str) -> None:
    messages = [e.message for e in validator(cli).iter_errors(doc)]
    assert any(fragment in m for m in messages), messages


def test_schema_json_is_never_taken_for_a_recipe(repo: Path, cli) -> None:
    write_recipe(repo, "demo", "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n")
    (repo / "recipes" / "schema.json").write_text(cli("schema").out)
    result = cli("validate", "recipes", cwd=repo)
    assert result.code == 0 and result.out.splitlines() == ["ok: recipes/demo.yaml"], result.err
    result = cli("validate", "recipes/schema.json", cwd=repo)
    assert result.code == 1 and "recipes/schema.json:1:1: schema.json is the recipes' JSON Schema" in result.err


def test_changed_ignores_the_schema(repo: Path, cli) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
                       check=True, capture_output=True)

    write_recipe(repo, "demo", "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n")
    (repo / "recipes" / "schema.json").write_text("{}\n")
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "init")
    git("checkout", "-qb", "feature")
    (repo / "recipes" / "schema.json").write_text(cli("schema").out)
    git("commit", "-qam", "regenerate the schema")
    result = cli("changed", "--base", "main", "--head", "feature", "--json", cwd=repo)
    assert result.code == 0 and json.loads(result.out) == []
    assert json.loads(cli("changed", "--base", "0" * 40, "--json", cwd=repo).out) == ["recipes/demo.yaml"]
    result = cli("changed", "--only", "recipes/schema.json", cwd=repo)
    assert result.code == 1 and "not a recipe file under recipes/" in result.err


# --- validate --json ------------------------------------------------------------------------------


def test_validate_json_lists_every_problem_located(repo: Path, cli) -> None:
    write_recipe(repo, "good", "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n")
    write_recipe(repo, "bad", "base_model: ./models/tiny\nmethod: sftt\ndataset: data/sft.jsonl\n"
                 "training:\n  learnin_rate: 1e-4\n")
    result = cli("validate", "--json", "recipes", cwd=repo)
    assert result.code == 1 and result.err == ""
    problems = json.loads(result.out)
    assert [(p["path"], p["line"], p["column"], p["field"]) for p in problems] == [
        ("recipes/bad.yaml", 2, 9, "method"), ("recipes/bad.yaml", 5, 3, "training.learnin_rate")]
    assert all(set(p) == {"path", "line", "column", "field", "message"} for p in problems)
    assert "did you mean 'sft'?" in problems[0]["message"]
    assert "did you mean 'learning_rate'?" in problems[1]["message"]


def test_validate_json_is_an_empty_list_when_all_are_valid(repo: Path, cli) -> None:
    write_recipe(repo, "good", "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n")
    result = cli("validate", "--json", "recipes/good.yaml", cwd=repo)
    assert result.code == 0 and json.loads(result.out) == []


def test_validate_json_reports_unreadable_files_and_empty_folders(repo: Path, cli) -> None:
    result = cli("validate", "--json", "recipes/nope.yaml", cwd=repo)
    assert result.code == 1
    assert json.loads(result.out) == [{"path": "recipes/nope.yaml", "line": 1, "column": 1, "field": "",
                                       "message": "file not found"}]
    result = cli("validate", "--json", "recipes", cwd=repo)
    assert result.code == 1 and "no recipe files" in json.loads(result.out)[0]["message"]


def test_refusals_say_the_fix(repo: Path, cli) -> None:
    write_recipe(repo, "demo", "name: demo\nmethod: sft\ndataset: data/sft.jsonl\ntrainig: {}\n")
    problems = json.loads(cli("validate", "--json", "recipes/demo.yaml", cwd=repo).out)
    by_field = {p["field"]: p for p in problems}
    missing = by_field["base_model"]
    assert (missing["line"], missing["column"]) == (1, 1)
    assert "required field is missing; add it: Hub model id" in missing["message"]
    unknown = by_field["trainig"]
    assert (unknown["line"], unknown["column"]) == (4, 1)
    assert unknown["message"] == "unknown field 'trainig' (did you mean 'training'?)"


# --- schema = runner: the same verdict on every recipe of a corpus ---------------------------------------

BASE = "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n"
CORPUS = {
    "minimal": (BASE, True),
    "hub ids": ("base_model: Qwen/Qwen3-0.6B\nmethod: sft\ndataset: org/chats\n", True),
    "lora yes": (BASE + "adapter:\n  lora: yes\n", True),  # YAML: yes is true, for editors and the runner alike
    "lora maybe": (BASE + "adapter:\n  lora: maybe\n", False),
    "dotdot data": ("base_model: ./models/tiny\nmethod: sft\ndataset: ../data/sft.jsonl\n", False),
    "absolute data": ("base_model: ./models/tiny\nmethod: sft\ndataset: /etc/passwd.json\n", False),
    "dotdot model": ("base_model: ./models/../models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n", False),
    "bad hub id": ("base_model: Qwen//Qwen3\nmethod: sft\ndataset: data/sft.jsonl\n", False),
    "double dash hub id": ("base_model: a--b/c\nmethod: sft\ndataset: data/sft.jsonl\n", False),
    "local data without suffix": ("base_model: ./models/tiny\nmethod: sft\ndataset: ./data/sft\n", False),
    "expression": (BASE + "output:\n  repo: acme/${{ secrets.HF_TOKEN }}\n", False),
    "expression in a description": (BASE + "tracking:\n  project: x${{github.token}}\n", False),
    "iq without imatrix": (BASE + "gguf:\n  quantizations: [Q4_K_M, IQ4_XS]\n", False),
    "iq with imatrix": (BASE + "gguf:\n  quantizations: [IQ4_XS]\n  imatrix: true\n", True),
    "rewards on sft": (BASE + "rewards:\n  - builtin: concise\n", False),
    "grpo without rewards": ("base_model: ./models/tiny\nmethod: grpo\ndataset: data/grpo.jsonl\n", False),
    "grpo with a reward": ("base_model: ./models/tiny\nmethod: grpo\ndataset: data/grpo.jsonl\n"
                           "rewards:\n  - file: rewards/r.py\n    function: score\n", True),
    "reward outside rewards/": ("base_model: ./models/tiny\nmethod: grpo\ndataset: data/grpo.jsonl\n"
                                "rewards:\n  - file: scripts/r.py\n    function: score\n", False),
    "unknown field": (BASE + "trainin:\n  epochs: 1\n", False),
    "bad slug": ("name: Not A Slug\n" + BASE, False),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_the_schema_and_the_runner_give_the_same_verdict(repo: Path, cli, case: str) -> None:
    text, valid = CORPUS[case]
    write_jsonl(repo / "data" / "grpo.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    for folder in ("rewards", "scripts"):
        (repo / folder).mkdir(exist_ok=True)
        (repo / folder / "r.py").write_text("def score(completions, **kwargs):\n    return [0.0 for _ in completions]\n")
    path = write_recipe(repo, "corpus", text)
    by_schema = not list(validator(cli).iter_errors(yamlsafe.load(path).data))
    by_runner = cli("validate", "recipes/corpus.yaml", cwd=repo).code == 0
    assert (by_schema, by_runner) == (valid, valid), case


def test_the_recipe_reference_is_generated_from_the_schema_and_up_to_date(cli) -> None:
    result = cli("schema", "--markdown")
    assert result.code == 0
    committed = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert committed == result.out, "regenerate: runner schema --markdown > docs/recipe-reference.md"
    schema = json.loads(cli("schema").out)
    for field in schema["properties"]:  # every top-level field, and every field of every section
        assert f"| `{field}`" in committed
    for section in schema["$defs"].values():
        for field, node in section["properties"].items():
            assert f"| `{field}`" in committed and node.get("description", "")[:40] in committed
