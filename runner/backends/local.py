"""The local backend: job scripts as subprocesses on this machine.

Each job gets a directory `.runner/jobs/<id>/` holding its spec, config, log and
status. A small detached launcher (`python -m runner.backends.local JOBDIR`) runs the
script, enforces the timeout and writes the final status, so a job outlives the
`runner` process that started it, just as an HF job does.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner.backends.base import FAILED, FoundJob, JobStatus
from runner.errors import UserError
from runner.jobspec import JobConfig, JobSpec, script_path
from runner.ledger import atomic_write


class LocalBackend:
    name = "local"
    mount = None  # jobs read the repo's files in place
    bills = False  # this machine's time
    branches = False  # one output directory per recipe; trials train one at a time

    def __init__(self, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.env = env or {}

    @classmethod
    @contextlib.contextmanager
    def opened(cls, root: Path, repo: str | None, echo: Callable[[str], None]) -> Iterator[LocalBackend]:
        """Jobs under <root>/.runner/jobs; Trackio keeps its SQLite logs beside them and the local Hub stand-in."""
        state = root / ".runner"
        yield cls(state / "jobs", env={"TRACKIO_DIR": str(state / "trackio")})

    @staticmethod
    def request(spec: JobSpec) -> dict[str, Any]:
        """Nothing beyond the spec: the job runs this repository's own script with its config."""
        return {}

    # --- the interface ---------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        existing = self.find(spec.labels)
        if existing:
            return existing.id
        job_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        job_dir = self.state_dir / job_id
        job_dir.mkdir(parents=True)
        atomic_write(job_dir / "config.json", spec.config.model_dump_json(indent=2))
        atomic_write(job_dir / "spec.json", spec.model_dump_json(indent=2))
        self._write_status(job_dir, "SCHEDULING")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        subprocess.Popen([sys.executable, "-m", "runner.backends.local", str(job_dir)], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        return job_id

    def status(self, job_id: str) -> JobStatus:
        job_dir = self._dir(job_id)
        data = json.loads((job_dir / "status.json").read_text())
        started, ended = data.get("started"), data.get("ended") or time.time()
        status = JobStatus(id=job_id, stage=data["stage"], message=data.get("message"), exit_code=data.get("exit_code"),
                           running_seconds=round(ended - started, 1) if started else None)
        if not status.finished and data.get("launcher_pid") and not _alive(data["launcher_pid"]):
            return JobStatus(id=job_id, stage="ERROR", message="the local launcher process died")
        return status

    def logs(self, job_id: str, *, follow: bool = False, poll: float = 0.2) -> Iterator[str]:
        path = self._dir(job_id) / "log.txt"
        while not path.exists():
            if not follow or self.status(job_id).finished:
                return
            time.sleep(poll)
        with path.open("r", encoding="utf-8", errors="replace") as f:
            buf = ""
            while True:
                chunk = f.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split("\n")
                    yield from lines
                    continue
                if not follow or self.status(job_id).finished:
                    rest = f.read()
                    tail = (buf + rest).split("\n")
                    yield from (line for line in tail if line)
                    return
                time.sleep(poll)

    def wait(self, job_id: str, on_line: Callable[[str], None]) -> JobStatus:
        for line in self.logs(job_id, follow=True):
            on_line(line)
        status = self.status(job_id)
        while not status.finished:  # the log can end a moment before the status is written
            time.sleep(0.2)
            status = self.status(job_id)
        return status

    def files(self, place: str, revision: str | None = None) -> set[str] | None:
        root = Path(place)
        if not root.is_dir():
            return None
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    def cancel(self, job_id: str) -> None:
        job_dir = self._dir(job_id)
        data = json.loads((job_dir / "status.json").read_text())
        if data["stage"] in ("COMPLETED", "ERROR", "CANCELED"):
            return
        (job_dir / "cancel").touch()
        pgid = data.get("child_pgid")
        if pgid:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def summary(self, config: JobConfig) -> dict[str, Any] | None:
        try:
            return json.loads(Path(config.summary_path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def checkpoint_saved(self, config: JobConfig) -> bool:
        return any(Path(config.output_dir).glob("checkpoint-*"))

    def publish(self, config: JobConfig, files: dict[str, bytes], message: str) -> None:
        for name, data in files.items():  # the local Hub copy: beside the weights, as on the Hub
            atomic_write(Path(config.output_dir) / name, data)

    def publish_model(self, config: JobConfig, commit: str, card: dict[str, bytes], message: str) -> str:
        raise UserError("the local backend keeps no branches: a run's model is already where it publishes")

    def claim(self, labels: dict[str, str], job_id: str) -> FoundJob:
        # One machine: the run lock already keeps a second submitter out.
        spec = JobSpec.model_validate_json((self._dir(job_id) / "spec.json").read_text())
        return FoundJob(id=job_id, labels=labels, config=spec.config, stage=self.status(job_id).stage)

    def find(self, labels: dict[str, str], *, include_failed: bool = False) -> FoundJob | None:
        if not labels or not self.state_dir.exists():
            return None
        for job_dir in sorted(self.state_dir.iterdir(), reverse=True):
            try:
                spec = JobSpec.model_validate_json((job_dir / "spec.json").read_text())
            except (OSError, ValueError):
                continue
            if all(spec.labels.get(k) == v for k, v in labels.items()):
                stage = self.status(job_dir.name).stage
                if include_failed or stage not in FAILED:
                    return FoundJob(id=job_dir.name, labels=spec.labels, config=spec.config, stage=stage)
        return None

    def job_dir(self, job_id: str) -> Path:
        return self._dir(job_id)

    # --- helpers -------------------------------------------------------------------------------

    def _dir(self, job_id: str) -> Path:
        if not job_id.replace("-", "").isalnum():
            raise ValueError(f"not a local job id: {job_id!r}")
        return self.state_dir / job_id

    @staticmethod
    def _write_status(job_dir: Path, stage: str, **extra: object) -> None:
        atomic_write(job_dir / "status.json", json.dumps({"stage": stage, **extra}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command(spec: JobSpec, config: Path) -> list[str]:
    return [sys.executable, str(script_path(spec.script)), "--config", str(config)]


def launch(job_dir: Path) -> int:
    """Run one job to completion: the body of the detached launcher."""
    spec = JobSpec.model_validate_json((job_dir / "spec.json").read_text())
    write = LocalBackend._write_status
    with (job_dir / "log.txt").open("ab", buffering=0) as log:
        # The script itself becomes N torchrun processes (real data parallelism on CPU, through gloo),
        # exactly as on HF Jobs; `accelerate launch --cpu` would silently run one.
        env = {**os.environ, "RUNNER_NPROC": str(spec.processes)}
        child = subprocess.Popen(_command(spec, job_dir / "config.json"), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=env)
        started = time.time()
        write(job_dir, "RUNNING", launcher_pid=os.getpid(), child_pgid=child.pid, started=started)
        try:
            code = child.wait(timeout=spec.timeout_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            _stop(child)
            code, timed_out = child.returncode, True
    times = {"started": started, "ended": time.time()}
    if (job_dir / "cancel").exists():
        write(job_dir, "CANCELED", exit_code=code, message="canceled", **times)
    elif timed_out:
        write(job_dir, "ERROR", exit_code=code, message=f"timed out after {spec.timeout_seconds} s", **times)
    elif code == 0:
        write(job_dir, "COMPLETED", exit_code=0, **times)
    else:
        write(job_dir, "ERROR", exit_code=code, message=f"job script exited with code {code}", **times)
    return 0


def _stop(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()


if __name__ == "__main__":
    raise SystemExit(launch(Path(sys.argv[1])))
