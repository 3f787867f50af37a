"""After the merge: train, convert, record. The same steps whatever the backend.

Each step moves the run record forward and saves it, so a crash leaves a record that
says exactly how far the run got.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner import card, ledger
from runner.backends.base import Backend, JobSpec, JobStatus
from runner.backends.local import script_path
from runner.jobspec import Places, gguf_config, train_config
from runner.ledger import Failure, JobRef, RunRecord
from runner.plan import Plan
from runner.recipe import LoadedRecipe

LOG_TAIL = 30
Echo = Callable[[str], None]


@dataclass
class Outcome:
    status: JobStatus
    tail: list[str]


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


def follow(backend: Backend, job_id: str, stage: str, echo: Echo) -> Outcome:
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    for line in backend.logs(job_id, follow=True):
        tail.append(line)
        echo(f"[{stage}] {line}")
    status = backend.status(job_id)
    while not status.finished:  # logs can end a moment before the status does
        time.sleep(0.2)
        status = backend.status(job_id)
    return Outcome(status, list(tail))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run(loaded: LoadedRecipe, plan: Plan, backend: Backend, *, hub_dir: Path, processes: int = 1,
        echo: Echo = print) -> RunRecord:
    r = loaded.recipe
    run_id = new_run_id()
    commit = git_commit(loaded.root)
    record = RunRecord(
        run_id=run_id, recipe=loaded.display, recipe_sha256=sha256_file(loaded.path), commit=commit,
        backend=backend.name, plan=plan.model_dump(mode="json", exclude={"warnings", "guesses"}),
        cost_usd={"estimated": plan.cost_usd, "actual": 0.0 if backend.name == "local" else None},
    )
    record.history.append({"state": "planned", "at": record.created_at})
    ledger.save(loaded.root, record, r.name)
    places = local_places(loaded, run_id, hub_dir)
    places.work_dir.mkdir(parents=True, exist_ok=True)
    labels = {"recipe": r.name, "run": run_id, "commit": (commit or "none")[:12]}
    push = backend.name != "local"

    def submit(stage: str, spec: JobSpec) -> str:
        job_id = backend.submit(spec)
        record.jobs[stage] = JobRef(id=job_id, backend=backend.name, flavor=spec.flavor, submitted_at=ledger.now(),
                                    script_sha256=sha256_file(script_path(spec.script)))
        return job_id

    def fail(stage: str, outcome: Outcome) -> RunRecord:
        reason = outcome.status.message or outcome.status.stage.lower()
        # The job's own one-line error if it printed one, else its last words (an exception, usually).
        errors = [ln for ln in outcome.tail if ln.startswith("error:")]
        last = errors[-1].removeprefix("error:").strip() if errors else next(
            (ln.strip() for ln in reversed(outcome.tail) if ln.strip()), "")
        if last:
            reason = f"{reason}: {last}"
        record.failure = Failure(stage=stage, reason=reason, log_tail=outcome.tail)
        record.jobs[stage].stage = outcome.status.stage
        record.jobs[stage].finished_at = ledger.now()
        record.move("canceled" if outcome.status.stage == "CANCELED" else "failed")
        ledger.save(loaded.root, record, r.name)
        echo(f"[{stage}] failed: {reason}")
        return record

    # --- train -----------------------------------------------------------------------------------
    config = train_config(loaded, plan, run_id, places, push=push)
    start = time.monotonic()
    job_id = submit("train", JobSpec(script="train", config=config, flavor=plan.flavor,
                                     timeout_seconds=plan.timeout_seconds, labels=labels | {"stage": "train"},
                                     processes=processes))
    record.move("training")
    ledger.save(loaded.root, record, r.name)
    echo(f"[train] job {job_id} on the {backend.name} backend")
    outcome = follow(backend, job_id, "train", echo)
    record.seconds["train"] = round(time.monotonic() - start, 2)
    if outcome.status.stage != "COMPLETED":
        return fail("train", outcome)
    record.jobs["train"].stage, record.jobs["train"].finished_at = "COMPLETED", ledger.now()
    record.train_summary = _read_json(Path(config["summary_path"]))
    summary = record.train_summary or {}
    record.metrics = {k: float(v) for k, v in (summary.get("final_metrics") or {}).items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
    record.links["model"] = str(places.model_dir) if not push else f"https://huggingface.co/{loaded.output_repo}"
    record.move("trained")
    ledger.save(loaded.root, record, r.name)

    # --- convert ---------------------------------------------------------------------------------
    if r.gguf.enabled:
        gconfig = gguf_config(loaded, places, adapter=bool(summary.get("adapter")), push=push)
        start = time.monotonic()
        job_id = submit("gguf", JobSpec(script="gguf", config=gconfig, flavor="cpu-upgrade",
                                        timeout_seconds=3600, labels=labels | {"stage": "gguf"}))
        record.move("converting")
        ledger.save(loaded.root, record, r.name)
        echo(f"[gguf] job {job_id}")
        outcome = follow(backend, job_id, "gguf", echo)
        record.seconds["gguf"] = round(time.monotonic() - start, 2)
        if outcome.status.stage != "COMPLETED":
            return fail("gguf", outcome)
        record.jobs["gguf"].stage, record.jobs["gguf"].finished_at = "COMPLETED", ledger.now()
        record.gguf_summary = _read_json(Path(gconfig["summary_path"]))
        record.links["gguf"] = str(places.gguf_dir) if not push else f"https://huggingface.co/{loaded.output_repo}-GGUF"
        record.move("converted")
        ledger.save(loaded.root, record, r.name)

    # --- record ----------------------------------------------------------------------------------
    start = time.monotonic()
    card_dir = loaded.root / "models" / r.name
    png = card.loss_plot_png(summary.get("log_history") or [], f"{r.name} ({r.method.upper()})")
    if png:
        ledger.atomic_write(card_dir / "loss.png", png)
    text = card.build(loaded, record, has_plot=png is not None)
    ledger.atomic_write(card_dir / "README.md", text)
    if not push:  # the local Hub copy sits beside the weights, as README.md does on the Hub
        ledger.atomic_write(places.model_dir / "README.md", text)
        if png:
            shutil.copyfile(card_dir / "loss.png", places.model_dir / "loss.png")
    record.links["card"] = str((card_dir / "README.md").relative_to(loaded.root))
    record.seconds["record"] = round(time.monotonic() - start, 2)
    record.move("recorded")
    ledger.save(loaded.root, record, r.name)
    echo(f"[done] {r.name}: card {record.links['card']}, record {ledger.runs_path(loaded.root, r.name).relative_to(loaded.root)}")
    return record
