"""Carry every unfinished run on, as far as it can go, from what each run fixed when it started.

A run on an engine that does not bill needs nothing else: its recipe may since have changed or gone.
What a run on an engine that bills may submit (a GGUF job, or a training job whose record is `planned`)
is also derived from the recipe as of the run's commit and gated again; without that recipe and a plan
it submits nothing. A sweep's trials are carried on together by the passes `runner run` makes (runner/sweeprun.py),
from the sweep recipe as of their commit: its trials started only where the merge began that sweep, its winner
picked, published and converted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner import backends, hub, ledger, planning, recipe, sweeprun
from runner.backends.base import Backend
from runner.errors import UserError
from runner.gitrepo import on_branch, snapshot
from runner.ledger import RunRecord
from runner.runs.lifecycle import drive
from runner.runs.step import Echo, RunBusy, Step


@dataclass(frozen=True)
class Outcome:
    """What reconciling one run did: moved it (to `record.state`), found it busy, or could not (`error`)."""

    name: str
    record: RunRecord
    busy: bool = False
    error: str | None = None


def trusted_recipe(root: Path, name: str, record: RunRecord, default_branch: str) -> Path:
    """The record's recipe path, trusted only at a reviewed commit and as a recipe file under recipes/.

    A record is data any merged pull request may edit: it can name any commit and any path.
    """
    if not on_branch(root, record.commit, default_branch):
        # Only what reached the default branch was reviewed and merged.
        raise UserError(f"runs/{name}.json: run {record.run_id} names commit {(record.commit or '(none)')[:12]}, "
                        f"which is not on the default branch ({default_branch}); refused")
    return recipe_path(record)


def recipe_path(record: RunRecord) -> Path:
    """The record's recipe path, if it is a recipe file under recipes/ (relative, not escaping)."""
    rel = Path(record.recipe)
    if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != ("recipes",) or rel.suffix not in (".yaml", ".yml"):
        raise UserError(f"the record's recipe path {record.recipe!r} is not a recipe under recipes/; not advanced")
    return rel


def step_for(root: Path, name: str, record: RunRecord, backend: Backend, token: str | None,
             prices: planning.Prices, echo: Echo) -> Step:
    """The step that carries a recorded run on (never training anew): where it bills, with the recipe as of
    the run's commit and a plan from it."""
    if not backend.bills:
        return Step(None, backend, echo, name=name, root=root, may_train=False)
    source = snapshot(root, record.commit)
    if source is None:
        echo(f"[reconcile] commit {(record.commit or '?')[:12]} of run {record.run_id} is not in this checkout; "
             "following its jobs only (fetch the full history to let it submit)")
        return Step(None, backend, echo, name=name, root=root, may_train=False)
    loaded = recipe.load(source / record.recipe, root=source)
    plan = None
    try:
        plan = planning.plan_recipe(loaded, token=token, price_table=prices)
    except UserError as e:
        echo(f"[reconcile] cannot plan {record.recipe} ({str(e).splitlines()[0]}); following its jobs only")
    return Step(loaded, backend, echo, plan=plan, root=root, may_train=False)


def sweep_at(root: Path, name: str, trials: list[RunRecord], backend: Backend, token: str | None,
             prices: planning.Prices, echo: Echo, wait: bool) -> sweeprun.Sweeping | None:
    """The sweep the trials' runs belong to, from the recipe as of their commit (where it bills; else the recipe
    file as it is), planned afresh, its trials on the commits of its Hub inputs the runs recorded (which must agree):
    None where that recipe is not at hand, has no sweep or cannot be planned."""
    record = trials[0]
    resolved = {r.revisions for r in trials}
    if len(resolved) > 1:
        raise UserError(f"runs/{name}.json: the trials of the sweep at commit {(record.commit or '?')[:12]} name "
                        "different commits of its Hub inputs; all trials of a sweep train on the same ones: refused")
    source = snapshot(root, record.commit) if backend.bills else root
    path = source / recipe_path(record) if source is not None else None
    if path is None or not path.is_file():
        echo(f"[reconcile] the recipe {record.recipe} of trial run {record.run_id} is not at hand as of commit "
             f"{(record.commit or '?')[:12]}; following its jobs only")
        return None
    loaded = recipe.load(path, root=source)
    if loaded.recipe.sweep is None:
        echo(f"[reconcile] {record.recipe} as of commit {(record.commit or '?')[:12]} has no sweep; trial run "
             f"{record.run_id} is followed only")
        return None
    try:
        plan = planning.sweep_plan(loaded, token, prices)
    except UserError as e:
        echo(f"[reconcile] cannot plan the sweep of {record.recipe} ({str(e).splitlines()[0]}); following only")
        return None
    return sweeprun.Sweeping(loaded, backend, plan, echo, root=root, commit=record.commit, merge=False, wait=wait,
                             resolved=resolved.pop())


def _carry_sweep(root: Path, name: str, trials: list[RunRecord], engine: Backend, token: str | None,
                 prices: planning.Prices, echo: Echo, wait: bool) -> Iterator[Outcome]:
    """One sweep's unfinished trials (one backend, one commit) carried on together: by its passes where its recipe
    is at hand (runner/sweeprun.py: trials started, the winner picked and carried on); else each followed alone."""
    sw = sweep_at(root, name, trials, engine, token, prices, echo, wait)
    if sw is None:
        for record in trials:
            yield Outcome(name, drive(record, step_for(root, name, record, engine, token, prices, echo), wait=wait))
        return
    ours = {r.run_id for r in trials}
    derived = set(sw.versions.values())
    for record in trials:
        if record.version not in derived:
            yield Outcome(name, record, error=f"trial {record.trial} is not one the sweep of {record.recipe} as of "
                          f"commit {(record.commit or '?')[:12]} derives; not advanced")
    known = {r.run_id for r in ledger.read(root, name).runs}
    outcome = sweeprun.run(sw)
    for record in outcome.runs.values():
        if record.run_id in ours or record.run_id not in known:  # what was unfinished, and the trials it started
            yield Outcome(name, record)


def carry_on(root: Path, *, names: Sequence[str] = (), backend: str | None = None, wait: bool = False,
             default_branch: str = "HEAD", echo: Echo, unreadable: list[str]) -> Iterator[Outcome]:
    """Advance every unfinished run (of `names`, on `backend`; default all); unreadable run files go to `unreadable`.
    A sweep's trials are carried on together, by the same passes as `runner run` makes."""
    token = None if hub.offline() else hub.token()
    prices: planning.Prices | None = None
    for group in ledger.all_runs(root, unreadable):
        if names and group.name not in names:  # the reconcile workflow: one recipe per matrix job
            continue
        unfinished = [r for r in group.runs if not r.terminal and backend in (None, r.backend)]
        sweeps: dict[tuple[str, str | None], list[RunRecord]] = {}
        for r in unfinished:
            if r.trial is not None:
                sweeps.setdefault((r.backend, r.commit), []).append(r)
        batches = [[r] for r in unfinished if r.trial is None] + list(sweeps.values())
        for batch in batches:
            record = batch[0]
            try:
                prices = prices or planning.prices(token)
                bills = backends.engine(record.backend).bills
                if bills:  # refused before any request is made on its behalf
                    trusted_recipe(root, group.name, record, default_branch)
                with backends.opened(record.backend, root, record.output_repo if bills else None, echo) as engine:
                    if record.trial is not None:
                        yield from _carry_sweep(root, group.name, batch, engine, token, prices, echo, wait)
                        continue
                    record = drive(record, step_for(root, group.name, record, engine, token, prices, echo), wait=wait)
            except RunBusy:
                yield Outcome(group.name, record, busy=True)
                continue
            except (UserError, KeyError, ValueError, OSError) as e:  # one bad record never stops the others
                yield Outcome(group.name, record, error=str(e).splitlines()[0])
                continue
            yield Outcome(group.name, record)
    if names:  # another recipe's unreadable file is its own matrix job's to report
        unreadable[:] = [u for u in unreadable if any(u.startswith(f"runs/{n}.json:") for n in names)]
