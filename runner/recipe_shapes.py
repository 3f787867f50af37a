"""The shape of a recipe's values: names, Hub ids, repo-relative paths, durations, and the files it may name.

A recipe is data from a pull request. Every string is checked for shape so that no value can reach
outside the repository or be spliced into a shell command or a workflow expression.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path

DEFAULTS_FILE = "_defaults.yaml"
SCHEMA_FILE = "schema.json"  # recipes/schema.json: the published JSON Schema, `runner schema`
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
GGUF_TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_L", "Q3_K_M",
              "Q3_K_S", "Q2_K", "IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS",
              "IQ2_XXS", "IQ1_M", "IQ1_S")
# Must match BUILTIN_REWARDS in runner/jobs/train.py (a test checks it).
BUILTIN_REWARDS = ("exact_answer", "think_format", "concise")
LORA_AUTO_THRESHOLD = 3_000_000_000  # parameters; `lora: auto` turns LoRA on above this

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
SPLIT = re.compile(r"^[A-Za-z0-9_.\-\[\]:%]{1,128}$")
TASK = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
DEFAULT_EVAL_FRACTION = 0.02  # of the training split, when the recipe names no eval_split
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")
REWARDS_DIR = "rewards"  # reward code runs in the job beside HF_TOKEN: only from the folder CODEOWNERS covers


def hub_id(value: str, what: str) -> str:
    if not HUB_ID.match(value) or ".." in value or "--" in value:
        raise ValueError(f"'{value}' is not a valid Hub {what} id (expected 'owner/name')")
    return value


def repo_path(value: str, suffixes: tuple[str, ...] | None = None) -> str:
    """A path relative to the repository root that cannot step outside it."""
    p = value[2:] if value.startswith("./") else value
    if not p or p.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", p):
        raise ValueError(f"'{value}' must be a path relative to the repository root")
    parts = p.replace("\\", "/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"'{value}' must not contain '..', '.' or empty path segments")
    if any(not re.match(r"^[A-Za-z0-9_.@+-]+$", part) for part in parts):
        raise ValueError(f"'{value}' has characters not allowed in a path (use letters, digits, '_', '-', '.')")
    if suffixes and not p.endswith(suffixes):
        raise ValueError(f"'{value}' must end with one of {', '.join(suffixes)}")
    return p


def looks_local_dataset(path: str) -> bool:
    return path.startswith("./") or path.lower().endswith(DATA_SUFFIXES)


def parse_duration(value: str | int) -> int:
    """'2h', '90m', '1h30m', '45s', '1d' or a number of seconds -> seconds."""
    if isinstance(value, int):
        seconds = value
    else:
        m = DURATION.match(value.strip())
        if not value.strip() or not m:
            raise ValueError(f"'{value}' is not a duration; use e.g. 90m, 2h, 1h30m or 'auto'")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        seconds = d * 86400 + h * 3600 + mi * 60 + s
    if not 300 <= seconds <= 7 * 86400:
        raise ValueError("must be between 5 minutes and 7 days")
    return seconds



def git_revision(v: str | None) -> str | None:
    """A branch, tag or commit name that cannot step anywhere else (no '..', no leading punctuation)."""
    if v is not None and (not REVISION.match(v) or ".." in v):
        raise ValueError(f"'{v}' is not a valid git revision")
    return v


def did_you_mean(word: str, candidates: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or nothing."""
    match = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def display(path: Path, root: Path) -> str:
    """`path` as problems show it: relative to the repository root when inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
