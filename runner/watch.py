"""The watcher: propose retraining when a recipe's base model or Hub dataset moved past what its current model
trained on. It never trains: it opens one pull request per recipe that pins the new commits, and the plan
comment on it says what retraining would cost; a person merges it (and approves the spend) or closes it.

Pure at the core (`proposals`: what moved, from recorded and current commits); I/O at the edges: the
recipes and runs on disk (`survey`), the Hub through HfApi (`lookup`), GitHub through PyGithub (`propose`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from runner import ledger, promote, yamledit
from runner.errors import RecipeInvalid, UserError
from runner.recipe import LoadedRecipe, load, recipe_files
from runner.revisions import DEFAULT_REF, HubSha, Kind, Resolved, head, hub_inputs, named
from runner.yamlsafe import dotted

BRANCH_PREFIX = "watch/"
# Where each kind of revision lives in a recipe, and the key a new one is written beside.
FIELDS: dict[Kind, tuple[tuple[str, ...], str]] = {"model": (("base_model_revision",), "base_model"),
                                                   "dataset": (("dataset", "revision"), "path")}
# The comment a proposal leaves above a tag or branch the recipe names (the ref stays; the comment is the change).
NOTE = "runner watch: "
NOTED = re.compile(rf"^[ \t]*# {NOTE}(?P<field>\S+) \S+ moved to (?P<sha>[0-9a-f]{{40}})\b", re.MULTILINE)


class HubInput(BaseModel):
    """One Hub input of a recipe and the ref the watcher follows: the branch or tag it pins, else main."""

    model_config = ConfigDict(frozen=True)
    kind: Kind
    repo: str
    pin: str | None = None

    @property
    def named(self) -> bool:
        """Whether the recipe names a tag or branch (kept by a proposal) rather than a commit or nothing."""
        return named(self.pin)

    @property
    def ref(self) -> str:
        return self.pin if self.pin is not None and self.named else DEFAULT_REF


class Watched(BaseModel):
    """A recipe with a current model: its Hub inputs and the commits that model trained on."""

    name: str
    path: str  # the recipe file, repository-relative
    run_id: ledger.RunId  # the current model's run
    inputs: list[HubInput]
    trained: Resolved
    noted: dict[Kind, HubSha] = {}  # the commit a merged proposal's comment says a named ref moved to


class Moved(BaseModel):
    """A Hub input whose followed ref is at another commit than the current model trained on."""

    kind: Kind
    repo: str
    ref: str
    trained: HubSha
    now: HubSha
    named: bool = False  # the recipe names `ref` (a tag or branch): the proposal keeps it, the run resolves it


class Proposal(BaseModel):
    """Retrain one recipe on the new commits of what moved: one pull request."""

    model_config = ConfigDict(extra="forbid")
    name: str
    path: str
    run_id: ledger.RunId
    moved: list[Moved]
    plan_comment: str | None = None  # the pinned recipe's plan, as the plan check would comment it

    @property
    def branch(self) -> str:  # read back by proposes_for
        """One branch per recipe and target commits: the same revisions are never proposed twice."""
        return f"{BRANCH_PREFIX}{self.name}-" + "-".join(m.now[:8] for m in self.moved)

    @property
    def title(self) -> str:
        what = " and ".join(f"{m.kind} {m.repo}" for m in self.moved)
        return f"Retrain {self.name}: its {what} moved"


# --- the pure core ---------------------------------------------------------------------------------


def proposals(watched: list[Watched], heads: dict[HubInput, str]) -> list[Proposal]:
    """One proposal per recipe whose followed base model or dataset commit is neither the one its current
    model trained on nor the one the recipe already pins (a merged proposal waiting for its run)."""
    out = []
    for w in watched:
        moved = []
        for inp in w.inputs:
            trained = w.trained.base_model if inp.kind == "model" else w.trained.dataset
            now = heads.get(inp)
            if trained is not None and now is not None and now not in (trained, inp.pin, w.noted.get(inp.kind)):
                moved.append(Moved(kind=inp.kind, repo=inp.repo, ref=inp.ref, trained=trained, now=now,
                                   named=inp.named))
        if moved:
            out.append(Proposal(name=w.name, path=w.path, run_id=w.run_id, moved=moved))
    return out


def pinned(text: str, proposal: Proposal) -> str:
    """The recipe's text as the proposal makes it, every other line kept as it was: the new commit written where
    the recipe pins a commit or follows main; a tag or branch it names kept, with a comment line above it saying
    which commit the ref moved to (the change whose merge retrains; the run resolves the ref and records it)."""
    values = {FIELDS[m.kind][0]: m.now for m in proposal.moved if not m.named}
    beside = {FIELDS[m.kind][0]: FIELDS[m.kind][1] for m in proposal.moved}
    out = yamledit.set_values(text, proposal.path, values, beside) if values else text
    for m in proposal.moved:
        if m.named:
            field = FIELDS[m.kind][0]
            out = yamledit.set_comment(out, proposal.path, field, f"# {NOTE}",
                                       f"{dotted(field)} {m.ref} moved to {m.now}; merging retrains on it")
    return out


def noted(text: str) -> dict[Kind, str]:
    """The commits a merged proposal's comments say the recipe's named refs moved to."""
    kinds = {dotted(path): kind for kind, (path, _) in FIELDS.items()}
    return {kinds[m["field"]]: m["sha"] for m in NOTED.finditer(text) if m["field"] in kinds}


def proposes_for(branch: str, name: str) -> bool:
    """Whether a branch is one of this recipe's proposals (`qwen` must not match `qwen-chat`'s)."""
    return re.fullmatch(rf"{re.escape(BRANCH_PREFIX + name)}(-[0-9a-f]{{8}})+", branch) is not None


def body(proposal: Proposal) -> str:
    """The pull request's description: what moved, from which commit to which, and what merging does."""
    rows = "\n".join(f"| {m.kind} | `{m.repo}` | {m.ref} | `{m.trained[:12]}` | `{m.now[:12]}` |"
                     for m in proposal.moved)
    pins = [m for m in proposal.moved if not m.named]
    kept = [m for m in proposal.moved if m.named]
    what = " and ".join(filter(None, [
        f"pins the new commit{'s' if len(pins) > 1 else ''} in `{proposal.path}`" if pins else "",
        (f"keeps the {' and '.join(f'`{m.ref}`' for m in kept)} the recipe names (the run resolves "
         f"{'them' if len(kept) > 1 else 'it'} and records the commit), noting the new commit in a comment")
        if kept else ""]))
    return (f"The {' and '.join(m.kind for m in proposal.moved)} of `{proposal.name}` moved since its current "
            f"model (run `{proposal.run_id}`) trained on it.\n\n"
            f"| input | repo | followed | trained on | now |\n| --- | --- | --- | --- | --- |\n{rows}\n\n"
            f"This pull request {what}; the plan comment shows what retraining would cost. "
            "Merging retrains it (behind the `training` approval) like any recipe change; closing it declines "
            "these revisions, and `runner watch` does not propose them again.\n\n"
            "_Opened by `runner watch`, which never trains by itself._")


# --- the edges: disk, Hub, GitHub --------------------------------------------------------------------


def current_run(root: Path, name: str) -> ledger.RunRecord | None:
    """The recipe's current model: the run models/current.json promotes, else its latest recorded run."""
    runs = ledger.read(root, name).runs
    promoted = promote.read(root).models.get(name)
    if promoted is not None:
        return next((r for r in runs if r.run_id == promoted), None)
    return next((r for r in reversed(runs) if r.state == "recorded"), None)


def _watched(root: Path, loaded: LoadedRecipe, notes: list[str]) -> Watched | None:
    name = loaded.recipe.name
    inputs = [HubInput(kind=k, repo=repo, pin=pin) for k, (repo, pin) in hub_inputs(loaded).items()]
    if not inputs:
        return None  # a local model and local data move only by commits to this repository
    run = current_run(root, name)
    if run is None:
        notes.append(f"{name}: no current model yet (no recorded run): nothing to compare")
        return None
    unknown = [i.kind for i in inputs if (run.base_revision if i.kind == "model" else run.dataset_revision) is None]
    if unknown:
        notes.append(f"{name}: run {run.run_id} recorded no {' or '.join(unknown)} revision (trained before runs "
                     "recorded them): not compared")
    return Watched(name=name, path=loaded.display, run_id=run.run_id, inputs=inputs, trained=run.revisions,
                   noted=noted(loaded.path.read_text(encoding="utf-8")))


def survey(root: Path) -> tuple[list[LoadedRecipe], list[Watched], list[str]]:
    """Every recipe under recipes/ with a current model and a Hub input; notes say why others are left out."""
    loaded, watched, notes = [], [], []
    for path in recipe_files([str(root / "recipes")]) if (root / "recipes").is_dir() else []:
        try:
            one = load(path, root=root)
        except RecipeInvalid as e:
            notes.append(f"{e.problems[0]} (not watched until it validates)")
            continue
        found = _watched(root, one, notes)
        if found is not None:
            loaded.append(one)
            watched.append(found)
    return loaded, watched, notes


def lookup(api: Any, watched: list[Watched], problems: list[str]) -> dict[HubInput, str]:
    """The commit each followed ref is at now, asked once per repo and ref (HfApi model_info / dataset_info).
    One the Hub will not tell is left out, its one line added to `problems`: the other recipes go on."""
    now: dict[tuple[Kind, str, str], str] = {}
    keys: set[tuple[Kind, str, str]] = {(i.kind, i.repo, i.ref) for w in watched for i in w.inputs}
    for kind, repo, ref in sorted(keys):
        try:
            now[(kind, repo, ref)] = head(api, kind, repo, None if ref == DEFAULT_REF else ref)
        except UserError as e:
            problems.append(f"error: {e}")
    return {i: now[(i.kind, i.repo, i.ref)] for w in watched for i in w.inputs if (i.kind, i.repo, i.ref) in now}


def updated(loaded: LoadedRecipe, proposal: Proposal) -> LoadedRecipe:
    """The recipe as the proposal's pull request would make it, to plan. Data pinned to main's head is planned at
    main: the same rows, and the dataset viewer (the plan's quick sample) serves only main."""
    r = loaded.recipe
    changes: dict[str, Any] = {}
    for m in proposal.moved:
        if m.named:
            continue  # the recipe keeps the ref it names, which the Hub resolves to the new commit
        if m.kind == "model":
            changes["base_model_revision"] = m.now
        else:
            changes["dataset"] = r.dataset.model_copy(update={"revision": None if m.ref == DEFAULT_REF else m.now})
    return dataclasses.replace(loaded, recipe=r.model_copy(update=changes))


class Proposals(BaseModel):
    """What `runner watch --out` hands the job that may write (which holds no Hub token): read as data."""

    model_config = ConfigDict(extra="forbid")
    proposals: list[Proposal]


def look(root: Path, api: Any, plan: Callable[[LoadedRecipe], str] | None = None) -> tuple[list[Proposal], list[str]]:
    """Survey, look up and decide (each proposal's pinned text checked, and planned with `plan`); the proposals
    and one line per proposal or note."""
    loaded, watched, lines = survey(root)
    by_name = {lr.recipe.name: lr for lr in loaded}
    found = []
    for p in proposals(watched, lookup(api, watched, lines)):
        try:
            pinned((root / p.path).read_text(encoding="utf-8"), p)
        except UserError as e:
            lines.append(f"error: {e}")
            continue
        found.append(p.model_copy(update={"plan_comment": plan(updated(by_name[p.name], p)) if plan else None}))
        lines.append(f"{p.name}: " + "; ".join(f"{m.kind} {m.repo}@{m.ref}: {m.trained[:12]} -> {m.now[:12]}"
                                               for m in p.moved) + f" (proposed on {p.branch})")
    if not found:
        lines.append("nothing moved: no retraining to propose")
    return found, lines


def read_proposals(path: Path, root: Path) -> list[Proposal]:
    """The proposals file, each naming a recipe of this checkout by its file and name; else one line why."""
    try:
        found = Proposals.model_validate_json(path.read_text(encoding="utf-8")).proposals
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a proposals file from `runner watch --out` ({str(e).splitlines()[0]})") from None
    for p in found:
        try:
            loaded = load(root / p.path, root=root)
        except (RecipeInvalid, OSError):
            loaded = None
        if not p.path.startswith("recipes/") or loaded is None or loaded.recipe.name != p.name:
            raise UserError(f"{path}: proposal for {p.name} names {p.path}, which is not that recipe")
        inputs = hub_inputs(loaded)
        if any(inputs.get(m.kind, ("",))[0] != m.repo for m in p.moved):
            raise UserError(f"{path}: proposal for {p.name} moves a {p.moved[0].kind} the recipe does not train on")
        for m in p.moved:  # whether a ref is kept is the checkout's to say, not the file's
            followed = HubInput(kind=m.kind, repo=m.repo, pin=inputs[m.kind][1])
            m.named, m.ref = followed.named, followed.ref
    return found


def open_all(root: Path, repo: Any, found: list[Proposal]) -> list[str]:
    """A pull request per proposal (none for revisions proposed before); one line per outcome."""
    lines = []
    for p in found:
        text = pinned((root / p.path).read_text(encoding="utf-8"), p)
        lines.append(propose(repo, p, text))
    return lines or ["nothing to propose"]


def propose(repo: Any, proposal: Proposal, text: str) -> str:
    """Open the proposal's pull request (branch, commit, pull request, plan comment) unless a pull request
    from its branch exists in any state; close older open proposals for the recipe. One line of outcome."""
    from github import GithubException

    from runner import github
    from runner.render import COMMENT_MARKER

    owner = repo.full_name.split("/")[0]
    seen = list(repo.get_pulls(state="all", head=f"{owner}:{proposal.branch}"))
    if seen:
        return f"{proposal.name}: already proposed in #{seen[0].number} ({seen[0].state}); not again"
    base = repo.default_branch
    try:
        repo.create_git_ref(f"refs/heads/{proposal.branch}", repo.get_branch(base).commit.sha)
    except GithubException as e:
        if e.status != 422:  # 422: the branch is there, left by a run that stopped before its pull request
            raise
    github.commit_files(repo, proposal.branch, {proposal.path: text.encode("utf-8")},
                        f"{proposal.title}\n\nProposed by runner watch: " +
                        ", ".join(f"{m.repo}@{m.ref} {m.trained[:12]} -> {m.now[:12]}" for m in proposal.moved))
    pr = repo.create_pull(title=proposal.title, body=body(proposal), head=proposal.branch, base=base)
    for old in repo.get_pulls(state="open", base=base):
        if old.number != pr.number and proposes_for(old.head.ref, proposal.name):
            old.edit(state="closed")  # one open proposal per recipe: the newest revisions
            old.create_issue_comment(f"Superseded by #{pr.number}, which pins newer revisions.")
    if proposal.plan_comment is not None:  # a pull request GITHUB_TOKEN opens starts no plan workflow
        github.upsert_comment(repo, pr.number, COMMENT_MARKER, proposal.plan_comment)
    return f"{proposal.name}: opened #{pr.number} ({proposal.branch})"


def look_here(root: Path, out: Path | None) -> tuple[list[Proposal], list[str]]:
    """`runner watch [--out FILE]`: look with the read token (HF_READ_TOKEN, else the usual one); with `out`,
    write the proposals there with their plan comments."""
    import os

    from runner import hub

    if hub.offline():
        raise UserError("runner watch asks the Hub where each base model and dataset is now: unset HF_HUB_OFFLINE")
    token = os.environ.get("HF_READ_TOKEN") or hub.token()  # it only reads
    found, lines = look(root, hub.api(token), plan_comment(token) if out else None)
    if out is not None:
        out.write_text(Proposals(proposals=found).model_dump_json(indent=2), encoding="utf-8")
    return found, lines


def open_file(root: Path, path: Path) -> list[str]:
    """`runner watch --open FILE`: a pull request per proposal in FILE, on the repository GITHUB_TOKEN names."""
    from runner import github

    return open_all(root, github.repository(), read_proposals(path, root))


def plan_comment(token: str | None) -> Callable[[LoadedRecipe], str]:
    """A proposal's plan comment, as the plan check would post it (a pull request opened with GITHUB_TOKEN
    starts no workflow); with a read token, data-derived details are withheld as there."""
    from runner import planning, render
    from runner.actions import _without_rows

    def comment(loaded: LoadedRecipe) -> str:
        problems: list[str] = []
        plans = planning.plan_all([loaded], token, problems)
        return render.plan_markdown([_without_rows(p) for p in plans] if token else plans, problems)

    return comment
