"""A run's life: begin (or adopt, or retry), start, and advance state by state until it is recorded,
failed or canceled; one process at a time per recipe on this machine, one job per stage on the Hub."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from runner import failures, gates, ledger, outputs, promote, revisions
from runner.backends.base import FAILED, Backend, FoundJob, JobStatus
from runner.errors import UserError
from runner.gitrepo import git_commit
from runner.jobspec import (
    JOB_MODULES,
    JobConfig,
    bundle_dir,
    script_path,
    train_config,
)
from runner.ledger import Failure, JobRef, RunRecord
from runner.plan import Plan
from runner.recipe import LoadedRecipe
from runner.runs.follow import _finished
from runner.runs.gate import _fix_configs, authorize, check_spend
from runner.runs.step import (
    LOG_TAIL,
    Echo,
    RunBusy,
    SpendRefused,
    Step,
    _config,
    identity,
    _outputs,
    _places,
    trial_branch_of,
    new_run_id,
    recipe_version,
    sha256_file,
)
from runner.summaries import GgufSummary, TrainSummary, parse


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


def latest_of_version(loaded: LoadedRecipe, backend: Backend, root: Path | None = None,
                      resolved: revisions.Resolved | None = None) -> RunRecord | None:
    """The newest run of this recipe version (its named refs at `resolved`) on this backend, whatever its state;
    a run versioned before named refs' commits counted is this version when it resolved them alike."""
    version, plain = recipe_version(loaded, resolved), recipe_version(loaded)
    runs = ledger.read(root or loaded.root, loaded.recipe.name).runs
    return next((r for r in reversed(runs) if r.backend == backend.name and
                 (r.version == version or (r.version == plain and r.revisions == resolved))), None)


def begin(loaded: LoadedRecipe, plan: Plan, backend: Backend, *, retry: bool = False, hub_dir: Path | None = None,
          processes: int = 1, echo: Echo = print, trial: str | None = None, root: Path | None = None,
          commit: str | None = None, resolved: revisions.Resolved | None = None) -> RunRecord:
    """The run to drive for this recipe version: the one it has, or a new one (a new attempt only on purpose).

    A recipe version trains once. A repeated trigger carries its run on (or finds it done); a version
    that failed or was canceled, known from its record or, when the record was lost, from its job on
    the backend, is only trained again with `retry`, as a new attempt resuming from its checkpoint.
    """
    resolved = resolved or (revisions.now(loaded, backend) if revisions.names_ref(loaded) else None)  # sweep: given
    prior = latest_of_version(loaded, backend, root, resolved=resolved)
    if prior is not None and prior.state not in ("failed", "canceled"):
        echo(f"[run] {loaded.display} at this version already has run {prior.run_id} ({prior.state}); "
             "carrying it on instead of training again")
        return prior
    lost = None if prior else backend.find(identity(loaded.recipe.name, recipe_version(loaded, resolved), "train"),
                                           include_failed=True)
    if prior is None and (lost is None or lost.stage not in FAILED):
        return start(loaded, plan, backend, hub_dir=hub_dir, processes=processes, trial=trial, resolved=resolved,
                     root=root, commit=commit)
    what, attempt, resume = _failed_before(prior, lost, backend)
    if not retry:
        raise SpendRefused(f"{loaded.display}: this recipe version already failed ({what}); a re-trigger does not "
                           "pay for it again: fix the recipe, or retry deliberately with `runner run RECIPE --retry` "
                           "(the train workflow's manual run has a `retry` box)")
    if prior is not None and prior.failure is not None and prior.failure.stage == "gguf" and prior.train_summary:
        return _reconvert(loaded, plan, backend, prior, hub_dir=hub_dir, echo=echo, what=what, trial=trial)
    echo(f"[run] retrying ({what}) as attempt {attempt}" + ("; resuming from its checkpoint" if resume else ""))
    return start(loaded, plan, backend, hub_dir=hub_dir, processes=processes, attempt=attempt,
                 retry_of=prior.run_id if prior else None, resume=resume, trial=trial,
                 resolved=prior.revisions if prior and resume else resolved)  # a checkpoint goes on with its data


def _failed_before(prior: RunRecord | None, lost: FoundJob | None, backend: Backend) -> tuple[str, int, bool]:
    """What failed (a run, or a job whose record was lost), the attempt that retries it, and whether it resumes."""
    if prior is not None:
        what = f"run {prior.run_id} {prior.state}" + (f": {prior.failure.reason}" if prior.failure else "")
        return what, prior.attempt + 1, bool(prior.failure and prior.failure.checkpoint_on_hub)
    assert lost is not None
    return (f"job {lost.id} ended {lost.stage}", int(lost.labels.get("attempt", "1")) + 1,
            backend.checkpoint_saved(lost.config))


def _reconvert(loaded: LoadedRecipe, plan: Plan, backend: Backend, prior: RunRecord, *, hub_dir: Path | None,
               echo: Echo, what: str, trial: str | None = None) -> RunRecord:
    """Retry a run whose model was trained and verified but whose conversion failed: convert again, train nothing.

    The record's word is not enough to buy a job: on the Hub, the failed GGUF job must be there, and the
    model must be where the recipe (not the record) says the job pushed it.
    """
    summary = prior.train_summary
    assert summary is not None
    if backend.bills:
        job = backend.find(identity(loaded.recipe.name, prior.version, "gguf", prior.attempt), include_failed=True)
        if job is None or job.stage not in FAILED:
            raise SpendRefused(f"{loaded.display}: run {prior.run_id} says its conversion failed, but no failed GGUF "
                               f"job of attempt {prior.attempt} is on the backend; not converting again")
    where = train_config(loaded, plan, prior.run_id,
                         _places(backend, loaded, prior.run_id, hub_dir, trial_branch_of(trial, prior.version)),
                         push=backend.bills)
    pushed = summary.pushed
    problem = outputs.missing_model(backend, where, summary)
    if pushed is not None and pushed.repo != where.repo:
        problem = f"the record says it was pushed to {pushed.repo}, the recipe's repo is {where.repo}"
    if problem:
        raise SpendRefused(f"{loaded.display}: run {prior.run_id} failed converting, and its trained model cannot be "
                           f"reused ({problem}); change the recipe to train it again")
    record = start(loaded, plan, backend, hub_dir=hub_dir, processes=prior.processes, attempt=prior.attempt + 1,
                   retry_of=prior.run_id, trial=trial, resolved=prior.revisions)  # what its model trained on
    if "train" in prior.jobs:  # provenance: the job that trained this model, billed to the run it belongs to
        record.jobs["train"] = prior.jobs["train"].model_copy(update={"reused_from": prior.run_id})
    record.train_summary, record.metrics, record.evaluation = prior.train_summary, prior.metrics, prior.evaluation
    record.seconds = {k: v for k, v in prior.seconds.items() if k == "train"}
    record.progress = prior.progress
    record.move("trained")
    ledger.save(loaded.root, record, loaded.recipe.name)
    echo(f"[run] retrying ({what}) as attempt {record.attempt}: the model run {prior.run_id} trained is in place, "
         "so only the conversion runs again")
    return record


def start(loaded: LoadedRecipe, plan: Plan, backend: Backend, *, hub_dir: Path | None = None,
          processes: int = 1, attempt: int = 1, retry_of: str | None = None, resume: bool = False,
          root: Path | None = None, resolved: revisions.Resolved | None = None, trial: str | None = None,
          commit: str | None = None) -> RunRecord:
    """A new run in state `planned`, with the commits of its Hub inputs resolved and its training job's config
    derived from the recipe and saved; a sweep's `trial` is recorded, and pushes to its own branch where the
    backend keeps branches. `commit`: the reviewed commit a recipe read from a snapshot is as of."""
    r = loaded.recipe
    run_id = new_run_id()
    push = backend.bills
    check_spend(plan, backend, loaded.display)
    if push:
        if not loaded.output_repo:
            raise UserError(f"{loaded.display}: training on HF Jobs needs an output repo (output.repo, or a "
                            "namespace in recipes/_defaults.yaml); the trained model would be lost")
        processes = max(plan.devices, 1)  # a multi-GPU flavor trains data-parallel (or sharded) across all
    resolved = resolved if resolved is not None else revisions.now(loaded, backend)
    record = RunRecord(
        run_id=run_id, recipe=loaded.display, recipe_sha256=sha256_file(loaded.path),
        version=recipe_version(loaded, resolved), commit=commit or git_commit(loaded.root),
        backend=backend.name, plan=plan,
        cost_usd={"estimated": plan.cost_usd, "max": plan.max_cost_usd, "actual": 0.0 if not push else None},
        processes=processes, push=push,
        attempt=attempt, retry_of=retry_of, resume=resume, gate_rule=r.evaluation.gate, trial=trial,
        base_revision=resolved.base_model, dataset_revision=resolved.dataset,
    )
    record.history.append({"state": "planned", "at": record.created_at})
    step = Step(loaded, backend, plan=plan, root=root, hub_dir=hub_dir, trial=trial)
    _fix_configs(step, record)
    places = _places(backend, loaded, run_id, hub_dir, trial_branch_of(trial, record.version))
    record.links["model"] = f"https://huggingface.co/{loaded.output_repo}" if push else str(places.model_dir)
    ledger.save(step.home, record, r.name)
    return record


def _submit(step: Step, record: RunRecord, stage: str) -> None:
    spec = authorize(step, record, stage)
    setattr(record.configs, stage, spec.config)  # as submitted: a GGUF config now names the model's commit
    # A job for this very recipe version may exist already, from a run whose record was lost with
    # the runner that started it (or is on another branch): take it over, with the config it runs
    # with, rather than pay twice. A version whose job failed is not resubmitted by a re-trigger:
    # retrying is a deliberate act (`runner run --retry`), which is a new attempt.
    if stage == "train" and record.attempt > 1:
        _check_retry(step, record)
    found = step.backend.find(identity(step.name, record.version, stage, record.attempt),
                              include_failed=True)
    if found and found.stage in FAILED:
        reason = (f"this recipe version's {stage} job {found.id} already ended {found.stage}; a re-trigger does not "
                  "pay for it again: fix the recipe, or retry deliberately with `runner run RECIPE --retry`")
        record.failure = Failure(stage=stage, reason=reason)
        record.move("failed")  # what happened: this run submitted nothing
        ledger.save(step.home, record, step.name)
        raise SpendRefused(f"{record.recipe}: {reason}")
    if found:
        setattr(record.configs, stage, found.config)
        job_id = found.id
        step.echo(f"[{stage}] adopting job {job_id} ({found.stage}): it trains this same recipe version")
    elif stage == "train" and not step.may_train:
        raise SpendRefused(f"run {record.run_id} ({record.recipe}): no training job of this version and attempt "
                           "exists, and reconcile never starts one; the train workflow (the merge, behind its "
                           "approval) or `runner run RECIPE` does")
    else:
        if stage == "gguf" and step.backend.bills:
            verify_training(step, record)
        job_id = step.backend.submit(spec)
        # Another machine may have submitted the same work meanwhile: one of the two jobs survives.
        held = step.backend.claim(identity(step.name, record.version, stage, record.attempt), job_id)
        if held.id != job_id:
            setattr(record.configs, stage, held.config)  # the surviving job's config, as when adopting
            job_id = held.id
    planned = step.plan.job(stage) if step.plan else None
    record.jobs[stage] = JobRef(id=job_id, backend=step.backend.name, flavor=spec.flavor, submitted_at=ledger.now(),
                                script_sha256=sha256_file(script_path(spec.script)),
                                modules_sha256={m: sha256_file(script_path(spec.script).with_name(m))
                                                for m in JOB_MODULES},
                                timeout_seconds=spec.timeout_seconds,
                                usd_per_hour=planned.usd_per_hour if planned and record.push else 0.0)
    step.echo(f"[{stage}] job {job_id} on the {step.backend.name} backend")


def verify_training(step: Step, record: RunRecord) -> None:
    """Before a paid conversion: this attempt's training job is on the backend, COMPLETED, and the summary it
    pushed, read again at its pushed commit, is the one the record holds. An edited record buys nothing."""
    where = f"run {record.run_id} ({record.recipe})"
    ref = record.jobs.get("train")
    # A conversion retry reuses the model the previous attempt trained: that attempt's job, in its bundle.
    owner = (ref.reused_from if ref else None) or record.run_id
    attempt = record.attempt - 1 if owner != record.run_id else record.attempt
    job = step.backend.find(identity(step.name, record.version, "train", attempt))
    if job is None or ref is None or job.id != ref.id or job.stage != "COMPLETED":
        seen = "no such job" if job is None else f"job {job.id} is {job.stage}"
        raise SpendRefused(f"{where}: a GGUF job needs this attempt's training job COMPLETED on the backend "
                           f"({seen}); not submitting the GGUF job")
    # The summary is uploaded after the model (it names the model's commit): read it again, then check
    # the model is at the commit it names.
    config = _config(record, "train")
    if owner != record.run_id and config.summary_repo_path:  # the summary sits in the owner run's bundle
        config = config.model_copy(update={"summary_repo_path": config.summary_repo_path.replace(
            bundle_dir(record.run_id), bundle_dir(owner), 1)})
    raw = step.backend.summary(config)
    again, _ = parse(TrainSummary, raw) if raw is not None else (None, None)
    if again is None or record.train_summary is None or again.model_dump() != record.train_summary.model_dump():
        raise SpendRefused(f"{where}: the training summary in the record is not the one the job wrote; "
                           "not submitting the GGUF job")
    missing = outputs.missing_model(step.backend, config, again)
    if missing:
        raise SpendRefused(f"{where}: {missing}; not submitting the GGUF job")


def _check_retry(step: Step, record: RunRecord) -> None:
    """Attempt N trains only after attempt N-1 of this version failed: an edited record cannot buy another run."""
    newest = step.backend.find(identity(step.name, record.version, "train"), include_failed=True)
    if newest and newest.labels.get("attempt", "1") == str(record.attempt):
        return  # this attempt's own job: adopted below
    if newest is None or newest.stage not in FAILED or \
            newest.labels.get("attempt", "1") != str(record.attempt - 1):
        raise SpendRefused(f"run {record.run_id} ({record.recipe}): attempt {record.attempt} needs attempt "
                           f"{record.attempt - 1} of this version to have failed on the backend; not submitting")


def _fail(step: Step, record: RunRecord, stage: str, status: JobStatus) -> None:
    tail = list(deque(step.backend.logs(record.jobs[stage].id), maxlen=LOG_TAIL))
    config = getattr(record.configs, stage)
    checkpoint = stage == "train" and config is not None and step.backend.checkpoint_saved(config)
    job = record.jobs[stage]  # what the job was submitted with, not what the recipe says now
    found = failures.diagnose(
        stage, status.stage, status.message, tail, recipe=record.recipe, flavor=job.flavor, config=config,
        timeout_seconds=job.timeout_seconds, checkpoint=_checkpoint_place(config) if checkpoint else None)
    record.failure = Failure(stage=stage, reason=found.reason, kind=found.kind, step=found.step,
                             total_steps=found.total_steps, log_tail=tail, checkpoint_on_hub=checkpoint)
    record.move("canceled" if status.stage == "CANCELED" else "failed")
    step.echo(f"[{stage}] {record.state}: {found.reason}")


def _checkpoint_place(config: JobConfig) -> str:
    # TRL's hub_strategy="checkpoint" pushes to last-checkpoint/ (of the job's branch, when it has one)
    if not config.repo:
        return config.output_dir
    return f"{config.repo}/last-checkpoint/" + (f" (branch {config.branch})" if config.branch else "")


def _from_planned(step: Step, record: RunRecord, wait: bool) -> bool:
    if not record.push and record.configs.train:
        Path(record.configs.train.summary_path).parent.mkdir(parents=True, exist_ok=True)
    _submit(step, record, "train")
    record.move("training")
    return True


def _from_running(step: Step, record: RunRecord, wait: bool) -> bool:
    """training or converting: the job's end decides the next state."""
    stage = "train" if record.state == "training" else "gguf"
    status = _finished(step, record, stage, wait)
    if status is None:
        return False
    if status.stage != "COMPLETED":
        _fail(step, record, stage, status)
    elif stage == "train":
        _trained(step, record)
    else:
        _converted(step, record)
    return True


def _from_trained(step: Step, record: RunRecord, wait: bool) -> bool:
    if record.trial is not None and record.trial != step.sweep_winner:
        return False  # a sweep's trial waits until its sweep names the winner
    if record.gate is not None and not record.gate.passed:
        step.echo(f"[gate] run {record.run_id} {record.gate.line()}: not published, no GGUF")
        record.move("rejected")
    elif record.configs.gguf is None:  # what the run fixed at its start, not what the recipe says now
        _record(step, record)
    else:
        _submit(step, record, "gguf")
        record.move("converting")
    return True


def _from_converted(step: Step, record: RunRecord, wait: bool) -> bool:
    _record(step, record)
    return True


# One handler per state that can move (runner/ledger.py NEXT): each moves the run on
# and says whether it did (False: it waits for a job, or for its sweep).
HANDLERS: dict[str, Callable[[Step, RunRecord, bool], bool]] = {
    "planned": _from_planned, "training": _from_running, "trained": _from_trained,
    "converting": _from_running, "converted": _from_converted,
}


def advance(record: RunRecord, step: Step, *, wait: bool) -> bool:
    """Move the run one step and save it. Returns False when it must wait for a job to finish."""
    if not step.submit and record.state in ("planned", "trained", "converted"):
        record.move("canceled")  # canceled between jobs: nothing more is submitted or recorded
    else:
        handler = HANDLERS.get(record.state)
        if handler is None or not handler(step, record, wait):
            return False
    ledger.save(step.home, record, step.name)
    step.updated(record)
    return True


def _trained(step: Step, record: RunRecord) -> None:
    config = _config(record, "train")
    summary = _outputs(step, record, "train", config, TrainSummary,
                       lambda s: outputs.missing_model(step.backend, config, s))
    if summary is None:
        return
    record.train_summary = summary
    record.metrics = dict(summary.final_metrics)
    record.evaluation = summary.evaluation
    if record.gate_rule is not None:
        record.gate = _judge(step, record)
    record.move("trained")


def _judge(step: Step, record: RunRecord) -> gates.GateVerdict:
    """The run's gate over its numbers before and after training, and the recipe's current model's."""
    ev = record.evaluation
    before, after = (gates.scores(ev, after=False), gates.scores(ev)) if ev else (gates.Scores(), gates.Scores())
    current = promote.current_scores(step.home, step.name)
    return gates.judge(record.gate_rule, before, after, current)


def _converted(step: Step, record: RunRecord) -> None:
    config = _config(record, "gguf")
    summary = _outputs(step, record, "gguf", config, GgufSummary,
                       lambda s: outputs.missing_ggufs(step.backend, config, s))
    if summary is None:
        return
    record.gguf_summary = summary
    if summary.skipped:
        step.echo(f"[gguf] not converted: {summary.skipped}")
    record.links["gguf"] = f"https://huggingface.co/{config.repo}" if config.repo else config.output_dir
    record.move("converted")


def _record(step: Step, record: RunRecord) -> None:
    """Write the model card (and loss plot) into the repo, and beside the weights."""
    start = time.monotonic()
    name = step.name
    card_dir = step.home / "models" / name
    record.sweep = record.sweep and record.sweep.settled(record)  # the winner's own row, GGUF job's cost included
    files = promote.card_files(record, name)
    for file, data in files.items():
        ledger.atomic_write(card_dir / file, data)
    # The card is the model repo's README, as on the Hub (the local stand-in: beside the weights). On the
    # Hub only to the repo the recipe at the run's commit derives: a record names it, it does not decide it.
    target = _config(record, "train")
    if step.backend.bills and (step.loaded is None or target.repo != step.loaded.output_repo):
        step.echo(f"[card] not published: the record's repo {target.repo} is not the one the recipe at commit "
                  f"{(record.commit or '?')[:12]} derives ({step.loaded.output_repo if step.loaded else 'unknown'})")
    else:
        step.backend.publish(target, files, f"recipes-runner: model card for run {record.run_id}")
    record.links["card"] = str((card_dir / "README.md").relative_to(step.home))
    record.seconds["record"] = round(time.monotonic() - start, 2)
    record.move("recorded")
    step.echo(f"[done] {name}: card {record.links['card']}, record runs/{name}.json")


def cancel(record: RunRecord, step: Step) -> RunRecord:
    """End a run that has no running job (between jobs): it is canceled and submits nothing more."""
    with run_lock(step.home, step.name) as mine:
        if not mine:
            raise RunBusy(f"another runner process is advancing {step.name}; try again later")
        if not record.terminal:
            record.move("canceled")
            ledger.save(step.home, record, step.name)
    return record


def drive(record: RunRecord, step: Step, *, wait: bool) -> RunRecord:
    """Advance until the run is terminal, or (not waiting) until it waits on a running job."""
    with run_lock(step.home, step.name) as mine:
        if not mine:
            raise RunBusy(f"another runner process is advancing {step.name}; try again later")
        # Another process may have moved the run while we waited for the lock: start from what is on disk.
        saved = {r.run_id: r for r in ledger.read(step.home, step.name).runs}
        record = saved.get(record.run_id, record)
        while not record.terminal and advance(record, step, wait=wait):
            if step.out_of_time():
                break  # the follow window closed: reconcile carries the run on
        step.updated(record)
    return record
