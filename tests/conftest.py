"""Shared fixtures: a throwaway repository, a CLI runner, and a clean Hub environment."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No real token, no token file, no real endpoint: tests opt in to what they need."""
    home = tmp_path_factory.mktemp("hf_home")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "RUNNER_DATASETS_SERVER_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    # No network here: point every Hub client at a closed local port so a stray call fails fast.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("RUNNER_DATASETS_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `runner ARGS...` in-process from a directory; returns exit code, stdout, stderr."""

    def run(*args: str, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE"))}
    full_env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=120)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_header_only_model(directory: Path, *, hidden: int = 256, layers: int = 2, vocab: int = 1000) -> int:
    """A model directory whose safetensors header declares shapes (no weights): enough to plan."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": hidden,
              "num_hidden_layers": layers, "vocab_size": vocab, "intermediate_size": 2 * hidden}
    (directory / "config.json").write_text(json.dumps(config))
    shapes = {"model.embed_tokens.weight": [vocab, hidden]}
    for i in range(layers):
        shapes[f"model.layers.{i}.mlp.up_proj.weight"] = [2 * hidden, hidden]
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = [hidden, hidden]
    offset, header = 0, {}
    for name, shape in shapes.items():
        n = shape[0] * shape[1]
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
    raw = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return sum(s[0] * s[1] for s in shapes.values())


SFT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                  {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]}
    for i in range(40)
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A minimal repository: recipes/, a local SFT dataset and a header-only local model."""
    (tmp_path / "recipes").mkdir()
    write_jsonl(tmp_path / "data" / "sft.jsonl", SFT_ROWS)
    write_header_only_model(tmp_path / "models" / "tiny")
    return tmp_path


def write_recipe(repo: Path, name: str, text: str) -> Path:
    path = repo / "recipes" / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path
