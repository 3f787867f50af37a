"""The Hugging Face Jobs backend: the same job scripts, run on HF Jobs through `HfApi`.

What it adds over the plain client:
- submission is idempotent: when the answer to a `run_job` is lost, the labels are looked
  up before it is sent again, so a job that did start is adopted, not paid twice (retries
  themselves happen in one place, runner/hubretry.py, under every huggingface_hub call);
- following a job never gives up on it: the log streams while it can, any log error falls
  back to polling the job's stage with backoff, and the stage decides the run's fate;
- the job script ships through an ordinary upload to the model repo (runner/<run_id>/),
  mounted read-only at a pinned commit, not through `run_uv_job`'s Xet bucket upload; so
  the exact script that trained a model stays next to it;
- the token travels only as the job's HF_TOKEN secret and in HTTP headers.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from runner import waits
from runner.backends.base import FAILED, FINISHED, FoundJob, JobSpec, JobStatus
from runner.errors import UserError
from runner.hubretry import RETRIABLE, AnswerLost, HubUnavailable
from runner.jobspec import JobConfig, script_files
from runner.outputs import NOT_THE_MODEL

# Pinned by digest: a tag can move under a job that holds the Hub token.
IMAGE = ("ghcr.io/astral-sh/uv:python3.12-bookworm"
         "@sha256:9aa60c50016c0485636ab9a830246a6ef3399aa4a8bab3d17ef4a2358fba2ca7")
MOUNT = "/runner"  # the run's bundle folder inside the job container
CHECKPOINT_DIR = "last-checkpoint/"  # where TRL's hub_strategy="checkpoint" pushes
CLAIM_READINGS = 4  # readings of the job listing, a settle pause apart, before a claim gives up
LOST_ANSWERS = 5  # a request whose answer keeps getting lost (and did nothing) is sent at most this often
T = TypeVar("T")


def _short(e: BaseException) -> str:
    return (str(e).splitlines()[0] if str(e) else type(e).__name__)[:160]


def _transient(e: BaseException) -> bool:
    """Worth polling again later: the Hub was unavailable or answered with a transient refusal."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        return e.response is not None and e.response.status_code in RETRIABLE
    return isinstance(e, (HubUnavailable, AnswerLost, ConnectionError)) or \
        type(e).__module__.startswith(("httpx", "httpcore"))


def _not_found(e: BaseException) -> bool:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    return isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError))


class HfBackend:
    name = "hf"
    mount = MOUNT
    bills = True
    branches = True

    def __init__(self, api: Any, namespace: str, token: str, *, poll: float = 10.0, base_delay: float = 1.0,
                 settle: float | None = None, echo: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self._token = token  # only ever sent as a secret or a header
        self.poll = poll  # the longest pause between two looks at a job's stage
        self.base_delay = base_delay
        # Longer than the job listing's lag: a claim reads the listing again after it.
        self.settle = settle if settle is not None else waits.seconds(waits.CLAIM_SETTLE)
        self.echo = echo or (lambda _line: None)

    @classmethod
    @contextlib.contextmanager
    def opened(cls, root: Path, repo: str | None, echo: Callable[[str], None]) -> Iterator[HfBackend]:
        """Jobs in `repo`'s namespace (else the token owner's), with one retry layer under every Hub call while open."""
        from huggingface_hub.utils import logging as hf_logging

        from runner import hub, hubretry

        token = None if hub.offline() else hub.token()
        if not token:
            raise UserError("the hf backend needs a Hugging Face token with write access: set HF_TOKEN "
                            "(in GitHub Actions, a repository secret) or run `hf auth login`")
        hf_logging.set_verbosity_error()  # retries are reported once, by the runner's own transport
        hubretry.install(echo)  # one retry layer under every Hub call while this command uses the Hub
        try:
            api = hub.api(token)
            yield cls(api, namespace_of(repo, api), token, echo=echo)
        finally:
            hubretry.uninstall()  # in-process callers (tests, the next command) start with the library's client

    @staticmethod
    def request(spec: JobSpec) -> dict[str, Any]:
        """The image, command and environment the job runs with (no secrets)."""
        return job_request(spec)

    def _call(self, what: str, fn: Callable[..., T], /, *, recover: Callable[[], T | None] | None = None,
              **kwargs: Any) -> T:
        """`fn(**kwargs)` with its failure as one line. Retries happen below, in the HTTP transport; here
        only a lost answer is handled: `recover()` looks for what the request may have done, and only
        if it finds nothing is the request sent again."""
        for _ in range(LOST_ANSWERS):
            try:
                return fn(**kwargs)
            except AnswerLost as e:
                found = recover() if recover else None
                if found is not None:
                    self.echo(f"[hub] {what}: the answer was lost, but it went through")
                    return found
                if recover is None:
                    raise UserError(f"Hugging Face Hub: {what} failed: {e}") from None
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - every Hub failure becomes one line
                raise UserError(f"Hugging Face Hub: {what} failed: {_short(e)}") from None
        raise UserError(f"Hugging Face Hub: {what} failed: {LOST_ANSWERS} answers in a row were lost")

    # --- the interface -----------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        existing = self.find(spec.labels)
        if existing:
            self.echo(f"[hub] adopting job {existing.id}: it carries this run's labels")
            return existing.id
        if not spec.bundle_repo or not spec.bundle_dir:
            raise UserError("the hf backend needs an output repo for the job bundle; set output.repo or a namespace")
        revision = self._ship(spec)
        if spec.config.repo and spec.config.branch:  # the Hub refuses a push to a branch it does not have
            self._branch(spec.config.repo, spec.config.branch)
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

    def claim(self, labels: dict[str, str], job_id: str) -> FoundJob:
        # The Hub has no compare-and-set for jobs: every submitter looks after submitting, and the order
        # they see (creation time, then id) is the same for all, so one job survives. A listing can lag a
        # submission, so the holder is read until two readings a pause apart agree.
        held = self._holder(labels, job_id)
        for _ in range(CLAIM_READINGS):
            time.sleep(self.settle)
            again = self._holder(labels, job_id)
            if held is not None and again is not None and again.id == held.id:
                break
            held = again
        else:
            self.cancel(job_id)  # a job no record will hold must not run on
            raise UserError(f"Hugging Face Hub: job {job_id} was submitted but the job listing did not settle "
                            f"after {CLAIM_READINGS} readings; canceled it rather than risk paying twice")
        assert held is not None  # the loop only breaks on two equal readings
        if held.id != job_id:
            self.echo(f"[hub] job {held.id} was submitted first for this work; canceling our {job_id}")
            self.cancel(job_id)
        return held

    def _holder(self, labels: dict[str, str], job_id: str) -> FoundJob | None:
        """The oldest live job of this runner's carrying `labels`, once ours is listed (None until then)."""
        # An ended job (even COMPLETED) holds nothing a new submission must yield to.
        mine = self._listed(labels)
        if not any(f.id == job_id for f in mine):
            return None
        return next(f for f in mine if f.id == job_id or f.stage not in FINISHED)

    def _listed(self, labels: dict[str, str]) -> list[FoundJob]:
        """This runner's jobs carrying all `labels`, oldest first (creation time, then id: one order for all)."""
        jobs = self._call("list jobs", lambda **kw: list(self.api.list_jobs(**kw)), labels=labels,
                          namespace=self.namespace)
        found = []
        for j in sorted(jobs, key=lambda j: (j.created_at.timestamp() if j.created_at else 0.0, j.id)):
            # A job whose config does not decode was not started by this runner (someone copied the labels):
            # it is never adopted and never holds the work.
            config = read_config((j.environment or {}).get("RUNNER_JOB_CONFIG"))
            if config is not None and all((j.labels or {}).get(k) == v for k, v in labels.items()):
                found.append(FoundJob(id=j.id, labels=j.labels or {}, config=config, stage=_status(j).stage))
        return found

    def status(self, job_id: str) -> JobStatus:
        info = self._call("inspect job", self.api.inspect_job, job_id=job_id, namespace=self.namespace)
        return _status(info)

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str]:
        """The job's log lines; best effort: a log error ends them (the job's stage is the truth)."""
        if follow:
            yield from (item for item in self._follow(job_id) if isinstance(item, str))
            return
        try:
            yield from self.api.fetch_job_logs(job_id=job_id, namespace=self.namespace)
        except Exception:  # noqa: BLE001 - logs are a convenience
            return

    def wait(self, job_id: str, on_line: Callable[[str], None]) -> JobStatus:
        for item in self._follow(job_id):
            if isinstance(item, JobStatus):
                return item
            on_line(item)
        raise AssertionError("a followed job always ends with its status")

    def _follow(self, job_id: str) -> Iterator[str | JobStatus]:
        """Log lines while the log streams, then the job's final status: never gives up on the job.

        The log is replayed from its start on every connection, so lines already seen are skipped.
        A log error (any: a refusal, a dropped connection, a Hub that is down) switches to polling
        the stage with `wait_for_job`, backing off up to `poll` seconds, and the log is tried again
        now and then; a failing poll is retried with the same backoff. Only a job the Hub does not
        know (or a token it refuses) ends the following.
        """
        seen = 0
        streaming = True
        delay = self.base_delay
        while True:
            if streaming:
                try:
                    for index, line in enumerate(self.api.fetch_job_logs(job_id=job_id, namespace=self.namespace,
                                                                         follow=True), 1):
                        if index > seen:
                            seen = index
                            yield line
                except Exception as e:  # noqa: BLE001 - logs are a convenience; the stage is the truth
                    self.echo(f"[hub] job {job_id}: the log failed ({_short(e)}); following the job's stage")
                    streaming = False
            try:
                # Just after a stream that ended by itself, one look: the job should be over. Else a
                # few polls, then the log gets another chance.
                window = 0.0 if streaming else delay * 3
                info = self.api.wait_for_job(job_id, namespace=self.namespace, timeout=window, poll_interval=delay)
            except TimeoutError:  # still running (wait_for_job's answer; HTTP timeouts are not TimeoutErrors)
                if streaming:  # the stream ended before the job (a dropped connection): reconnect after a pause
                    time.sleep(self.base_delay)
                else:  # the polls' window is over: give the log another chance, and poll less often
                    streaming, delay = True, min(delay * 2, self.poll)
                continue
            except Exception as e:  # noqa: BLE001
                if not _transient(e):
                    raise UserError(f"Hugging Face Hub: following job {job_id} failed: {_short(e)}") from None
                self.echo(f"[hub] job {job_id}: its stage is unavailable ({_short(e)}); "
                          f"looking again in {delay:.0f} s")
                time.sleep(delay)
                streaming, delay = False, min(delay * 2, self.poll)
                continue
            status = _status(info)
            if status.finished:
                # The stream may have broken before its last lines: the finished log, once, for the rest.
                for index, line in enumerate(self.logs(job_id), 1):
                    if index > seen:
                        seen = index
                        yield line
                yield status
                return

    def cancel(self, job_id: str) -> None:
        self._call("cancel job", self.api.cancel_job, job_id=job_id, namespace=self.namespace)

    def find(self, labels: dict[str, str], *, include_failed: bool = False) -> FoundJob | None:
        if not labels:
            return None
        return next((f for f in reversed(self._listed(labels)) if include_failed or f.stage not in FAILED), None)

    def summary(self, config: JobConfig) -> dict[str, Any] | None:
        if not config.summary_repo or not config.summary_repo_path:
            return None
        try:
            path = self.api.hf_hub_download(repo_id=config.summary_repo, filename=config.summary_repo_path)
        except Exception as e:  # noqa: BLE001
            if _not_found(e):
                return None
            raise UserError(f"Hugging Face Hub: reading the job summary failed: {_short(e)}") from None
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def files(self, place: str, revision: str | None = None) -> set[str] | None:
        """The files of the Hub repo `place` at `revision` (default: main); None if it does not exist."""
        try:
            return set(self.api.list_repo_files(repo_id=place, revision=revision))
        except Exception as e:  # noqa: BLE001
            if _not_found(e):
                return None
            raise UserError(f"Hugging Face Hub: listing {place} failed: {_short(e)}") from None

    def checkpoint_saved(self, config: JobConfig) -> bool:
        repo = config.repo
        if not repo:
            return False
        try:
            files = self.files(repo, config.branch)  # a trial's checkpoint is on its branch, never another's
        except UserError:
            return False
        return any(f.startswith(CHECKPOINT_DIR) for f in files or ())

    def publish(self, config: JobConfig, files: dict[str, bytes], message: str) -> None:
        from huggingface_hub import CommitOperationAdd

        repo = config.repo
        if not repo:
            return
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
        self._call("upload the model card", self.api.create_commit, repo_id=repo, operations=ops,
                   commit_message=message)

    def publish_model(self, config: JobConfig, commit: str, card: dict[str, bytes], message: str) -> str:
        """The model at `commit` (what the job pushed to its branch) and its card become main in one commit: the model
        files copied from that commit (LFS server-side), the card's files written, main's other model files (the
        previous model and its card) deleted; the job bundles stay. So main never holds a model without a card
        that describes it, nor the previous model's card over it."""
        from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete

        repo = config.repo
        if not repo:
            raise UserError("a model that was not pushed to the Hub has no branch to publish")
        if "README.md" not in card:
            raise UserError(f"Hugging Face Hub: the model at {commit[:12]} reaches {repo} main only with its card")

        def promote() -> str:  # read afresh on every attempt: sent again, unchanged files are skipped
            # The card replaces any the job pushed beside its model (the trainer writes one of its own).
            model = {f for f in self.files(repo, commit) or () if _is_model_file(f)} - set(card)
            if not model:
                raise UserError(f"Hugging Face Hub: {repo} holds no model at commit {commit[:12]}")
            stale = {f for f in self.files(repo) or () if _is_model_file(f)} - model - set(card)
            ops: list[Any] = [CommitOperationCopy(src_path_in_repo=f, path_in_repo=f, src_revision=commit)
                              for f in sorted(model)]
            ops += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in sorted(card.items())]
            ops += [CommitOperationDelete(path_in_repo=f) for f in sorted(stale)]
            return self.api.create_commit(repo_id=repo, operations=ops, commit_message=message).oid

        return self._call(f"publishing the model at {commit[:12]} as {repo} main", promote, recover=lambda: None)

    def _branch(self, repo: str, branch: str) -> None:
        """The branch a job pushes to, set up before it runs: cut from main, then cleared of main's model and card,
        so what the job pushes is the whole model there. Decided from the Hub on every submission, so a set-up cut
        short is completed by the next: a branch with no commit of its own still holds what it inherited and is
        cleared; one with commits of its own (the clearing one, a job's pushes: a retry's checkpoint) is kept."""
        self._call(f"create branch {branch}", self.api.create_branch, repo_id=repo, branch=branch, exist_ok=True)
        for _ in range(LOST_ANSWERS):
            head = self._unwritten(repo, branch)
            inherited = sorted(f for f in self.files(repo, head) or () if _is_model_file(f)) if head else []
            if not head or not inherited or self._call(f"clear branch {branch}", self._clear, repo=repo,
                                                       branch=branch, head=head, inherited=inherited):
                return
        raise UserError(f"Hugging Face Hub: branch {branch} of {repo} kept moving while it was being set up; "
                        "is another runner submitting the same trial? Try again")

    def _clear(self, repo: str, branch: str, head: str, inherited: list[str]) -> bool:
        """Delete the files the branch inherited, on top of `head` only; False when the branch moved meanwhile."""
        from huggingface_hub import CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        try:
            self.api.create_commit(repo_id=repo, revision=branch, parent_commit=head,
                                   operations=[CommitOperationDelete(path_in_repo=f) for f in inherited],
                                   commit_message="recipes-runner: a trial's branch starts without main's model")
        except HfHubHTTPError as e:
            if e.response is None or e.response.status_code != 412:  # 412: "A commit has happened since"
                raise
            return False  # another runner's set-up, or ours re-sent after a lost answer: read the branch again
        return True

    def _unwritten(self, repo: str, branch: str) -> str | None:
        """The branch's head while nothing was committed on it since it was cut from main (that head is one of
        main's commits); None once it has commits of its own."""
        refs = self._call("list refs", self.api.list_repo_refs, repo_id=repo)
        head = next((b.target_commit for b in refs.branches if b.name == branch), None)
        if head is None:
            raise UserError(f"Hugging Face Hub: branch {branch} of {repo} disappeared while it was being set up")
        main = self._call(f"list the commits of {repo}", self.api.list_repo_commits, repo_id=repo)
        return head if any(c.commit_id == head for c in main) else None

    # --- shipping ----------------------------------------------------------------------------------

    def _ship(self, spec: JobSpec) -> str:
        """Upload the script and its inputs in one commit; return that commit, which the job mounts."""
        from huggingface_hub import CommitOperationAdd

        assert spec.bundle_repo and spec.bundle_dir
        self._call("create repo", self.api.create_repo, repo_id=spec.bundle_repo,
                   private=spec.config.private, exist_ok=True)
        files = {**{n: str(path) for n, path in script_files(spec.script).items()}, **spec.files}
        ops = [CommitOperationAdd(path_in_repo=f"{spec.bundle_dir}/{rel}", path_or_fileobj=local)
               for rel, local in files.items()]
        info = self._call("upload the job bundle", self.api.create_commit, repo_id=spec.bundle_repo, operations=ops,
                          commit_message=f"recipes-runner: {spec.script} job bundle for run {spec.labels.get('run')}")
        return info.oid


def _is_model_file(path: str) -> bool:
    """Part of the model a repo's main serves: not a checkpoint, a job bundle, or the repo's own .gitattributes."""
    return not path.startswith(NOT_THE_MODEL) and path != ".gitattributes"


def job_request(spec: JobSpec) -> dict[str, Any]:
    """What a job runs: image, command and environment (no secrets), the same for a dry run and a submission."""
    return {"image": IMAGE, "command": ["uv", "run", "--python", "3.12", f"{MOUNT}/{spec.script}.py"],
            "env": {"RUNNER_JOB_CONFIG": spec.config.model_dump_json(), "RUNNER_NPROC": str(spec.processes),
                    "PYTHONUNBUFFERED": "1"}}


def read_config(text: str | None) -> JobConfig | None:
    """A job's config from its environment; None when it is missing or not one this runner writes."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(JobConfig).validate_json(text or "")
    except ValidationError:
        return None


def _status(info: Any) -> JobStatus:
    from huggingface_hub import JobStage

    stage = getattr(info.status.stage, "value", info.status.stage)
    known = {s.value for s in JobStage}
    # A stage this client does not know yet is not an end: the job is still on its way.
    running = getattr(getattr(info, "durations", None), "running_secs", None)
    return JobStatus(id=info.id, stage=JobStage(stage).value if stage in known else "RUNNING",
                     message=info.status.message, running_seconds=float(running) if running is not None else None)


def namespace_of(repo: str | None, api: Any) -> str:
    """Jobs run (and bill) in the output repo's namespace; else in the token owner's."""
    if repo and "/" in repo:
        return repo.split("/", 1)[0]
    return api.whoami()["name"]
