"""Run records: `runs/<name>.json`, one file per recipe, every run kept.

A run is a small state machine persisted here so any later process can pick it up:
planned -> training -> trained -> converting -> converted -> recorded, or failed / canceled.
Writes are atomic (temp file + rename in the same directory): a crash never leaves a
half-written record.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from runner.errors import UserError
from runner.evaluation import Evaluation
from runner.gates import Gate, GateVerdict
from runner.jobspec import JobConfigs
from runner.migrations import CURRENT, upgrade
from runner.plan import Plan, billed
from runner.revisions import HubSha, Resolved
from runner.summaries import GgufSummary, TrainSummary

State = Literal["planned", "training", "trained", "converting", "converted", "recorded", "rejected", "failed",
                "canceled"]
# rejected: trained, but missed the recipe's evaluation.gate (the numbers in `gate`): weights stay private, no GGUF
TERMINAL: frozenset[str] = frozenset({"recorded", "rejected", "failed", "canceled"})
NEXT: dict[str, tuple[str, ...]] = {
    "planned": ("training", "trained", "failed", "canceled"),  # trained: a retry that reuses a verified model
    "training": ("trained", "failed", "canceled"),
    "trained": ("converting", "recorded", "rejected", "failed", "canceled"),
    "converting": ("converted", "failed", "canceled"),
    "converted": ("recorded", "failed", "canceled"),
}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Record fields that reach comments and cards are held to their shape: a record is data any merged
# pull request can edit, so `@everyone`, HTML or a link cannot hide in a run id, a backend or a commit.
RunId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
BackendName = Literal["local", "hf"]
CommitSha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{7,40}$")]
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")]
RecipePath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.ya?ml$")]


class JobRef(BaseModel):
    id: Slug
    backend: BackendName
    flavor: Slug | None = None
    submitted_at: str
    finished_at: str | None = None
    stage: str = "SCHEDULING"
    script_sha256: str | None = None
    modules_sha256: dict[str, str] = Field(default_factory=dict)  # the files shipped beside the script
    timeout_seconds: int | None = None
    usd_per_hour: float | None = None  # the price when it was submitted: what the Hub bills it at
    running_seconds: float | None = None  # JobInfo.durations.running_secs, the billed time
    reused_from: str | None = None  # the run this job belongs to (and is billed in), when a retry reuses its output


class Progress(BaseModel):
    """Where training was when last seen: the job's latest `progress` line."""

    step: int
    total: int
    loss: float | None = None
    at: str = Field(default_factory=now)


class Failure(BaseModel):
    stage: str
    reason: str
    # timeout | oom | data | canceled | infrastructure | missing_output (see runner/failures.py)
    kind: str = "infrastructure"
    step: int | None = None  # the last training step the job reported, of total_steps
    total_steps: int | None = None
    log_tail: list[str] = Field(default_factory=list)
    checkpoint_on_hub: bool = False


class TrialRow(BaseModel):
    """One trial of the sweep a run won, as the sweep judged it."""

    trial: str
    suffix: str  # what the trial overrides, e.g. learning-rate1e-4-r8
    run_id: RunId
    state: State
    value: float | None = None  # the sweep's metric after training (None: the trial reported none)
    actual_usd: float | None = None


class SweepResult(BaseModel):
    """On a sweep's winner: every trial beside it, the metric that judged them and why this one won."""

    metric: str
    mode: Literal["min", "max"]
    reason: str
    trials: list[TrialRow]

    def settled(self, winner: RunRecord) -> SweepResult:
        """The table with the winner's own row as its run now stands: its state (rejected or failed by its own
        gate or conversion, at the end) and its cost. The other rows were final when the sweep decided."""
        rows = [t.model_copy(update={"state": winner.state, "actual_usd": winner.actual_usd()})
                if t.run_id == winner.run_id else t for t in self.trials]
        return self.model_copy(update={"trials": rows})


class RunRecord(BaseModel):
    run_id: RunId
    recipe: RecipePath
    recipe_sha256: str
    version: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]*$")] = ""  # the effective recipe's hash
    commit: CommitSha | None
    backend: BackendName
    state: State = "planned"
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    history: list[dict[str, str]] = Field(default_factory=list)  # [{state, at}]
    plan: Plan | None = None  # the plan the run started from
    jobs: dict[str, JobRef] = Field(default_factory=dict)  # "train" / "gguf"
    train_summary: TrainSummary | None = None  # what the training job reported, once its outputs were verified
    gguf_summary: GgufSummary | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    evaluation: Evaluation | None = None  # held-out metrics before/after, samples, benchmark scores
    gate_rule: Gate | None = None  # the recipe's evaluation.gate when the run started: what judges it
    gate: GateVerdict | None = None  # gate_rule over this run's numbers, once trained (None: no gate)
    trial: str | None = None  # the sweep trial id this run trains (runner/sweep.py), None outside a sweep
    sweep: SweepResult | None = None  # on a sweep's winner: the table of every trial
    # The Hub commits the run trained on, resolved once when it started (None: a local input, or offline).
    # Optional fields added to layout 1: an older file reads as "not recorded", so no migration is needed.
    base_revision: HubSha | None = None
    dataset_revision: HubSha | None = None
    seconds: dict[str, float] = Field(default_factory=dict)  # wall time per stage
    cost_usd: dict[str, float | None] = Field(default_factory=dict)  # estimated / actual
    links: dict[str, str] = Field(default_factory=dict)
    failure: Failure | None = None
    progress: Progress | None = None
    # What any later process needs to carry the run on, fixed when it started: the job configs (the
    # JSON the job scripts read, no secrets), the data-parallel width, and whether outputs go to the Hub.
    configs: JobConfigs = Field(default_factory=JobConfigs)
    processes: int = 1
    push: bool = False
    attempt: int = 1  # a deliberate retry (`runner run --retry`) is attempt 2, 3, ...
    retry_of: str | None = None  # the run this attempt retries
    resume: bool = False  # this attempt resumes from the checkpoint the last one left on the Hub

    @property
    def output_repo(self) -> str | None:
        """The model repo the run fixed when it started (on the Hub, its namespace is where jobs run and bill)."""
        return self.configs.train.repo if self.configs.train else None

    def current_job(self, stage: str | None = None) -> tuple[str, str]:
        """(stage, job id) of the run's job at `stage`, by default its latest one."""
        stage = stage or ("gguf" if "gguf" in self.jobs else "train")
        if stage not in self.jobs:
            raise UserError(f"run {self.run_id} has no job yet (state {self.state})")
        return stage, self.jobs[stage].id

    @property
    def revisions(self) -> Resolved:
        """The commits this run trained on, as job configs take them."""
        return Resolved(base_model=self.base_revision, dataset=self.dataset_revision)

    @property
    def billed_jobs(self) -> list[JobRef]:
        """The jobs this run paid for: not a job a retry reused from the run that paid for it."""
        return [j for j in self.jobs.values() if j.reused_from is None]

    def actual_usd(self) -> float:
        """What the Hub bills: each job's running seconds (per started minute) at its price at submission."""
        if not self.push:
            return 0.0  # this machine's time
        return round(sum(billed(max(j.running_seconds, 1.0) / 3600, j.usd_per_hour or 0.0)
                         for j in self.billed_jobs if j.running_seconds is not None), 4)

    @property
    def billed_hours(self) -> float:
        """The running time the Hub bills this run for, over its own jobs."""
        return sum(j.running_seconds or 0.0 for j in self.billed_jobs) / 3600

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def move(self, state: State) -> None:
        if state not in NEXT.get(self.state, ()):
            raise ValueError(f"run {self.run_id}: cannot go from {self.state} to {state}")
        self.state = state
        self.updated_at = now()
        self.history.append({"state": state, "at": self.updated_at})
        if self.sweep is not None and state in TERMINAL:  # a sweep's winner ends: its table says how
            self.sweep = self.sweep.settled(self)


class RecipeRuns(BaseModel):
    schema_version: int = CURRENT  # the file's layout (runner/migrations.py upgrades older ones)
    name: str
    runs: list[RunRecord] = Field(default_factory=list)


def all_runs(root: Path, problems: list[str] | None = None) -> list[RecipeRuns]:
    """Every recipe's runs. A run file that does not read is skipped with its one-line reason (printed, or added to
    `problems`): one bad file must not stop the others' runs from being carried on."""
    out = []
    for path in sorted((root / "runs").glob("*.json")):
        try:
            out.append(read(root, path.stem))
        except UserError as e:
            if problems is None:
                print(f"warning: {e}", file=sys.stderr)
            else:
                problems.append(str(e))
    return out


def runs_path(root: Path, name: str) -> Path:
    return root / "runs" / f"{name}.json"


def latest(root: Path, name: str, target: str) -> tuple[str, RunRecord, str | None]:
    """(recipe name, run, job stage): the newest run of recipe `name`, else the run holding the job id `target`
    (what the user typed, of which `name` is the recipe name)."""
    runs = read(root, name).runs if "/" not in name else []
    if runs:
        return name, runs[-1], None
    for group in all_runs(root):
        for record in reversed(group.runs):
            for stage, job in record.jobs.items():
                if job.id == target:
                    return group.name, record, stage
    raise UserError(f"no runs recorded for '{target}' (neither runs/{name}.json nor a job id in runs/)")


def read(root: Path, name: str) -> RecipeRuns:
    path = runs_path(root, name)
    if not path.exists():
        return RecipeRuns(name=name)
    shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    try:
        doc = upgrade(json.loads(path.read_text(encoding="utf-8")), shown)
        return RecipeRuns.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(the file)"
        # The field and what is wrong with it, never the value: a record is untrusted text.
        raise UserError(f"{shown}: run record is not valid: {where}: {first['msg']}; fix or move it aside") from None
    except ValueError as e:
        raise UserError(f"{shown}: run record is not valid ({str(e).splitlines()[0]}); fix or move it aside") from None


def save(root: Path, record: RunRecord, name: str) -> None:
    """Insert or replace `record` in the recipe's run file, atomically."""
    runs = read(root, name)
    ids = [r.run_id for r in runs.runs]
    if record.run_id in ids:
        runs.runs[ids.index(record.run_id)] = record
    else:
        runs.runs.append(record)
    atomic_write(runs_path(root, name), json.dumps(runs.model_dump(mode="json"), indent=2, sort_keys=False) + "\n")


def merge_runs(theirs: bytes | None, ours: bytes) -> bytes:
    """One recipe's run file changed on both sides: keep every run, ours winning where both have one."""
    mine = RecipeRuns.model_validate_json(ours)
    if theirs is None:
        return ours
    try:
        other = RecipeRuns.model_validate_json(theirs)
    except ValueError:
        return ours
    by_id = {r.run_id: r for r in other.runs} | {r.run_id: r for r in mine.runs}
    merged = RecipeRuns(name=mine.name, runs=sorted(by_id.values(), key=lambda r: (r.created_at, r.run_id)))
    return (json.dumps(merged.model_dump(mode="json"), indent=2) + "\n").encode("utf-8")


def atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
