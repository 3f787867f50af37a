"""Shared fixtures, each defined here once (a test module overrides `namespace` or `hub_token` to vary one):

- `cli`: `runner ARGS...` in-process from a directory -> Result(code, out, err); `run(ws, monkeypatch, capsys,
  *args)` is the same as a plain helper returning (code, stdout + stderr).
- `repo`: a minimal repository (recipes/, a local SFT dataset, a header-only model), for planning tests.
- `template`: the template repository as a new clone has it (the files git tracks or would track, one commit on
  main), copied per test from one session-wide copy.
- `workspace`: the example root (examples/: recipes/, rewards/, data/, tiny-model/, tiny-vlm/) as a git repository
  of its own, `namespace` (default `alice`) set in recipes/_defaults.yaml, one commit on main; copied per test
  from one session-wide copy per namespace. A module whose runs stay local overrides `namespace` with None;
  `examples_repo` is the same root as shipped (no namespace) for a single test that wants it.
- `hub`: the Hub stand-in (tests/hubstub.py) with HF_ENDPOINT and the dataset viewer pointed at it and HF_TOKEN
  set to `hub_token` (default HUB_TOKEN; None sets no token). `module_hub`: one stand-in for a module, no
  environment set (for module-scoped fixtures that hand its url to a job subprocess).
- `github`: the GitHub stand-in (tests/ghstub.py) with acme/models' main at one commit.
- `git`: `git(repo, *args)` with a throwaway identity (a fixture and a plain function).

Tests that train, quantize, build a model, run act, or wait out the runner's real clocks are marked `slow`:
`pytest -m "not slow"` is the inner loop.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# One torch thread for the small-model tests, in this process and every job subprocess (they inherit it): the
# tiny models gain nothing from more, and on a shared 2-core machine more threads only contend. Set before
# anything imports torch, which reads it at import; an explicit setting in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from ghstub import GitHubStub  # noqa: E402
from hubstub import HubStub  # noqa: E402

from runner.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
JOBS = ROOT / "runner" / "jobs"
HUB_TOKEN = "test-only-not-a-token-hub"  # distinctive, so a leak is easy to grep for
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t.invalid"]


@pytest.fixture(autouse=True, scope="session")
def _hub_library_online() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, when first imported: import it here, with the variable unset, so
    a test that sets it (for itself or its jobs) cannot turn every later in-process Hub call in the session off,
    whichever tier or order the tests run in."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        import huggingface_hub.constants  # noqa: F401


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
    # Tiny models: one thread each, so a test's job processes do not fight over the two cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The stand-in lists a job the moment it exists (unless a test plays lag): a claim need not wait long.
    monkeypatch.setenv("RUNNER_CLAIM_SETTLE_SECONDS", "0.05")
    # GitHub's secondary rate limits do not apply to the stand-in: no pause between its writes.
    monkeypatch.setenv("RUNNER_GITHUB_PAUSE_SECONDS", "0")


# --- git and repositories ---------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    """`git ARGS...` in `repo` with a throwaway identity; its stdout."""
    return subprocess.run(["git", "-C", str(repo), *GIT_ID, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(name="git")
def _git_fixture() -> Callable[..., str]:
    """`git` for a test that asks for it as a fixture."""
    return git


def init_repo(repo: Path, message: str = "init") -> Path:
    """Make `repo` a git repository on main with everything in it committed once."""
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return repo


def set_namespace(repo: Path, namespace: str) -> None:
    """Append `namespace` to repo's recipes/_defaults.yaml (uncommitted), as a team does on day one."""
    defaults = repo / "recipes" / "_defaults.yaml"
    defaults.write_text(defaults.read_text() + f"namespace: {namespace}\n")


def copy_examples(dest: Path, *parts: str) -> Path:
    """Lay parts of the examples out as a repository root at `dest` (recipes/, rewards/, data/, tiny-model/ ...).

    examples/ is a root of its own: its recipes read ./tiny-model and data/ from there."""
    for part in parts:
        shutil.copytree(EXAMPLES / part, dest / part)
    return dest


def copy_tree(source: Path, dest: Path) -> Path:
    """A copy of a session-wide pristine tree for one test (links stay links)."""
    return Path(shutil.copytree(source, dest, symlinks=True))


def _template_files() -> list[str]:
    """The files a new clone of the template has: what git tracks or would track (no local state)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout
    return [n for n in listed.split("\0") if n and ((ROOT / n).is_file() or (ROOT / n).is_symlink())]


@pytest.fixture(scope="session")
def pristine_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the template for the whole session, one commit on main; never change it (tests get copies)."""
    dest = tmp_path_factory.mktemp("pristine") / "template"
    for name in _template_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name, follow_symlinks=False)
    return init_repo(dest, "template")


@pytest.fixture
def template(pristine_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template repository (one commit on main, no namespace) for this test."""
    return copy_tree(pristine_template, tmp_path / "template")


@pytest.fixture(scope="session")
def _example_roots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str | None], Path]:
    """The example root as a committed repository, built once per namespace for the session (never changed)."""
    built: dict[str | None, Path] = {}

    def get(namespace: str | None) -> Path:
        if namespace not in built:
            dest = copy_examples(tmp_path_factory.mktemp("pristine") / "examples", "recipes", "rewards", "data",
                                 "tiny-model", "tiny-vlm")
            if namespace:
                set_namespace(dest, namespace)
            built[namespace] = init_repo(dest)
        return built[namespace]

    return get


@pytest.fixture
def namespace() -> str | None:
    """The namespace `workspace` sets: `alice`. A module whose runs stay local overrides it with None."""
    return "alice"


@pytest.fixture
def workspace(_example_roots: Callable[[str | None], Path], namespace: str | None, tmp_path: Path) -> Path:
    """A git checkout laid out as a team's fork with the examples as its recipes (recipes/, rewards/, data/,
    tiny-model/, tiny-vlm/), `namespace` in its defaults, one commit on main: a fresh copy for this test."""
    return copy_tree(_example_roots(namespace), tmp_path / "ws")


@pytest.fixture
def examples_repo(_example_roots: Callable[[str | None], Path], tmp_path: Path) -> Path:
    """The example root as shipped (no namespace: runs stay local) as a git checkout, a fresh copy for this test."""
    return copy_tree(_example_roots(None), tmp_path / "examples")


# --- the stand-ins ------------------------------------------------------------------------------------------


@pytest.fixture
def hub_token() -> str | None:
    """The HF_TOKEN `hub` sets. A module whose tests must run without one overrides this with None."""
    return HUB_TOKEN


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, hub_token: str | None) -> Iterator[HubStub]:
    """The Hub stand-in (tests/hubstub.py) as the Hub, the dataset viewer and the token's issuer for this test."""
    with HubStub() as stub:
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        monkeypatch.setenv("RUNNER_DATASETS_SERVER_URL", stub.url)
        if hub_token:
            monkeypatch.setenv("HF_TOKEN", hub_token)
        yield stub


@pytest.fixture(scope="module")
def module_hub() -> Iterator[HubStub]:
    """One Hub stand-in for a whole module and no environment set: for module-scoped fixtures that hand its url
    to a job subprocess, and the tests that read what that job left on it."""
    with HubStub() as stub:
        yield stub


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHubStub]:
    """The GitHub stand-in (tests/ghstub.py): one repository, acme/models, with `main` at a first commit."""
    with GitHubStub() as stub:
        stub.state.artifacts_dir = tmp_path / "artifacts"
        stub.state.commit("main", {"README.md": b"# models\n"}, "template")
        yield stub


# --- running the runner ----------------------------------------------------------------------------------


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


def run(ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`runner ARGS...` in-process from `ws`: (exit code, stdout + stderr), never a traceback."""
    monkeypatch.chdir(ws)
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.out + out.err


@functools.cache
def load_job(name: str) -> ModuleType:
    """runner/jobs/<name>.py as a module, for its pure parts (a script, not part of the package): loaded once a
    session, as `<name>_job` in sys.modules (its dataclasses resolve their module through it)."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", JOBS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a job or `runner` subprocess: this one's, less any token, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "HUGGING_FACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false")
    return env | extra


def run_subprocess(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS...` in a subprocess from `cwd`, offline and without a token (plus `env`)."""
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=job_env(**(env or {})),
                          capture_output=True, text=True, timeout=120)


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


# The smallest SFT recipe `repo` can plan: its header-only model and its local data.
BASE_RECIPE = """\
name: demo
base_model: ./models/tiny
method: sft
dataset:
  path: data/sft.jsonl
"""


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


# --- run records: plans and job summaries as the runner types them ---------------------------------------


def train_summary_json(**update: object) -> dict:
    """A training summary with every key runner/jobs/train.py writes (a two-step full SFT run)."""
    return {"method": "sft", "steps": 2, "epochs": 1.0, "train_runtime_s": 1.5, "tokens_seen": 512,
            "tokens_per_second": 341.3, "final_metrics": {"train_loss": 1.5, "final_loss": 1.25},
            "log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.25}], "adapter": False, "vision": False,
            "world_size": 1, "setup": None, "peak_memory_bytes": 1 << 30, "pushed": None, "evaluation": None} | update


def gguf_summary_json(files: list[dict], **update: object) -> dict:
    """A GGUF summary with every key runner/jobs/gguf.py writes, for `files` (quantization, path, bytes...)."""
    return {"files": files, "merged_adapter": False, "imatrix": None,
            "chat_template": {"checked": False, "reason": "the tokenizer has no chat template"},
            "modelfile": "output/gguf/Modelfile", "ollama_template": False, "card": "output/gguf/README.md",
            "seconds": {"convert": 1.0}, "hub_repo": None, "commit": None, "vision": False} | update


def a_plan(**update: object):
    """A plan as the record keeps it: a small SFT run on cpu-basic (only what a test names matters)."""
    from runner.formats import MethodVerdict
    from runner.plan import Plan, PlannedJob

    job = PlannedJob(stage="train", flavor="cpu-basic", timeout_seconds=1800, usd_per_hour=0.01, hours=0.1,
                     cost_usd=0.001, max_cost_usd=0.005)
    fields = {"recipe": "recipes/x.yaml", "name": "x", "method": "sft", "base_model": "./examples/tiny-model",
              "params": 1000, "params_source": "config", "active_params": 1000, "lora": False, "learning_rate": 2e-5,
              "dataset": MethodVerdict(status="ready", reason="ok"), "rows": 100, "tokens": 10_000,
              "flavor": "cpu-basic", "strategy": "single", "devices": 1, "memory_gb": 1.0, "memory_capacity_gb": 16.0,
              "fits": True, "hours": 0.1, "train_cost_usd": 0.001, "gguf_cost_usd": 0.0, "cost_usd": 0.001,
              "max_cost_usd": 0.005, "timeout_seconds": 1800, "budget_usd": 1.0, "within_budget": True,
              "jobs": [job], "refusal": None, "runner_minutes": 10.0, "output_repo": None,
              "price_source": "built-in price table"}
    return Plan.model_validate(fields | update)


def keys_outside(model: type, raw: object) -> list[str]:
    """Keys of a job's raw summary JSON that `model` does not read (ignored at the edge, so drift goes unseen)."""
    parsed = model.model_validate(raw).model_dump(mode="json")

    def walk(raw: object, kept: object, where: str) -> list[str]:
        if isinstance(raw, dict) and isinstance(kept, dict):
            return [k2 for k, v in raw.items()
                    for k2 in ([f"{where}{k}"] if k not in kept else walk(v, kept[k], f"{where}{k}."))]
        if isinstance(raw, list) and isinstance(kept, list):
            return [k for i, (a, b) in enumerate(zip(raw, kept)) for k in walk(a, b, f"{where}{i}.")]
        return []

    return walk(raw, parsed, "")


def assert_summaries_read_whole(run: dict) -> None:
    """The contract between the job scripts and the runner: every key the real jobs of a local `run` wrote in
    their summaries is one runner/summaries.py reads (unknown keys are ignored at the edge, so only this catches
    a job script that reports something the runner drops)."""
    from runner.summaries import GgufSummary, TrainSummary

    for stage, model in (("train", TrainSummary), ("gguf", GgufSummary)):
        if stage not in run["configs"]:
            continue
        raw = json.loads(Path(run["configs"][stage]["summary_path"]).read_text())
        assert keys_outside(model, raw) == [], f"{stage} summary keys runner/summaries.py does not read"
        # An evaluation that does not fit is dropped quietly (never worth failing a run); here it must fit.
        assert (model.model_validate(raw).model_dump().get("evaluation") is None) == (raw.get("evaluation") is None)
