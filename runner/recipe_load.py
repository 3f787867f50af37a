"""Loading a recipe file: its YAML, the repo defaults under it, the model, and every problem located."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner import sweep as sweeps
from runner import yamlsafe
from runner.errors import Problem, RecipeInvalid
from runner.recipe_checks import file_problems, unsafe_strings
from runner.recipe_models import REPO_KEYS, LoadedRecipe, Recipe, RepoDefaults
from runner.recipe_problems import fields_at, located
from runner.recipe_shapes import DEFAULTS_FILE, SCHEMA_FILE, did_you_mean, display


def find_root(recipe_path: Path) -> Path:
    """The repository root: the parent of the nearest `recipes/` directory, else the cwd."""
    for parent in recipe_path.resolve().parents:
        if parent.name == "recipes":
            return parent.parent
    return Path.cwd().resolve()


def defaults_file(recipe_path: Path, root: Path) -> Path:
    """The repo defaults a recipe inherits: recipes/_defaults.yaml for any recipe under recipes/, at any depth."""
    recipes = root / "recipes"
    here = Path(os.path.abspath(recipe_path)).parent
    return recipes / DEFAULTS_FILE if here == recipes or recipes in here.parents else here / DEFAULTS_FILE


@dataclass(frozen=True)
class _Inherited:
    """What `recipes/_defaults.yaml` gives a recipe: the repo settings, the recipe fields, and its problems."""

    doc: yamlsafe.Located | None = None
    repo: RepoDefaults = field(default_factory=RepoDefaults)
    fields: dict[str, Any] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()


def load(path: Path | str, *, root: Path | None = None) -> LoadedRecipe:
    """Load and validate one recipe; raises RecipeInvalid listing every problem found."""
    path = Path(path)
    root = (root or find_root(path)).resolve()
    _refuse_non_recipe(path, root)
    doc = yamlsafe.load(path, display=display(path, root))
    inherited = _inherited(defaults_file(path, root), root)
    docs = [doc] + ([inherited.doc] if inherited.doc else [])
    recipe, problems = _validated(path, doc, inherited, docs)
    problems = [*inherited.problems, *problems, *unsafe_strings(doc)]
    if recipe is not None:
        problems += _repository_problems(LoadedRecipe(recipe, path, root, inherited.repo), doc)
    if problems:
        order = {d.file: i for i, d in enumerate(docs)}
        raise RecipeInvalid(sorted(_dedupe(problems), key=lambda p: (order.get(p.file, 9), p.line, p.col)))
    assert recipe is not None
    return LoadedRecipe(recipe, path, root, inherited.repo)


def _refuse_non_recipe(path: Path, root: Path) -> None:
    """A link out of recipes/, the repo defaults and the schema are not recipes: say so before reading them."""
    shown = display(path, root)
    recipes = root / "recipes"
    unresolved = Path(os.path.abspath(path))
    if (path.is_symlink() and not path.resolve().is_relative_to(root)) or \
            (unresolved.is_relative_to(recipes) and not path.resolve().is_relative_to(recipes)):
        # Never read (or echo) a file through a recipe-shaped link, nor let one pick other repo defaults.
        raise RecipeInvalid([Problem(shown, 1, 1, "", "is a symlink to a file outside recipes/; a recipe must be "
                                                      "a regular file under recipes/")])
    if path.name == DEFAULTS_FILE:
        raise RecipeInvalid([Problem(shown, 1, 1, "", f"{DEFAULTS_FILE} holds repo defaults, not a recipe")])
    if path.name == SCHEMA_FILE:
        raise RecipeInvalid([Problem(shown, 1, 1, "", f"{SCHEMA_FILE} is the recipes' JSON Schema (written by "
                                     "`runner schema`), not a recipe; recipes are .yaml files")])


def _inherited(defaults_path: Path, root: Path) -> _Inherited:
    """The repo defaults file split into repo settings and inherited recipe fields, each checked."""
    if not defaults_path.is_file():
        return _Inherited()
    doc = yamlsafe.load(defaults_path, display=display(defaults_path, root))
    repo_part = {k: v for k, v in doc.data.items() if k in REPO_KEYS}
    fields = {k: v for k, v in doc.data.items() if k not in REPO_KEYS}
    problems: list[Problem] = []
    repo = RepoDefaults()
    try:
        repo = RepoDefaults.model_validate(repo_part)
    except ValidationError as e:
        problems += located(e, [doc])
    for key in ("name", "base_model", "method", "dataset"):
        if key in fields:
            problems.append(doc.problem((key,), f"'{key}' is per recipe; it cannot be a repo default", key=True))
    for key in [k for k in fields if k not in Recipe.model_fields]:
        problems.append(doc.problem((key,), f"unknown field '{key}'{did_you_mean(key, fields_at(()))}", key=True))
    return _Inherited(doc, repo, fields, tuple(problems))


def _validated(path: Path, doc: yamlsafe.Located, inherited: _Inherited,
               docs: list[yamlsafe.Located]) -> tuple[Recipe | None, list[Problem]]:
    """The recipe model from the file over its defaults, or the located problems that refuse it."""
    data = _deep_merge(inherited.fields, doc.data)
    data.setdefault("name", path.stem)
    try:
        return Recipe.model_validate(data), []
    except ValidationError as e:
        found = located(e, docs)
    if "name" not in doc.data:  # the name came from the file: say so, and what to change
        found = [replace(p, message=f"{p.message} (the name comes from the file name {path.name}: rename the "
                         "file, or set `name:`)") if p.field == "name" else p for p in found]
    return None, found


def _repository_problems(loaded: LoadedRecipe, doc: yamlsafe.Located) -> list[Problem]:
    """What a valid recipe can still get wrong against the repository: files, names, sweep, budget cap."""
    recipe, cap = loaded.recipe, loaded.defaults.max_budget_usd
    problems = file_problems(loaded, doc) + _name_clashes(loaded, doc)
    problems += sweeps.problems(recipe, doc, loaded.defaults.max_sweep_trials)
    if cap is not None and recipe.budget_usd is not None and recipe.budget_usd > cap:
        problems.append(doc.problem(("budget_usd",), f"{recipe.budget_usd:g} USD is above the repository cap "
                                    f"max_budget_usd {cap:g} in {DEFAULTS_FILE}"))
    return problems

def _name_clashes(loaded: LoadedRecipe, doc: yamlsafe.Located) -> list[Problem]:
    """Another recipe under recipes/ with the same name would share runs/<name>.json and the model repo."""
    folder = loaded.root / "recipes"
    if not Path(os.path.abspath(loaded.path)).is_relative_to(folder):
        return []
    mine = Path(os.path.abspath(loaded.path))
    out = []
    for other in recipe_files([str(folder)]):
        if other.name == SCHEMA_FILE or Path(os.path.abspath(other)) == mine or other.is_symlink():
            continue
        try:
            theirs = yamlsafe.load(other, display=display(other, loaded.root))
        except (RecipeInvalid, OSError):
            continue  # that file reports its own problems
        name = theirs.data.get("name", other.stem)
        if name == loaded.recipe.name:
            line = (theirs.where(("name",), key=True) or (1, 1))[0] if "name" in theirs.data else 1
            origin = "" if "name" in doc.data else f" (from the file name {loaded.path.name})"
            out.append(doc.problem(("name",), f"'{name}'{origin} is also the name of {theirs.file}:{line}; each recipe "
                                   "needs its own name (it names runs/<name>.json and the model repo)", key=True))
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def recipe_files(args: Sequence[str]) -> list[Path]:
    """Expand directories to their recipe files (not the repo defaults)."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*.y*ml") if f.suffix in (".yaml", ".yml") and f.name != DEFAULTS_FILE)
        elif not (len(args) > 1 and p.name in (DEFAULTS_FILE, SCHEMA_FILE) and p.is_file()):
            out.append(p)  # `recipes/*` by glob names the defaults and the schema too: skipped; alone, explained
    return out


def load_all(paths: Sequence[str]) -> tuple[list[LoadedRecipe], list[Problem]]:
    """Every recipe the paths name, loaded; and the located problems of those that do not load."""
    loaded: list[LoadedRecipe] = []
    problems: list[Problem] = []
    for path in recipe_files(paths):
        try:
            loaded.append(load(path))
        except RecipeInvalid as e:
            problems += e.problems
    return loaded, problems


def name_of(arg: str) -> str:
    """A recipe given by file (its `name`) or by name."""
    return load(arg).recipe.name if arg.endswith((".yaml", ".yml")) and Path(arg).is_file() else arg
