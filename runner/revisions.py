"""The exact Hub commits a run trains on: the base model's and the dataset's, resolved once when it starts.

A recipe may pin a revision (`base_model_revision`, `dataset.revision`: a branch, tag or commit) or
none (the repo's main). Either way the run records the commit it resolved to and its jobs load exactly
that commit, so a model can say what it was trained on and `runner watch` can tell when the base or the
data moved since. A local model or data file has no revision: the repository's commit pins it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from runner.errors import UserError
from runner.recipe import LoadedRecipe

HubSha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
SHA = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REF = "main"  # what the Hub resolves when no revision is given
Kind = Literal["model", "dataset"]


class Resolved(BaseModel):
    """The commits a run's Hub inputs resolved to (None: a local input, or not resolved)."""

    model_config = ConfigDict(frozen=True)
    base_model: HubSha | None = None
    dataset: HubSha | None = None


def named(pin: str | None) -> bool:
    """Whether a pinned revision names a tag or branch (which moves) rather than a commit (or nothing)."""
    return pin is not None and not SHA.match(pin)


def names_ref(loaded: LoadedRecipe) -> bool:
    """Whether the recipe pins a Hub input by a tag or branch name."""
    return any(named(pin) for _, pin in hub_inputs(loaded).values())


def followed(loaded: LoadedRecipe, resolved: Resolved | None) -> dict[Kind, str]:
    """The commits `resolved` gives the Hub inputs the recipe pins by a tag or branch name: part of what a run
    trains (its version), as the recipe text cannot say which commit the ref was at."""
    found = {"model": resolved.base_model, "dataset": resolved.dataset} if resolved else {}
    return {k: sha for k, (_, pin) in hub_inputs(loaded).items() if named(pin) and (sha := found.get(k))}


def hub_inputs(loaded: LoadedRecipe) -> dict[Kind, tuple[str, str | None]]:
    """The recipe's Hub inputs: kind -> (repo id, the revision it pins or None)."""
    r = loaded.recipe
    out: dict[Kind, tuple[str, str | None]] = {}
    if not r.base_model_is_local:
        out["model"] = (r.base_model, r.base_model_revision)
    if not r.dataset.is_local:
        out["dataset"] = (r.dataset.path, r.dataset.revision)
    return out


def head(api: Any, kind: Kind, repo: str, revision: str | None) -> str:
    """The commit `revision` (default main) of a Hub model or dataset points at now, via HfApi *_info().sha."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    info = api.model_info if kind == "model" else api.dataset_info
    try:
        sha = info(repo, revision=revision).sha
    except RevisionNotFoundError:
        raise UserError(f"{kind} {repo}: revision '{revision}' not found on the Hub") from None
    except GatedRepoError:  # before its parent class: it exists, the token's account has not accepted its terms
        raise UserError(f"{kind} {repo}: gated on the Hub; accept its conditions with the token's account") from None
    except RepositoryNotFoundError:
        raise UserError(f"{kind} {repo}: not found on the Hub (or private, and the token cannot read it)") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise UserError(f"{kind} {repo}: the Hub answered HTTP {status} when asked for its revision") from None
    except Exception as e:  # noqa: BLE001 - no answer at all (network): one line, not a traceback
        raise UserError(f"{kind} {repo}: cannot ask the Hub for its revision ({type(e).__name__})") from None
    if not isinstance(sha, str) or not SHA.match(sha):
        raise UserError(f"{kind} {repo}: the Hub gave no commit for revision '{revision or DEFAULT_REF}'")
    return sha


def resolve(loaded: LoadedRecipe, api: Callable[[], Any] | None) -> Resolved:
    """The commits this recipe's Hub inputs point at now; `api` makes an HfApi (None: offline, nothing resolved)."""
    inputs = hub_inputs(loaded)
    if not inputs or api is None:
        return Resolved()
    client = api()
    found = {kind: head(client, kind, repo, pin) for kind, (repo, pin) in inputs.items()}
    return Resolved(base_model=found.get("model"), dataset=found.get("dataset"))


def consistent(loaded: LoadedRecipe, resolved: Resolved) -> str | None:
    """Why a recorded resolution cannot be the recipe's (None: it can): a record picks no other repo's commit,
    nothing for a local input, and exactly the commit a recipe pins."""
    inputs = hub_inputs(loaded)
    for kind, sha in (("model", resolved.base_model), ("dataset", resolved.dataset)):
        if kind not in inputs and sha is not None:
            return f"names a {kind} revision for a local {kind}"
        pin = inputs[kind][1] if kind in inputs else None
        if pin is not None and SHA.match(pin) and sha not in (None, pin):
            return f"names {kind} revision {sha[:12]}, the recipe pins {pin[:12]}"
    return None


def now(loaded: LoadedRecipe, backend: Any) -> Resolved:
    """The commits the recipe's Hub inputs are at now, through the backend's client (or one on the
    configured endpoint); nothing when offline, where the job can only read what is cached anyway."""
    from runner import hub

    if hub.offline():
        return Resolved()
    api = getattr(backend, "api", None)
    return resolve(loaded, (lambda: api) if api is not None else hub.api)
