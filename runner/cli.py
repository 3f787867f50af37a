"""The `runner` command: parse, call, print. One subcommand per verb.

The verbs over one recipe's run (run, status, logs, cancel) live in cli_runs.py and the
workflows' verbs in actions.py; each adds its own subcommands to the parser built here.

Exit codes: 0 all good; 1 the input is invalid, over budget or not ready; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runner import __version__, actions, cli_runs
from runner.backends import ENGINES
from runner.errors import UserError


def cmd_validate(args: argparse.Namespace) -> int:
    from runner import recipe
    from runner.errors import Problem

    loaded, located = recipe.load_all(args.recipes)
    problems = [str(p) for p in located]
    if not loaded and not problems:
        located = [Problem(a, 1, 1, "", "no recipe files given or found (recipes are recipes/*.yaml; "
                           "copy recipes/starter.yaml.example to start one)")
                   for a in args.recipes]
        problems = [str(p) for p in located]
    if args.json:
        print(json.dumps([p.as_json() for p in located], ensure_ascii=False))
        return 1 if located else 0
    for line in problems:
        print(line, file=sys.stderr)
    if args.github:
        for p in located:
            print(actions.annotation(p))
    for item in loaded:
        print(f"ok: {item.display}")
    return 1 if problems else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from runner.recipe import json_schema

    if args.markdown:
        from runner.reference import markdown

        print(markdown(json_schema()), end="")
    else:
        print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    from runner import hub, render, scaffold

    root = Path.cwd()
    token = None if hub.offline() else hub.token()
    result = scaffold.new_recipe(root, args.name, model=args.model, dataset=args.dataset, method=args.method,
                                 epochs=args.epochs, budget=args.budget, token=token)
    print(f"wrote {result.path}")
    for note in result.notes:
        print(f"  note: {note}")
    print(render.plan_text(result.plan))
    print(f"next: runner validate {result.path} && runner plan {result.path}, then open a pull request")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from runner import hub, render
    from runner.dataset import from_sample, load_sample

    token = None if hub.offline() else _token_if_hub(args.dataset)
    sample = load_sample(args.dataset, split=args.split, config=args.config, revision=args.revision,
                                root=Path.cwd(), token=token)
    result = from_sample(sample)
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
    from runner import hub, planning, recipe, render, sweep

    loaded, located = recipe.load_all(args.recipes)
    problems = [str(p) for p in located]
    token = None if hub.offline() else hub.token()
    plans, sweeps = planning.plan_with_sweeps(loaded, token, problems)
    problems += [f"{name}: {sp.refusal}" for name, sp in sweeps.items() if sp.refusal]
    if not loaded and not problems:
        problems.append("error: no recipe files given or found")
    if args.json:
        print(json.dumps({"ok": not problems and all(p.ok for p in plans), "errors": problems,
                          "plans": [p.model_dump(mode="json") | {"ok": p.ok} for p in plans],
                          "sweeps": {n: sp.model_dump(mode="json") for n, sp in sweeps.items()}}, ensure_ascii=False))
    elif args.markdown:
        print(render.plan_markdown(plans, problems))
        for name, sp in sweeps.items():  # one line per trial and the total, gated as a whole
            print(f"\n#### Sweep of {name}\n\n{sweep.markdown(sp)}")
    else:
        for line in problems:
            print(line, file=sys.stderr)
        print("\n\n".join(render.plan_text(p) for p in plans))
        for name, sp in sweeps.items():
            print(f"\nsweep of {name}:\n{sweep.markdown(sp)}")
    return 0 if not problems and all(p.ok for p in plans) else 1


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Carry every unfinished run forward as far as it can go without waiting."""
    from runner.runs import reconcile

    problems = 0
    unreadable: list[str] = []
    for done in reconcile.carry_on(Path.cwd(), names=args.recipes, backend=args.backend, wait=args.wait,
                                   default_branch=args.default_branch, echo=cli_runs.progress_printer(),
                                   unreadable=unreadable):
        record = done.record
        if done.busy:
            print(f"{done.name}: run {record.run_id} is being advanced by another runner process")
        elif done.error:
            print(f"{done.name}: run {record.run_id} not advanced: {done.error}", file=sys.stderr)
            problems += 1
        else:
            print(f"{done.name}: run {record.run_id} {record.state}"
                  + (f": {record.failure.reason}" if record.state == "failed" and record.failure else ""))
            problems += record.state in ("failed", "canceled") and args.wait
    for line in unreadable:  # the other recipes' runs went on; this file needs a person
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems or unreadable else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the first-day set-up, one line each with the fix; exit 1 when something blocks a run."""
    from runner import doctor, hub

    root = Path.cwd()
    token = None if hub.offline() else hub.token()
    checks = doctor.run(root, hub_api=hub.api(token) if token else None, repo=doctor.github_repo())
    for check in checks:
        print(check.line())
    print(f"first recipe: {doctor.first_recipe(root)}")
    return 1 if any(c.verdict == "fail" for c in checks) else 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Make a run the recipe's current model (models/current.json), or on merge move the Hub tags (--apply)."""
    from runner import hub, promote

    root = Path.cwd()
    if args.apply:
        for line in promote.sync(root, hub.api()):
            print(line)
        return 0
    if not (args.name and args.run_id):
        raise UserError("usage: runner promote NAME RUN_ID (or --apply on merge)")
    promote.promote(root, args.name, args.run_id)
    print(f"{promote.CURRENT_FILE}: {args.name} -> {args.run_id}; on merge the Hub tag '{promote.TAG}' moves to it")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Propose retraining where a recipe's base model or Hub dataset moved (a pull request each); never trains."""
    from runner import watch

    if args.open:  # the job that may write: no Hub token, the proposals read as data
        print("\n".join(watch.open_file(Path.cwd(), Path(args.open))))
        return 0
    found, lines = watch.look_here(Path.cwd(), Path(args.out) if args.out else None)
    problems = [line for line in lines if line.startswith("error:")]  # a recipe it could not check; others went on
    print(json.dumps([p.model_dump(mode="json") for p in found]) if args.json else
          "\n".join(line for line in lines if line not in problems))
    print("\n".join(problems), file=sys.stderr)
    return 1 if problems else 0


def cmd_models(args: argparse.Namespace) -> int:
    """Every model the repository trained, the current one of each recipe marked (runner/registry.py)."""
    from runner import registry

    reg = registry.load(Path.cwd())
    print(reg.model_dump_json(indent=2) if args.json else registry.markdown(reg) if args.markdown
          else registry.text(reg))
    for line in reg.problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if reg.problems else 0


def cmd_history(args: argparse.Namespace) -> int:
    """Per run: estimated vs actual cost, hours, flavor; and the planner's median estimate error."""
    from runner import history, ledger, recipe

    root = Path.cwd()
    names = [recipe.name_of(a) for a in args.recipes] if args.recipes else [g.name for g in ledger.all_runs(root)]
    found = history.history(root, names)
    if args.json:
        print(json.dumps(found.model_dump(mode="json")))
        return 0
    print("\n".join(history.text(found)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner", description="Fine-tune LLMs as code: recipes in, models out.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _recipe_commands(sub)
    cli_runs.add_commands(sub)
    _record_commands(sub)
    actions.add_commands(sub)
    return parser


def _recipe_commands(sub: argparse._SubParsersAction) -> None:
    """Before the merge: check, write, inspect and plan recipes."""
    p = sub.add_parser("validate", help="check recipe files; one located line per problem")
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe files or directories")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--github", action="store_true", help="also print GitHub Actions error annotations")
    out.add_argument("--json", action="store_true",
                     help="print a JSON list of problems (path, line, column, field, message); [] when all are valid")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the recipe JSON Schema (published as recipes/schema.json)")
    p.add_argument("--markdown", action="store_true", help="the recipe reference page (docs/recipe-reference.md)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("new", help="write recipes/NAME.yaml from a model and a dataset, checked and planned")
    p.add_argument("name", metavar="NAME", help="the recipe name, a slug such as support-bot")
    p.add_argument("--model", required=True, metavar="M", help="Hub model id, or a model directory in the repo")
    p.add_argument("--dataset", required=True, metavar="D", help="Hub dataset id, or a data file in the repo")
    p.add_argument("--method", choices=["sft", "dpo", "grpo"], default="sft")
    p.add_argument("--epochs", type=float, default=None, metavar="N", help="passes over the data (default 1)")
    p.add_argument("--budget", type=float, default=None, metavar="USD",
                   help="budget_usd (default: the one in recipes/_defaults.yaml)")
    p.set_defaults(func=cmd_new)

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


def _record_commands(sub: argparse._SubParsersAction) -> None:
    """Over the recorded runs: carry them on, check the set-up, compare costs, promote a model."""
    p = sub.add_parser("reconcile", help="carry every unfinished run forward (safe on a schedule, twice at once)")
    p.add_argument("recipes", nargs="*", metavar="NAME", help="only these recipes' runs (default: all)")
    p.add_argument("--wait", action="store_true", help="wait for running jobs instead of returning")
    p.add_argument("--backend", choices=list(ENGINES), default=None,
                   help="only runs on this backend (the reconcile workflow: hf)")
    p.add_argument("--default-branch", default="HEAD", metavar="REF",
                   help="a Hub run's commit must be on this branch (default: HEAD, the checked-out default branch)")
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("doctor", help="check the token, environments, branch protection, budget and CODEOWNERS")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("history", help="estimated vs actual cost of every recorded run, and the median error")
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe names or files (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("models", help="every model the repository trained (models/README.md), current ones marked")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the registry as one JSON object")
    out.add_argument("--markdown", action="store_true", help="print models/README.md as commit-back writes it")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("promote", help="make a recorded run the recipe's current model (moves the Hub tag on merge)")
    p.add_argument("name", nargs="?", metavar="NAME", help="recipe name")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="one of its recorded runs (runner history)")
    p.add_argument("--apply", action="store_true", help="move every promoted model's Hub tag (what the merge runs)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("watch", help="propose retraining (a pull request per recipe) where the base or data moved")
    p.add_argument("--out", metavar="FILE", help="also write the proposals, with their plan comments, to FILE")
    p.add_argument("--open", metavar="FILE", help="open a pull request per proposal in FILE (GITHUB_TOKEN; no Hub)")
    p.add_argument("--json", action="store_true", help="print the proposals as JSON")
    p.set_defaults(func=cmd_watch)


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
