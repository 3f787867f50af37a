"""Turning pydantic errors on a recipe into located one-liners (file:line:col: field: message)."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from runner import yamlsafe
from runner.errors import Problem
from runner.recipe_models import Recipe
from runner.recipe_shapes import did_you_mean


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The recipe model that holds the fields at a location (Recipe at the top), if any."""
    model: type[BaseModel] | None = Recipe
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return model


def fields_at(path: tuple) -> list[str]:
    """Field names allowed at a location in the recipe, for 'did you mean'."""
    model = _model_at(path)
    return list(model.model_fields) if model else []


def _description(loc: tuple) -> str | None:
    """The schema description of the field at `loc`, to say what a missing field wants."""
    model = _model_at(loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model and loc else None
    return field.description if field else None


_EXPECTED = {
    "int_type": "a whole number", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "int_from_float": "a whole number",
}


def _describe(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "a mapping", type(None): "nothing (null)"}
    kind = kinds.get(type(value), type(value).__name__)
    return kind if isinstance(value, (dict, list, type(None))) else f"{kind} {value!r}"


def located(error: ValidationError, docs: list[yamlsafe.Located]) -> list[Problem]:
    out = []
    for e in error.errors():
        loc = tuple(e["loc"])
        doc = next((d for d in docs if loc in d.values or loc in d.keys), docs[0])
        kind = e["type"]
        if kind == "extra_forbidden":
            key = loc[-1]
            out.append(doc.problem(loc, f"unknown field '{key}'{did_you_mean(str(key), fields_at(loc[:-1]))}",
                                   key=True))
        elif kind == "missing":
            wanted = _description(loc)
            out.append(doc.problem(loc, "required field is missing" + (f"; add it: {wanted}" if wanted else "")))
        elif kind == "literal_error":
            expected = re.findall(r"'([^']*)'", e["ctx"]["expected"])
            out.append(doc.problem(loc, f"{e['input']!r} is not one of {', '.join(expected)}"
                                   f"{did_you_mean(str(e['input']), expected)}"))
        elif kind in _EXPECTED:
            out.append(doc.problem(loc, f"expected {_EXPECTED[kind]}, found {_describe(e['input'])}"))
        else:
            message = e["msg"].removeprefix("Value error, ")
            out.append(doc.problem(loc, message))
    return out
