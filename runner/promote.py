"""Promotion as GitOps: `models/current.json` says which run is each recipe's current model.

`runner promote NAME RUN_ID` edits that file in a pull request; on merge the Hub tag `prod` of the recipe's
model repo moves to the commit that run pushed. Only a recorded run that pushed a model can be promoted.
A model reaches a repo's main with its card (`card_files`): a sweep's winner is made main together with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from runner import ledger
from runner.errors import UserError
from runner.gates import Scores, scores

CURRENT_FILE = Path("models") / "current.json"
TAG = "prod"


class Current(BaseModel):
    """The registry's promotion file: recipe name -> the run id that is its current model."""

    models: dict[str, ledger.RunId] = Field(default_factory=dict)


def read(root: Path) -> Current:
    """The promotion file (empty when there is none); a malformed one is one line naming it."""
    path = root / CURRENT_FILE
    if not path.exists():
        return Current()
    try:
        return Current.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError):
        raise UserError(f"{CURRENT_FILE}: not a valid promotion file ({{\"models\": {{name: run_id}}}}); "
                        "fix it or restore it from git") from None


def promotable(root: Path, name: str, run_id: str) -> ledger.RunRecord:
    """The run to promote, or a UserError saying why it cannot be the current model."""
    runs = ledger.read(root, name).runs
    if not runs:
        raise UserError(f"no runs recorded for '{name}' in runs/{name}.json: promote one of a recipe's runs")
    run = next((r for r in runs if r.run_id == run_id), None)
    if run is None:
        recent = ", ".join(r.run_id for r in runs[-3:])
        raise UserError(f"'{run_id}' is not a run of '{name}' (latest: {recent})")
    if run.state != "recorded":
        raise UserError(f"run {run_id} is {run.state}: only a recorded run can be promoted")
    if model_commit(run) is None:
        raise UserError(f"run {run_id} pushed no model to the Hub (trained locally): nothing for the tag to point at")
    return run


def model_commit(run: ledger.RunRecord) -> tuple[str, str] | None:
    """(model repo, commit) the run's training pushed, if it pushed one."""
    pushed = run.train_summary.pushed if run.train_summary else None
    return (pushed.repo, pushed.commit) if pushed and pushed.commit else None


def promote(root: Path, name: str, run_id: str) -> Current:
    """Make `run_id` the current model of `name` in models/current.json (checked first, written atomically)."""
    promotable(root, name, run_id)
    current = read(root)
    current.models = dict(sorted((current.models | {name: run_id}).items()))
    ledger.atomic_write(root / CURRENT_FILE, json.dumps(current.model_dump(), indent=2) + "\n")
    return current


def move_tag(api: Any, repo: str, commit: str, tag: str = TAG) -> bool:
    """Point `tag` of `repo` at `commit` (HfApi.delete_tag then create_tag); False when it already points there."""
    from huggingface_hub.utils import HfHubHTTPError

    refs = api.list_repo_refs(repo)
    here = next((t.target_commit for t in refs.tags if t.name == tag), None)
    if here == commit:
        return False
    if here is not None:
        try:
            api.delete_tag(repo, tag=tag)
        except HfHubHTTPError as e:  # another merge moved it first: create_tag below still says where it ends
            if e.response is None or e.response.status_code != 404:
                raise
    api.create_tag(repo, tag=tag, revision=commit, tag_message=f"promoted by runner: {commit}")
    return True


def sync(root: Path, api: Any, tag: str = TAG) -> list[str]:
    """On merge: move each promoted recipe's tag to its run's model commit; one line per tag moved."""
    moved = []
    for name, run_id in read(root).models.items():
        repo_commit = model_commit(promotable(root, name, run_id))
        assert repo_commit is not None  # promotable refuses a run without one
        repo, commit = repo_commit
        if move_tag(api, repo, commit, tag):
            moved.append(f"{repo}: {tag} -> {commit[:12]} (run {run_id} of {name})")
    return moved


def current_scores(root: Path, name: str) -> Scores | None:
    """The numbers of the recipe's current model (None: none promoted, or its run has no evaluation)."""
    run_id = read(root).models.get(name)
    run = next((r for r in ledger.read(root, name).runs if r.run_id == run_id), None) if run_id else None
    return scores(run.evaluation) if run is not None and run.evaluation is not None else None


def card_files(record: ledger.RunRecord, name: str) -> dict[str, bytes]:
    """The run's model card as its repo holds it, from the record alone: README.md and, when the run logged a
    loss, loss.png. Before its GGUF conversion the card has no GGUF section; after it, it has."""
    from runner import card

    history = record.train_summary.log_history if record.train_summary else []
    method = record.plan.method if record.plan else "?"
    png = card.loss_plot_png(history, f"{name} ({method.upper()})")
    text = card.build(record, has_plot=png is not None)  # what the run fixed and did, whatever the recipe says now
    return {"README.md": text.encode("utf-8"), **({"loss.png": png} if png else {})}
