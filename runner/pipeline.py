"""After the merge: train, convert, record. The same steps whatever the backend.

A run is the state machine in runner/ledger.py. `advance` moves it one step and saves
the record, so any process (this one, a re-run, a scheduled `runner reconcile`) can
pick a run up wherever the last one stopped. Jobs carry labels (recipe, run, commit,
stage) so a repeated submission adopts the job already running instead of paying twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import secrets
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runner import card, ledger
from runner.backends.base import Backend, JobSpec, JobStatus
from runner.backends.local import script_path
from runner.errors import UserError
from runner.hardware import BUILTIN_FLAVORS
from runner.jobspec import Places, bundle_dir, gguf_config, hf_places, shipped_files, train_config
from runner.ledger import Failure, JobRef, RunRecord
from runner.plan import Plan, billed
from runner.recipe import LoadedRecipe

LOG_TAIL = 30
GGUF_FLAVOR = "cpu-upgrade"
GGUF_TIMEOUT = 3600
Echo = Callable[[str], None]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_places(loaded: LoadedRecipe, run_id: str, hub_dir: Path) -> Places:
    """The local stand-in for the Hub: <hub_dir>/<namespace>/<name>[-GGUF]."""
    repo = loaded.output_repo or f"local/{loaded.recipe.name}"
    return Places(model_dir=hub_dir / repo, gguf_dir=hub_dir / f"{repo}-GGUF",
                  work_dir=loaded.root / ".runner" / "runs" / run_id)


@contextlib.contextmanager
def run_lock(root: Path, name: str) -> Iterator[bool]:
    """An exclusive, non-blocking lock per recipe: two reconcilers never advance one run at once."""
    path = root / ".runner" / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class RunBusy(UserError):
    """Another process holds this recipe's run lock: it is already carrying the run on."""


@dataclass
class Step:
    """Everything `advance` needs besides the record."""

    loaded: LoadedRecipe
    backend: Backend
    echo: Echo = print


def _places(backend: Backend, loaded: LoadedRecipe, run_id: str, hub_dir: Path | None) -> Places:
    if backend.mount:
        return hf_places(backend.mount)
    assert hub_dir is not None
    return local_places(loaded, run_id, hub_dir)


def recipe_version(loaded: LoadedRecipe) -> str:
    """What a run trains, as a short hash: the effective recipe, repo defaults applied."""
    return hashlib.sha256(loaded.recipe.model_dump_json().encode()).hexdigest()[:16]


def resumable(loaded: LoadedRecipe, backend: Backend) -> RunRecord | None:
    """The run this recipe version already has on this backend, unless it failed or was canceled.

    A repeated trigger (a re-delivered merge event, a re-run workflow) carries that run on,
    or finds it done, instead of paying for a second training job.
    """
    runs = ledger.read(loaded.root, loaded.recipe.name).runs
    last = runs[-1] if runs else None
    if last and last.backend == backend.name and last.state not in ("failed", "canceled") and \
            last.version == recipe_version(loaded):
        return last
    return None


def _identity(name: str, version: str, stage: str) -> dict[str, str]:
    """The labels that say what a job trains, whichever run submitted it."""
    return {"recipe": name, "version": version, "stage": stage}


def start(loaded: LoadedRecipe, plan: Plan, backend: Backend, *, hub_dir: Path | None = None,
          processes: int = 1) -> RunRecord:
    """A new run in state `planned`, with the training job's config fixed and saved."""
    r = loaded.recipe
    run_id = new_run_id()
    version = recipe_version(loaded)
    push = backend.name != "local"
    if push:
        if not loaded.output_repo:
            raise UserError(f"{loaded.display}: training on HF Jobs needs an output repo (output.repo, or a "
                            "namespace in recipes/_defaults.yaml); the trained model would be lost")
        processes = max(plan.devices, 1)  # a multi-GPU flavor trains data-parallel (or sharded) across all
    record = RunRecord(
        run_id=run_id, recipe=loaded.display, recipe_sha256=sha256_file(loaded.path), version=version,
        commit=git_commit(loaded.root),
        backend=backend.name, plan=plan.model_dump(mode="json", exclude={"warnings", "guesses"}),
        cost_usd={"estimated": plan.cost_usd, "actual": 0.0 if not push else None}, processes=processes, push=push,
    )
    record.history.append({"state": "planned", "at": record.created_at})
    places = _places(backend, loaded, run_id, hub_dir)
    record.configs["train"] = train_config(loaded, plan, run_id, places, push=push)
    record.links["model"] = f"https://huggingface.co/{loaded.output_repo}" if push else str(places.model_dir)
    ledger.save(loaded.root, record, r.name)
    return record


def _labels(record: RunRecord, name: str, stage: str) -> dict[str, str]:
    return _identity(name, record.version, stage) | {"run": record.run_id, "commit": (record.commit or "none")[:12]}


def _spec(step: Step, record: RunRecord, script: str, **kw) -> JobSpec:
    """A job of this run; remote engines also get the bundle: where it goes and the repo-local inputs."""
    bundle = {}
    if record.push:
        bundle = {"bundle_repo": step.loaded.output_repo, "bundle_dir": bundle_dir(record.run_id),
                  "files": {k: str(v) for k, v in shipped_files(step.loaded).items()}}
    return JobSpec(script=script, config=record.configs[script], labels=_labels(record, step.loaded.recipe.name, script),
                   **bundle, **kw)


def _submit(step: Step, record: RunRecord, stage: str, spec: JobSpec) -> None:
    # A job for this very recipe version may exist already, from a run whose record was lost with
    # the runner that started it (or is on another branch): take it over, with the config it runs
    # with, rather than pay twice. Else submit; `submit` itself adopts a job with this run's labels.
    found = step.backend.find(_identity(step.loaded.recipe.name, record.version, stage))
    if found and found.config:
        record.configs[stage] = found.config
        job_id = found.id
        step.echo(f"[{stage}] adopting job {job_id} ({found.stage}): it trains this same recipe version")
    else:
        job_id = step.backend.submit(spec)
    record.jobs[stage] = JobRef(id=job_id, backend=step.backend.name, flavor=spec.flavor, submitted_at=ledger.now(),
                                script_sha256=sha256_file(script_path(spec.script)))
    step.echo(f"[{stage}] job {job_id} on the {step.backend.name} backend")


def _finished(step: Step, record: RunRecord, stage: str, wait: bool) -> JobStatus | None:
    """The job's final status; None while it runs (and we are not waiting)."""
    job_id = record.jobs[stage].id
    if wait:
        for line in step.backend.logs(job_id, follow=True):
            step.echo(f"[{stage}] {line}")
    status = step.backend.status(job_id)
    while wait and not status.finished:  # logs can end a moment before the status does
        time.sleep(0.2)
        status = step.backend.status(job_id)
    if status.stage != record.jobs[stage].stage:
        step.echo(f"[{stage}] job {job_id}: {record.jobs[stage].stage} -> {status.stage}")
        record.jobs[stage].stage = status.stage
    if not status.finished:
        return None
    record.jobs[stage].finished_at = ledger.now()
    submitted = time.mktime(time.strptime(record.jobs[stage].submitted_at, "%Y-%m-%dT%H:%M:%SZ"))
    finished = time.mktime(time.strptime(record.jobs[stage].finished_at, "%Y-%m-%dT%H:%M:%SZ"))
    record.seconds[stage] = max(finished - submitted, 0.0)
    if record.push:  # an upper bound: from submission, so it includes time spent scheduling
        price = next((f.usd_per_hour for f in BUILTIN_FLAVORS if f.name == record.jobs[stage].flavor), 0.0)
        spent = billed(max(record.seconds[stage], 1.0) / 3600, price)  # a started minute is billed
        record.cost_usd["actual"] = round((record.cost_usd.get("actual") or 0.0) + spent, 4)
    return status


def _fail(step: Step, record: RunRecord, stage: str, status: JobStatus) -> None:
    tail = list(deque(step.backend.logs(record.jobs[stage].id), maxlen=LOG_TAIL))
    reason = status.message or status.stage.lower()
    # The job's own one-line error if it printed one, else its last words (an exception, usually).
    errors = [ln for ln in tail if ln.startswith("error:")]
    last = errors[-1].removeprefix("error:").strip() if errors else next(
        (ln.strip() for ln in reversed(tail) if ln.strip()), "")
    if last and last not in reason:
        reason = f"{reason}: {last}"
    checkpoint = stage == "train" and step.backend.checkpoint_saved(record.configs["train"])
    record.failure = Failure(stage=stage, reason=reason, log_tail=tail, checkpoint_on_hub=checkpoint)
    if checkpoint:
        reason += "; a checkpoint was saved, so a rerun can resume from it"
    record.move("canceled" if status.stage == "CANCELED" else "failed")
    step.echo(f"[{stage}] {record.state}: {reason}")


def advance(record: RunRecord, step: Step, *, wait: bool) -> bool:
    """Move the run one step and save it. Returns False when it must wait for a job to finish."""
    loaded = step.loaded
    r = loaded.recipe
    plan = record.plan
    state = record.state
    if state == "planned":
        if not record.push:
            Path(record.configs["train"]["summary_path"]).parent.mkdir(parents=True, exist_ok=True)
        _submit(step, record, "train", _spec(step, record, "train", flavor=plan.get("flavor"),
                                             timeout_seconds=plan.get("timeout_seconds"), processes=record.processes))
        record.move("training")
    elif state in ("training", "converting"):
        stage = "train" if state == "training" else "gguf"
        status = _finished(step, record, stage, wait)
        if status is None:
            return False
        if status.stage != "COMPLETED":
            _fail(step, record, stage, status)
        elif stage == "train":
            _trained(step, record)
        else:
            _converted(step, record)
    elif state == "trained":
        if not r.gguf.enabled:
            _record(step, record)
        else:
            places = _places(step.backend, loaded, record.run_id, None) if record.push else _local_gguf_places(record)
            adapter = bool((record.train_summary or {}).get("adapter"))
            record.configs["gguf"] = gguf_config(loaded, places, record.run_id, adapter=adapter, push=record.push)
            _submit(step, record, "gguf", _spec(step, record, "gguf", flavor=GGUF_FLAVOR, timeout_seconds=GGUF_TIMEOUT))
            record.move("converting")
    elif state == "converted":
        _record(step, record)
    else:
        return False
    ledger.save(loaded.root, record, r.name)
    return True


def _trained(step: Step, record: RunRecord) -> None:
    summary = step.backend.summary(record.configs["train"]) or {}
    record.train_summary = summary
    record.metrics = {k: float(v) for k, v in (summary.get("final_metrics") or {}).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
    record.move("trained")


def _converted(step: Step, record: RunRecord) -> None:
    record.gguf_summary = step.backend.summary(record.configs["gguf"])
    repo = record.configs["gguf"].get("hub_repo")
    record.links["gguf"] = f"https://huggingface.co/{repo}" if repo else record.configs["gguf"]["output_dir"]
    record.move("converted")


def _local_gguf_places(record: RunRecord) -> Places:
    model_dir = Path(record.configs["train"]["output_dir"])
    return Places(model_dir=model_dir, gguf_dir=model_dir.with_name(model_dir.name + "-GGUF"),
                  work_dir=Path(record.configs["train"]["summary_path"]).parent)


def _record(step: Step, record: RunRecord) -> None:
    """Write the model card (and loss plot) into the repo, and beside the weights."""
    loaded = step.loaded
    r = loaded.recipe
    start = time.monotonic()
    if record.recipe_sha256 != sha256_file(loaded.path):
        step.echo(f"[record] note: {loaded.display} changed since run {record.run_id} started")
    card_dir = loaded.root / "models" / r.name
    summary = record.train_summary or {}
    png = card.loss_plot_png(summary.get("log_history") or [], f"{r.name} ({r.method.upper()})")
    if png:
        ledger.atomic_write(card_dir / "loss.png", png)
    text = card.build(loaded, record, has_plot=png is not None)
    ledger.atomic_write(card_dir / "README.md", text)
    # The card is the model repo's README, as on the Hub (the local stand-in: beside the weights).
    step.backend.publish(record.configs["train"], {"README.md": text.encode("utf-8"), **({"loss.png": png} if png else {})},
                         f"recipes-runner: model card for run {record.run_id}")
    record.links["card"] = str((card_dir / "README.md").relative_to(loaded.root))
    record.seconds["record"] = round(time.monotonic() - start, 2)
    record.move("recorded")
    step.echo(f"[done] {r.name}: card {record.links['card']}, record runs/{r.name}.json")


def drive(record: RunRecord, step: Step, *, wait: bool) -> RunRecord:
    """Advance until the run is terminal, or (not waiting) until it waits on a running job."""
    with run_lock(step.loaded.root, step.loaded.recipe.name) as mine:
        if not mine:
            raise RunBusy(f"another runner process is advancing {step.loaded.recipe.name}; try again later")
        # Another process may have moved the run while we waited for the lock: start from what is on disk.
        saved = {r.run_id: r for r in ledger.read(step.loaded.root, step.loaded.recipe.name).runs}
        record = saved.get(record.run_id, record)
        while not record.terminal and advance(record, step, wait=wait):
            pass
    return record
