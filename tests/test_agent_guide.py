"""The agent guide (AGENTS.md and the skill) is true: every command it shows runs, as shown.

A command is a line in a fenced ```bash block; prose around it is not run. Each guide runs
in its own fresh copy of the repository, offline, in order, the way an agent would follow it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, git, set_namespace

# Trains, quantizes or builds a model: the slow tier (`pytest -m "not slow"` skips it).
pytestmark = pytest.mark.slow


SKILL = ".agents/skills/fine-tuning-recipes/SKILL.md"
CLAUDE_SKILL = ".claude/skills/fine-tuning-recipes/SKILL.md"
GUIDES = ["AGENTS.md", SKILL]
FENCE = re.compile(r"^```bash\n(.*?)^```$", re.DOTALL | re.MULTILINE)
NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def commands(guide: str) -> list[str]:
    text = (ROOT / guide).read_text(encoding="utf-8")
    lines = [ln.strip() for block in FENCE.findall(text) for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def front_matter(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path} must start with YAML front matter"
    return yaml.safe_load(text.split("---\n", 2)[1])


def set_up(template: Path) -> Path:
    """The template (a new clone: no local state, one commit) once set up as README step 3 asks: a plan needs an
    output repo, so the defaults name a namespace, committed into that one commit."""
    set_namespace(template, "agent-user")
    git(template, "commit", "-q", "--amend", "-am", "template")
    return template


def git_env() -> dict[str, str]:
    names = {"GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@example.invalid"}
    return {**os.environ, **names, "GIT_COMMITTER_NAME": "agent", "GIT_COMMITTER_EMAIL": "agent@example.invalid"}


def shell_env(repo: Path, bin_dir: Path) -> dict[str, str]:
    """`runner` on PATH runs this copy's code; no token, no network."""
    bin_dir.mkdir()
    shim = bin_dir / "runner"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m runner "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in git_env().items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE", "GITHUB_TOKEN"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(repo), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.mark.parametrize("guide", GUIDES)
def test_every_command_in_the_guide_runs(guide: str, template: Path, tmp_path: Path) -> None:
    if not (ROOT / "examples" / "tiny-model" / "config.json").exists():
        pytest.skip("tiny model not built")  # examples/build_tiny_model.py
    shown = commands(guide)
    assert shown, f"{guide} shows no commands in ```bash blocks"
    if any(c.startswith("runner run") for c in shown):
        pytest.importorskip("trl")  # the guide trains the example model for real
    repo = set_up(template)
    env = shell_env(repo, tmp_path / "bin")
    outputs: dict[str, str] = {}
    for command in shown:
        done = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{guide}: `{command}` exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{guide}: `{command}`\n{done.stderr}"
        outputs[command] = done.stdout
    news = [c for c in shown if c.startswith("runner new ")]
    assert news, f"{guide} must show `runner new`"
    for command in news:
        assert (repo / "recipes" / f"{command.split()[2]}.yaml").is_file()
    assert any(c.startswith("runner validate") for c in shown) and any(c.startswith("runner plan") for c in shown)
    assert any(c.startswith("runner status") for c in shown)
    if guide == SKILL:
        assert any(c.startswith("runner inspect") for c in shown) and any(c.startswith("runner logs") for c in shown)
        logs = next(out for c, out in outputs.items() if c.startswith("runner logs"))
        assert "COMPLETED" in logs.splitlines()[-1]
        status = next(out for c, out in outputs.items() if c.startswith("runner status"))
        assert status.startswith("tiny-chat: ")


def test_skill_is_where_agents_look_for_it() -> None:
    meta = front_matter(ROOT / SKILL)
    assert set(meta) == {"name", "description"}
    # The Agent Skills format: the name is the folder's; descriptions within every reader's limit.
    assert NAME.match(meta["name"]) and len(meta["name"]) <= 64 and meta["name"] == Path(SKILL).parent.name
    assert 0 < len(meta["description"]) <= 500 and "\n" not in meta["description"]
    # Claude Code reads .claude/skills: the same skill, pointing at the one set of instructions.
    assert front_matter(ROOT / CLAUDE_SKILL) == meta
    assert SKILL in (ROOT / CLAUDE_SKILL).read_text(encoding="utf-8")
    assert "@AGENTS.md" in (ROOT / "CLAUDE.md").read_text(encoding="utf-8").splitlines()
    assert SKILL in (ROOT / "AGENTS.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_says_where_tokens_go_and_how_to_read_a_run(guide: str) -> None:
    text = (ROOT / guide).read_text(encoding="utf-8")
    assert "Never" in text and "token" in text and "HF_TOKEN" in text
    for word in ("runner new", "runner validate", "runner plan", "runner status"):
        assert word in text, f"{guide} does not mention {word}"
