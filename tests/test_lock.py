"""The test and training environment is the lock: what CI installs is exactly requirements/test.txt."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "test.txt"


def _pins() -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.M)}


def _test_command() -> str:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    at = lines.index("<!-- test-command -->")
    return next(line for line in lines[at + 1:] if line.strip() and not line.startswith("```"))


def test_ci_installs_the_readme_command_and_the_command_installs_the_lock() -> None:
    assert "README.md" in (ROOT / ".ci" / "run").read_text() and 'bash -c "$cmd"' in (ROOT / ".ci" / "run").read_text()
    installs = [part.strip() for part in _test_command().split("&&") if "pip install" in part]
    assert installs, "the test command installs nothing"
    assert "--require-hashes -r requirements/test.txt" in installs[0] and "--no-deps" in installs[0]
    # Everything after the lock installs one pinned thing without its dependencies: nothing unlocked comes in.
    for part in installs[1:]:
        assert "--no-deps" in part, part


def test_every_pin_carries_hashes_and_nothing_pulls_a_cuda_build() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", LOCK.read_text())
    pinned = [b for b in blocks if re.match(r"[A-Za-z0-9_.-]+==", b)]
    assert len(pinned) > 50 and all("--hash=sha256:" in b for b in pinned)
    names = set(_pins())
    assert "torch" not in names and not any(n.startswith(("nvidia-", "triton")) for n in names)


def test_the_lock_covers_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = _pins()
    for spec in map(Requirement, declared):
        name = canonicalize_name(spec.name)
        if name == "torch":
            continue  # the CPU wheel, installed on its own by the test command
        assert name in pins, f"{spec.name} is declared in pyproject.toml but not locked; refresh requirements/test.txt"
        assert spec.specifier.contains(pins[name], prereleases=True), f"{spec} does not admit the locked {pins[name]}"


def test_what_is_installed_is_the_lock() -> None:
    wrong = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed differs from requirements/test.txt (locked, installed): {wrong}"
