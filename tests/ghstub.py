"""A local stand-in for the GitHub REST API, as PyGithub and the workflows use it.

One repository: issues and pull requests with their comments, Actions run artifacts,
contents, and the Git data API (refs, commits, trees, blobs) that commit-back uses,
with branch protection and a branch that moves under a writer on request. Responses
carry the real field names and `url`s pointing back at the stand-in, as GitHub's do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

BOT = {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"}


def _sha(kind: str, payload: Any) -> str:
    return hashlib.sha1(f"{kind}:{json.dumps(payload, sort_keys=True, default=str)}".encode()).hexdigest()


@dataclass
class GitHubState:
    owner: str = "acme"
    name: str = "models"
    blobs: dict[str, bytes] = field(default_factory=dict)
    trees: dict[str, dict[str, str]] = field(default_factory=dict)  # sha -> {path: blob sha}
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha -> {tree, parents, message}
    refs: dict[str, str] = field(default_factory=dict)  # "heads/main" -> sha
    protected: set[str] = field(default_factory=set)
    # Deployment environments as GET /repos/{o}/{r}/environments/{name} returns them: name -> reviewers' logins
    environments: dict[str, list[str]] = field(default_factory=dict)
    open_environments: set[str] = field(default_factory=set)  # deployment branches: any (no branch policy)
    # Branch protection as the settings page writes it: branch -> fields overriding the default (everything on).
    protection: dict[str, dict[str, Any]] = field(default_factory=dict)
    admin_read: bool = True  # False: the token may not read protection rules (GITHUB_TOKEN never may: 403)
    # GET /repos/{o}/{r}/actions/permissions/workflow (administration read, as protection rules): a new repo's
    # default; `can_approve_pull_request_reviews` is the setting "Allow GitHub Actions to create and approve PRs".
    workflow_permissions: dict[str, Any] = field(default_factory=lambda: {
        "default_workflow_permissions": "read", "can_approve_pull_request_reviews": False})
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: list[dict[str, Any]] = field(default_factory=list)  # {id, issue, body, user}
    artifacts_dir: Path | None = None  # <dir>/<run id>/<name>.zip, written by the upload-artifact stand-in
    move_branch: int = 0  # commit to main this many times just before a writer updates it
    faults: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, authorization)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def commit(self, branch: str, files: dict[str, bytes], message: str) -> str:
        parent = self.refs.get(f"heads/{branch}")
        tree = dict(self.trees[self.commits[parent]["tree"]]) if parent else {}
        for path, data in files.items():
            blob = _sha("blob", base64.b64encode(data).decode())
            self.blobs[blob] = data
            tree[path] = blob
        tree_sha = _sha("tree", tree)
        self.trees[tree_sha] = tree
        sha = _sha("commit", [tree_sha, parent, message])
        self.commits[sha] = {"tree": tree_sha, "parents": [parent] if parent else [], "message": message}
        self.refs[f"heads/{branch}"] = sha
        return sha

    def file(self, branch: str, path: str) -> bytes | None:
        sha = self.refs.get(f"heads/{branch}")
        blob = self.trees[self.commits[sha]["tree"]].get(path) if sha else None
        return self.blobs.get(blob) if blob else None

    def comments_on(self, number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments if c["issue"] == number]


def _folder(tree: dict[str, str], folder: str) -> list[dict[str, Any]]:
    """The entries directly in `folder` of a flat {path: blob sha} tree: files, and the folders below it."""
    seen: dict[str, dict[str, Any]] = {}
    for path, blob in sorted(tree.items()):
        if path.startswith(folder + "/"):
            name, _, deeper = path[len(folder) + 1:].partition("/")
            kind = "dir" if deeper else "file"
            seen.setdefault(name, {"type": kind, "name": name, "path": f"{folder}/{name}", "sha": blob if kind ==
                                   "file" else "0" * 40, "size": 0})
    return list(seen.values())


class GitHubStub:
    def __init__(self) -> None:
        self.state = GitHubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)  # a quick shutdown

    def __enter__(self) -> GitHubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_pull(self, number: int, head_sha: str, *, fork: bool = False, merged_as: str | None = None,
                 author: str = "bob") -> None:
        head_repo = f"{author}/{self.state.name}" if fork else self.state.full_name
        self.state.pulls[number] = {
            "number": number, "state": "closed" if merged_as else "open", "merged": bool(merged_as),
            "merge_commit_sha": merged_as, "user": {"login": author, "id": 7, "type": "User"},
            "head": {"sha": head_sha, "ref": "feature", "label": f"{author}:feature",
                     "repo": {"full_name": head_repo, "fork": fork}},
            "base": {"sha": "0" * 40, "ref": "main", "label": f"{self.state.owner}:main",
                     "repo": {"full_name": self.state.full_name, "fork": False}},
            "title": f"Add a recipe ({number})",
        }

    # --- JSON shapes ------------------------------------------------------------------------------

    def repo_url(self) -> str:
        return f"{self.url}/repos/{self.state.full_name}"

    def pull_json(self, pr: dict[str, Any]) -> dict[str, Any]:
        n = pr["number"]
        return pr | {"id": 1000 + n, "url": f"{self.repo_url()}/pulls/{n}",
                     "html_url": f"https://github.com/{self.state.full_name}/pull/{n}",
                     "issue_url": f"{self.repo_url()}/issues/{n}"}

    def comment_json(self, c: dict[str, Any]) -> dict[str, Any]:
        return {"id": c["id"], "body": c["body"], "user": c["user"],
                "url": f"{self.repo_url()}/issues/comments/{c['id']}",
                "html_url": f"https://github.com/{self.state.full_name}/pull/{c['issue']}#issuecomment-{c['id']}",
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}

    def commit_json(self, sha: str) -> dict[str, Any]:
        c = self.state.commits[sha]
        return {"sha": sha, "url": f"{self.repo_url()}/git/commits/{sha}", "message": c["message"],
                "tree": {"sha": c["tree"], "url": f"{self.repo_url()}/git/trees/{c['tree']}"},
                "parents": [{"sha": p, "url": f"{self.repo_url()}/git/commits/{p}"} for p in c["parents"]]}

    def ref_json(self, ref: str) -> dict[str, Any]:
        sha = self.state.refs[ref]
        return {"ref": f"refs/{ref}", "url": f"{self.repo_url()}/git/refs/{ref}",
                "object": {"sha": sha, "type": "commit", "url": f"{self.repo_url()}/git/commits/{sha}"}}


def _handler(stub: GitHubStub) -> type[BaseHTTPRequestHandler]:
    state = stub.state

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/zip" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(n) or b"{}") if n else {}
            except ValueError:
                return {}

        def _route(self) -> None:
            url = urlparse(self.path)
            state.requests.append((self.command, url.path, self.headers.get("Authorization", "")))
            for key, statuses in state.faults.items():
                method, _, prefix = key.rpartition(" ")
                if (not method or method == self.command) and url.path.startswith(prefix) and statuses:
                    status = statuses.pop(0)
                    return self._send(status, {"message": f"injected {status}"})
            if not self.headers.get("Authorization"):
                return self._send(401, {"message": "Requires authentication"})
            prefix = f"/repos/{state.full_name}"
            if not url.path.startswith(prefix):
                return self._send(404, {"message": "Not Found"})
            rest = url.path[len(prefix):]
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            with state.lock:
                return self._dispatch(self.command, rest, q)

        do_GET = do_POST = do_PATCH = _route

        def _dispatch(self, method: str, rest: str, q: dict[str, str]) -> None:
            m = re.fullmatch
            if method == "GET" and rest == "":
                return self._send(200, {"full_name": state.full_name, "default_branch": "main",
                                        "url": stub.repo_url(), "name": state.name})
            if (r := m(r"/environments/([^/]+)", rest)) and method == "GET":
                if r[1] not in state.environments:
                    return self._send(404, {"message": "Not Found"})
                reviewers = [{"type": "User", "reviewer": {"login": login, "id": 100 + i, "type": "User"}}
                             for i, login in enumerate(state.environments[r[1]])]
                rules = [{"id": 1, "node_id": "R1", "type": "required_reviewers", "prevent_self_review": False,
                          "reviewers": reviewers}] if reviewers else []
                if r[1] not in state.open_environments:
                    rules.append({"id": 2, "node_id": "R2", "type": "branch_policy"})
                return self._send(200, {"id": 7, "node_id": "E7", "name": r[1], "url": f"{stub.repo_url()}/environments/{r[1]}",
                                        "html_url": f"https://github.com/{state.full_name}/deployments/activity_log?environments_filter={r[1]}",
                                        "created_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:00Z",
                                        "protection_rules": rules,
                                        "deployment_branch_policy": None if r[1] in state.open_environments else
                                        {"protected_branches": False, "custom_branch_policies": True}})
            if rest == "/actions/permissions/workflow" and method == "GET":
                if not state.admin_read:
                    return self._send(403, {"message": "Resource not accessible by integration"})
                return self._send(200, dict(state.workflow_permissions))
            if (r := m(r"/branches/([^/]+)/protection", rest)) and method == "GET":
                if not state.admin_read:
                    return self._send(403, {"message": "Resource not accessible by integration"})
                if r[1] not in state.protected:
                    return self._send(404, {"message": "Branch not protected"})
                url = f"{stub.repo_url()}/branches/{r[1]}/protection"
                checks = ["Validate and plan changed recipes"]
                return self._send(200, {"url": url,
                                        "required_status_checks": {"url": f"{url}/required_status_checks",
                                                                   "strict": True, "contexts": checks,
                                                                   "checks": [{"context": c, "app_id": None}
                                                                              for c in checks]},
                                        "required_pull_request_reviews": {
                                            "url": f"{url}/required_pull_request_reviews",
                                            "dismiss_stale_reviews": True, "require_code_owner_reviews": True,
                                            "required_approving_review_count": 1, "require_last_push_approval": True},
                                        } | state.protection.get(r[1], {}))
            if (r := m(r"/branches/([^/]+)", rest)) and method == "GET":
                sha = state.refs.get(f"heads/{r[1]}")
                if sha is None:
                    return self._send(404, {"message": "Branch not found"})
                return self._send(200, {"name": r[1], "commit": {"sha": sha, "url": f"{stub.repo_url()}/commits/{sha}"},
                                        "protected": r[1] in state.protected,
                                        "protection_url": f"{stub.repo_url()}/branches/{r[1]}/protection"})
            if r := m(r"/issues/(\d+)", rest):
                n = int(r[1])
                if n not in state.pulls:
                    return self._send(404, {"message": "Not Found"})
                return self._send(200, {"number": n, "url": f"{stub.repo_url()}/issues/{n}",
                                        "comments_url": f"{stub.repo_url()}/issues/{n}/comments",
                                        "title": state.pulls[n]["title"], "state": state.pulls[n]["state"],
                                        "user": state.pulls[n]["user"],
                                        "pull_request": {"url": f"{stub.repo_url()}/pulls/{n}"}})
            if r := m(r"/issues/(\d+)/comments", rest):
                n = int(r[1])
                if method == "POST":
                    c = {"id": 5000 + len(state.comments), "issue": n, "body": self._body()["body"], "user": BOT}
                    c["versions"] = [c["body"]]  # every body the comment had, for tests of live comments
                    state.comments.append(c)
                    return self._send(201, stub.comment_json(c))
                return self._page([stub.comment_json(c) for c in state.comments_on(n)], q, rest)
            if (r := m(r"/issues/comments/(\d+)", rest)) and method == "PATCH":
                c = next((c for c in state.comments if c["id"] == int(r[1])), None)
                if c is None:
                    return self._send(404, {"message": "Not Found"})
                if c["user"]["login"] != BOT["login"]:
                    return self._send(403, {"message": "Resource not accessible by integration"})
                c["body"] = self._body()["body"]
                c.setdefault("versions", []).append(c["body"])
                return self._send(200, stub.comment_json(c))
            if rest == "/pulls" and method == "GET":  # ?state=open|closed|all&head=owner:branch&base=branch
                pulls = [stub.pull_json(p) for p in state.pulls.values()
                         if q.get("state", "open") in (p["state"], "all")
                         and q.get("head", p["head"]["label"]) == p["head"]["label"]
                         and q.get("base", p["base"]["ref"]) == p["base"]["ref"]]
                return self._page(pulls, q, rest)
            if rest == "/pulls" and method == "POST":
                return self._create_pull(self._body())
            if (r := m(r"/pulls/(\d+)", rest)) and method == "PATCH":
                pr = state.pulls.get(int(r[1]))
                if pr is None:
                    return self._send(404, {"message": "Not Found"})
                body = self._body()
                pr.update({k: body[k] for k in ("state", "title", "body") if k in body})
                return self._send(200, stub.pull_json(pr))
            if r := m(r"/pulls/(\d+)", rest):
                pr = state.pulls.get(int(r[1]))
                return self._send(200, stub.pull_json(pr)) if pr else self._send(404, {"message": "Not Found"})
            if r := m(r"/commits/([0-9a-f]{40})", rest):
                return self._send(200, {"sha": r[1], "url": f"{stub.repo_url()}/commits/{r[1]}",
                                        "commit": {"message": ""}})
            if r := m(r"/commits/([0-9a-f]{40})/pulls", rest):
                pulls = [stub.pull_json(p) for p in state.pulls.values()
                         if r[1] in (p["head"]["sha"], p.get("merge_commit_sha"))]
                return self._page(pulls, q, rest)
            if r := m(r"/actions/runs/(\d+)", rest):
                return self._send(200, {"id": int(r[1]), "url": f"{stub.repo_url()}/actions/runs/{r[1]}",
                                        "artifacts_url": f"{stub.repo_url()}/actions/runs/{r[1]}/artifacts"})
            if r := m(r"/actions/runs/(\d+)/artifacts", rest):
                found = sorted((state.artifacts_dir / r[1]).glob("*.zip")) if state.artifacts_dir else []
                items = [{"id": int(r[1]) * 100 + i, "name": f.stem, "size_in_bytes": f.stat().st_size,
                          "expired": False, "url": f"{stub.repo_url()}/actions/artifacts/{int(r[1]) * 100 + i}",
                          "archive_download_url": f"{stub.repo_url()}/actions/artifacts/{int(r[1]) * 100 + i}/zip"}
                         for i, f in enumerate(found)]
                return self._send(200, {"total_count": len(items), "artifacts": items})
            if r := m(r"/actions/artifacts/(\d+)/zip", rest):
                run, i = divmod(int(r[1]), 100)
                found = sorted((state.artifacts_dir / str(run)).glob("*.zip")) if state.artifacts_dir else []
                return self._send(200, None, raw=found[i].read_bytes()) if i < len(found) else \
                    self._send(404, {"message": "Not Found"})
            if r := m(r"/contents/(.+)", rest):
                ref = q.get("ref", "main")
                sha = ref if ref in state.commits else state.refs.get(f"heads/{ref}")
                blob = state.trees[state.commits[sha]["tree"]].get(r[1]) if sha else None
                if blob is None and sha:  # a folder: its entries, without content (as GitHub lists one)
                    entries = _folder(state.trees[state.commits[sha]["tree"]], r[1].rstrip("/"))
                    if entries:
                        return self._send(200, [e | {"url": f"{stub.repo_url()}/contents/{e['path']}"}
                                                for e in entries])
                if blob is None:
                    return self._send(404, {"message": "Not Found"})
                data = state.blobs[blob]
                return self._send(200, {"type": "file", "encoding": "base64", "path": r[1], "name": r[1].split("/")[-1],
                                        "sha": blob, "size": len(data), "content": base64.b64encode(data).decode(),
                                        "url": f"{stub.repo_url()}/contents/{r[1]}"})
            return self._git(method, rest)

        def _create_pull(self, body: dict[str, Any]) -> None:
            """POST /pulls as GitHub answers it: 422 for a head branch that does not exist, or one that already
            has an open pull request into the same base."""
            head, base = body.get("head", ""), body.get("base", "main")
            sha = state.refs.get(f"heads/{head}")
            label = f"{state.owner}:{head}"
            if sha is None or any(p["head"]["label"] == label and p["base"]["ref"] == base and p["state"] == "open"
                                  for p in state.pulls.values()):
                why = "head invalid" if sha is None else f"A pull request already exists for {label}."
                return self._send(422, {"message": "Validation Failed", "errors": [{"message": why}]})
            n = max(state.pulls, default=0) + 1
            stub.add_pull(n, sha, author=BOT["login"])
            state.pulls[n]["user"] = BOT
            state.pulls[n]["head"].update({"ref": head, "label": label, "repo": {"full_name": state.full_name,
                                                                                 "fork": False}})
            state.pulls[n]["base"]["ref"] = base
            state.pulls[n].update({"title": body.get("title", ""), "body": body.get("body")})
            return self._send(201, stub.pull_json(state.pulls[n]))

        def _git(self, method: str, rest: str) -> None:
            m = re.fullmatch
            if (r := m(r"/git/ref/(heads/.+)", rest)) and method == "GET":
                return self._send(200, stub.ref_json(r[1])) if r[1] in state.refs else \
                    self._send(404, {"message": "Not Found"})
            if r := m(r"/git/commits/([0-9a-f]{40})", rest):
                return self._send(200, stub.commit_json(r[1])) if r[1] in state.commits else \
                    self._send(404, {"message": "Not Found"})
            if rest == "/git/blobs" and method == "POST":
                body = self._body()
                data = base64.b64decode(body["content"]) if body.get("encoding") == "base64" else \
                    body["content"].encode()
                sha = _sha("blob", base64.b64encode(data).decode())
                state.blobs[sha] = data
                return self._send(201, {"sha": sha, "url": f"{stub.repo_url()}/git/blobs/{sha}"})
            if rest == "/git/trees" and method == "POST":
                body = self._body()
                base = body.get("base_tree")
                tree = dict(state.trees.get(base, {})) if base else {}
                for e in body["tree"]:
                    if e["sha"] not in state.blobs:
                        return self._send(422, {"message": f"Invalid tree info: blob {e['sha']} missing"})
                    tree[e["path"]] = e["sha"]
                sha = _sha("tree", tree)
                state.trees[sha] = tree
                return self._send(201, {"sha": sha, "url": f"{stub.repo_url()}/git/trees/{sha}",
                                        "tree": [{"path": p, "mode": "100644", "type": "blob", "sha": s}
                                                 for p, s in sorted(tree.items())]})
            if rest == "/git/commits" and method == "POST":
                body = self._body()
                sha = _sha("commit", [body["tree"], body["parents"], body["message"]])
                state.commits[sha] = {"tree": body["tree"], "parents": body["parents"], "message": body["message"]}
                return self._send(201, stub.commit_json(sha))
            if (r := m(r"/git/refs/(heads/.+)", rest)) and method == "PATCH":
                body = self._body()
                ref = r[1]
                if state.move_branch > 0:  # someone else pushes first
                    state.move_branch -= 1
                    state.commit(ref.removeprefix("heads/"), {"OTHER.md": f"other {state.move_branch}\n".encode()},
                                 "someone else's commit")
                if ref.removeprefix("heads/") in state.protected:
                    return self._send(422, {"message": f"Protected branch update failed for refs/{ref}."})
                if not body.get("force") and state.refs.get(ref) not in state.commits[body["sha"]]["parents"]:
                    return self._send(422, {"message": "Update is not a fast forward"})
                state.refs[ref] = body["sha"]
                return self._send(200, stub.ref_json(ref))
            if rest == "/git/refs" and method == "POST":
                body = self._body()
                ref = body["ref"].removeprefix("refs/")
                if ref in state.refs:
                    return self._send(422, {"message": "Reference already exists"})
                state.refs[ref] = body["sha"]
                return self._send(201, stub.ref_json(ref))
            return self._send(404, {"message": "Not Found"})

        def _page(self, items: list[Any], q: dict[str, str], rest: str) -> None:
            """Link-header paging, as GitHub does."""
            per, page = int(q.get("per_page", 30)), int(q.get("page", 1))
            chunk = items[(page - 1) * per: page * per]
            headers = {}
            if page * per < len(items):
                headers["Link"] = f'<{stub.repo_url()}{rest}?per_page={per}&page={page + 1}>; rel="next"'
            self._send(200, chunk, headers)

    return Handler
