"""`runner doctor`: is this repository ready to train by pull request? One line per check, with the fix.

Checks what a team sets up on its first day: the Hub token (who, write access to the namespace,
Jobs allowed), the GitHub environments and their reviewers, branch protection, whether workflows may
open pull requests, the budget and the cap, CODEOWNERS, and names the first recipe to try. Reads only;
never prints the token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from runner.errors import RecipeInvalid, UserError

Verdict = Literal["ok", "warn", "fail", "skip"]
PLACEHOLDER = "@your-org"
PLAN_CHECK = "Validate and plan changed recipes"  # the `plan` workflow's job: the check a merge must pass
BILLING = "https://huggingface.co/settings/billing"
ACTIONS_PRS = ("Settings > Actions > General > Workflow permissions: tick `Allow GitHub Actions to create and "
               "approve pull requests`")


class Check(BaseModel):
    """One thing the repository needs; `fix` says what to change when it is not so."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def line(self) -> str:
        """`[ok] name: detail`, and the fix on failure."""
        return f"[{self.verdict}] {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")


def defaults_checks(root: Path) -> tuple[list[Check], str | None]:
    """The budget, the cap and the namespace in recipes/_defaults.yaml; returns the namespace too."""
    from runner import recipe, yamlsafe

    path = root / "recipes" / recipe.DEFAULTS_FILE
    if not path.is_file():
        return [Check(name="defaults", verdict="fail", detail="recipes/_defaults.yaml is missing",
                      fix="restore it from the template")], None
    try:
        doc = yamlsafe.load(path, display="recipes/_defaults.yaml").data
    except RecipeInvalid as e:
        return [Check(name="defaults", verdict="fail", detail=str(e.problems[0]), fix="fix the file")], None
    namespace = doc.get("namespace")
    cap, budget = doc.get("max_budget_usd"), doc.get("budget_usd")
    out = [Check(name="namespace", verdict="ok", detail=f"models go to {namespace}/<recipe name>")
           if namespace else
           Check(name="namespace", verdict="fail", detail="no namespace: a run on HF Jobs has nowhere to push",
                 fix="set `namespace: <your Hub user or org>` in recipes/_defaults.yaml")]
    if cap is None:
        out.append(Check(name="budget cap", verdict="fail", detail="no max_budget_usd: any recipe may budget anything",
                         fix="set `max_budget_usd:` in recipes/_defaults.yaml"))
    else:
        out.append(Check(name="budget cap", verdict="ok",
                         detail=f"a recipe may budget at most ${cap:g}; default budget "
                                + (f"${budget:g}" if budget is not None else "none (each recipe sets one)")))
    return out, namespace


def codeowners_check(root: Path) -> Check:
    """CODEOWNERS names real reviewers, not the template's placeholder."""
    path = root / ".github" / "CODEOWNERS"
    if not path.is_file():
        return Check(name="CODEOWNERS", verdict="fail", detail=".github/CODEOWNERS is missing",
                     fix="restore it: it decides who reviews spending and workflow changes")
    if PLACEHOLDER in path.read_text(encoding="utf-8"):
        return Check(name="CODEOWNERS", verdict="fail", detail=f"still names the placeholder {PLACEHOLDER}/...",
                     fix="replace it in .github/CODEOWNERS with the team trusted with the token and the budget")
    return Check(name="CODEOWNERS", verdict="ok", detail="names your reviewers")


def hub_checks(api: Any, namespace: str | None) -> list[Check]:
    """Who the token is, whether it can write to the namespace, and whether it may run Jobs there."""
    try:
        me = api.whoami()
    except Exception as e:  # noqa: BLE001 - any refusal means the same: the token does not work
        return [Check(name="Hub token", verdict="fail", detail=f"the Hub refused it ({type(e).__name__})",
                      fix="create a fine-grained token with write access to your namespace and Jobs")]
    user, orgs = me.get("name", "?"), [o.get("name") for o in me.get("orgs", [])]
    access = (me.get("auth") or {}).get("accessToken") or {}
    out = [Check(name="Hub token", verdict="ok", detail=f"authenticates as {user} ({access.get('role', '?')} token)")]
    if namespace is None:
        return out
    out.append(_write_check(namespace, user, orgs, access))
    out.append(_jobs_check(api, me, namespace, access))
    return out


def _jobs_check(api: Any, me: dict[str, Any], namespace: str, access: dict[str, Any]) -> Check:
    """The token may run Jobs in the namespace, and the namespace can pay for them."""
    scoped = (access.get("fineGrained") or {}).get("scoped", []) if access.get("role") == "fineGrained" else None
    if scoped is not None and not any((s.get("entity") or {}).get("name") == namespace
                                      and "job.write" in s.get("permissions", []) for s in scoped):
        return Check(name="Jobs", verdict="fail", detail=f"the fine-grained token may not start Jobs in {namespace}",
                     fix=f"edit the token: allow Jobs (job.write) on {namespace}")
    try:
        next(iter(api.list_jobs(namespace=namespace)), None)  # a lazy iterator: the first page is the request
    except Exception as e:  # noqa: BLE001
        return Check(name="Jobs", verdict="fail", detail=f"listing Jobs in {namespace} was refused "
                     f"({type(e).__name__})", fix="give the token Jobs permission for the namespace, and make sure "
                     "the account has billing set up or credits")
    owner = me if me.get("name") == namespace else next((o for o in me.get("orgs", []) if o.get("name") == namespace),
                                                          {})
    if owner.get("canPay") is False:  # the Hub answers the first submission with 402 Payment Required
        return Check(name="Jobs", verdict="fail", detail=f"{namespace} cannot pay for Jobs (no credits, no payment "
                     "method)", fix=f"add credits or a payment method: {BILLING}")
    return Check(name="Jobs", verdict="ok", detail=f"the token may list and run Jobs in {namespace}")


def _write_check(namespace: str, user: str, orgs: list[str], access: dict[str, Any]) -> Check:
    role = access.get("role")
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped", [])
        writes = any((s.get("entity") or {}).get("name") == namespace and "repo.write" in s.get("permissions", [])
                     for s in scoped)
        ok = writes
    else:
        ok = role in ("write", "admin") and namespace in [user, *orgs]
    if ok:
        return Check(name="write access", verdict="ok", detail=f"the token can create and push repos in {namespace}")
    return Check(name="write access", verdict="fail", detail=f"the token cannot write to {namespace}",
                 fix=f"give the token write access to {namespace} (fine-grained: repo.write on it)")


def github_checks(repo: Any) -> list[Check]:
    """The `training` and `reconcile` environments (with reviewers on training) and the default branch's protection."""
    import logging

    from github import GithubException

    logging.getLogger("github").setLevel(logging.WARNING)  # PyGithub logs each refusal; here a 403 is an answer
    out = []
    for name, needs_reviewers in (("training", True), ("reconcile", False)):
        try:
            env = repo.get_environment(name)
            rules = env.protection_rules or []  # the lazy client asks here
        except GithubException:
            out.append(Check(name=f"environment {name}", verdict="fail", detail="does not exist",
                             fix=f"Settings > Environments > New environment `{name}`, add the secret HF_TOKEN, "
                                 "deployment branches: main only"))
            continue
        reviewers = [r for rule in rules if rule.type == "required_reviewers"
                     for r in (rule.raw_data.get("reviewers") or [])]
        if needs_reviewers and not reviewers:
            out.append(Check(name=f"environment {name}", verdict="warn", detail="exists, with no required reviewers: "
                             "a merge spends without anyone approving", fix="add required reviewers to `training`"))
        elif reviewers and not needs_reviewers:
            out.append(Check(name=f"environment {name}", verdict="warn", detail="has required reviewers: every "
                             "scheduled run waits for an approval", fix=f"remove them (`{name}` only carries on runs "
                             "that were approved)"))
        else:
            out.append(Check(name=f"environment {name}", verdict="ok",
                             detail=f"exists ({len(reviewers)} required reviewer(s))"))
        if env.deployment_branch_policy is None:
            out.append(Check(name=f"environment {name} branches", verdict="warn", detail="any branch's workflow may "
                             "read its HF_TOKEN", fix=f"Settings > Environments > {name} > Deployment branches: main"))
    return out + protection_checks(repo) + [pull_requests_check(repo)]


def pull_requests_check(repo: Any) -> Check:
    """Workflows may open pull requests with GITHUB_TOKEN: the watcher's proposals and commit-back to a protected
    branch do (GET .../actions/permissions/workflow, which PyGithub has no method for)."""
    from github import GithubException

    name = "Actions pull requests"
    try:
        _, found = repo._requester.requestJsonAndCheck("GET", f"{repo.url}/actions/permissions/workflow")
    except GithubException as e:  # the workflow's own token may not read the setting (administration: read)
        return Check(name=name, verdict="skip", detail=f"this token cannot read the workflow permissions "
                     f"(HTTP {e.status})", fix=f"check it yourself: {ACTIONS_PRS}")
    if (found or {}).get("can_approve_pull_request_reviews") is True:
        return Check(name=name, verdict="ok", detail="workflows may open pull requests (runner watch's proposals, "
                     "commit-back to a protected branch)")
    return Check(name=name, verdict="fail", detail="workflows may not open pull requests: runner watch's proposals "
                 "and commit-back to a protected branch are refused", fix=ACTIONS_PRS)


def protection_checks(repo: Any) -> list[Check]:
    """The default branch's protection, rule by rule: what the README's security section asks for."""
    from github import GithubException

    branch = repo.default_branch
    out: list[Check] = []
    found = None
    try:
        found = repo.get_branch(branch)
        rules = found.get_protection()
    except GithubException as e:
        if e.status in (401, 403):  # GITHUB_TOKEN cannot read the rules; the branch still says if it has any
            if found is None:
                return [Check(name="branch protection", verdict="skip", detail="this token cannot read the branch",
                              fix=f"check Settings > Branches for {branch} yourself")]
            if found.protected:
                return [Check(name="branch protection", verdict="ok", detail=f"{branch} is protected (its rules "
                              "need a token with administration read access to check)")]
            return [Check(name="branch protection", verdict="fail", detail=f"{branch} is not protected",
                          fix=f"Settings > Branches: protect {branch}")]
        out.append(Check(name="branch protection", verdict="fail",
                         detail=f"{branch} is not protected: anyone with push access can change what is trained",
                         fix=f"Settings > Branches: protect {branch} (pull requests, Code Owners review, dismiss "
                             "stale approvals, require approval of the most recent push)"))
        return out
    reviews = rules.required_pull_request_reviews
    checks = rules.required_status_checks
    wanted = [
        ("pull requests with an approval", reviews is not None and reviews.required_approving_review_count >= 1,
         "require a pull request with at least one approval"),
        ("Code Owners review", reviews is not None and reviews.require_code_owner_reviews,
         "require review from Code Owners"),
        ("dismiss stale approvals", reviews is not None and reviews.dismiss_stale_reviews,
         "dismiss stale pull request approvals when new commits are pushed"),
        ("approval of the most recent push", reviews is not None and reviews.require_last_push_approval,
         "require approval of the most recent reviewable push"),
        ("the plan check", checks is not None and PLAN_CHECK in (checks.contexts or []),
         f"require the status check `{PLAN_CHECK}`"),
    ]
    missing = [(what, fix) for what, ok, fix in wanted if not ok]
    if not missing:
        return [Check(name="branch protection", verdict="ok", detail=f"{branch} is protected: "
                      + ", ".join(what for what, _, _ in wanted))]
    return [Check(name="branch protection", verdict="warn", detail=f"{branch} is protected without {what}",
                  fix=f"Settings > Branches > {branch}: {fix}") for what, fix in missing]


def first_recipe(root: Path) -> str:
    """What to try first: the repository's first recipe, or the starter."""
    from runner.recipe import recipe_files

    found = recipe_files([str(root / "recipes")]) if (root / "recipes").is_dir() else []
    if found:
        return f"runner plan {found[0].relative_to(root).as_posix()}"
    return ("cp recipes/starter.yaml.example recipes/my-model.yaml, edit it, then runner plan recipes/my-model.yaml "
            "(or try the local example: runner run examples/recipes/tiny-sft.yaml)")


def run(root: Path, *, hub_api: Any | None, repo: Any | None) -> list[Check]:
    """Every check, in the order a newcomer fixes them; a missing token or GitHub context is a skip, said."""
    checks, namespace = defaults_checks(root)
    checks.append(codeowners_check(root))
    if hub_api is None:
        checks.append(Check(name="Hub token", verdict="fail", detail="no token found",
                            fix="set HF_TOKEN (a GitHub environment secret; locally `hf auth login`)"))
    else:
        checks += hub_checks(hub_api, namespace)
    if repo is None:
        checks.append(Check(name="GitHub", verdict="skip", detail="GITHUB_TOKEN/GITHUB_REPOSITORY not set",
                            fix="run the `setup` workflow (Actions > setup) to check environments and protection"))
    else:
        try:
            checks += github_checks(repo)
        except UserError as e:
            checks.append(Check(name="GitHub", verdict="fail", detail=str(e)))
    return checks


def github_repo() -> Any | None:
    """The repository the environment names, or None outside GitHub Actions."""
    from runner import github

    if not (os.environ.get("GITHUB_TOKEN") and os.environ.get("GITHUB_REPOSITORY")):
        return None
    return github.repository()
