"""The commands GitHub workflows run: what changed, the pull-request check and comment, commit-back, notify.

Thin like the CLI: each reads the event or the tree, calls the package, and writes what the
workflow passes on (annotations, the step summary, the plan artifact, comments, commits).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.errors import RecipeInvalid, UserError
from runner.recipe import LoadedRecipe, name_of, recipe_files


def annotation(p) -> str:
    """A GitHub Actions error annotation at the problem's file, line and column."""
    def escape(text: str, prop: bool = False) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if prop else text

    message = f"{p.field}: {p.message}" if p.field else p.message
    return f"::error file={escape(p.file, True)},line={p.line},col={p.col},title=invalid recipe::{escape(message)}"


def _changed(base: str | None, head: str, only: str | None = None, tree: Path | None = None) -> list[str]:
    """Recipe files whose training a push or pull request changed: the recipe itself, a file it ships
    (local data, a reward function, a local base model), or the repo defaults (then every recipe).
    Every recipe when there is no "before" (a new branch). `tree` holds the files at `head` (default: here)."""
    import subprocess

    from runner import recipe
    from runner.recipe import DEFAULTS_FILE

    root = Path.cwd()
    tree = tree or root
    everything = [p.relative_to(tree).as_posix() for p in recipe_files([str(tree / "recipes")])] \
        if (tree / "recipes").is_dir() else []
    if only:
        wanted = (tree / only).resolve()
        match = [p for p in everything if (tree / p).resolve() == wanted]
        if not match:
            raise UserError(f"{only}: not a recipe file under recipes/")
        return match
    if not base or set(base) == {"0"}:
        return everything
    # base...head: what head changed since it forked from base, not what base gained meanwhile. --relative: paths
    # as seen from here (the recipes' root may be a subfolder of the repository, as examples/ is).
    out = subprocess.run(["git", "diff", "--name-only", "-z", "--relative", "--diff-filter=d", f"{base}...{head}"],
                         capture_output=True, text=True, cwd=root)
    if out.returncode != 0:
        raise UserError(f"git diff {base} {head} failed: {' '.join(out.stderr.strip().splitlines()[-1:])}")
    names = {n for n in out.stdout.split("\0") if n}
    if any(n.startswith("recipes/") and Path(n).name == DEFAULTS_FILE for n in names):
        return everything
    changed = []
    for path in everything:
        try:
            loaded = recipe.load(tree / path, root=tree)
        except (UserError, ValueError, OSError):
            loaded = None  # an invalid recipe counts as changed only through its own file; the plan reports it
        if path in names or (loaded is not None and _touches(loaded, names)):
            changed.append(path)
    return changed


def _touches(loaded: LoadedRecipe, names: set[str]) -> bool:
    """Whether the change touches a file the recipe's run ships; a recipe whose files cannot be listed (a data row
    naming a missing image) counts as touched when its data changed, so its plan says what is wrong."""
    from runner import jobspec

    try:
        return bool(set(jobspec.shipped_files(loaded)) & names)
    except (UserError, OSError):
        data = loaded.recipe.dataset
        return data.is_local and loaded.local(data.path).relative_to(loaded.root).as_posix() in names


def cmd_changed(args: argparse.Namespace) -> int:
    paths = _changed(args.base, args.head, args.only)
    if args.matrix:  # the train workflow's matrix: its concurrency group is the recipe's name, not its path
        print(json.dumps([{"recipe": p, "name": _name_or_stem(p)} for p in paths]))
        return 0
    print(json.dumps(paths) if args.json else "\n".join(paths))
    return 0


def _name_or_stem(path: str) -> str:
    """The recipe's name, read as data: its `name:` when that is a slug, else its file name (the default name).

    Not the validated name: two files with one name are refused by validation, and must still share a group."""
    import re

    from runner import yamlsafe

    try:
        name = yamlsafe.load(Path(path), display=path).data.get("name")
    except (UserError, ValueError, OSError, AttributeError):
        name = None
    return name if isinstance(name, str) and re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", name) else Path(path).stem


def _plan_tree(paths: list[str], tree: Path, located: list | None = None,
               read_token: str | None = None) -> tuple[list, list[str]]:
    """Validate and plan recipe files read from `tree` as data, with the built-in prices and no write token."""
    from runner import planning, recipe

    loaded, problems = [], []
    for path in paths:
        try:
            loaded.append(recipe.load(tree / path, root=tree))
        except RecipeInvalid as e:
            problems += [str(p) for p in e.problems]
            if located is not None:
                located += e.problems
    plans = planning.plan_all(loaded, read_token, problems)
    if read_token:  # what the token read may be private: the comment says verdicts, columns and counts, no rows
        plans = [_without_rows(p) for p in plans]
    return plans, problems


def _without_rows(plan):
    """A plan of a Hub dataset with its data-derived reasons (which can quote values) replaced by their status."""
    from runner.recipe import looks_local_dataset

    if looks_local_dataset(plan.dataset_path):
        return plan
    withheld = "details withheld (read with HF_READ_TOKEN; run `runner inspect` locally to see them)"
    verdict = plan.dataset.model_copy(update={"reason": withheld})
    warnings = [w for w in plan.warnings if not w.startswith("dataset not ready")]
    return plan.model_copy(update={"dataset": verdict, "warnings": warnings})


def _read_token(event: dict) -> str | None:
    """The optional read-only token, for pull requests from this repository's own branches only: a fork could
    point a recipe at any dataset the token can read."""
    run = event.get("workflow_run") or {}
    here = (event.get("repository") or {}).get("full_name")
    own = bool(here) and (run.get("head_repository") or {}).get("full_name") == here
    return (os.environ.get("HF_READ_TOKEN") or None) if own else None


def cmd_pr_check(args: argparse.Namespace) -> int:
    """The pull-request check in one step: validate and plan what changed; annotations, summary, artifact."""
    from runner import render

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = _changed(args.base, args.head)
    located: list = []
    plans, problems = _plan_tree(paths, Path.cwd(), located)
    for p in located:
        print(annotation(p))
    body = render.plan_markdown(plans, problems, beside=_current_models(plans)) if paths \
        else render.no_recipe_markdown()
    ok = not problems and all(p.ok for p in plans)
    (out_dir / "plan.md").write_text(body, encoding="utf-8")
    (out_dir / "plan.json").write_text(json.dumps({"ok": ok, "recipes": paths, "errors": problems,
                                                   "plans": [p.model_dump(mode="json") for p in plans]}),
                                       encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(body + "\n")
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{len(paths)} recipe(s) checked: " + ("ok" if ok else "not ready to merge (see the plan)"))
    return 0 if ok else 1


def _current_models(plans: list) -> dict[str, list[str]]:
    """The figures of each planned recipe's current model, from this checkout's runs/ and models/current.json."""
    from runner import registry

    return registry.beside(registry.load(Path.cwd()), plans) if plans else {}


def cmd_comment_plan(args: argparse.Namespace) -> int:
    """From a workflow_run event: plan the pull request's head in trusted code and post it as the sticky comment.

    The plan workflow ran the pull request's own code (a fork controls it), so its artifact could say
    anything. Here the default branch's runner reads the head commit's files as data (git archive,
    never executed), plans them with built-in prices and no token, and renders the text itself.
    """
    from runner import github, render, runs
    from runner.render import COMMENT_MARKER

    event = github.event()
    run = event.get("workflow_run") or {}
    head = str(run.get("head_sha") or "")
    if not run.get("id") or not head:
        raise UserError("not a workflow_run event: no workflow_run.id / head_sha in the payload")
    repo = github.repository()
    hinted = [int(p["number"]) for p in run.get("pull_requests") or [] if str(p.get("number", "")).isdigit()]
    pr = github.pull_for_sha(repo, head, hinted)
    if pr is None:
        print(f"no open pull request has head {head} (a newer push will post its own plan)")
        return 0
    try:
        github.fetch_commit(Path.cwd(), head)
        tree = runs.snapshot(Path.cwd(), head)
        if tree is None:
            raise UserError(f"the files of commit {head[:12]} cannot be read as data "
                            "(missing, or links out of the tree)")
        paths = _changed(pr.base.sha, head, tree=tree)
        plans, problems = _plan_tree(paths, tree, read_token=_read_token(event))
        # The current models come from this checkout (the default branch), not from the pull request's files.
        body = render.plan_markdown(plans, problems, commit=head, beside=_current_models(plans)) if paths \
            else render.no_recipe_markdown()
    except UserError as e:  # never leave an older plan standing for a newer head
        body = render.plan_markdown([], [f"plan unavailable for {head[:12]}: {str(e).splitlines()[0]}"], commit=head)
    action, comment_id = github.upsert_comment(repo, pr.number, COMMENT_MARKER, body)
    print(f"{action} plan comment {comment_id} on #{pr.number}")
    return 0


def cmd_commit_back(args: argparse.Namespace) -> int:
    """Commit run records and model cards to the branch through the API (or a PR where it is protected)."""
    from runner import github, ledger, registry

    root = Path.cwd()
    files: dict[str, bytes] = {}
    for name in map(name_of, args.recipe or []):
        args.paths += [f"runs/{name}.json", f"models/{name}"]
    for arg in args.paths:
        p = root / arg
        for f in sorted(p.rglob("*")) if p.is_dir() else [p] if p.is_file() else []:
            if f.is_file():
                files[f.relative_to(root).as_posix()] = f.read_bytes()
    files = {path: data for path, data in files.items() if path in _changed_in_worktree(root, list(files))}
    if not files:
        print("nothing to commit back")
        return 0
    branch = args.branch or os.environ.get("GITHUB_REF_NAME", "").strip() or "main"
    merge: dict[str, Callable[[bytes | None, bytes], bytes]] = {
        path: ledger.merge_runs for path in files if path.startswith("runs/") and path.endswith(".json")}
    repo = github.repository()
    if merge:  # a run record changes: the registry page with it, from the branch as the commit will leave it
        ours = {path: files[path] for path in merge}
        files[REGISTRY_PAGE] = registry.write(root)
        merge[REGISTRY_PAGE] = lambda theirs, mine: _registry_on(repo, branch, ours)
    result = github.commit_files(repo, branch, files, args.message, merge)
    print(f"{len(files)} file(s) to {branch}: {result}")
    return 0


REGISTRY_PAGE = "models/README.md"  # registry.REGISTRY_FILE, kept here so a plan comment does not import it


def _registry_on(repo, branch: str, ours: dict[str, bytes]) -> bytes:
    """models/README.md of the branch's runs/ with ours merged in: another recipe's commit-back since this
    checkout keeps its rows (a branch that moves under the commit makes commit_files retry, and call this again)."""
    from runner import github, ledger, registry

    tree = github.read_folder(repo, "runs", branch)
    current = github.read_file(repo, "models/current.json", branch)
    tree |= {"models/current.json": current} if current is not None else {}
    tree |= {path: ledger.merge_runs(tree.get(path), data) for path, data in ours.items()}
    return registry.markdown(registry.load_files(tree)).encode("utf-8")


def _changed_in_worktree(root: Path, paths: list[str]) -> set[str]:
    """Of `paths`, those this job wrote: changed since the checked-out commit, or new. Sending only these
    keeps an older checkout from overwriting what another job committed meanwhile."""
    import subprocess

    out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all", "--", *paths], cwd=root,
                         capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout: everything is new
        return set(paths)
    return {entry[3:] for entry in out.stdout.split("\0") if len(entry) > 3}


def _blob_url() -> str:
    server = os.environ.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    return f"{server}/{os.environ.get('GITHUB_REPOSITORY', '')}/blob/{os.environ.get('GITHUB_REF_NAME', 'main')}"


def run_commenter(name: str, sha: str | None = None):
    """Post (or update) a run's one live comment on the pull request that merged its commit."""
    from runner import github, render

    repo = github.repository()
    pulls: dict[str, Any] = {}  # commit -> its merged pull request (PyGithub), or None

    def post(record) -> str:
        from runner.runs import on_branch

        if not sha and record.commit and not on_branch(Path.cwd(), record.commit, "HEAD"):
            # A record may name any commit: comment only where a merge to this branch happened.
            return f"{name}: run {record.run_id} names a commit not on this branch; nothing to comment"
        commit = sha or record.commit or os.environ.get("GITHUB_SHA", "")
        if commit not in pulls:
            pulls[commit] = github.merged_pull(repo, commit) if commit else None
        pr = pulls[commit]
        if pr is None:
            return f"{name}: no merged pull request produced {commit[:12] or 'this commit'}; nothing to comment"
        try:
            action, _ = github.upsert_comment(repo, pr.number, render.run_marker(name, record),
                                              render.run_markdown(name, record, _blob_url()))
        except Exception as e:  # noqa: BLE001 - GitHub trouble must not stop a run; say it in one line
            raise UserError(f"commenting on #{pr.number} failed: {str(e).splitlines()[0] if str(e) else e}") from None
        return f"{action} the comment of run {record.run_id} ({name}) on #{pr.number}"

    return post


def cmd_notify(args: argparse.Namespace) -> int:
    """Update each recipe's latest run comment (its progress, or its outcome) on the pull request that merged it."""
    from runner import ledger

    names = list(map(name_of, args.recipes)) or [g.name for g in ledger.all_runs(Path.cwd()) if g.runs]
    for name in names:
        runs = ledger.read(Path.cwd(), name).runs
        if runs:
            print(run_commenter(name, args.sha)(runs[-1]))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The workflow subcommands, added to the `runner` parser."""
    p = sub.add_parser("changed", help="recipe files changed between two commits (for workflows)")
    p.add_argument("--base", default=None, help="the commit before (default or all zeros: every recipe)")
    p.add_argument("--head", default="HEAD")
    p.add_argument("--only", default=None, metavar="RECIPE", help="just this recipe file, checked to be one")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--matrix", action="store_true", help="print a JSON list of {recipe, name} (the train matrix)")
    p.set_defaults(func=cmd_changed)

    p = sub.add_parser("comment-plan", help="in a workflow_run job: plan the PR's head in trusted code and post it "
                                            "as the sticky comment")
    p.set_defaults(func=cmd_comment_plan)

    p = sub.add_parser("pr-check", help="in a pull request: validate and plan the changed recipes into DIR")
    p.add_argument("--base", required=True)
    p.add_argument("--head", default="HEAD")
    p.add_argument("--out", default="plan", metavar="DIR", help="where plan.md and plan.json go")
    p.set_defaults(func=cmd_pr_check)

    p = sub.add_parser("commit-back", help="in a workflow: commit files to the branch (a PR if it is protected)")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--recipe", action="append", metavar="RECIPE", help="this recipe's run record and model card")
    p.add_argument("--branch", default=None, help="default: GITHUB_REF_NAME")
    p.add_argument("--message", default="recipes-runner: record training results")
    p.set_defaults(func=cmd_commit_back)

    p = sub.add_parser("notify", help="in a workflow: comment each recipe's outcome on the merged pull request")
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="default: every recipe with a recorded run")
    p.add_argument("--sha", default=None, help="the merge commit (default: the commit each run started from)")
    p.set_defaults(func=cmd_notify)
