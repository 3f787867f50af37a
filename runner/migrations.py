"""Run record layouts over time: `runs/<name>.json` carries `schema_version`, and a file written by an older
runner is upgraded here, one version at a time, before it is read. Nothing has changed yet: version 1 is
the first released layout, so the table is empty until the first real change needs an entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runner.errors import UserError

CURRENT = 1
# version N -> a function turning a version-N document into a version-(N+1) one
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def upgrade(doc: Any, source: str) -> Any:
    """The document at the current layout; one clear line when a newer runner wrote it."""
    if not isinstance(doc, dict):
        return doc  # the model reports what is wrong with it
    version = doc.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{source}: schema_version must be a whole number from 1, not {version!r}")
    if version > CURRENT:
        raise UserError(f"{source}: written by a newer runner (schema_version {version}; this one reads up to "
                        f"{CURRENT}); update the runner (pip install the repository's lock) before carrying it on")
    while version < CURRENT:
        doc = MIGRATIONS[version](doc)
        version += 1
    return {**doc, "schema_version": CURRENT}
