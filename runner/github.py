"""The edge to GitHub, through PyGithub: the sticky plan comment, commit-back, the outcome comment.

Runs inside GitHub Actions. The API base comes from GITHUB_API_URL (as on real runners,
and GitHub Enterprise), the token from GITHUB_TOKEN, the repository from GITHUB_REPOSITORY.
PyGithub's `GithubRetry` retries 5xx and waits out primary and secondary rate limits.

Whatever a pull request produced is untrusted: the plan comment is not its artifact but a
plan of its head commit's files, read as data by the default branch's code (see
`runner comment-plan`), with every value escaped when rendered.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner import waits
from runner.errors import UserError

BOT_LOGIN = "github-actions[bot]"  # who GITHUB_TOKEN comments as
MAX_COMMENT = 65_536
PUSH_ATTEMPTS = 5


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise UserError(f"{name} is not set (this command runs inside GitHub Actions)")
    return value


def repository() -> Any:
    """The repository this workflow runs for, on the API the runner names."""
    from github import Auth, Github, GithubRetry

    pause = waits.seconds(waits.GITHUB_PAUSE)
    gh = Github(auth=Auth.Token(_env("GITHUB_TOKEN")),
                base_url=os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/"),
                retry=GithubRetry(total=6, backoff_factor=1.0), per_page=100, timeout=30, lazy=True,
                seconds_between_writes=pause, seconds_between_requests=pause / 4)
    return gh.get_repo(_env("GITHUB_REPOSITORY"))


def event() -> dict[str, Any]:
    try:
        with open(_env("GITHUB_EVENT_PATH"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the event payload: {e}") from None


def bot_login() -> str:
    return os.environ.get("RUNNER_BOT_LOGIN", BOT_LOGIN)


# --- comments ------------------------------------------------------------------------------------

def capped(body: str) -> str:
    if len(body) <= MAX_COMMENT:
        return body
    note = "\n\n_(truncated: the full plan is in the workflow's job summary)_"
    return body[:MAX_COMMENT - len(note)] + note


def upsert_comment(repo: Any, number: int, marker: str, body: str) -> tuple[str, int]:
    """One comment per marker: edit ours if it exists (found by marker *and* our own authorship), else create.

    Anyone can paste the marker into a comment; only a comment the bot wrote counts.
    """
    issue = repo.get_issue(number)
    body = capped(body if body.startswith(marker) else f"{marker}\n{body}")
    for comment in issue.get_comments():
        if comment.user.login == bot_login() and comment.body.startswith(marker):
            if comment.body != body:
                comment.edit(body)
            return "updated", comment.id
    return "created", issue.create_comment(body).id


def pull_for_sha(repo: Any, sha: str, hinted: Sequence[int] = ()) -> Any | None:
    """The open pull request whose head is `sha`. GitHub leaves the hint empty for forks: then look."""
    for number in hinted:
        pr = repo.get_pull(number)
        if pr.head.sha == sha:
            return pr
    for pr in repo.get_pulls(state="open", sort="updated", direction="desc"):
        if pr.head.sha == sha:
            return pr
    return None


def merged_pull(repo: Any, sha: str) -> Any | None:
    """The pull request whose merge produced commit `sha`, if any."""
    for pr in repo.get_commit(sha).get_pulls():
        if pr.merged and pr.merge_commit_sha == sha:
            return pr
    return None


def fetch_commit(root: Path, sha: str) -> None:
    """Make `sha` (a pull request's head, maybe in a fork) present in the checkout, to read as data.

    The token reaches git as an HTTP header through the environment (GIT_CONFIG_*), never on a command line.
    """
    present = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True)
    if present.returncode == 0:
        return
    env = dict(os.environ)
    token = os.environ.get("GITHUB_TOKEN", "").strip()
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraheader",
                    "GIT_CONFIG_VALUE_0": f"AUTHORIZATION: basic {basic}"})
    out = subprocess.run(["git", "-C", str(root), "fetch", "--no-tags", "--quiet", "origin", sha], env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise UserError(f"cannot fetch commit {sha[:12]}: {' '.join(out.stderr.strip().splitlines()[-1:])}")


# --- commit-back -----------------------------------------------------------------------------------

def commit_files(repo: Any, branch: str, files: dict[str, bytes], message: str,
                 merge: dict[str, Any] | None = None) -> str:
    """Commit `files` onto `branch` through the Git data API; retry when the branch moves under us.

    `merge[path](remote_bytes_or_None, ours) -> bytes` reconciles a file someone else changed
    meanwhile (run records: both sides' runs are kept). Where the branch is protected, the
    commit goes to a new branch with a pull request instead. Returns the commit or PR URL.
    """
    from github import GithubException, InputGitTreeElement

    merge = merge or {}
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        ref = repo.get_git_ref(f"heads/{branch}")
        head = repo.get_git_commit(ref.object.sha)
        elements = []
        for path, data in sorted(files.items()):
            if path in merge:
                data = merge[path](read_file(repo, path, head.sha), data)
            blob = repo.create_git_blob(data.decode("utf-8") if _is_text(data) else _b64(data),
                                        "utf-8" if _is_text(data) else "base64")
            elements.append(InputGitTreeElement(path=path, mode="100644", type="blob", sha=blob.sha))
        tree = repo.create_git_tree(elements, base_tree=head.tree)
        if tree.sha == head.tree.sha:
            return f"nothing to commit on {branch}"
        commit = repo.create_git_commit(message, tree, [head])
        try:
            ref.edit(commit.sha, force=False)
            return commit.sha
        except GithubException as e:
            text = json.dumps(e.data) if e.data else str(e)
            if e.status in (403, 422) and "protected" in text.lower():
                return _pull_request_instead(repo, branch, commit.sha, message)
            if e.status == 422 and attempt < PUSH_ATTEMPTS:  # not a fast-forward: the branch moved
                time.sleep(min(2 ** attempt, 30) / 4)
                continue
            raise UserError(f"committing to {branch} failed: HTTP {e.status} {text[:200]}") from None
    raise UserError(f"{branch} kept moving; gave up after {PUSH_ATTEMPTS} attempts")


def read_folder(repo: Any, folder: str, ref: str) -> dict[str, bytes]:
    """The files directly in `folder` at `ref`: {path: bytes}; {} when there is no such folder."""
    from github import GithubException

    try:
        listing = repo.get_contents(folder, ref=ref)
    except GithubException as e:
        if e.status == 404:
            return {}
        raise
    entries = listing if isinstance(listing, list) else [listing]
    out = {}
    for entry in entries:
        if entry.type == "file":
            data = read_file(repo, entry.path, ref)
            if data is not None:
                out[entry.path] = data
    return out


def _pull_request_instead(repo: Any, base: str, sha: str, message: str) -> str:
    head = f"recipes-runner/{sha[:12]}"
    repo.create_git_ref(f"refs/heads/{head}", sha)
    pr = repo.create_pull(title=message.splitlines()[0], head=head, base=base,
                          body=f"{base} is protected, so the runner opened this pull request with its results.")
    return pr.html_url


def read_file(repo: Any, path: str, ref: str) -> bytes | None:
    """The file at `ref`, or None when it does not exist there."""
    from github import GithubException

    try:
        return repo.get_contents(path, ref=ref).decoded_content
    except GithubException as e:
        if e.status == 404:
            return None
        raise


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
