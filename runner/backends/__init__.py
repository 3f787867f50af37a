"""The engines a run can use, by the name its record carries, and how a command opens one.

Kept light: the local job launcher imports runner.backends.local, so an engine's module is
imported only when a command asks for that engine by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import UserError

if TYPE_CHECKING:
    from runner.backends.base import Backend

# name (as `--backend` and run records spell it) -> where its class lives
ENGINES: dict[str, tuple[str, str]] = {
    "local": ("runner.backends.local", "LocalBackend"),
    "hf": ("runner.backends.hf", "HfBackend"),
}


def engine(name: str) -> type[Backend]:
    """The backend class called `name`: its capabilities, without a client, a token or a request."""
    if name not in ENGINES:
        raise UserError(f"unknown backend {name!r} (known: {', '.join(ENGINES)})")
    module, cls = ENGINES[name]
    found: type[Backend] = getattr(importlib.import_module(module), cls)
    return found


def opened(name: str, root: Path, repo: str | None = None,
           echo: Callable[[str], None] | None = None) -> AbstractContextManager[Backend]:
    """The engine `name`, ready for one command in the repository at `root` (and closed after it).

    `repo` (a run's output repo) fixes the Hugging Face namespace its jobs run and bill in.
    """
    return engine(name).opened(root, repo, echo or (lambda _line: None))
