"""`runner schema --markdown`: the recipe reference (docs/recipe-reference.md), generated from the JSON Schema.

One table per section, one row per field: its type, default and description, exactly what the
schema (and so editors and agents) say. A test checks the committed page is up to date.
"""

from __future__ import annotations

import json
from typing import Any

HEADER = ("# Recipe reference\n\nGenerated from `recipes/schema.json` by `runner schema --markdown > "
          "docs/recipe-reference.md`; do not edit by hand. `recipes/_defaults.yaml` may set any field below "
          "(except `name`, `base_model`, `method`, `dataset`) for every recipe, plus the repository settings "
          "`namespace`, `max_budget_usd` and `max_total_usd`.\n")


def _type(node: dict[str, Any]) -> str:
    if "$ref" in node:
        return "section" if not node.get("anyOf") else "mapping"
    if "enum" in node:
        return " | ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "anyOf" in node:
        return " or ".join(_type(n) for n in node["anyOf"] if n.get("type") != "null")
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    return str(kind)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node or isinstance(node["default"], dict):
        return ""
    return f"`{json.dumps(node['default'])}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(title: str, props: dict[str, Any], required: list[str]) -> list[str]:
    out = [f"## {title}", "", "| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, node in props.items():
        mark = " (required)" if name in required else ""
        out.append(f"| `{name}`{mark} | {_cell(_type(node))} | {_cell(_default(node))} | "
                   f"{_cell(node.get('description', ''))} |")
    return out + [""]


def _ref(node: dict[str, Any]) -> str | None:
    found = node.get("$ref") or (node.get("items") or {}).get("$ref") or \
        next((n["$ref"] for n in node.get("anyOf", []) if "$ref" in n), None)
    return found.rsplit("/", 1)[1] if found else None


def markdown(schema: dict[str, Any]) -> str:
    """The whole reference page: the top level, then each section by where it sits (nested ones included)."""
    lines = [HEADER, *_table("Top level", schema["properties"], schema.get("required", []))]
    queue = [(name, _ref(node)) for name, node in schema["properties"].items()]
    shown: set[str] = set()
    while queue:
        where, ref = queue.pop(0)
        if ref is None or ref in shown:
            continue
        shown.add(ref)
        section = schema["$defs"][ref]
        lines += _table(f"`{where}`", section["properties"], section.get("required", []))
        queue += [(f"{where}.{name}", _ref(node)) for name, node in section["properties"].items()]
    return "\n".join(lines).rstrip() + "\n"
