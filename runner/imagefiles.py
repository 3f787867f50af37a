"""The image files a local data file names: a remote job reads them beside the data, so they travel with it.

Only the columns the training job reads as images (`image` or `images`, after the recipe's column mapping)
are looked at, so a text turn that mentions "cat.png" ships nothing. URLs and data URIs stay as they are.
A path must name a regular file below the data file's folder, as validation already requires.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner import images, sampling
from runner.errors import UserError

IMAGE_COLUMNS = ("image", "images")  # what the training job reads as images (runner/jobs/train.py)


def named_by(data_file: Path, display: str, columns: dict[str, str] | None = None) -> list[Path]:
    """The local image files the data file's image columns name, each once, in path order."""
    stat = data_file.stat()
    names = _scan(data_file, display, tuple(sorted((columns or {}).items())), stat.st_size, stat.st_mtime_ns,
                  stat.st_ino)
    # The files themselves are checked on every call (cheap: headers), so a cached scan never hides a change.
    problem = next((p for p in (images.from_path(n, data_file.parent).problem for n in names) if p), None)
    if problem:
        raise UserError(f"{display}: {problem}; nothing is shipped")
    return [data_file.parent / name for name in names]


@functools.lru_cache(maxsize=32)
def _scan(data_file: Path, display: str, columns: tuple[tuple[str, str], ...], size: int, mtime_ns: int,
          inode: int) -> tuple[str, ...]:
    """The image paths a data file names; cached by the file's state, since one run derives its version (and so
    these files) several times."""
    mapping = dict(columns)
    head, _, _ = sampling.read_rows(data_file, display, sampling.SAMPLE_ROWS)
    wanted = {c for c in _column_names(head) if mapping.get(c, c) in IMAGE_COLUMNS}
    if not wanted:  # a text dataset is not read to its end
        return ()
    rows, _, _ = sampling.read_rows(data_file, display, sys.maxsize)
    return tuple(sorted({value for row in rows for column in wanted for value in _paths(row.get(column))}))


def _column_names(rows: list[dict[str, Any]]) -> set[str]:
    return {c for row in rows for c in row}


def _paths(cell: Any) -> Iterator[str]:
    """Local paths in one image cell: a string, or a list of them (URLs and data URIs are not files)."""
    for value in cell if isinstance(cell, list) else [cell]:
        if isinstance(value, str) and value and not value.startswith(("http://", "https://", "data:")):
            yield value
