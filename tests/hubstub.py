"""A local stand-in for the Hugging Face Hub and its dataset viewer.

It speaks the HTTP contract that huggingface_hub's `HfApi` and the viewer clients
use (real routes, field names, error headers, `Z` datetimes), records every request,
and injects faults on request. Tests drive it through the real clients; nothing is patched.

Besides model info and the viewer it keeps model repos (create, preupload + commit with
its parentCommit check, branches and tags, commit history, tree, resolve) and runs Jobs
(create, inspect, list by label with Link paging, cancel, logs as SSE replayed per
connection). A job either runs for real on this machine (its
repo volume materialised in a temp dir, `uv run` played by this Python, the secrets in
its environment) or plays a scripted stage sequence (`JobScript`).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

USER = "alice"

HARDWARE = [
    # name, pretty, cpu, ram, accelerator, micro-USD per minute
    ("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", None, 167),
    ("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", None, 500),
    ("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", ("T4", "1", "16 GB"), 6667),
    ("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", ("A10G", "1", "24 GB"), 16667),
    ("a10g-large", "Nvidia A10G - large", "12 vCPU", "46 GB", ("A10G", "1", "24 GB"), 25000),
    ("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", ("A100", "1", "80 GB"), 41667),
]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when it arrived


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{datetime.now().microsecond // 1000:03d}Z"


@dataclass
class Repo:
    private: bool
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # (oid, full tree), every branch's
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit oid
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid ("main" from the first commit)
    parents: dict[str, str | None] = field(default_factory=dict)  # commit oid -> its parent's
    titles: dict[str, str] = field(default_factory=dict)  # commit oid -> its message's summary

    def tree(self, revision: str = "main") -> tuple[str, dict[str, bytes]] | None:
        """The commit a revision names: a branch's head, a tag's commit, or a commit oid."""
        oid = self.branches.get(revision) or self.tags.get(revision, revision)
        return next((c for c in self.commits if c[0] == oid), None)

    def lfs_object(self, sha256: str) -> bytes | None:
        """An LFS object this repo stores, by its sha256 (what a server-side LFS copy names)."""
        return next((d for _, t in self.commits for d in t.values() if hashlib.sha256(d).hexdigest() == sha256), None)


def _is_lfs(tree: dict[str, bytes], path: str) -> bool:
    """Whether the tree's .gitattributes stores `path` in LFS (`PATTERN filter=lfs ...`, matched on the name)."""
    rules = (tree.get(".gitattributes") or b"").decode(errors="replace").splitlines()
    return any("filter=lfs" in rule and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], rule.split()[0])
               for rule in rules if rule.strip())


def _entry(tree: dict[str, bytes], path: str) -> dict[str, Any]:
    """A file as the tree and paths-info endpoints describe it; LFS files with their LFS pointer's facts."""
    data = tree[path]
    item: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
    if _is_lfs(tree, path):
        item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return item


@dataclass
class JobScript:
    """A job that plays stages instead of running: seconds in SCHEDULING, then RUNNING, then `end`.

    `outlive_timeout` keeps it running until its timeout ends it (as the Hub does, with ERROR);
    on completion it pushes what the job script would (`push`; False plays a job that exits 0
    having written nothing): the model or adapter for a training config, the promised
    .gguf files for a GGUF config; then `summary`, where the config asks (summary_repo/_path),
    with `pushed` (repo and commit) added as runner/jobs/train.py reports it.
    """

    scheduling: float = 0.1
    running: float = 0.3
    end: str = "COMPLETED"
    message: str | None = None
    logs: list[str] = field(default_factory=lambda: ["starting", "progress step=1/2 loss=2.0", "done"])
    outlive_timeout: bool = False
    unlisted_for: float = 0.0  # seconds after creation before a listing shows the job (the Hub's listing lag)
    stage: str | None = None  # play only a job of this stage (its `stage` label); None: the next job of any
    summary: dict[str, Any] | None = None
    checkpoint: bool = False  # push last-checkpoint/ to the output repo before ending
    push: bool = True


@dataclass
class Job:
    id: str
    namespace: str
    spec: dict[str, Any]
    created_at: str
    stage: str = "SCHEDULING"
    message: str | None = None
    logs: list[tuple[str, str]] = field(default_factory=list)  # (timestamp, line)
    finished_at: str | None = None
    process: subprocess.Popen | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Monotonic clock marks for `durations` (the Hub computes them server-side, in whole seconds).
    created_mono: float = field(default_factory=time.monotonic)
    started_mono: float | None = None
    finished_mono: float | None = None
    clock_scale: float = 1.0  # report durations this many times longer (a "3-hour" job in seconds)
    unlisted_for: float = 0.0  # listings leave it out this long after creation (eventual consistency)

    def listed(self) -> bool:
        return time.monotonic() - self.created_mono >= self.unlisted_for

    def durations(self) -> dict[str, int | None]:
        now = time.monotonic()
        end = self.finished_mono or now
        started = self.started_mono
        scale = self.clock_scale
        return {"schedulingSecs": int(((started or end) - self.created_mono) * scale),
                "runningSecs": None if started is None else int((end - started) * scale),
                "totalSecs": int((end - self.created_mono) * scale)}

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": self.id, "createdAt": self.created_at, "dockerImage": spec.get("dockerImage"),
            "spaceId": spec.get("spaceId"), "command": spec.get("command"), "arguments": spec.get("arguments", []),
            "environment": spec.get("environment", {}),
            # The Hub never returns secret values; only which secrets are set.
            "secrets": {k: None for k in spec.get("secrets", {})},
            "flavor": spec.get("flavor", "cpu-basic"), "labels": spec.get("labels", {}),
            "volumes": spec.get("volumes"), "timeoutSeconds": spec.get("timeoutSeconds"),
            "status": {"stage": self.stage, "message": self.message},
            "durations": self.durations(),
            "owner": {"id": "1" * 24, "name": self.namespace, "type": "user"},
            "finishedAt": self.finished_at,
        }


@dataclass
class HubState:
    # GET /api/whoami-v2 as the Hub answers it for the token in use (a classic write token by default).
    whoami: dict[str, Any] = field(default_factory=lambda: {
        "type": "user", "name": USER, "fullname": "Alice", "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "ci", "role": "write"}}})
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {"params": int, "architectures": [...]}
    gated: set[str] = field(default_factory=set)
    private_datasets: set[str] = field(default_factory=set)  # the viewer serves these only with `read_token`
    read_token: str = "test-only-not-a-token-hub-read"
    # dataset id -> {(config, split): rows}
    datasets: dict[str, dict[tuple[str, str], list[dict]]] = field(default_factory=dict)
    hardware_prices: dict[str, int] = field(default_factory=dict)  # override micro-USD per minute
    # Commits of Hub models and datasets (state.models, state.datasets), oldest first, as `sha` in
    # GET /api/{models,datasets}/{id}[/revision/{rev}]: key "model:<id>" or "dataset:<id>" (see move()).
    heads: dict[str, list[str]] = field(default_factory=dict)
    # Tags and branches other than main of those, by the same key: {name: commit} (see move(..., ref=)).
    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    # "[METHOD ]path prefix" (or a pattern with *) -> statuses to return first
    faults: dict[str, list[int]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    repos: dict[str, Repo] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    job_scripts: list[JobScript] = field(default_factory=list)  # consumed one per created job; empty: run for real
    fail_after_create: int = 0  # answer this many job creations with 503 *after* creating the job
    drop_log_streams: int = 0  # cut this many log streams after their first event
    page_size: int = 2
    commits_page_size: int = 50  # commits per page of a repo's history listing
    timeout_scale: float = 1.0  # the stand-in's clock for job timeouts runs this many times faster
    durations_scale: float = 1.0  # jobs report running seconds this many times longer (billing tests)
    job_env: dict[str, str] = field(default_factory=dict)  # extra environment for real jobs
    lock: threading.Lock = field(default_factory=threading.Lock)


class HubStub:
    def __init__(self) -> None:
        self.state = HubState()
        self.tmp = Path(tempfile.mkdtemp(prefix="hubstub-"))
        self._port = 0
        self._start_server()

    # --- lifecycle ---------------------------------------------------------------------------------

    def _start_server(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler(self))
        self.server.daemon_threads = True
        self._port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self._port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)  # a quick shutdown

    def __enter__(self) -> HubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        for job in list(self.state.jobs.values()):
            job.cancel.set()
            if job.process and job.process.poll() is None:
                job.process.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def restart(self, down_for: float = 1.0) -> None:
        """The stand-in goes away and comes back on the same port; jobs and repos survive, as on the Hub."""
        self.server.shutdown()
        self.server.server_close()
        time.sleep(down_for)
        self._start_server()
        self._thread.start()

    # --- repos ---------------------------------------------------------------------------------------

    def commit(self, repo_id: str, files: dict[str, bytes], deleted: tuple[str, ...] = (),
               revision: str = "main", title: str = "") -> str:
        """A commit on top of branch `revision` (KeyError if the repo has no such branch: the Hub refuses it)."""
        with self.state.lock:
            repo = self.state.repos.setdefault(repo_id, Repo(private=True))
            if (revision not in repo.branches) if repo.commits else revision != "main":
                raise KeyError(f"Invalid rev id: {revision}")
            head = repo.tree(revision)
            tree = dict(head[1]) if head else {}
            tree.update(files)
            for d in deleted:
                tree = {k: v for k, v in tree.items() if k != d and not k.startswith(d.rstrip("/") + "/")}
            oid = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in tree.items())).encode()
                               + str(len(repo.commits)).encode()).hexdigest()
            repo.commits.append((oid, tree))
            repo.parents[oid] = head[0] if head else None
            repo.titles[oid] = title
            repo.branches[revision] = oid
            return oid

    def move(self, kind: str, repo_id: str, ref: str = "main") -> str:
        """A new commit of a Hub model or dataset (kind "model" or "dataset"), on main or pointed at by the tag
        or branch `ref` (created if new; main stays); its sha."""
        with self.state.lock:
            key = f"{kind}:{repo_id}"
            history = self.state.heads.setdefault(key, [_INITIAL[kind]])
            if ref == "main":
                sha = hashlib.sha1(f"{key}:{len(history)}".encode()).hexdigest()
                history.append(sha)
            else:  # a new commit on top of the ref's last one
                sha = hashlib.sha1(f"{key}:{ref}:{self.state.refs.get(key, {}).get(ref)}".encode()).hexdigest()
                self.state.refs.setdefault(key, {})[ref] = sha
            return sha

    def head(self, kind: str, repo_id: str) -> str:
        """The commit main of a Hub model or dataset is at."""
        return self.state.heads.get(f"{kind}:{repo_id}", [_INITIAL[kind]])[-1]

    def history(self, repo_id: str, revision: str = "main") -> list[tuple[str, dict[str, bytes]]]:
        """Every commit a branch's head descends from, newest first: (oid, full tree)."""
        repo = self.state.repos[repo_id]
        trees, out = dict(repo.commits), []
        oid: str | None = repo.branches.get(revision)
        while oid is not None:
            out.append((oid, trees[oid]))
            oid = repo.parents.get(oid)
        return out

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.state.repos.get(repo_id)
        found = repo.tree(revision) if repo else None
        return dict(found[1]) if found else {}

    # --- jobs ------------------------------------------------------------------------------------------

    def create_job(self, namespace: str, spec: dict[str, Any]) -> Job:
        job = Job(id=secrets.token_hex(12), namespace=namespace, spec=spec, created_at=_now(),
                  clock_scale=self.state.durations_scale)
        with self.state.lock:
            self.state.jobs[job.id] = job
            stage = spec.get("labels", {}).get("stage")
            script = next((s for s in self.state.job_scripts if s.stage in (None, stage)), None)
            if script is not None:
                self.state.job_scripts.remove(script)
            job.unlisted_for = script.unlisted_for if script else 0.0
        target = self._play if script else self._run_for_real
        threading.Thread(target=target, args=(job, script) if script else (job,), daemon=True).start()
        return job

    def end_job(self, job_id: str, stage: str, message: str | None = None, lines: tuple[str, ...] = ()) -> None:
        """End a running job from the outside (its last log lines first), as the Hub would report it."""
        job = self.state.jobs[job_id]
        for line in lines:
            self._log(job, line)
        self._finish(job, stage, message)

    def _log(self, job: Job, line: str) -> None:
        job.logs.append((_now(), line))

    def _finish(self, job: Job, stage: str, message: str | None = None) -> None:
        if job.stage in ("COMPLETED", "ERROR", "CANCELED", "DELETED"):
            return
        job.stage, job.message, job.finished_at = stage, message, _now()
        job.finished_mono = time.monotonic()

    def _deadline(self, job: Job) -> float | None:
        timeout = job.spec.get("timeoutSeconds")
        return time.monotonic() + float(timeout) / self.state.timeout_scale if timeout else None

    def _play(self, job: Job, script: JobScript) -> None:
        if job.cancel.wait(script.scheduling):
            return self._finish(job, "CANCELED")
        job.stage, job.started_mono = "RUNNING", time.monotonic()
        self._log(job, "===== Job started at " + _now() + " =====")
        deadline = self._deadline(job)
        for line in script.logs:
            self._log(job, line)
        config = _config(job)
        try:
            if script.checkpoint and _repo(config):  # as TRL's hub_strategy="checkpoint", to the config's revision
                self.commit(_repo(config), {"last-checkpoint/trainer_state.json": b"{}",
                                            "last-checkpoint/config.json": b"{}"}, revision=_revision(config))
        except KeyError as e:  # the push a real job makes to a branch the Hub does not have fails the job
            return self._finish(job, "ERROR", f"RevisionNotFoundError: {e}")
        end = None if script.outlive_timeout else time.monotonic() + script.running
        while end is None or time.monotonic() < end:
            if job.cancel.wait(0.05):
                return self._finish(job, "CANCELED")
            if deadline and time.monotonic() > deadline:
                return self._finish(job, "ERROR", "Job timeout")
        if script.end == "COMPLETED":
            try:
                pushed = self._push_outputs(config) if script.push else None
            except KeyError as e:
                return self._finish(job, "ERROR", f"RevisionNotFoundError: {e}")
            if script.summary is not None and config.get("summary_repo"):
                summary = {**script.summary, **({"pushed": pushed} if pushed else {})}
                self.commit(config["summary_repo"], {config["summary_repo_path"]: json.dumps(summary).encode()})
        self._finish(job, script.end, script.message)

    def _push_outputs(self, config: dict[str, Any]) -> dict[str, str] | None:
        """What runner/jobs/train.py or gguf.py uploads to the config's hub_repo (a training job: at its
        hub_revision, as Trainer.push_to_hub does); the commit it made. Weights differ per config, as trained ones."""
        repo = _repo(config)
        if not repo:
            return None
        weights = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).digest() * 2
        if "quantizations" in config:  # a GGUF job
            files = {f"{config['name']}-{q.upper()}.gguf": b"GGUF" + bytes(60) for q in config["quantizations"]}
        elif config.get("use_peft"):
            files = {"adapter_config.json": b"{}", "adapter_model.safetensors": weights}
        else:
            files = {"config.json": json.dumps({"lr": config.get("learning_rate")}).encode(),
                     "model.safetensors": weights}
        return {"repo": repo, "commit": self.commit(repo, files, revision=_revision(config))}

    def _run_for_real(self, job: Job) -> None:
        """Play the container: mount the repo volumes, run `uv run SCRIPT` with this Python, secrets as env."""
        work = self.tmp / job.id
        (work / "cwd").mkdir(parents=True)
        command = list(job.spec.get("command", [])) + list(job.spec.get("arguments", []))
        mounts: dict[str, str] = {}
        for i, vol in enumerate(job.spec.get("volumes") or []):
            local = work / f"mnt{i}"
            repo = self.state.repos.get(vol["source"])
            found = repo.tree(vol.get("revision") or "main") if repo else None
            prefix = (vol.get("path") or "").strip("/")
            for name, data in (found[1] if found else {}).items():
                if not prefix or name.startswith(prefix + "/"):
                    dest = local / name[len(prefix) + 1 if prefix else 0:]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
            local.mkdir(exist_ok=True)
            mounts[vol["mountPath"]] = str(local)

        def place(value: str) -> str:
            """A container path (alone, or quoted inside a JSON value) as this machine's mounted copy."""
            for mount, local in mounts.items():
                value = re.sub(rf'(^|"){re.escape(mount)}(?=/|"|$)', lambda m: m.group(1) + local, value)
            return value

        if command[:2] == ["uv", "run"]:  # this Python stands in for uv and the container image
            rest = command[2:]
            while rest and rest[0].startswith("--"):
                rest = rest[2:] if rest[0] in ("--python", "--with") else rest[1:]
            command = [sys.executable] + rest
        command = [place(c) for c in command]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update({k: place(str(v)) for k, v in (job.spec.get("environment") or {}).items()})
        env.update({k: str(v) for k, v in (job.spec.get("secrets") or {}).items()})
        env.update({"HF_ENDPOINT": self.url, "HF_HOME": str(work / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                    "TRACKIO_DIR": str(work / "trackio"), **self.state.job_env})
        job.stage, job.started_mono = "RUNNING", time.monotonic()
        self._log(job, "===== Job started at " + _now() + " =====")
        deadline = self._deadline(job)
        job.process = subprocess.Popen(command, cwd=work / "cwd", env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                       errors="replace", start_new_session=True)
        reader = threading.Thread(target=lambda: [self._log(job, ln.rstrip("\n")) for ln in job.process.stdout],
                                  daemon=True)
        reader.start()
        while job.process.poll() is None:
            if job.cancel.wait(0.1):
                job.process.kill()
                job.process.wait()
                return self._finish(job, "CANCELED")
            if deadline and time.monotonic() > deadline:
                job.process.kill()
                job.process.wait()
                return self._finish(job, "ERROR", "Job timeout")
        reader.join(timeout=10)
        code = job.process.returncode
        self._finish(job, "COMPLETED" if code == 0 else "ERROR", None if code == 0 else f"exit code {code}")


_INITIAL = {"model": "a" * 40, "dataset": "d" * 40}  # every Hub model's and dataset's first commit


def _config(job: Job) -> dict[str, Any]:
    try:
        return json.loads((job.spec.get("environment") or {}).get("RUNNER_JOB_CONFIG", "{}"))
    except ValueError:
        return {}


def _repo(config: dict[str, Any]) -> str | None:
    """Where the job pushes: a training config's hub_model_id (when push_to_hub), a GGUF config's hub_repo."""
    return config.get("hub_model_id") if config.get("push_to_hub") else config.get("hub_repo")


def _revision(config: dict[str, Any]) -> str:
    """The branch a training job pushes to: TrainingArguments.hub_revision, else main."""
    return config.get("hub_revision") or "main"


def _handler(stub: HubStub) -> type[BaseHTTPRequestHandler]:
    state = stub.state

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _begin(self) -> tuple[Any, dict[str, str]] | None:
            url = urlparse(self.path)
            state.requests.append(Request(self.command, url.path, parse_qs(url.query),
                                          {k.lower(): v for k, v in self.headers.items()}))
            for key, statuses in state.faults.items():
                method, _, prefix = key.rpartition(" ")
                # "GET /api/jobs/alice/*/logs": a pattern; else a path prefix
                hit = fnmatch.fnmatchcase(url.path, prefix) if "*" in prefix else url.path.startswith(prefix)
                if (not method or method == self.command) and hit and statuses:
                    status = statuses.pop(0)
                    self._body()
                    self._send(status, {"error": f"injected {status}"}, {"Retry-After": "0"} if status == 429 else None)
                    return None
            return url, {k: v[-1] for k, v in parse_qs(url.query).items()}

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _json(self) -> Any:
            try:
                return json.loads(self._body() or b"{}")
            except ValueError:
                return {}

        # --- verbs ---------------------------------------------------------------------------------

        def do_DELETE(self) -> None:
            begun = self._begin()
            if begun is None:
                return
            path = begun[0].path
            if path.startswith("/api/models/") and "/tag/" in path:
                repo_id, tag = path[len("/api/models/"):].split("/tag/", 1)
                repo = state.repos.get(repo_id)
                if repo is None:
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if repo.tags.pop(unquote(tag), None) is None:
                    return self._send(404, {"error": "Tag not found"}, {"X-Error-Code": "RevisionNotFound"})
                return self._send(200, {})
            return self._send(404, {"error": "Not Found"})

        # Refs and tags as the Hub answers them: GET .../refs, POST .../tag/{revision} {"tag"}, DELETE .../tag/{tag}
        def _refs(self, repo_id: str) -> None:
            repo = state.repos.get(repo_id)
            if repo is None:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                        for b, c in sorted(repo.branches.items())]
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in sorted(repo.tags.items())]
            return self._send(200, {"branches": branches, "tags": tags, "converts": []})

        def _at(self, repo_id: str, revision: str) -> tuple[Repo, tuple[str, dict[str, bytes]]] | None:
            """The repo and the commit `revision` names in it; None once the Hub's 404 for either is sent."""
            repo = state.repos.get(repo_id)
            if repo is None:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return None
            found = repo.tree(unquote(revision))
            if found is None:
                self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
                return None
            return repo, found

        def _create_tag(self, repo_id: str, revision: str) -> None:
            body = self._json()
            at = self._at(repo_id, revision)
            if at is None:
                return
            repo, found = at
            tag = str(body.get("tag") or "")
            if not tag or tag in repo.tags:
                return self._send(409, {"error": f"Tag {tag} already exists" if tag else "tag is required"})
            repo.tags[tag] = found[0]
            return self._send(200, {})

        # GET .../commits/{revision}[?p=N] as HfApi.list_repo_commits pages through it (Link rel="next"): the
        # revision's history, newest first.
        def _commits(self, repo_id: str, revision: str, q: dict[str, str]) -> None:
            at = self._at(repo_id, revision)
            if at is None:
                return
            repo, (oid, _) = at
            history: list[str] = []
            at_oid: str | None = oid
            while at_oid is not None:
                history.append(at_oid)
                at_oid = repo.parents.get(at_oid)
            start = int(q.get("p", "0")) * state.commits_page_size
            page = history[start:start + state.commits_page_size]
            headers = {}
            if start + state.commits_page_size < len(history):
                nxt = f"{stub.url}/api/models/{repo_id}/commits/{revision}?p={start // state.commits_page_size + 1}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            items = [{"id": c, "title": repo.titles.get(c, ""), "message": repo.titles.get(c, ""),
                      "authors": [{"user": USER}], "date": _now()} for c in page]
            return self._send(200, items, headers)

        # POST .../branch/{branch} {"startingPoint"?} as HfApi.create_branch sends it: 409 when it exists.
        def _create_branch(self, repo_id: str, branch: str) -> None:
            body, branch = self._json(), unquote(branch)
            at = self._at(repo_id, str(body.get("startingPoint") or "main"))
            if at is None:
                return
            repo, found = at
            if not branch or branch.startswith("refs/") or "/" in branch or branch in repo.tags:
                return self._send(400, {"error": f"Invalid reference for a branch: {branch}"})
            if branch in repo.branches:
                return self._send(409, {"error": "Reference already exists"})
            repo.branches[branch] = found[0]
            return self._send(200, {})

        # POST .../paths-info/{revision}, a form (paths=...&paths=...&expand=false) as HfApi.get_paths_info sends
        # it: the paths that exist, files (LFS ones with their sha256) and folders; unknown paths left out.
        def _paths_info(self, repo_id: str, revision: str) -> None:
            form = parse_qs(self._body().decode())
            at = self._at(repo_id, revision)
            if at is None:
                return
            tree, out = at[1][1], []
            for path in form.get("paths", []):
                if path in tree:
                    out.append(_entry(tree, path))
                elif any(name.startswith(path.rstrip("/") + "/") for name in tree):
                    out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
            return self._send(200, out)

        def do_HEAD(self) -> None:
            begun = self._begin()
            if begun:
                self._resolve(begun[0].path)

        def do_GET(self) -> None:
            begun = self._begin()
            if begun is None:
                return
            url, q = begun
            path = url.path
            if path == "/api/jobs/hardware":
                return self._send(200, [self._hardware(h) for h in HARDWARE])
            if path == "/api/whoami-v2":
                return self._send(200, state.whoami)
            if path.startswith("/api/jobs/"):
                return self._jobs_get(path[len("/api/jobs/"):].split("/"), url)
            if path.startswith("/api/models/") and path.endswith("/refs"):
                return self._refs(path[len("/api/models/"):-len("/refs")])
            if path.startswith("/api/models/") and "/commits/" in path:
                return self._commits(*path[len("/api/models/"):].split("/commits/", 1), q)
            if path.startswith("/api/models/") and "/tree/" in path:
                return self._tree(path[len("/api/models/"):])
            if path.startswith("/api/models/"):
                return self._model(path[len("/api/models/"):])
            if path.startswith("/api/datasets/"):
                return self._dataset_info(path[len("/api/datasets/"):])
            if "/resolve/" in path:
                return self._resolve(path)
            if path == "/splits":
                return self._splits(q)
            if path == "/first-rows":
                return self._first_rows(q)
            if path == "/size":
                return self._size(q)
            return self._send(404, {"error": "Not Found"})

        def do_POST(self) -> None:
            begun = self._begin()
            if begun is None:
                return
            path = begun[0].path
            if path == "/api/repos/create":
                return self._create_repo(self._json())
            if path == "/api/validate-yaml":
                self._body()
                return self._send(200, {"errors": [], "warnings": []})
            if path.startswith("/api/models/") and "/branch/" in path:
                return self._create_branch(*path[len("/api/models/"):].split("/branch/", 1))
            if path.startswith("/api/models/") and "/paths-info/" in path:
                return self._paths_info(*path[len("/api/models/"):].split("/paths-info/", 1))
            if path.startswith("/api/models/") and "/preupload/" in path:
                body = self._json()
                repo_id, _, revision = path[len("/api/models/"):].partition("/preupload/")
                if repo_id in state.repos and state.repos[repo_id].branches and \
                        unquote(revision) not in state.repos[repo_id].branches:
                    return self._send(404, {"error": f"Invalid rev id: {unquote(revision)}"},
                                      {"X-Error-Code": "RevisionNotFound"})
                return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": None} for f in body.get("files", [])]})
            if path.startswith("/api/models/") and "/tag/" in path:
                return self._create_tag(*path[len("/api/models/"):].split("/tag/", 1))
            if path.startswith("/api/models/") and "/commit/" in path:
                return self._commit(*path[len("/api/models/"):].split("/commit/", 1))
            parts = path[len("/api/jobs/"):].split("/") if path.startswith("/api/jobs/") else []
            if len(parts) == 1 and parts[0]:
                job = stub.create_job(parts[0], self._json())
                if state.fail_after_create > 0:  # the job exists, but the answer is lost
                    state.fail_after_create -= 1
                    return self._send(503, {"error": "Service Unavailable"})
                return self._send(200, job.info())
            if len(parts) == 3 and parts[2] == "cancel":
                job = state.jobs.get(parts[1])
                if job is None:
                    return self._send(404, {"error": "Job not found"})
                job.cancel.set()
                if job.stage == "SCHEDULING":
                    stub._finish(job, "CANCELED")
                return self._send(200, {})
            self._body()
            return self._send(404, {"error": "Not Found"})

        # --- repos -----------------------------------------------------------------------------------

        def _create_repo(self, body: dict[str, Any]) -> None:
            repo_id = f"{body.get('organization') or USER}/{body['name']}"
            if body.get("type", "model") not in (None, "model"):
                return self._send(400, {"error": "only model repos here"})
            url = f"{stub.url}/{repo_id}"
            if repo_id in state.repos:
                return self._send(409, {"error": "You already created this model repo", "url": url})
            with state.lock:
                # huggingface_hub 2.x sends "visibility"; older clients "private"
                state.repos[repo_id] = Repo(private=body.get("visibility") == "private" or bool(body.get("private")))
            stub.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            return self._send(200, {"url": url, "name": repo_id, "id": "2" * 24})

        def _commit(self, repo_id: str, revision: str) -> None:
            """POST .../commit/{branch}: ndjson lines as the client sends them. A copy arrives as a `file` (a regular
            file the client downloaded) or an `lfsFile` naming a stored LFS object by sha256 (copied server-side)."""
            repo, revision = state.repos.get(repo_id), unquote(revision)
            if repo is None:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if repo.branches and revision not in repo.branches:
                return self._send(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
            files: dict[str, bytes] = {}
            deleted: list[str] = []
            summary, parent = "", None
            for line in self._body().decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary, parent = value.get("summary", ""), value.get("parentCommit")
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    data = repo.lfs_object(value.get("oid", ""))
                    if value.get("algo") != "sha256" or data is None:
                        return self._send(400, {"error": f"LFS object {value.get('oid')} not found for "
                                                         f"{value.get('path')}"})
                    files[value["path"]] = data
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                else:
                    return self._send(400, {"error": f"unsupported commit item {item['key']}"})
            head = repo.tree(revision)
            if parent is not None and (head[0] if head else None) != parent:  # the branch moved since it was read
                return self._send(412, {"error": "A commit has happened since. Please refresh and try again."})
            tree = head[1] if head else {}
            gone = [d for d in deleted if d not in tree and not any(n.startswith(d.rstrip("/") + "/") for n in tree)]
            if gone:  # the Hub refuses to delete what is not there
                return self._send(404, {"error": f"A file with this name doesn't exist: {gone[0]}"},
                                  {"X-Error-Code": "EntryNotFound"})
            oid = stub.commit(repo_id, files, tuple(deleted), revision=revision, title=summary)
            self._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{stub.url}/{repo_id}/commit/{oid}",
                             "commitMessage": summary})

        def _tree(self, rest: str) -> None:
            repo_id, _, tail = rest.partition("/tree/")
            revision, _, sub = unquote(tail).partition("/")
            at = self._at(repo_id, revision)  # an unknown branch or commit is RevisionNotFound, as on the Hub
            if at is None:
                return
            found = at[1]
            items = [_entry(found[1], name) for name in sorted(found[1])
                     if not sub or name.startswith(sub.rstrip("/") + "/")]
            self._send(200, items)

        def _resolve(self, path: str) -> None:
            repo_id, _, tail = path.lstrip("/").partition("/resolve/")
            revision, _, name = tail.partition("/")
            repo = state.repos.get(repo_id)
            found = repo.tree(unquote(revision)) if repo else None
            data = found[1].get(unquote(name)) if found else None
            if data is None:
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            self._send(200, None, {"X-Repo-Commit": found[0], "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                       raw=data)

        # --- jobs ------------------------------------------------------------------------------------

        def _jobs_get(self, parts: list[str], url: Any) -> None:
            if len(parts) == 1:
                return self._list_jobs(parts[0], url)
            job = state.jobs.get(parts[1])
            if job is None or job.namespace != parts[0]:
                return self._send(404, {"error": "Job not found"})
            if len(parts) == 2:
                return self._send(200, job.info())
            if parts[2] == "logs":
                return self._logs(job)
            return self._send(404, {"error": "Not Found"})

        def _list_jobs(self, namespace: str, url: Any) -> None:
            q = parse_qs(url.query)
            wanted = [tuple(v.split("=", 1)) for v in q.get("label", [])]
            jobs = [j for j in sorted(state.jobs.values(), key=lambda j: j.created_at)
                    if j.namespace == namespace and j.listed() and all(j.spec.get("labels", {}).get(k) == v for k, v in wanted)]
            start = int(q.get("cursor", ["0"])[0])
            page = jobs[start:start + state.page_size]
            headers = {}
            if start + state.page_size < len(jobs):
                params = "&".join(f"label={quote(lbl)}" for lbl in q.get("label", []))
                nxt = f"{stub.url}/api/jobs/{namespace}?{params}&cursor={start + state.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._send(200, [j.info() for j in page], headers)

        def _logs(self, job: Job) -> None:
            """SSE over a chunked response, replayed from the start on every connection; ends with the job.

            A dropped stream is cut mid-body (no final chunk), as a lost connection looks to the client.
            """
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            sent = 0
            drop = False
            with state.lock:
                if state.drop_log_streams > 0:
                    state.drop_log_streams -= 1
                    drop = True

            def chunk(data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

            try:
                while True:
                    done = job.stage in ("COMPLETED", "ERROR", "CANCELED", "DELETED")
                    while sent < len(job.logs):
                        ts, line = job.logs[sent]
                        chunk(f"data: {json.dumps({'data': line, 'timestamp': ts})}\n\n".encode())
                        sent += 1
                        if drop and sent >= 2:
                            self.wfile.flush()
                            return  # the connection drops mid-stream
                    self.wfile.flush()
                    if done:
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                return

        # --- the earlier read-only routes --------------------------------------------------------------
        def _hardware(self, h: tuple) -> dict[str, Any]:
            name, pretty, cpu, ram, acc, micro = h
            micro = state.hardware_prices.get(name, micro)
            return {
                "name": name, "prettyName": pretty, "cpu": cpu, "ram": ram, "ephemeralStorage": "50 GB",
                "accelerator": None if acc is None else {
                    "type": "gpu", "model": acc[0], "quantity": acc[1], "vram": acc[2], "manufacturer": "Nvidia"},
                "unitCostMicroUSD": micro, "unitCostUSD": micro / 1e6, "unitLabel": "minute",
            }

        def _model(self, rest: str) -> None:
            repo = rest.split("/revision/")[0]
            if repo in state.gated:
                return self._send(403, {"error": "gated"}, {"X-Error-Code": "GatedRepo"})
            model = state.models.get(repo)
            if model is None and repo in state.repos:
                revision = rest.split("/revision/")[1] if "/revision/" in rest else "main"
                found = state.repos[repo].tree(unquote(revision))
                if found is None:
                    return self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
                return self._send(200, {"_id": "0" * 24, "id": repo, "sha": found[0], "private": state.repos[repo].private,
                                        "lastModified": _now(), "siblings": [{"rfilename": n} for n in sorted(found[1])]})
            if model is None:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            sha = self._revision("model", repo, rest)
            if sha is None:
                return None
            return self._send(200, {
                "_id": "0" * 24, "id": repo, "sha": sha, "private": False,
                "lastModified": "2025-01-01T00:00:00.000Z",
                "safetensors": {"parameters": {"BF16": model["params"]}, "total": model["params"]},
                "config": {"architectures": model.get("architectures", ["Qwen3ForCausalLM"]),
                           "model_type": "qwen3"},
            })

        def _revision(self, kind: str, repo: str, rest: str) -> str | None:
            """The commit `/revision/{rev}` (default main) names: main's head, or a commit of its history;
            an unknown revision is answered 404 RevisionNotFound, as the Hub does (None: answered)."""
            revision = unquote(rest.split("/revision/")[1]) if "/revision/" in rest else "main"
            history = state.heads.get(f"{kind}:{repo}", [_INITIAL[kind]])
            refs = state.refs.get(f"{kind}:{repo}", {})
            if revision == "main":
                return history[-1]
            if revision in refs:
                return refs[revision]
            if revision in history or revision in refs.values():
                return revision
            self._send(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
            return None

        def _dataset_info(self, rest: str) -> None:
            """GET /api/datasets/{id}[/revision/{rev}]: what HfApi.dataset_info reads (id, sha, private...)."""
            repo = rest.split("/revision/")[0]
            if repo not in state.datasets and f"dataset:{repo}" not in state.heads:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            sha = self._revision("dataset", repo, rest)
            if sha is not None:
                self._send(200, {"_id": "1" * 24, "id": repo, "author": repo.split("/")[0], "sha": sha,
                                 "private": repo in state.private_datasets, "gated": False, "disabled": False,
                                 "lastModified": "2025-01-01T00:00:00.000Z", "tags": [], "downloads": 0,
                                 "likes": 0, "siblings": [{"rfilename": "README.md"}]})

        def _dataset(self, q: dict[str, str]) -> dict | None:
            ds = state.datasets.get(q.get("dataset", ""))
            if ds is not None and q.get("dataset") in state.private_datasets and \
                    self.headers.get("Authorization", "") != f"Bearer {state.read_token}":
                # The viewer answers a private dataset without the right token as if it did not exist.
                ds = None
            if ds is None:
                self._send(404, {"error": "The dataset does not exist."}, {"X-Error-Code": "DatasetNotFoundError"})
            return ds

        def _splits(self, q: dict[str, str]) -> None:
            ds = self._dataset(q)
            if ds is not None:
                self._send(200, {"splits": [{"dataset": q["dataset"], "config": c, "split": s} for c, s in ds],
                                 "pending": [], "failed": []})

        def _first_rows(self, q: dict[str, str]) -> None:
            ds = self._dataset(q)
            if ds is None:
                return
            rows = ds.get((q.get("config", ""), q.get("split", "")))
            if rows is None:
                return self._send(404, {"error": "Not found."}, {"X-Error-Code": "ResponseNotFound"})
            names = list(dict.fromkeys(k for r in rows for k in r))
            self._send(200, {
                "dataset": q["dataset"], "config": q["config"], "split": q["split"],
                "features": [{"feature_idx": i, "name": n, "type": {"_type": "Value", "dtype": "string"}}
                             for i, n in enumerate(names)],
                "rows": [{"row_idx": i, "row": r, "truncated_cells": []} for i, r in enumerate(rows[:100])],
                "truncated": len(rows) > 100,
            })

        def _size(self, q: dict[str, str]) -> None:
            ds = self._dataset(q)
            if ds is None:
                return
            splits = [{"dataset": q["dataset"], "config": c, "split": s, "num_rows": len(r),
                       "num_columns": len(r[0]) if r else 0} for (c, s), r in ds.items()
                      if "config" not in q or c == q["config"]]
            self._send(200, {"size": {"dataset": {"dataset": q["dataset"],
                                                  "num_rows": sum(s["num_rows"] for s in splits)},
                                      "configs": [], "splits": splits},
                             "pending": [], "failed": [], "partial": False})

    return Handler
