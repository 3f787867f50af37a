"""Running a sweep: train every trial (each its own run), evaluate, pick the winner, convert only the winner.

Trials are ordinary runs (runner/runs/) whose record names their trial; each waits at `trained` until the
sweep decides. The losers end `rejected` (no GGUF, no card) with the reason; the winner goes on through its
gate, its conversion and its record like any run. Locally the trials train one at a time; on the Hub up to
`sweep.parallel` at once.

`advance` is one pass over a sweep, from the records on disk: follow what runs, start what `parallel` allows,
and once every trial is held, decide. `runner run` repeats it (until done, its follow window closes, or once
with --detach); `runner reconcile` makes the same passes later, from the recipe as of the trials' commit.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from runner import gates, ledger, promote, revisions, runs, sweep
from runner.backends.base import Backend
from runner.errors import UserError
from runner.ledger import RunRecord
from runner.recipe import LoadedRecipe
from runner.summaries import TrainSummary, parse

POLL_SECONDS = 5.0
NOT_BEGUN = "no job shows the merge began this sweep"
STOPPED = "a trial's job was canceled (`runner cancel`): the sweep is stopped"


class SweepOutcome(BaseModel):
    """What a sweep has done so far: every begun trial's run, the verdict once every trial was held, the winner's
    run; `done` once every trial's run ended."""

    runs: dict[str, RunRecord]  # trial id -> its run
    verdict: sweep.Verdict | None = None
    winner: RunRecord | None = None
    done: bool = False


@dataclass
class Sweeping:
    """A sweep and how to carry it on: the recipe with `sweep:` and its plan, where the records are, how long to
    follow. `runner run` trusts the recipe file it was given (the merge, behind its approval); reconcile gives the
    recipe as of the trials' reviewed commit, and starts a trial only for a sweep the merge began (`_begun`)."""

    loaded: LoadedRecipe
    backend: Backend
    plan: sweep.SweepPlan
    echo: runs.Echo = print
    root: Path | None = None  # where runs/ is (default: the recipe's repository; reconcile: the checkout)
    hub_dir: Path | None = None
    commit: str | None = None  # reconcile: the reviewed commit the trials name, recorded on trials it starts
    merge: bool = True  # False (reconcile): the records alone never make a trial start
    wait: bool = True  # follow jobs (within the window); False: one pass, then leave the sweep to reconcile
    follow_seconds: float | None = None
    started: float = field(default_factory=time.monotonic)
    # The commits of the recipe's Hub inputs every trial trains on, resolved once per sweep (reconcile: the trials'
    # records'); default: those of the sweep's unfinished trials, else where its inputs are now.
    resolved: revisions.Resolved | None = None
    versions: dict[str, str] = field(default_factory=dict)  # trial id -> the version its recipe derives
    _began: bool | None = None
    _stopped: bool | None = None

    def __post_init__(self) -> None:
        assert self.loaded.recipe.sweep is not None
        self.resolved = self.resolved or _resolution(self)
        self.versions = {tp.trial.id: runs.recipe_version(self.trial(tp), self.resolved) for tp in self.plan.trials}

    @property
    def name(self) -> str:
        return self.loaded.recipe.name

    @property
    def home(self) -> Path:
        return self.root or self.loaded.root

    @property
    def width(self) -> int:
        """Most trials training at once: `parallel` where jobs run elsewhere, one on this machine."""
        spec = self.loaded.recipe.sweep
        assert spec is not None
        return spec.parallel if self.backend.bills else 1

    def trial(self, tp: sweep.TrialPlan) -> LoadedRecipe:
        return dataclasses.replace(self.loaded, recipe=tp.trial.recipe)

    def time_left(self) -> float | None:
        return None if self.follow_seconds is None else self.follow_seconds - (time.monotonic() - self.started)

    def out_of_time(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0

    def step(self, tp: sweep.TrialPlan, record: RunRecord | None = None, *, winner: bool = False) -> runs.Step:
        """The step of one trial: its recipe (the sweep's with its overrides) and plan, derived, never read from a
        record; it may submit a training job only for a trial not yet training, when `may_start` says so."""
        first = record is None or record.state == "planned"
        return runs.Step(self.trial(tp), self.backend, self.echo, plan=tp.plan, root=self.home, hub_dir=self.hub_dir,
                         trial=tp.trial.id, follow_seconds=self.follow_seconds, started=self.started,
                         may_train=first and self.may_start(record), sweep_winner=tp.trial.id if winner else None)

    def may_start(self, record: RunRecord | None) -> bool:
        """Whether a trial's first training job may be submitted (`held_back` says why not)."""
        return self.held_back(record) is None

    def held_back(self, record: RunRecord | None) -> str | None:
        """Why a trial's first training job may not be submitted (None: it may). Never once the sweep was stopped (a
        trial's job CANCELED on the backend); at the merge, otherwise yes; in reconcile, only a first attempt, of a
        sweep within its budget that the merge began."""
        if self._stopped is None:  # asked once a pass: a cancel may come while the merge follows the sweep
            self._stopped = _stopped(self)
        if self._stopped:
            return STOPPED
        if self.merge:
            return None
        if record is not None and record.attempt != 1:
            return "a retry is never reconcile's to buy"
        if self.plan.refusal and self.backend.bills:
            return "its plan is over budget"
        if self._began is None:
            self._began = _begun(self)
        return None if self._began else NOT_BEGUN


def _resolution(sw: Sweeping) -> revisions.Resolved:
    """The commits a sweep's trials train on: those its unfinished trials on this backend recorded (a sweep that
    another `runner run` began goes on with its own; a moved tag or branch retrains nothing), else the commits its
    Hub inputs are at now. All trials of one sweep train on the same commits."""
    trials = {tp.trial.id: sw.trial(tp) for tp in sw.plan.trials}
    held = {r.revisions for r in ledger.read(sw.home, sw.name).runs
            if r.backend == sw.backend.name and not r.terminal and r.trial in trials
            and r.version == runs.recipe_version(trials[r.trial], r.revisions)}
    if len(held) > 1:
        raise UserError(f"runs/{sw.name}.json: the sweep's unfinished trials name different commits of its Hub "
                        "inputs; all trials of a sweep train on the same ones: fix the records, or `runner cancel` it")
    return held.pop() if held else revisions.now(sw.loaded, sw.backend)


def _begun(sw: Sweeping) -> bool:
    """Whether the merge began this sweep: a training job of one of its trials, labelled with the sweep's commit, is
    on the backend. Only a holder of the Hub token (the train workflow, behind its approval) makes such a job; a run
    record, which any merged pull request may edit, cannot."""
    if not sw.commit:
        return False
    return any(sw.backend.find(runs.identity(sw.name, v, "train") | {"commit": sw.commit[:12]},
                               include_failed=True) for v in sw.versions.values())


def _stopped(sw: Sweeping) -> bool:
    """Whether the sweep was stopped: a trial's training job ended CANCELED on the backend and no live one holds its
    work (a duplicate `claim` canceled is not a stop). The backend says so, not a record."""
    for version in sw.versions.values():
        labels = runs.identity(sw.name, version, "train")
        job = sw.backend.find(labels, include_failed=True)
        if job is not None and job.stage == "CANCELED" and sw.backend.find(labels) is None:
            return True
    return False


def run(sw: Sweeping) -> SweepOutcome:
    """Carry the sweep on: pass after pass until it is done, or the follow window closes, or (not waiting) once."""
    if sw.merge:  # the merge spends on the sweep as a whole: refused as a whole before any job
        if sw.plan.refusal and sw.backend.bills:
            raise runs.SpendRefused(f"{sw.loaded.display}: {sw.plan.refusal}")
        sw.echo(f"[sweep] {len(sw.plan.trials)} trials, estimate ${sw.plan.estimate_usd:.2f}, worst case "
                f"${sw.plan.worst_usd:.2f}")
    while True:
        outcome = advance(sw)
        if outcome.done or not sw.wait or sw.out_of_time():
            return outcome
        left = sw.time_left()
        time.sleep(POLL_SECONDS if left is None else min(POLL_SECONDS, left))  # never past the window


def advance(sw: Sweeping) -> SweepOutcome:
    """One pass over the sweep: follow the trials that train, start those `parallel` leaves room for, and once every
    trial is held (ended, or trained and waiting), pick the winner, reject the others and carry the winner on."""
    with runs.run_lock(sw.home, f"{sw.name}.sweep") as mine:
        if not mine:
            raise runs.RunBusy(f"another runner process is carrying the sweep of {sw.name} on; try again later")
        records = _records(sw)
        sw._stopped = sw._stopped or None  # a stop is for good; else the backend is asked again this pass
        for tp in sw.plan.trials:  # what runs: one step on (a planned one is started below, within the width)
            record = records[tp.trial.id]
            if record is not None and record.state != "planned" and not _held(record):
                records[tp.trial.id] = _carry(record, sw.step(tp, record), follow=sw.wait and sw.width == 1)
        _start(sw, records)
        begun = {t: r for t, r in records.items() if r is not None}
        if all(r is not None and _held(r) for r in records.values()):
            return _decide(sw, begun)
        if sw._stopped and all(_held(r) or r.state == "planned" for r in begun.values()):
            return _halt(sw, begun)  # nothing runs, and what is left will never start
        return SweepOutcome(runs=begun)


def _records(sw: Sweeping) -> dict[str, RunRecord | None]:
    """Each trial's newest run on this backend (None: not begun), found by the version its recipe derives."""
    saved = [r for r in ledger.read(sw.home, sw.name).runs if r.backend == sw.backend.name]
    out: dict[str, RunRecord | None] = {}
    for tid, version in sw.versions.items():
        record = next((r for r in reversed(saved) if r.version == version), None)
        if record is not None and record.trial is None:  # a run of the same version, from before it was a trial
            record.trial = tid
            ledger.save(sw.home, record, sw.name)
        out[tid] = record
    return out


def _start(sw: Sweeping, records: dict[str, RunRecord | None]) -> None:
    """Begin and submit the trials not yet training, in the order written, while fewer than `parallel` train."""
    active = sum(1 for r in records.values() if r is not None and r.state != "planned" and not _held(r))
    refused: dict[str, str] = {}  # trial suffix -> why it is held back
    for tp in sw.plan.trials:
        record = records[tp.trial.id]
        # The window bounds following, not submitting: in parallel every trial there is room for is submitted.
        if active >= sw.width or (sw.width == 1 and sw.out_of_time()):
            break
        if record is not None and record.state != "planned":
            continue
        if (why := sw.held_back(record)) is not None:
            refused[tp.trial.suffix] = why
            continue
        if record is None:
            record = runs.begin(sw.trial(tp), tp.plan, sw.backend, hub_dir=sw.hub_dir, echo=sw.echo,
                                trial=tp.trial.id, root=sw.home, commit=sw.commit, resolved=sw.resolved)
            sw.echo(f"[sweep] trial {tp.trial.suffix} ({tp.trial.id}): run {record.run_id}")
        record = records[tp.trial.id] = _carry(record, sw.step(tp, record), follow=sw.wait and sw.width == 1)
        active += not _held(record)
    if refused:
        hint = "; reconcile starts a trial only for a sweep the train workflow began, from the recipe at its commit " \
            "(`runner run RECIPE` starts them)" if NOT_BEGUN in refused.values() else ""
        sw.echo(f"[sweep] not starting trial(s) {', '.join(refused)}: {'; '.join(dict.fromkeys(refused.values()))}"
                + hint)


def _decide(sw: Sweeping, records: dict[str, RunRecord]) -> SweepOutcome:
    """Every trial is held: the verdict, from the numbers each training job wrote (read again from the backend, the
    same on every pass), the others rejected, and the winner published to main and carried on through its gate
    (judged again), conversion and card. A sweep whose conversion was bought is decided: no number re-decides it."""
    spec = sw.loaded.recipe.sweep
    assert spec is not None
    summaries = {tp.trial.id: _reread(sw, tp) for tp in sw.plan.trials}
    results = [sweep.TrialResult(id=tp.trial.id, suffix=tp.trial.suffix, metrics=_metrics(summaries[tp.trial.id]))
               for tp in sw.plan.trials]
    verdict = sweep.pick_winner(results, spec.metric, spec.direction)
    bought = _bought(sw)
    if bought and verdict.winner not in bought:
        verdict = sweep.Verdict(winner=bought[0], reason=f"decided earlier: trial {bought[0]}'s GGUF conversion is on "
                                f"the backend (the numbers now pick {verdict.winner or 'none'}); nothing else is "
                                "published or converted")
    if any(r.state == "trained" for r in records.values()):  # newly decided (or a pass cut short): say so
        sw.echo(f"[sweep] {verdict.reason}")
    root = sw.home
    for tid, record in records.items():
        if tid != verdict.winner and record.state == "trained":
            _lose(root, sw.name, record, verdict)
    winner = None
    if verdict.winner is not None:
        tp = next(tp for tp in sw.plan.trials if tp.trial.id == verdict.winner)
        winner, step = records[verdict.winner], sw.step(tp, records[verdict.winner], winner=True)
        if winner.state == "trained" and not bought:  # bought: it was published before its conversion was
            winner.gate_rule = tp.trial.recipe.evaluation.gate  # the recipe's rule over the job's numbers
            winner.gate = _gate(sw, winner.gate_rule, summaries[verdict.winner])
            winner.sweep = _result(results, records, spec, verdict)
            ledger.save(root, winner, sw.name)
            _to_main(winner, step, sw.echo)
        if not winner.terminal:
            winner = records[verdict.winner] = runs.drive(winner, step, wait=sw.wait)
    return SweepOutcome(runs=records, verdict=verdict, winner=winner,
                        done=all(r.terminal for r in records.values()))


def _halt(sw: Sweeping, records: dict[str, RunRecord]) -> SweepOutcome:
    """A stopped sweep whose other trials will never start ends with no winner: the trials waiting for its decision
    are rejected, a trial never started is canceled; nothing is published or converted."""
    verdict = sweep.Verdict(reason=STOPPED)
    for record in records.values():
        if record.state == "trained":
            _lose(sw.home, sw.name, record, verdict)
        elif record.state == "planned":
            record.move("canceled")
            ledger.save(sw.home, record, sw.name)
    sw.echo(f"[sweep] {STOPPED}: it ends with no winner")
    return SweepOutcome(runs=records, verdict=verdict, done=True)


def _result(results: list[sweep.TrialResult], records: dict[str, RunRecord], spec: sweep.Sweep,
            verdict: sweep.Verdict) -> ledger.SweepResult:
    """The winner's table of every trial: its metric, how it ended, what it cost."""
    rows = [ledger.TrialRow(trial=r.id, suffix=r.suffix, run_id=records[r.id].run_id, state=records[r.id].state,
                            value=(r.metrics or {}).get(spec.metric), actual_usd=records[r.id].actual_usd())
            for r in results]
    return ledger.SweepResult(metric=spec.metric, mode=spec.direction, reason=verdict.reason, trials=rows)


def _to_main(record: RunRecord, step: runs.Step, echo: runs.Echo) -> None:
    """Where trials pushed to branches of their own, the winner's model (at the commit its job pushed) becomes the
    repo's main with its card, before its conversion (whose card then replaces it); a winner its gate rejects is
    not published."""
    config, summary = record.configs.train, record.train_summary
    pushed = summary.pushed if summary else None
    if not step.backend.branches or config is None or not config.branch or pushed is None or not pushed.commit or \
            (record.gate is not None and not record.gate.passed):
        return
    # Records are data a merge can edit: the repo, branch and commit published are the ones the recipe derives and
    # the training job reported, re-read from the Hub, never the record's word.
    runs.authorize(step, record, "train")
    runs.verify_training(step, record)
    oid = step.backend.publish_model(config, pushed.commit, promote.card_files(record, step.name),
                                     f"recipes-runner: trial {record.trial} (run "
                                     f"{record.run_id}) won the sweep; its model from {config.branch} at "
                                     f"{pushed.commit[:12]}")
    echo(f"[sweep] {config.repo} main is now the winner's model (from {config.branch}, commit {oid[:12]})")


def _carry(record: RunRecord, step: runs.Step, *, follow: bool) -> RunRecord:
    """One trial one step on: followed, driven to `trained` (one at a time); else submitted, then left until its
    job ends (reading a running job's logs would hold the pass), then driven the rest of the way."""
    if follow:
        return runs.drive(record, step, wait=True)
    if record.state == "planned":
        with runs.run_lock(step.home, step.name) as mine:
            if not mine:
                raise runs.RunBusy(f"another runner process is advancing {step.name}; try again later")
            runs.advance(record, step, wait=False)  # planned -> training: the job is submitted, not followed
        return record
    job = record.jobs.get("train")
    if record.state == "training" and job is not None and not step.backend.status(job.id).finished:
        return record
    return runs.drive(record, step, wait=False)


def _held(record: RunRecord) -> bool:
    """A trial is done training: terminal, or trained and waiting for the sweep's decision."""
    return record.terminal or record.state == "trained"


def _reread(sw: Sweeping, tp: sweep.TrialPlan) -> TrainSummary | None:
    """What the trial's training job wrote, read again from the backend: the summary its newest live job of the
    trial's version names in its own config, once that job COMPLETED. Never the record's copy, which a merged pull
    request may edit."""
    job = sw.backend.find(runs.identity(sw.name, sw.versions[tp.trial.id], "train"))
    raw = sw.backend.summary(job.config) if job is not None and job.stage == "COMPLETED" else None
    return parse(TrainSummary, raw)[0] if raw is not None else None


def _metrics(summary: TrainSummary | None) -> dict[str, float] | None:
    """The numbers a trial's job reported after training; None: it failed, or was not evaluated."""
    return None if summary is None or summary.evaluation is None else gates.scores(summary.evaluation).values


def _bought(sw: Sweeping) -> list[str]:
    """The trials whose version has a GGUF job on the backend (in any stage): that conversion decided the sweep."""
    return [tid for tid, version in sw.versions.items()
            if sw.backend.find(runs.identity(sw.name, version, "gguf"), include_failed=True)]


def _gate(sw: Sweeping, rule: gates.Gate | None, summary: TrainSummary | None) -> gates.GateVerdict | None:
    """The winner's gate, judged again from the recipe's rule and the numbers its job wrote (not a record's verdict)."""
    if rule is None:
        return None
    ev = summary.evaluation if summary else None
    before, after = (gates.scores(ev, after=False), gates.scores(ev)) if ev else (gates.Scores(), gates.Scores())
    return gates.judge(rule, before, after, promote.current_scores(sw.home, sw.name))


def _lose(root: Path, name: str, record: RunRecord, verdict: sweep.Verdict) -> None:
    """A trial that did not win ends rejected: no GGUF, no card, the reason in its gate verdict."""
    why = f"lost the sweep to trial {verdict.winner} ({verdict.reason})" if verdict.winner else \
        f"the sweep has no winner ({verdict.reason})"
    record.gate = gates.GateVerdict(passed=False, reasons=[why])
    record.move("rejected")
    ledger.save(root, record, name)
