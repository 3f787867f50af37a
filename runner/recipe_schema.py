"""The recipe's published JSON Schema (recipes/schema.json): the model's schema plus the runner's shape rules."""

from __future__ import annotations

from typing import Any

from runner.hardware import FLAVOR_NAMES
from runner.recipe_models import Recipe
from runner.recipe_shapes import REWARDS_DIR, SLUG

# The runner's shape rules, as JSON Schema patterns (ECMA-262 and Python `re` alike), so editors and agents
# refuse what `runner validate` refuses: a test checks both give the same verdicts on a corpus.
_SEGMENT = r"[A-Za-z0-9_.@+-]+"
_LOCAL = rf"(?:\./)?(?!(?:.*/)?\.{{1,2}}(?:/|$)){_SEGMENT}(?:/{_SEGMENT})*"
_HUB = r"(?!.*\.\.)(?!.*--)(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
_DATA_SUFFIX = r"\.(?:[jJ][sS][oO][nN][lL]?|[cC][sS][vV]|[pP][aA][rR][qQ][uU][eE][tT])"
_UNSAFE = r"\$\{\{|[\u0000-\u001f\u007f]"  # GitHub expressions, control characters


def _refuse_unsafe_strings(node: Any) -> None:
    """Every string in the schema refuses `${{` and control characters, as the loader does."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "not" not in node:
            node["not"] = {"pattern": _UNSAFE}
        for value in node.values():
            _refuse_unsafe_strings(value)
    elif isinstance(node, list):
        for value in node:
            _refuse_unsafe_strings(value)


def json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema, as published in recipes/schema.json for editors and agents."""
    schema = Recipe.model_json_schema()
    props = schema["properties"]
    defs = schema["$defs"]
    props["base_model"]["pattern"] = rf"^(?:\./(?!(?:.*/)?\.{{1,2}}(?:/|$)){_SEGMENT}(?:/{_SEGMENT})*|{_HUB})$"
    defs["Dataset"]["properties"]["path"]["pattern"] = (
        rf"^(?:(?=.*{_DATA_SUFFIX}$){_LOCAL}|(?!\./)(?!.*{_DATA_SUFFIX}$){_HUB})$")
    defs["Reward"]["properties"]["file"]["anyOf"][0]["pattern"] = (
        rf"^(?:\./)?{REWARDS_DIR}/(?!(?:.*/)?\.{{1,2}}(?:/|$)){_SEGMENT}(?:/{_SEGMENT})*\.py$")
    defs["Gguf"]["if"] = {"properties": {"quantizations": {"contains": {"pattern": "^[Ii][Qq]"}}},
                          "required": ["quantizations"]}
    defs["Gguf"]["then"] = {"properties": {"imatrix": {"const": True}}, "required": ["imatrix"]}
    # Rewards belong to GRPO, and GRPO needs at least one.
    schema["allOf"] = [
        {"if": {"properties": {"method": {"const": "grpo"}}, "required": ["method"]},
         "then": {"properties": {"rewards": {"minItems": 1}}, "required": ["rewards"]},
         "else": {"properties": {"rewards": {"maxItems": 0}}}}]
    # What the loader accepts around the model: `name` defaults to the file name, `dataset` may be a bare path.
    schema["required"] = [k for k in schema["required"] if k != "name"]
    dataset = props["dataset"]
    path_pattern = defs["Dataset"]["properties"]["path"]["pattern"]
    props["dataset"] = {"anyOf": [{"type": "string", "pattern": path_pattern}, {"$ref": dataset.pop("$ref")}],
                        **dataset}
    props["hardware"]["enum"] = ["auto", *FLAVOR_NAMES]
    props["name"]["pattern"] = SLUG.pattern
    props["timeout"]["anyOf"][0]["pattern"] = r"^(?:auto|(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?)$"
    _refuse_unsafe_strings(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
