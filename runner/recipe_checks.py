"""What a recipe is checked for beyond its model: unsafe strings, and the repository files it names.

Reward functions are parsed, never imported: a pull request's code does not run on the plan path.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

from runner import yamlsafe
from runner.errors import Problem
from runner.recipe_models import LoadedRecipe
from runner.recipe_shapes import REWARDS_DIR, did_you_mean

_LINK = ("'{link}' is a symbolic link; files a job ships must be regular files in the repository "
         "(replace the link with the file itself)")



def unsafe_strings(doc: yamlsafe.Located) -> list[Problem]:
    """Refuse values that look like workflow expressions or carry control characters."""
    out: list[Problem] = []

    def walk(value: Any, path: tuple) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, path + (i,))
        elif isinstance(value, str):
            if "${{" in value:
                out.append(doc.problem(path, "GitHub expressions '${{' are not allowed in recipe values"))
            elif re.search(r"[\x00-\x1f\x7f]", value):
                out.append(doc.problem(path, "control characters and line breaks are not allowed here"))

    walk(doc.data, ())
    return out


def file_problems(loaded: LoadedRecipe, doc: yamlsafe.Located) -> list[Problem]:
    """Local files the recipe names must exist inside the repo; reward functions are parsed, never imported."""
    r = loaded.recipe
    out: list[Problem] = []

    def inside(relative: str, path: tuple) -> Path | None:
        try:
            return loaded.local(relative)
        except ValueError as e:
            out.append(doc.problem(path, str(e)))
            return None

    if r.dataset.is_local:
        p = inside(r.dataset.path, ("dataset", "path"))
        if p is not None and (link := first_symlink(loaded.root, r.dataset.path)):
            out.append(doc.problem(("dataset", "path"), _LINK.format(link=link)))
        elif p is not None and not p.is_file():
            out.append(doc.problem(("dataset", "path"), f"file '{r.dataset.path}' not found in the repository; "
                                   "add it, or fix the path (relative to the repository root)"))
    if r.base_model_is_local:
        p = inside(r.base_model, ("base_model",))
        if p is not None and (link := first_symlink(loaded.root, r.base_model)):
            out.append(doc.problem(("base_model",), _LINK.format(link=link)))
        elif p is not None and not (p / "config.json").is_file():
            out.append(doc.problem(("base_model",), f"'{r.base_model}' is not a model directory (no config.json); "
                                   "point base_model at the folder with config.json and the weights"))
    for i, reward in enumerate(r.rewards):
        if reward.file is None or reward.function is None:
            continue
        p = inside(reward.file, ("rewards", i, "file"))
        if p is None:
            continue
        if not p.is_relative_to((loaded.root / REWARDS_DIR).resolve()):
            # A reward runs inside the job beside the Hub token: only code under rewards/ (CODEOWNERS) may ship.
            out.append(doc.problem(("rewards", i, "file"), f"reward files live under {REWARDS_DIR}/ (which "
                                   f"CODEOWNERS reviews); move '{reward.file}' to {REWARDS_DIR}/"))
            continue
        if link := first_symlink(loaded.root, reward.file):
            out.append(doc.problem(("rewards", i, "file"), _LINK.format(link=link)))
            continue
        message = reward_function_problem(p, reward.function)
        if message:
            out.append(doc.problem(("rewards", i, "file" if "file" in message else "function"), message))
    return out


def first_symlink(root: Path, relative: str) -> str | None:
    """The first symbolic link on the way to `relative` or anywhere below it (a shipped folder), repo-relative.

    A link is refused even when it points inside the repository: what is shipped must be what was reviewed,
    and a link (to /proc/self/environ, say) would upload whatever the runner can read."""
    root = Path(os.path.abspath(root))
    path = Path(os.path.abspath(root / relative))
    for candidate in [*reversed(path.parents), path]:
        if candidate.is_relative_to(root) and candidate != root and candidate.is_symlink():
            return candidate.relative_to(root).as_posix()
    if path.is_dir():
        for folder, dirs, files in os.walk(path):  # os.walk does not follow links: they show up as entries
            for name in sorted(dirs + files):
                if (Path(folder) / name).is_symlink():
                    return (Path(folder) / name).relative_to(root).as_posix()
    return None


def reward_function_problem(path: Path, function: str) -> str | None:
    """Check by parsing (never importing) that `function` is defined with a usable signature."""
    if not path.is_file():
        return f"reward file '{path.name}' not found in the repository"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        return f"reward file '{path.name}' does not parse: {getattr(e, 'msg', e)}"
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    node = defs.get(function)
    if node is None:
        return f"no top-level function '{function}' in {path.name}{did_you_mean(function, list(defs))}"
    if isinstance(node, ast.AsyncFunctionDef):
        return f"'{function}' must be a plain (not async) function"
    names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    if "completions" not in names or node.args.kwarg is None:
        return f"'{function}' must accept (completions, **kwargs) like a TRL reward function"
    return None
