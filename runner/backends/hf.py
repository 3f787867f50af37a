"""The Hugging Face Jobs backend: the same job scripts, run on HF Jobs through `HfApi`.

What it adds over the plain client:
- retries with backoff on 429/5xx and dropped connections, which huggingface_hub 2.4 does
  not do for the Jobs calls; a failed `run_job` is never blindly retried: the labels are
  looked up first, so a submission that did reach the Hub is adopted, not paid twice;
- the job script ships through an ordinary upload to the model repo (runner/<run_id>/),
  mounted read-only at a pinned commit, not through `run_uv_job`'s Xet bucket upload; so
  the exact script that trained a model stays next to it;
- the token travels only as the job's HF_TOKEN secret and in HTTP headers.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from runner.backends.base import FoundJob, JobSpec, JobStatus
from runner.backends.local import script_path
from runner.errors import UserError

# Pinned by digest: a tag can move under a job that holds the Hub token.
IMAGE = ("ghcr.io/astral-sh/uv:python3.12-bookworm"
         "@sha256:9aa60c50016c0485636ab9a830246a6ef3399aa4a8bab3d17ef4a2358fba2ca7")
MOUNT = "/runner"  # the run's bundle folder inside the job container
RETRIABLE = frozenset({408, 429, 500, 502, 503, 504})
CHECKPOINT_DIR = "last-checkpoint/"  # where TRL's hub_strategy="checkpoint" pushes
T = TypeVar("T")


def _transient(e: BaseException) -> bool:
    """Worth another try: throttled, a server hiccup, or the connection itself."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        return e.response is not None and e.response.status_code in RETRIABLE
    # httpx2's transport errors and plain socket errors (the Hub restarting, a dropped stream)
    return isinstance(e, (ConnectionError, TimeoutError)) or type(e).__module__.startswith(("httpx", "httpcore"))


def _retry_after(e: BaseException) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


class HfBackend:
    name = "hf"
    mount = MOUNT

    def __init__(self, api: Any, namespace: str, token: str, *, attempts: int = 8, base_delay: float = 1.0,
                 max_delay: float = 60.0, poll: float = 10.0, echo: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self._token = token  # only ever sent as a secret or a header
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.poll = poll
        self.echo = echo or (lambda _line: None)

    # --- retries ---------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], /, *, recover: Callable[[], T | None] | None = None,
              **kwargs: Any) -> T:
        """`fn(**kwargs)`, retried on transient failures; `recover()` may find the result before a retry."""
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(**kwargs)
            except Exception as e:  # noqa: BLE001 - sorted by _transient
                if not _transient(e) or attempt == self.attempts:
                    raise UserError(f"Hugging Face Hub: {what} failed: {str(e).splitlines()[0]}") from None
                wait = min(_retry_after(e) or delay * (1 + random.random() / 2), self.max_delay)
                self.echo(f"[hub] {what}: {str(e).splitlines()[0][:120]}; retrying in {wait:.1f} s "
                          f"({attempt}/{self.attempts - 1})")
                time.sleep(wait)
                delay = min(delay * 2, self.max_delay)
                found = recover() if recover else None
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    # --- the interface -----------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        existing = self.find(spec.labels)
        if existing:
            self.echo(f"[hub] adopting job {existing.id}: it carries this run's labels")
            return existing.id
        if not spec.bundle_repo or not spec.bundle_dir:
            raise UserError("the hf backend needs an output repo for the job bundle; set output.repo or a namespace")
        revision = self._ship(spec)
        from huggingface_hub import Volume

        request = job_request(spec)
        kwargs: dict[str, Any] = dict(
            image=request["image"], command=request["command"], env=request["env"],
            secrets={"HF_TOKEN": self._token},
            flavor=spec.flavor, timeout=spec.timeout_seconds, labels=spec.labels,
            volumes=[Volume(type="model", source=spec.bundle_repo, mount_path=MOUNT, revision=revision,
                            path=spec.bundle_dir, read_only=True)],
            namespace=self.namespace,
        )

        def created() -> str | None:  # the refusal may have come after the job was created: look first
            found = self.find(spec.labels)
            return found.id if found else None

        return self._call(f"submitting the {spec.script} job", lambda **kw: self.api.run_job(**kw).id,
                          recover=created, **kwargs)

    def status(self, job_id: str) -> JobStatus:
        info = self._call("inspect job", self.api.inspect_job, job_id=job_id, namespace=self.namespace)
        running = getattr(getattr(info, "durations", None), "running_secs", None)
        return JobStatus(id=job_id, stage=info.status.stage, message=info.status.message,
                         running_seconds=float(running) if running is not None else None)

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str]:
        """Log lines; the stream is replayed from the start on every connection, so skip what was seen."""
        seen = 0
        delay = self.base_delay
        failures = 0
        while True:
            index = 0
            try:
                for line in self.api.fetch_job_logs(job_id=job_id, namespace=self.namespace, follow=follow):
                    index += 1
                    if index > seen:
                        seen = index
                        failures = 0
                        yield line
                if not follow:
                    return
                if self.status(job_id).finished:
                    # The client stops following once the job ends, even if its stream dropped
                    # before the last lines: read the finished log once more for the rest.
                    follow = False
                    continue
            except Exception as e:  # noqa: BLE001
                failures += 1
                if not _transient(e) or failures >= self.attempts:
                    if not follow:
                        return  # logs are best effort; the job's status is the truth
                    raise UserError(f"Hugging Face Hub: reading the logs of job {job_id} failed: "
                                    f"{str(e).splitlines()[0]}") from None
            time.sleep(min(delay, self.max_delay))
            delay = min(delay * 2, self.poll)

    def cancel(self, job_id: str) -> None:
        self._call("cancel job", self.api.cancel_job, job_id=job_id, namespace=self.namespace)

    def find(self, labels: dict[str, str], *, include_failed: bool = False) -> FoundJob | None:
        if not labels:
            return None
        jobs = self._call("list jobs", lambda **kw: list(self.api.list_jobs(**kw)), labels=labels,
                          namespace=self.namespace)
        for job in sorted(jobs, key=lambda j: j.created_at.timestamp() if j.created_at else 0, reverse=True):
            if all((job.labels or {}).get(k) == v for k, v in labels.items()) and \
                    (include_failed or job.status.stage not in ("ERROR", "CANCELED", "DELETED")):
                try:
                    config = json.loads((job.environment or {}).get("RUNNER_JOB_CONFIG") or "{}")
                except ValueError:
                    config = {}
                return FoundJob(id=job.id, labels=job.labels or {}, config=config, stage=job.status.stage)
        return None

    def summary(self, config: dict[str, Any]) -> dict[str, Any] | None:
        target = config.get("summary_upload")
        if not target:
            return None
        try:
            path = self._call("download summary", self.api.hf_hub_download, repo_id=target["repo"],
                              filename=target["path"])
        except UserError:
            return None
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def checkpoint_saved(self, config: dict[str, Any]) -> bool:
        repo = config.get("hub_repo")
        if not repo:
            return False
        try:
            files = self._call("list files", self.api.list_repo_files, repo_id=repo)
        except UserError:
            return False
        return any(f.startswith(CHECKPOINT_DIR) for f in files)

    def publish(self, config: dict[str, Any], files: dict[str, bytes], message: str) -> None:
        from huggingface_hub import CommitOperationAdd

        repo = config.get("hub_repo")
        if not repo:
            return
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
        self._call("upload the model card", self.api.create_commit, repo_id=repo, operations=ops,
                   commit_message=message)

    # --- shipping ----------------------------------------------------------------------------------

    def _ship(self, spec: JobSpec) -> str:
        """Upload the script and its inputs in one commit; return that commit, which the job mounts."""
        from huggingface_hub import CommitOperationAdd

        assert spec.bundle_repo and spec.bundle_dir
        self._call("create repo", self.api.create_repo, repo_id=spec.bundle_repo,
                   private=bool(spec.config.get("private", True)), exist_ok=True)
        files = {f"{spec.script}.py": str(script_path(spec.script)), **spec.files}
        ops = [CommitOperationAdd(path_in_repo=f"{spec.bundle_dir}/{rel}", path_or_fileobj=local)
               for rel, local in files.items()]
        info = self._call("upload the job bundle", self.api.create_commit, repo_id=spec.bundle_repo, operations=ops,
                          commit_message=f"recipes-runner: {spec.script} job bundle for run {spec.labels.get('run')}")
        return info.oid


def job_request(spec: JobSpec) -> dict[str, Any]:
    """What a job runs: image, command and environment (no secrets), the same for a dry run and a submission."""
    return {"image": IMAGE, "command": ["uv", "run", "--python", "3.12", f"{MOUNT}/{spec.script}.py"],
            "env": {"RUNNER_JOB_CONFIG": json.dumps(spec.config), "RUNNER_NPROC": str(spec.processes),
                    "PYTHONUNBUFFERED": "1"}}


def namespace_of(repo: str | None, api: Any) -> str:
    """Jobs run (and bill) in the output repo's namespace; else in the token owner's."""
    if repo and "/" in repo:
        return repo.split("/", 1)[0]
    return api.whoami()["name"]
