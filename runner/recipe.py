"""The recipe: what to train, on what, how, and for how much; the one import for the rest of the runner.

A recipe is data from a pull request. Every string is checked for shape (slugs, Hub
ids, repo-relative paths) so that no value can reach outside the repository or be
spliced into a shell command or a workflow expression. Repo-wide defaults live in
`recipes/_defaults.yaml` and are deep-merged under each recipe.

The parts, each owning one idea: recipe_shapes.py (value shapes and file names),
recipe_models.py (the pydantic models), recipe_load.py (reading a file with its defaults),
recipe_problems.py (pydantic errors as located lines), recipe_checks.py (strings and the
repository files a recipe names), recipe_schema.py (the published JSON Schema).
"""

from __future__ import annotations

from runner.errors import Problem, RecipeInvalid
from runner.recipe_checks import first_symlink, reward_function_problem
from runner.recipe_load import defaults_file, find_root, load, load_all, name_of, recipe_files
from runner.recipe_models import (
    REPO_KEYS,
    Adapter,
    Dataset,
    Evaluation,
    Gguf,
    LoadedRecipe,
    Method,
    Output,
    Recipe,
    RepoDefaults,
    Reward,
    Tracking,
    Training,
)
from runner.recipe_schema import json_schema
from runner.recipe_shapes import (
    BUILTIN_REWARDS,
    DATA_SUFFIXES,
    DEFAULT_EVAL_FRACTION,
    DEFAULTS_FILE,
    GGUF_TYPES,
    HUB_ID,
    LORA_AUTO_THRESHOLD,
    REWARDS_DIR,
    SCHEMA_FILE,
    SLUG,
    git_revision,
    hub_id,
    looks_local_dataset,
    parse_duration,
)

__all__ = [
    "BUILTIN_REWARDS", "DATA_SUFFIXES", "DEFAULTS_FILE", "DEFAULT_EVAL_FRACTION", "GGUF_TYPES", "HUB_ID",
    "LORA_AUTO_THRESHOLD", "REPO_KEYS", "REWARDS_DIR", "SCHEMA_FILE", "SLUG", "Adapter", "Dataset", "Evaluation",
    "Gguf", "LoadedRecipe", "Method", "Output", "Problem", "Recipe", "RecipeInvalid", "RepoDefaults", "Reward",
    "Tracking", "Training", "defaults_file", "find_root", "first_symlink", "git_revision", "hub_id", "json_schema",
    "load", "load_all", "looks_local_dataset", "name_of", "parse_duration", "recipe_files", "reward_function_problem",
]
