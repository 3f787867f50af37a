"""The `runner` command: parse, call, print. One subcommand per verb.

Exit codes: 0 all good; 1 the input is invalid, over budget or not ready; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runner import __version__
from runner.errors import RecipeInvalid, UserError


def _recipe_files(args: Sequence[str]) -> list[Path]:
    """Expand directories to their recipe files (not the repo defaults)."""
    from runner.recipe import DEFAULTS_FILE

    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*.y*ml") if f.suffix in (".yaml", ".yml") and f.name != DEFAULTS_FILE)
        else:
            out.append(p)
    return out


def _load_all(paths: Sequence[str]):
    from runner import recipe

    loaded, problems = [], []
    for path in _recipe_files(paths):
        try:
            loaded.append(recipe.load(path))
        except RecipeInvalid as e:
            problems += [str(p) for p in e.problems]
    return loaded, problems


def cmd_validate(args: argparse.Namespace) -> int:
    loaded, problems = _load_all(args.recipes)
    for line in problems:
        print(line, file=sys.stderr)
    for item in loaded:
        print(f"ok: {item.display}")
    if not loaded and not problems:
        print("error: no recipe files given or found", file=sys.stderr)
        return 1
    return 1 if problems else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from runner import hub, render, report

    token = None if hub.offline() else _token_if_hub(args.dataset)
    sample = report.load_sample(args.dataset, split=args.split, config=args.config, revision=args.revision,
                                root=Path.cwd(), token=token)
    result = report.from_sample(sample)
    if args.json:
        print(json.dumps(result.public(), ensure_ascii=False))
    else:
        print(render.report_text(result, args.method))
    if args.method:
        return 0 if result.methods[args.method].status == "ready" else 1
    return 0


def _token_if_hub(dataset: str) -> str | None:
    from runner import hub
    from runner.recipe import looks_local_dataset

    return None if looks_local_dataset(dataset) or Path(dataset).is_file() else hub.token()


def cmd_plan(args: argparse.Namespace) -> int:
    from runner import gather, hub, render

    loaded, problems = _load_all(args.recipes)
    token = None if hub.offline() else hub.token()
    price_table = gather.prices(token) if loaded else None
    plans = []
    for item in loaded:
        try:
            plans.append(gather.plan_recipe(item, token=token, price_table=price_table))
        except UserError as e:
            problems.append(str(e))
    if not loaded and not problems:
        problems.append("error: no recipe files given or found")
    if args.json:
        print(json.dumps({"ok": not problems and all(p.ok for p in plans), "errors": problems,
                          "plans": [p.model_dump(mode="json") | {"ok": p.ok} for p in plans]}, ensure_ascii=False))
    elif args.markdown:
        print(render.plan_markdown(plans, problems))
    else:
        for line in problems:
            print(line, file=sys.stderr)
        print("\n\n".join(render.plan_text(p) for p in plans))
    return 0 if not problems and all(p.ok for p in plans) else 1


def _backend(name: str, root: Path, repo: str | None = None):
    """The engine a run uses; `repo` (the output repo) fixes the HF namespace jobs run and bill in."""
    from runner.backends.local import LocalBackend

    if name == "hf":
        from runner import hub
        from runner.backends.hf import HfBackend, namespace_of

        token = None if hub.offline() else hub.token()
        if not token:
            raise UserError("the hf backend needs a Hugging Face token with write access: set HF_TOKEN "
                            "(in GitHub Actions, a repository secret) or run `hf auth login`")
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the backend reports its own retries, one line each
        api = hub.api(token)
        return HfBackend(api, namespace_of(repo, api), token, echo=_progress_printer())
    state = root / ".runner"
    # Trackio keeps its SQLite logs here, beside the local stand-in for the Hub.
    return LocalBackend(state / "jobs", env={"TRACKIO_DIR": str(state / "trackio")})


def cmd_run(args: argparse.Namespace) -> int:
    from runner import gather, hub, pipeline, recipe

    loaded = recipe.load(args.recipe)
    backend = _backend(args.backend, loaded.root, loaded.output_repo)
    token = None if hub.offline() else hub.token()
    plan = gather.plan_recipe(loaded, token=token, price_table=gather.prices(token))
    if plan.dataset.status != "ready":
        raise UserError(f"{loaded.display}: dataset not ready for {plan.method.upper()}: {plan.dataset.reason}")
    hub_dir = Path(args.hub_dir).resolve() if args.hub_dir else loaded.root / ".runner" / "hub"
    echo = (lambda line: None) if args.quiet else _progress_printer()
    echo(f"[plan] {plan.name}: {plan.method.upper()} on {plan.base_model}, "
         f"{'LoRA' if plan.lora else 'full fine-tune'}; HF Jobs estimate ${plan.cost_usd:.2f} on {plan.flavor}")
    record = pipeline.resumable(loaded, backend)
    if record is None:
        record = pipeline.start(loaded, plan, backend, hub_dir=hub_dir, processes=args.processes)
    else:
        echo(f"[run] {loaded.display} at this commit already has run {record.run_id} ({record.state}); "
             "carrying it on instead of training again")
    record = pipeline.drive(record, pipeline.Step(loaded, backend, echo), wait=not args.detach)
    print(json.dumps({"run_id": record.run_id, "state": record.state, "links": record.links,
                      "failure": record.failure.model_dump() if record.failure else None}))
    if args.detach and not record.terminal:
        echo(f"[detach] run {record.run_id} is {record.state}; `runner reconcile` carries it on")
        return 0
    return 0 if record.state == "recorded" else 1


def _latest(name_or_path: str):
    """The newest run of a recipe given by name or by its file."""
    from runner import ledger

    name = Path(name_or_path).stem if name_or_path.endswith((".yaml", ".yml")) else name_or_path
    runs = ledger.read(Path.cwd(), name).runs
    if not runs:
        raise UserError(f"no runs recorded for '{name}' (runs/{name}.json)")
    return name, runs[-1]


def _repo(record) -> str | None:
    return (record.configs.get("train") or {}).get("hub_repo")


def _current_job(record) -> tuple[str, str]:
    stage = "gguf" if "gguf" in record.jobs else "train"
    if stage not in record.jobs:
        raise UserError(f"run {record.run_id} has no job yet (state {record.state})")
    return stage, record.jobs[stage].id


def cmd_status(args: argparse.Namespace) -> int:
    from runner import ledger

    names = [Path(a).stem if a.endswith((".yaml", ".yml")) else a for a in args.recipes]
    groups = [ledger.read(Path.cwd(), n) for n in names] if names else ledger.all_runs(Path.cwd())
    for group in groups:
        if not group.runs:
            print(f"{group.name}: no runs")
            continue
        r = group.runs[-1]
        line = f"{group.name}: {r.state} (run {r.run_id}, {r.backend} backend, updated {r.updated_at})"
        if not r.terminal and r.jobs:
            stage, job_id = _current_job(r)
            backend = _backend(r.backend, Path.cwd(), _repo(r))
            live = backend.status(job_id)
            line += f"; {stage} job {job_id} is {live.stage}"
            # The job's latest metrics line (the same values it logs to Trackio).
            progress = [ln for ln in backend.logs(job_id) if ln.startswith("progress ")]
            if progress:
                line += f"; {progress[-1].removeprefix('progress ').strip()}"
        if r.failure:
            line += f"; {r.failure.stage} failed: {r.failure.reason}"
        print(line)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    name, record = _latest(args.recipe)
    stage, job_id = _current_job(record)
    for line in _backend(record.backend, Path.cwd(), _repo(record)).logs(job_id, follow=args.follow):
        print(f"[{stage}] {line}", flush=True)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from runner import pipeline, recipe

    name, record = _latest(args.recipe)
    if record.terminal:
        print(f"{name}: run {record.run_id} already {record.state}")
        return 0
    stage, job_id = _current_job(record)
    backend = _backend(record.backend, Path.cwd(), _repo(record))
    backend.cancel(job_id)
    step = pipeline.Step(recipe.load(Path.cwd() / record.recipe), backend, _progress_printer())
    record = pipeline.drive(record, step, wait=True)
    print(f"{name}: run {record.run_id} {record.state}")
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Carry every unfinished run forward as far as it can go without waiting."""
    from runner import ledger, pipeline, recipe

    root = Path.cwd()
    problems = 0
    for group in ledger.all_runs(root):
        for record in [r for r in group.runs if not r.terminal]:
            try:
                step = pipeline.Step(recipe.load(root / record.recipe), _backend(record.backend, root, _repo(record)),
                                     _progress_printer())
                record = pipeline.drive(record, step, wait=args.wait)
            except pipeline.RunBusy:
                print(f"{group.name}: run {record.run_id} is being advanced by another runner process")
                continue
            except UserError as e:
                print(f"{group.name}: run {record.run_id} not advanced: {str(e).splitlines()[0]}", file=sys.stderr)
                problems += 1
                continue
            print(f"{group.name}: run {record.run_id} {record.state}")
    return 1 if problems else 0


def _progress_printer():
    """Job log lines as progress, minus progress-bar redraws and blank lines (the full log stays on disk)."""
    import re

    bar = re.compile(r"\d+%\|")

    def echo(line: str) -> None:
        text = line.split("] ", 1)[-1].strip()
        if text and not bar.search(text):
            print(line, file=sys.stderr, flush=True)

    return echo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="Fine-tune LLMs as code: recipes in, models out.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check recipe files; one located line per problem")
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe files or directories")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("inspect", help="sample a dataset and say which methods it is ready for")
    p.add_argument("dataset", metavar="DATASET", help="local .jsonl/.json/.csv/.parquet file or Hub dataset id")
    p.add_argument("--split", default="train")
    p.add_argument("--config", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--method", choices=["sft", "dpo", "grpo", "kto"], default=None,
                   help="show only this method; exit 1 unless it is ready")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("plan", help="estimate hardware, time and cost for recipes")
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe files or directories")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--markdown", action="store_true", help="print the pull-request comment body")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="validate, plan, train, convert to GGUF, and record the card and run")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--backend", choices=["local", "hf"], default="local",
                   help="local: subprocesses on this machine (default); hf: Hugging Face Jobs")
    p.add_argument("--processes", type=int, default=1, choices=range(1, 65), metavar="N",
                   help="data-parallel training processes (torchrun) for the local backend")
    p.add_argument("--hub-dir", default=None, help="local stand-in for the Hub (default .runner/hub)")
    p.add_argument("--quiet", action="store_true", help="print only the final JSON line")
    p.add_argument("--detach", action="store_true",
                   help="submit the training job and return; `runner reconcile` carries the run on")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="the latest run of each recipe, with its live job stage")
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe names or files (default: all with runs)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="the log of a recipe's current job")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a recipe's running job; the run ends canceled")
    p.add_argument("recipe", metavar="RECIPE")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("reconcile", help="carry every unfinished run forward (safe on a schedule, twice at once)")
    p.add_argument("--wait", action="store_true", help="wait for running jobs instead of returning")
    p.set_defaults(func=cmd_reconcile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback for users; RUNNER_DEBUG=1 shows it
        if os.environ.get("RUNNER_DEBUG"):
            raise
        print(f"error: internal error ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
              "rerun with RUNNER_DEBUG=1 and report it", file=sys.stderr)
        return 1
