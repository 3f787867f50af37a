"""`runner run`, `status`, `logs` and `cancel`: the verbs over one recipe's run, with their arguments.

Thin like cli.py, which adds them to the `runner` parser (as it adds actions.py's): each reads the
recipe or the run record, opens the backend the run uses, calls runner.runs, and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runner import actions
from runner.backends import ENGINES
from runner.errors import UserError


def add_commands(sub: argparse._SubParsersAction) -> None:
    """After the merge: run a recipe, and follow or stop its run."""
    p = sub.add_parser("run", help="validate, plan, train, convert to GGUF, and record the card and run")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--backend", choices=list(ENGINES), default="local",
                   help="local: subprocesses on this machine (default); hf: Hugging Face Jobs")
    p.add_argument("--processes", type=int, default=1, choices=range(1, 65), metavar="N",
                   help="data-parallel training processes (torchrun) for the local backend")
    p.add_argument("--hub-dir", default=None, help="local stand-in for the Hub (default .runner/hub)")
    p.add_argument("--quiet", action="store_true", help="print only the final JSON line")
    p.add_argument("--detach", action="store_true",
                   help="submit the training job and return; `runner reconcile` carries the run on")
    p.add_argument("--follow-for", type=float, default=None, metavar="MINUTES",
                   help="follow the jobs for at most this long, then detach (the train workflow's runner budget)")
    p.add_argument("--retry", action="store_true",
                   help="train a version that failed or was canceled again, as a new attempt (resuming from its "
                        "checkpoint when one was saved; when only its GGUF conversion failed, convert its model again)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the jobs it would submit (flavor, timeout, image, command, config); submit nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: one JSON line")
    p.add_argument("--merged-with", nargs="*", default=[], metavar="RECIPE",
                   help="the other recipes of the same merge: refused together above max_total_usd")
    p.add_argument("--live-comment", action="store_true",
                   help="in a workflow: keep one comment on the merged pull request current (GITHUB_TOKEN)")
    p.add_argument("--comment-every", type=float, default=float(os.environ.get("RUNNER_COMMENT_EVERY", 120)),
                   metavar="SECONDS",
                   help="with --live-comment: seconds between progress updates (state changes always update)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="the latest run of each recipe, with its live job stage")
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe names, files or job ids (default: all)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="the log of a recipe's current job (or of a job id)")
    p.add_argument("recipe", metavar="RECIPE|JOB")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a recipe's running job; the run ends canceled")
    p.add_argument("recipe", metavar="RECIPE")
    p.set_defaults(func=cmd_cancel)


def _opened(name: str, root: Path, repo: str | None = None):
    """The backend `name` for this command (closed after it), with job log lines printed as progress."""
    from runner import backends

    return backends.opened(name, root, repo, progress_printer())


def cmd_run(args: argparse.Namespace) -> int:
    from runner import backends, hub, planning, recipe, registry, runs

    loaded = recipe.load(args.recipe)
    token = None if hub.offline() else hub.token()
    plan = planning.plan_recipe(loaded, token=token, price_table=planning.prices(token))
    if plan.dataset.status != "ready":
        raise UserError(f"{loaded.display}: dataset not ready for {plan.method.upper()}: {plan.dataset.reason}")
    together = planning.merge_gate(loaded, plan, args.merged_with, token)
    if together:
        raise UserError(f"{loaded.display}: {together}; nothing submitted")
    if args.dry_run:  # what would be submitted, derived and gated exactly as a real run; no request that spends
        engine = backends.engine(args.backend)
        jobs = [{"stage": s.script, **engine.request(s), "flavor": s.flavor, "timeout_seconds": s.timeout_seconds,
                 "labels": s.labels, "config": s.config.model_dump(mode="json"), "files": sorted(s.files)}
                for s in runs.preview(loaded, plan, engine)]
        out = {"recipe": loaded.display, "backend": args.backend, "jobs": jobs, "cost_usd": plan.cost_usd,
               "max_cost_usd": plan.max_cost_usd, "budget_usd": plan.budget_usd}
        print(json.dumps(out, indent=None if args.json else 2))
        return 0
    with _opened(args.backend, loaded.root, loaded.output_repo) as backend:
        runs.check_spend(plan, backend, loaded.display)  # before any upload or job
        try:
            return _run(args, loaded, plan, backend, token)
        finally:  # recorded, rejected or failed: the registry page with this run, as commit-back leaves it
            registry.refresh(loaded.root)


def _run(args: argparse.Namespace, loaded, plan, backend, token: str | None) -> int:
    """`runner run` on an opened backend: the recipe's run (or sweep), followed as the flags say."""
    from runner import runs

    hub_dir = Path(args.hub_dir).resolve() if args.hub_dir else loaded.root / ".runner" / "hub"
    echo = (lambda line: None) if args.quiet else progress_printer()
    if loaded.recipe.sweep is not None:
        return _run_sweep(args, loaded, backend, token, echo, hub_dir)
    echo(f"[plan] {plan.name}: {plan.method.upper()} on {plan.base_model}, "
         f"{'LoRA' if plan.lora else 'full fine-tune'}; HF Jobs estimate ${plan.cost_usd:.2f} on {plan.flavor} "
         f"(worst case ${plan.max_cost_usd:.2f})")
    record = runs.begin(loaded, plan, backend, retry=args.retry, hub_dir=hub_dir, processes=args.processes,
                        echo=echo)
    window = args.follow_for * 60 if args.follow_for is not None else None
    step = runs.Step(loaded, backend, echo, plan=plan, hub_dir=hub_dir, follow_seconds=window,
                     update_every=args.comment_every)
    if args.live_comment:  # in the train workflow: one comment on the merged pull request, kept current
        commenter = actions.run_commenter(loaded.recipe.name)
        step.on_update = lambda rec: echo(f"[comment] {commenter(rec)}")
    record = runs.drive(record, step, wait=not args.detach)
    print(json.dumps({"run_id": record.run_id, "state": record.state, "links": record.links,
                      "failure": record.failure.model_dump() if record.failure else None}))
    if not record.terminal:
        echo(f"[detach] run {record.run_id} is {record.state}; `runner reconcile` carries it on")
        return 0
    return 0 if record.state == "recorded" else 1


def _run_sweep(args: argparse.Namespace, loaded, backend, token, echo, hub_dir: Path) -> int:
    """`runner run` of a recipe with `sweep:`: every trial, then only the winner converted (runner/sweeprun.py);
    with --detach one pass (what `parallel` allows submitted), with --follow-for passes until the window closes."""
    from runner import planning, sweeprun

    sw = sweeprun.Sweeping(loaded, backend, planning.sweep_plan(loaded, token, planning.prices(token)), echo,
                           hub_dir=hub_dir, wait=not args.detach,
                           follow_seconds=args.follow_for * 60 if args.follow_for is not None else None)
    outcome = sweeprun.run(sw)
    verdict = outcome.verdict
    print(json.dumps({"sweep": verdict.reason if verdict else None, "winner": verdict.winner if verdict else None,
                      "trials": {t: {"run_id": r.run_id, "state": r.state} for t, r in outcome.runs.items()},
                      "done": outcome.done}))
    if not outcome.done:
        echo(f"[detach] the sweep of {loaded.display} has {len(outcome.runs)} of {len(sw.plan.trials)} trials "
             "begun and is not done; `runner reconcile` carries it on")
        return 0
    return 0 if outcome.winner is not None and outcome.winner.state == "recorded" else 1


def _latest(target: str):
    """(recipe name, run, job stage) for a recipe given by file or name (its newest run), or for a job id."""
    from runner import ledger, recipe

    return ledger.latest(Path.cwd(), recipe.name_of(target), target)


def cmd_status(args: argparse.Namespace) -> int:
    from runner import ledger

    targets = [_latest(a) for a in args.recipes] if args.recipes else \
        [(g.name, g.runs[-1], None) for g in ledger.all_runs(Path.cwd()) if g.runs]
    if not targets:
        print("no runs recorded yet (runs/ is empty)")
    for name, r, job_stage in targets:
        line = f"{name}: {r.state} (run {r.run_id}, {r.backend} backend, updated {r.updated_at})"
        if not r.terminal and r.jobs:
            stage, job_id = r.current_job(job_stage)
            with _opened(r.backend, Path.cwd(), r.output_repo) as backend:
                line += f"; {stage} job {job_id} is {backend.status(job_id).stage}"
                # The job's latest metrics line (the same values it logs to Trackio).
                progress = [ln for ln in backend.logs(job_id) if ln.startswith("progress ")]
            if progress:
                line += f"; {progress[-1].removeprefix('progress ').strip()}"
        if r.evaluation and r.evaluation.phrase():
            line += f"; {r.evaluation.phrase()}"
        if r.failure:  # a cancel is not a failure: its reason says who canceled, where the Hub says
            line += f"; {r.failure.reason}" if r.state == "canceled" else \
                f"; {r.failure.stage} failed: {r.failure.reason}"
        print(line)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    name, record, job_stage = _latest(args.recipe)
    stage, job_id = record.current_job(job_stage)
    with _opened(record.backend, Path.cwd(), record.output_repo) as backend:
        if args.follow:  # to the job's end, then its outcome
            status = backend.wait(job_id, lambda line: print(f"[{stage}] {line}", flush=True))
            print(f"[{stage}] job {job_id} {status.stage}" + (f": {status.message}" if status.message else ""))
            return 0 if status.stage == "COMPLETED" else 1
        for line in backend.logs(job_id):
            print(f"[{stage}] {line}", flush=True)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from runner import ledger, runs

    name, record, _ = _latest(args.recipe)
    targets = [record]
    if record.trial is not None:  # a sweep stops as a whole: every unfinished trial of it (one backend, one commit)
        targets = [r for r in ledger.read(Path.cwd(), name).runs if r.trial is not None and not r.terminal
                   and (r.backend, r.commit) == (record.backend, record.commit)] or [record]
    if all(r.terminal for r in targets):
        print(f"{name}: run {record.run_id} already {record.state}")
        return 0
    with _opened(record.backend, Path.cwd(), record.output_repo) as backend:
        running = {r.run_id for r in targets if r.state in ("training", "converting")}
        for r in targets:  # every job first, then each run followed to its end
            if r.run_id in running:
                backend.cancel(r.current_job()[1])
        # No recipe, no plan: cancelling needs only the record (the recipe may be gone), and submits nothing.
        step = runs.Step(None, backend, progress_printer(), name=name, root=Path.cwd(), submit=False)
        for r in targets:
            try:
                r = runs.cancel(r, step) if r.run_id not in running else runs.drive(r, step, wait=True)
            except runs.RunBusy:  # a runner is following this run: it records the cancellation itself
                print(f"{name}: canceled the job of run {r.run_id}; the runner following it records the outcome")
                continue
            print(f"{name}: run {r.run_id} {r.state}")
    return 0


def progress_printer():
    """Job log lines as progress, minus progress-bar redraws and blank lines (the full log stays on disk)."""
    import re

    bar = re.compile(r"\d+%\|")

    def echo(line: str) -> None:
        text = line.split("] ", 1)[-1].strip()
        if text and not bar.search(text):
            print(line, file=sys.stderr, flush=True)

    return echo
