"""Load untrusted YAML as plain data, remembering where every value stood.

Recipes arrive in pull requests, so the loader assumes hostility: it caps size,
depth and node count, refuses anchors and aliases (the "billion laughs" vector,
and never needed in a recipe), binary content, duplicate keys and non-mapping
documents. Every value keeps its line and column so errors can point at it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.errors import Problem, RecipeInvalid

MAX_BYTES = 256 * 1024
MAX_DEPTH = 16
MAX_NODES = 20_000

Path_ = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as `2e-4` as numbers."""


# PyYAML follows YAML 1.1, where `2e-4` (no dot) is a string; every recipe author
# means a number there. Prepend a YAML 1.2-style float resolver.
_FLOAT_12 = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$")
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in "-+0123456789.":
    _Loader.yaml_implicit_resolvers.setdefault(_ch, []).insert(0, ("tag:yaml.org,2002:float", _FLOAT_12))


@dataclass
class Located:
    """A loaded document plus the (line, col) of each key and value, by field path."""

    file: str
    data: dict[str, Any]
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int] | None:
        """Position of the value at `path` (or its key), else of the nearest ancestor."""
        table = self.keys if key else self.values
        for n in range(len(path), -1, -1):
            pos = table.get(path[:n]) or self.values.get(path[:n])
            if pos:
                return pos
        return None

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(path, key=key) or (1, 1)
        return Problem(self.file, line, col, dotted(path), message)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load(path: Path, *, display: str | None = None) -> Located:
    """Read `path` as one YAML mapping. Raises RecipeInvalid with a located message."""
    name = display or str(path)

    def fail(message: str, line: int = 1, col: int = 1) -> RecipeInvalid:
        return RecipeInvalid([Problem(name, line, col, "", message)])

    return loads(_read_text(path, fail), name)


def loads(text: str, name: str) -> Located:
    """Parse YAML text as one mapping, as `load` does a file. Raises RecipeInvalid with a located message."""

    def fail(message: str, line: int = 1, col: int = 1) -> RecipeInvalid:
        return RecipeInvalid([Problem(name, line, col, "", message)])

    nodes = _compose(text, fail)
    docs = [n for n in nodes if n is not None]
    if not docs:
        raise fail("file is empty; expected a mapping of recipe fields")
    if len(docs) > 1:
        raise fail("file holds several YAML documents; put one recipe per file", *_pos(docs[1]))

    root = docs[0]
    if not isinstance(root, yaml.MappingNode):
        raise fail(f"expected a mapping of recipe fields, found a {_kind(root)}", *_pos(root))
    located = Located(name, {})
    builder = _Builder(located, fail)
    located.data = builder.build(root, (), 0)
    return located


def _read_text(path: Path, fail: Callable[..., RecipeInvalid]) -> str:
    """The file as text: bounded in size, not binary, UTF-8 (a BOM allowed)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise fail("file not found") from None
    except IsADirectoryError:
        raise fail("is a directory, not a YAML file") from None
    except OSError as e:
        raise fail(f"cannot read file: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise fail(f"file is larger than {MAX_BYTES // 1024} KiB; a recipe is a few lines of YAML")
    if b"\x00" in raw:
        raise fail("file is binary (contains NUL bytes), not YAML")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise fail("file is not valid UTF-8 text", line) from None


def _compose(text: str, fail: Callable[..., RecipeInvalid]) -> list[yaml.Node | None]:
    """The YAML documents' nodes, once the events show no anchor, no alias and no deep nesting."""
    try:
        # Refuse anchors and deep nesting before composing: an alias bomb costs nothing to parse as
        # events, and composing 1,000 nested `[` recurses past Python's stack.
        depth = 0
        for event in yaml.parse(text, Loader=_Loader):
            mark = event.start_mark
            assert mark is not None  # the parser marks every event it emits
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise fail("YAML anchors and aliases are not allowed in recipes", mark.line + 1, mark.column + 1)
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH + 1:
                    raise fail(f"nesting deeper than {MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise fail(f"invalid YAML: {e.problem or e.context}", line, col) from None
    except yaml.YAMLError as e:  # e.g. a reader error on control characters
        raise fail(f"invalid YAML: {str(e).splitlines()[0]}") from None


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    return "scalar value"


_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Builder:
    """Turns composed nodes into plain data, recording positions and enforcing limits."""

    def __init__(self, located: Located, fail) -> None:
        self.loc = located
        self.fail = fail
        self.budget = MAX_NODES
        self.scalars = _Loader("")  # one constructor for every scalar in the document

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        fail = self.fail
        self.budget -= 1
        if self.budget < 0:
            raise fail(f"document has more than {MAX_NODES} values; refusing to read it", *_pos(node))
        if depth > MAX_DEPTH:
            raise fail(f"nesting deeper than {MAX_DEPTH} levels", *_pos(node))
        self.loc.values[path] = _pos(node)
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_TAGS:
            raise fail(f"invalid value: YAML tag '{node.tag}' is not allowed in recipes", *_pos(node))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise fail("YAML merge keys (<<) are not allowed in recipes", *_pos(key_node))
                if not isinstance(key_node, yaml.ScalarNode):
                    raise fail("mapping keys must be plain strings", *_pos(key_node))
                key = key_node.value
                if key in out:
                    raise fail(f"duplicate key '{key}'", *_pos(key_node))
                self.loc.keys[path + (key,)] = _pos(key_node)
                out[key] = self.build(value_node, path + (key,), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, path + (i,), depth + 1) for i, v in enumerate(node.value)]
        try:
            return self.scalars.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError) as e:
            problem = getattr(e, "problem", None) or str(e)
            raise fail(f"invalid value: {problem}", *_pos(node)) from None
