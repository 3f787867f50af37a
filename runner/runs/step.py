"""What every stage of a run needs besides its record: the engine, the recipe and plan at the run's commit,
where outputs go, and the labels that say what a job trains."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from runner.backends.base import Backend
from runner.errors import UserError
from runner.jobspec import (
    GgufJobConfig,
    JobConfig,
    Places,
    TrainConfig,
    hf_places,
    trial_branch,
    shipped_files,
)
from runner.ledger import Failure, RunRecord
from runner.plan import Plan
from runner.recipe import LoadedRecipe
from runner.revisions import Resolved, followed
from runner.summaries import S, parse

LOG_TAIL = 30


LOCAL_GGUF_TIMEOUT = 3600


Echo = Callable[[str], None]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_places(loaded: LoadedRecipe, run_id: str, hub_dir: Path, branch: str | None = None) -> Places:
    """The local stand-in for the Hub: <hub_dir>/<namespace>/<name>[-GGUF]; a branch (a sweep's trial) is a folder
    of its own, <name>@<branch>, so trials never write over each other's model."""
    repo = loaded.output_repo or f"local/{loaded.recipe.name}"
    if branch:
        repo = f"{repo}@{branch}"
    return Places(model_dir=hub_dir / repo, gguf_dir=hub_dir / f"{repo}-GGUF",
                  work_dir=loaded.root / ".runner" / "runs" / run_id)


class RunBusy(UserError):
    """Another process holds this recipe's run lock: it is already carrying the run on."""


class SpendRefused(UserError):
    """The spend gate refused a submission: nothing was sent that costs money."""


@dataclass
class Step:
    """Everything `advance` needs besides the record.

    A run carries on with what it fixed when it started (its job configs and plan, in the record).
    For the Hugging Face backend `loaded` is also the recipe as the runner's own code reads it, as of
    the record's commit, and `plan` its fresh plan: a Hub submission is derived from these two as
    well and checked by the spend gate, so an edited record cannot spend; without them a Hub run's
    jobs are followed but none is submitted. A local run needs neither: its recipe file may since
    have changed or gone.
    """

    loaded: LoadedRecipe | None
    backend: Backend
    echo: Echo = print
    plan: Plan | None = None
    root: Path | None = None  # where runs/ and models/ are written; default: the recipe's repository
    hub_dir: Path | None = None  # the local backend's stand-in for the Hub
    follow_seconds: float | None = None  # follow jobs at most this long, then leave the run to reconcile
    started: float = field(default_factory=time.monotonic)
    on_update: Callable[[RunRecord], None] | None = None  # the live comment: at every state, and on progress
    update_every: float = 120.0  # seconds between progress updates
    submit: bool = True  # False (cancel): follow a job to its end, start none; the run ends canceled instead
    # False (reconcile): follow, adopt and finish only. A first training job is started by the
    # merge's train workflow, behind its approval, never by a later pass over run records (a sweep's passes
    # start trials from the recipe at a reviewed commit, of a sweep the merge began: runner/sweeprun.py).
    may_train: bool = True
    # A sweep's trial waits at `trained` until its sweep names it the winner (runner/sweeprun.py): no trial is
    # converted or recorded on its own.
    sweep_winner: str | None = None
    # The sweep trial this run trains, as the sweep expands the recipe (not as a record says): where the backend
    # keeps branches, its training job pushes to the trial's own branch of the model repo.
    trial: str | None = None
    name: str = ""  # the recipe's name (its runs/<name>.json); default: the loaded recipe's
    _last_update: float = 0.0

    def __post_init__(self) -> None:
        if self.loaded is not None:
            self.name = self.name or self.loaded.recipe.name
            self.root = self.root or self.loaded.root
        if not self.name or self.root is None:
            raise ValueError("a Step needs a loaded recipe, or a name and a root")

    def updated(self, record: RunRecord, *, progress: bool = False) -> None:
        """Tell the live view; progress only every `update_every` seconds (a state change always)."""
        if self.on_update is None or (progress and time.monotonic() - self._last_update < self.update_every):
            return
        self._last_update = time.monotonic()
        try:
            self.on_update(record)
        except UserError as e:  # a comment that cannot be posted must not stop the run
            self.echo(f"[comment] not updated: {str(e).splitlines()[0]}")

    def time_left(self) -> float | None:
        return None if self.follow_seconds is None else self.follow_seconds - (time.monotonic() - self.started)

    def out_of_time(self) -> bool:
        """The follow window closed (never, when following without one)."""
        left = self.time_left()
        return left is not None and left <= 0

    @property
    def home(self) -> Path:
        assert self.root is not None  # set in __post_init__
        return self.root


def _places(backend: Backend, loaded: LoadedRecipe, run_id: str, hub_dir: Path | None,
            branch: str | None = None) -> Places:
    """Where a job reads and writes: the mount inside a Hub job (a branch is then the push's revision), else
    the local Hub folder, a branch its own folder."""
    if backend.mount:
        return hf_places(backend.mount)
    return local_places(loaded, run_id, hub_dir or loaded.root / ".runner" / "hub", branch)


def trial_branch_of(trial: str | None, version: str) -> str | None:
    """The branch (or, locally, the folder) a sweep's trial writes its model to; None outside a sweep."""
    return trial_branch(trial, version) if trial else None


def shipped_digests(loaded: LoadedRecipe) -> dict[str, str]:
    """sha256 of every repo-local file the job trains with (data, reward files, a local base model)."""
    return {rel: sha256_file(path) for rel, path in sorted(shipped_files(loaded).items())}


def recipe_version(loaded: LoadedRecipe, resolved: Resolved | None = None) -> str:
    """What a run trains, as a short hash: the effective recipe (defaults applied) plus the bytes it ships, plus
    the commits `resolved` gives a tag or branch the recipe names (such a recipe trains once per commit)."""
    r = loaded.recipe
    # Fields added later count only when set, so a recipe that does not use them keeps the version it had.
    unset: dict[str, Any] = ({"sweep": True} if r.sweep is None else {}) | \
        ({"evaluation": {"gate"}} if r.evaluation.gate is None else {}) | \
        ({"base_model_revision": True} if r.base_model_revision is None else {})
    h = hashlib.sha256(r.model_dump_json(exclude=unset).encode())
    for rel, digest in shipped_digests(loaded).items():
        h.update(f"\0{rel}\0{digest}".encode())
    for kind, sha in followed(loaded, resolved).items():
        h.update(f"\0{kind}@{sha}".encode())
    return h.hexdigest()[:16]


def identity(name: str, version: str, stage: str, attempt: int = 1) -> dict[str, str]:
    """The labels that say what a job trains, whichever run submitted it (a retry is a new attempt)."""
    labels = {"recipe": name, "version": version, "stage": stage}
    return labels | ({"attempt": str(attempt)} if attempt > 1 else {})


def _labels(record: RunRecord, name: str, stage: str) -> dict[str, str]:
    return identity(name, record.version, stage, record.attempt) | {"run": record.run_id,
                                                                     "commit": (record.commit or "none")[:12]}


@overload
def _config(record: RunRecord, stage: Literal["train"]) -> TrainConfig: ...
@overload
def _config(record: RunRecord, stage: Literal["gguf"]) -> GgufJobConfig: ...
@overload
def _config(record: RunRecord, stage: str) -> JobConfig: ...
def _config(record: RunRecord, stage: str) -> JobConfig:
    """The config the run fixed for `stage`; a record without one cannot be carried on."""
    config = getattr(record.configs, stage)
    if config is None:
        raise UserError(f"run {record.run_id} ({record.recipe}): the record has no {stage} job config")
    return config


def _local_gguf_places(record: RunRecord) -> Places:
    train = _config(record, "train")
    model_dir = Path(train.output_dir)
    return Places(model_dir=model_dir, gguf_dir=model_dir.with_name(model_dir.name + "-GGUF"),
                  work_dir=Path(train.summary_path).parent)


def _outputs(step: Step, record: RunRecord, stage: Literal["train", "gguf"], config: JobConfig, kind: type[S],
             missing: Callable[[S | None], str | None]) -> S | None:
    """The job's summary as `kind`; None once the run failed over what the job did not leave behind."""
    raw = step.backend.summary(config)
    summary, invalid = parse(kind, raw) if raw is not None else (None, None)
    problem = invalid or missing(summary)
    if problem or summary is None:
        _missing(step, record, stage, problem or "it wrote no summary")
        return None
    return summary


def _missing(step: Step, record: RunRecord, stage: str, problem: str) -> None:
    """A job said COMPLETED but its outputs are not where it said: the run fails, nothing is published."""
    record.failure = Failure(stage=stage, reason=f"the {'training' if stage == 'train' else 'GGUF'} job ended "
                             f"COMPLETED, but {problem}", kind="missing_output")
    record.move("failed")
    step.echo(f"[{stage}] failed: {record.failure.reason}")
