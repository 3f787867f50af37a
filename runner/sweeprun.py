"""Running a sweep: train every trial (each its own run), evaluate, pick the winner, convert only the winner.

Trials are ordinary runs (runner/runs/) whose record names their trial; each waits at `trained` until the
sweep decides. The losers end `rejected` (no GGUF, no card) with the reason; the winner goes on through its
gate, its conversion and its record like any run. Locally the trials train one at a time; on the Hub up to
`sweep.parallel` at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from runner import gates, ledger, promote, runs, sweep
from runner.backends.base import Backend
from runner.ledger import RunRecord
from runner.plan import Plan
from runner.recipe import LoadedRecipe, Recipe

POLL_SECONDS = 5.0


class SweepOutcome(BaseModel):
    """What a sweep did: every trial's run, the verdict, the winner's run."""

    runs: dict[str, RunRecord]  # trial id -> its run
    verdict: sweep.Verdict
    winner: RunRecord | None = None


def run(loaded: LoadedRecipe, backend: Backend, plan_one: Callable[[Recipe], Plan], *,
        echo: runs.Echo = print, hub_dir: Path | None = None) -> SweepOutcome:
    """Train the recipe's trials, pick the winner by the sweep's metric, and carry only the winner on."""
    spec = loaded.recipe.sweep
    assert spec is not None
    sp = sweep.plan_sweep(sweep.expand(loaded.recipe), plan_one, loaded.recipe.budget_usd)
    if sp.refusal and backend.bills:
        raise runs.SpendRefused(f"{loaded.display}: {sp.refusal}")
    echo(f"[sweep] {len(sp.trials)} trials, estimate ${sp.estimate_usd:.2f}, worst case ${sp.worst_usd:.2f}")
    width = spec.parallel if backend.bills else 1
    steps: dict[str, runs.Step] = {}
    records: dict[str, RunRecord] = {}
    waiting = list(sp.trials)
    while waiting or any(not _held(r) for r in records.values()):
        active = [t for t, r in records.items() if not _held(r)]
        while waiting and len(active) < width:
            tp = waiting.pop(0)
            trial_loaded = dataclasses.replace(loaded, recipe=tp.trial.recipe)
            record = runs.begin(trial_loaded, tp.plan, backend, hub_dir=hub_dir, echo=echo, trial=tp.trial.id)
            if record.trial is None:
                record.trial = tp.trial.id
                ledger.save(loaded.root, record, loaded.recipe.name)
            steps[tp.trial.id] = runs.Step(trial_loaded, backend, echo, plan=tp.plan, hub_dir=hub_dir,
                                           trial=tp.trial.id)
            records[tp.trial.id] = record
            active.append(tp.trial.id)
            echo(f"[sweep] trial {tp.trial.suffix} ({tp.trial.id}): run {record.run_id}")
        for tid in active:
            records[tid] = _carry(records[tid], steps[tid], parallel=width > 1)
        if any(not _held(r) for r in records.values()):
            time.sleep(POLL_SECONDS)
    results = [sweep.TrialResult(id=tp.trial.id, suffix=tp.trial.suffix, metrics=_metrics(records[tp.trial.id]))
               for tp in sp.trials]
    verdict = sweep.pick_winner(results, spec.metric, spec.direction)
    echo(f"[sweep] {verdict.reason}")
    for tid, record in records.items():
        if tid != verdict.winner and record.state == "trained":
            _lose(loaded.root, loaded.recipe.name, record, verdict)
    winner = None
    if verdict.winner is not None:
        records[verdict.winner].sweep = _result(results, records, spec.metric, spec.direction, verdict)
        ledger.save(loaded.root, records[verdict.winner], loaded.recipe.name)
        _to_main(records[verdict.winner], steps[verdict.winner], echo)
        step = dataclasses.replace(steps[verdict.winner], sweep_winner=verdict.winner)
        winner = records[verdict.winner] = runs.drive(records[verdict.winner], step, wait=True)
    return SweepOutcome(runs=records, verdict=verdict, winner=winner)


def _result(results: list[sweep.TrialResult], records: dict[str, RunRecord], metric: str, mode: Literal["min", "max"],
            verdict: sweep.Verdict) -> ledger.SweepResult:
    """The winner's table of every trial: its metric, how it ended, what it cost."""
    rows = [ledger.TrialRow(trial=r.id, suffix=r.suffix, run_id=records[r.id].run_id, state=records[r.id].state,
                            value=(r.metrics or {}).get(metric), actual_usd=records[r.id].actual_usd())
            for r in results]
    return ledger.SweepResult(metric=metric, mode=mode, reason=verdict.reason, trials=rows)


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


def _carry(record: RunRecord, step: runs.Step, *, parallel: bool) -> RunRecord:
    """One trial one step on: alone, driven to `trained`; in parallel, submitted, then left until its job ends
    (reading a running job's logs would hold the loop), then driven the rest of the way."""
    if not parallel:
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


def _metrics(record: RunRecord) -> dict[str, float] | None:
    if record.state != "trained" or record.evaluation is None:
        return None
    return gates.scores(record.evaluation).values


def _lose(root: Path, name: str, record: RunRecord, verdict: sweep.Verdict) -> None:
    """A trial that did not win ends rejected: no GGUF, no card, the reason in its gate verdict."""
    why = f"lost the sweep to trial {verdict.winner} ({verdict.reason})"
    record.gate = gates.GateVerdict(passed=False, reasons=[why])
    record.move("rejected")
    ledger.save(root, record, name)
