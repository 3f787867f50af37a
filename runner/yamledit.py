"""Set a few scalar values in a YAML file's text and leave every other byte as it was.

A machine edit of a recipe (the watcher pinning a revision, or noting where a named ref moved) must read as a
one-line diff: comments,
order, quoting and blank lines stay. Positions come from runner/yamlsafe.py; a value is replaced in
place, a missing key is added beside a sibling, a string shorthand (`dataset: owner/name`) becomes a
flow mapping. The result is parsed again and must hold exactly the old data plus the new values.
"""

from __future__ import annotations

import json
import re
from typing import Any

from runner import yamlsafe
from runner.errors import UserError

Path_ = tuple[str, ...]


def quoted(value: str) -> str:
    """A double-quoted YAML scalar (always a string: a commit like 1234e5... must not read as a number)."""
    return json.dumps(value)


def _scalar_end(line: str, start: int, flow: bool) -> int:
    """Where the one-line scalar starting at `start` ends (exclusive)."""
    if line[start:start + 1] == '"':
        m = re.compile(r'"(?:[^"\\]|\\.)*"').match(line, start)
    elif line[start:start + 1] == "'":
        m = re.compile(r"'(?:[^']|'')*'").match(line, start)
    else:
        m = re.compile(r"[^,}\]#]*?(?=\s+#|\s*[,}\]]|\s*$)" if flow else r".*?(?=\s+#|\s*$)").match(line, start)
    if m is None:
        raise ValueError("not a one-line scalar")
    return m.end()


def _is_flow(lines: list[str], pos: tuple[int, int] | None) -> bool:
    return pos is not None and lines[pos[0] - 1][pos[1] - 1:pos[1]] == "{"


def _set_one(text: str, doc: yamlsafe.Located, path: Path_, value: str, beside: str | None) -> str:
    """`text` with the value at `path` set; a new key goes next to `beside` (else the mapping's first key)."""
    lines = text.splitlines(keepends=True)
    parent, key = path[:-1], path[-1]
    flow = _is_flow(lines, doc.values.get(parent))
    if path in doc.values:  # replace the value where it stands
        line_no, col = doc.values[path]
        line = lines[line_no - 1]
        end = _scalar_end(line, col - 1, flow)
        lines[line_no - 1] = line[:col - 1] + quoted(value) + line[end:]
        return "".join(lines)
    if parent and isinstance(_get(doc.data, parent), str):  # `dataset: owner/name` -> {path: ..., key: ...}
        line_no, col = doc.values[parent]
        line = lines[line_no - 1]
        end = _scalar_end(line, col - 1, _is_flow(lines, doc.values.get(parent[:-1])))
        lines[line_no - 1] = f"{line[:col - 1]}{{path: {line[col - 1:end]}, {key}: {quoted(value)}}}{line[end:]}"
        return "".join(lines)
    mapping = _get(doc.data, parent)
    sibling: str = beside if beside is not None and beside in mapping else next(iter(mapping))
    key_line, key_col = doc.keys[parent + (sibling,)]
    line = lines[key_line - 1]
    if flow:  # `{path: x, split: y}` -> `{key: v, path: x, split: y}`
        lines[key_line - 1] = f"{line[:key_col - 1]}{key}: {quoted(value)}, {line[key_col - 1:]}"
        return "".join(lines)
    if isinstance(mapping[sibling], (dict, list)):
        index = key_line - 1  # before the sibling's key: its nested block stays whole
    else:
        index = doc.values[parent + (sibling,)][0]  # after the sibling's (one-line) value
    if not lines[index - 1].endswith("\n"):
        lines[index - 1] += "\n"
    lines.insert(index, f"{' ' * (key_col - 1)}{key}: {quoted(value)}\n")
    return "".join(lines)


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _put(data: Any, path: Path_, value: str) -> Any:
    """`data` with `path` set to `value` (a string at the parent becomes {path: it})."""
    if not path:
        return value
    node = dict(data) if isinstance(data, dict) else {"path": data}
    node[path[0]] = _put(node.get(path[0], {}), path[1:], value) if len(path) > 1 else value
    return node


def set_values(text: str, display: str, values: dict[Path_, str], beside: dict[Path_, str] | None = None) -> str:
    """`text` with each field path set to its string value, everything else kept; UserError (located) when the
    file's layout leaves no safe place for a value (then nothing is written)."""
    expected = yamlsafe.loads(text, display).data
    out = text
    for path, value in values.items():
        doc = yamlsafe.loads(out, display)
        expected = _put(expected, path, value)
        try:
            out = _set_one(out, doc, path, value, (beside or {}).get(path))
        except (ValueError, KeyError, StopIteration, TypeError):
            out = ""
        _check(out, expected, doc, display, path, f"set it without rewriting the file; set it by hand to "
                                                  f"{quoted(value)}")
    return out


def set_comment(text: str, display: str, path: Path_, prefix: str, comment: str) -> str:
    """`text` with the line `prefix + comment` just above the line of the key at `path`, indented as that line
    (replacing a line starting with `prefix` there, left by an earlier edit); the data unchanged, else UserError."""
    doc = yamlsafe.loads(text, display)
    line_no = doc.keys[path][0] if path in doc.keys else 0
    lines = text.splitlines(keepends=True)
    out = ""
    if line_no:
        at = lines[line_no - 1]
        indent = at[:len(at) - len(at.lstrip())]
        above = line_no - 2
        replace = above >= 0 and lines[above].lstrip().startswith(prefix)
        lines[above if replace else line_no - 1:line_no - 1] = [f"{indent}{prefix}{comment}\n"]
        out = "".join(lines)
    _check(out, doc.data, doc, display, path, f"add a comment above it without rewriting the file; add it by hand: "
                                              f"{prefix}{comment}")
    return out


def _check(out: str, expected: Any, doc: yamlsafe.Located, display: str, path: Path_, cannot: str) -> None:
    """An edit must leave a file that reads as `expected`; else one located line saying what to do by hand."""
    try:
        ok = bool(out) and yamlsafe.loads(out, display).data == expected
    except UserError:
        ok = False
    if not ok:
        line, col = doc.where(path) or (1, 1)
        raise UserError(f"{display}:{line}:{col}: {yamlsafe.dotted(path)}: cannot {cannot}")
