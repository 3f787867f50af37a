"""One interface, two engines: what every backend does with a job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

Stage = Literal["SCHEDULING", "RUNNING", "COMPLETED", "ERROR", "CANCELED", "DELETED"]
FINISHED: frozenset[str] = frozenset({"COMPLETED", "ERROR", "CANCELED", "DELETED"})


class JobSpec(BaseModel):
    """A job to run: one of the scripts in runner/jobs with its JSON config."""

    script: Literal["train", "gguf"]
    config: dict[str, Any]
    flavor: str | None = None
    timeout_seconds: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    processes: int = 1  # data-parallel processes (torchrun) for the training job


class JobStatus(BaseModel):
    id: str
    stage: Stage
    message: str | None = None
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.stage in FINISHED


class Backend(Protocol):
    name: str

    def submit(self, spec: JobSpec) -> str:
        """Start the job (or adopt a running one with the same labels); return its id."""

    def status(self, job_id: str) -> JobStatus: ...

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str]: ...

    def cancel(self, job_id: str) -> None: ...
