"""One interface, two engines: what every backend does with a job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

from runner.jobspec import JobConfig, JobSpec

Stage = Literal["SCHEDULING", "RUNNING", "COMPLETED", "ERROR", "CANCELED", "DELETED"]
# huggingface_hub's JobStage values, grouped once: a job that ended without its work, and any ended job.
FAILED: frozenset[str] = frozenset({"ERROR", "CANCELED", "DELETED"})
FINISHED: frozenset[str] = FAILED | {"COMPLETED"}


class FoundJob(BaseModel):
    """A job already on the engine, found by its labels: what it is and the config it runs with."""

    id: str
    labels: dict[str, str]
    config: JobConfig  # a job whose config cannot be read was not started by this runner: never found
    stage: Stage


class JobStatus(BaseModel):
    id: str
    stage: Stage
    message: str | None = None
    exit_code: int | None = None
    running_seconds: float | None = None  # what the job is billed for (JobInfo.durations.running_secs)

    @property
    def finished(self) -> bool:
        return self.stage in FINISHED


class Backend(Protocol):
    """An engine that runs jobs, and what it can do: the runner asks its capabilities, never its name."""

    name: ClassVar[str]  # what run records call it
    mount: ClassVar[str | None]  # where a job sees the shipped repo-local inputs; None: in place
    # Whether its jobs cost money: then every submission is derived from the recipe and gated,
    # and outputs are pushed to the Hub.
    bills: ClassVar[bool]
    # Whether outputs can go to a branch of their repo: a sweep's trials then each push to their own, and the
    # winner's model is made the repo's main (publish_model).
    branches: ClassVar[bool]

    @classmethod
    def opened(cls, root: Path, repo: str | None, echo: Callable[[str], None]) -> AbstractContextManager[Backend]:
        """This engine, ready for one command in the repository at `root`, and closed when it ends."""

    @staticmethod
    def request(spec: JobSpec) -> dict[str, Any]:
        """What the engine is asked to run for this job beyond its spec (image, command, env; no secrets)."""

    def submit(self, spec: JobSpec) -> str:
        """Start the job (or adopt a running one with the same labels); return its id."""

    def claim(self, labels: dict[str, str], job_id: str) -> FoundJob:
        """After submitting `job_id`: the job that holds this work. Where two machines both submitted, the
        oldest live job carrying `labels` wins everywhere alike, and a younger one (ours) is canceled."""

    def find(self, labels: dict[str, str], *, include_failed: bool = False) -> FoundJob | None:
        """The newest job carrying all these labels that has not failed or been canceled (or any, if asked)."""

    def status(self, job_id: str) -> JobStatus: ...

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str]: ...

    def wait(self, job_id: str, on_line: Callable[[str], None]) -> JobStatus:
        """Follow the job to its end, never giving up on it: its log lines while they stream, its final status."""

    def files(self, place: str, revision: str | None = None) -> set[str] | None:
        """The files at an output place (a Hub repo id, or a local directory), None if there is none."""

    def cancel(self, job_id: str) -> None: ...

    def summary(self, config: JobConfig) -> dict[str, Any] | None:
        """The JSON summary a finished job wrote (None if it wrote none)."""

    def checkpoint_saved(self, config: JobConfig) -> bool:
        """Whether a training job left a checkpoint a rerun could resume from."""

    def publish(self, config: JobConfig, files: dict[str, bytes], message: str) -> None:
        """Put files (the model card, the loss plot) beside the trained model."""

    def publish_model(self, config: JobConfig, commit: str, card: dict[str, bytes], message: str) -> str:
        """Make the model a training job pushed to its branch, at `commit`, with its `card` (README.md, loss.png) its
        repo's main in one commit; that commit. Only where `branches`."""
