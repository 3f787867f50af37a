"""What the job scripts report: the JSON summary runner/jobs/train.py and runner/jobs/gguf.py write.

The runner reads a summary once, where a finished job's outputs are verified (runner/runs.py),
and keeps it typed in the run record. Fields every version of a job script has written are
required; fields added later have defaults, so records kept from earlier runs still load.
Unknown keys are ignored: a newer job script that reports more must not fail a run that was
paid for (tests/test_run_local.py checks the real scripts write no key these models lack).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    JsonValue,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from runner.evaluation import Evaluation
from runner.jobs.train_policy import Setup


class _Summary(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Pushed(_Summary):
    """Where the training job pushed the model: the runner checks the files at exactly this commit."""

    repo: str
    commit: str | None = None


# One line of the trainer's own log (`trainer.state.log_history`): whatever metrics the TRL version
# logs, as JSON. Free-form on purpose: a new metric in a new TRL must not fail a paid run.
LogEntry = dict[str, JsonValue]


class TrainSummary(_Summary):
    """What runner/jobs/train.py `train` returns and writes to `summary_path`."""

    method: Literal["sft", "dpo", "grpo"]
    steps: int
    epochs: float | None
    train_runtime_s: float
    tokens_seen: int
    tokens_per_second: float
    final_metrics: dict[str, float]  # the trainer's numeric metrics, and final_loss
    log_history: list[LogEntry]
    adapter: bool  # a LoRA adapter, not full weights
    world_size: int
    peak_memory_bytes: int
    vision: bool = False
    setup: Setup | None = None  # what the job resolved on its device (runner/jobs/train_policy.py)
    pushed: Pushed | None = None  # None: trained locally, nothing pushed
    evaluation: Evaluation | None = None  # None: nothing held out

    @field_validator("evaluation", mode="wrap")
    @classmethod
    def _readable_evaluation(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Evaluation | None:
        # The evaluation reports on the model; an unreadable one is dropped, the trained model still recorded.
        try:
            return handler(value)
        except ValidationError:
            return None


class GgufFile(_Summary):
    """One file the GGUF job wrote: a quantized model, or a vision model's projector (`kind` mmproj)."""

    quantization: str
    path: str
    bytes: int
    sha256: str
    smoke_test: str | None = None  # what llama.cpp generated from it (for a projector: what was read back)
    imatrix: bool = False  # quantized with the importance matrix
    kind: Literal["model", "mmproj"] = "model"

    @property
    def name(self) -> str:
        """The file's name, without the directory it was written to."""
        return self.path.rsplit("/", 1)[-1]


class Imatrix(_Summary):
    """The importance matrix the low-bit quantizations were made with."""

    file: str
    dataset: str
    chunks: int
    chunk_size: int
    tokens: int
    matrices: int
    bytes: int


class ChatMessage(_Summary):
    role: str
    content: str


class ChatTemplateCheck(_Summary):
    """Whether the GGUF's chat template renders a held-out conversation as the tokenizer's does."""

    checked: bool
    reason: str | None = None  # why it was not checked
    template_sha256: str | None = None
    messages: list[ChatMessage] = []
    rendered: dict[str, str] = {}  # "conversation" / "prompt" -> the text both rendered


class GgufSummary(_Summary):
    """What runner/jobs/gguf.py `run` returns and writes to `summary_path` (also when it converts nothing)."""

    files: list[GgufFile]
    merged_adapter: bool
    seconds: dict[str, float]  # wall time per phase
    hub_repo: str | None
    imatrix: Imatrix | None = None
    chat_template: ChatTemplateCheck | None = None
    modelfile: str | None = None
    ollama_template: bool = False
    card: str | None = None
    commit: str | None = None
    vision: bool = False
    skipped: str | None = None  # why nothing was converted (an architecture llama.cpp cannot convert)

    @property
    def models(self) -> list[GgufFile]:
        """The quantized models, without a vision projector."""
        return [f for f in self.files if f.kind != "mmproj"]

    @property
    def projector(self) -> GgufFile | None:
        """A vision model's projector, which llama.cpp loads beside the text model (--mmproj)."""
        return next((f for f in self.files if f.kind == "mmproj"), None)


S = TypeVar("S", TrainSummary, GgufSummary)


def parse(model: type[S], raw: object) -> tuple[S | None, str | None]:
    """A job's summary as `model`, or None and one line naming the first field that does not fit."""
    try:
        return model.model_validate(raw), None
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "top level"
        more = f"; {e.error_count() - 1} more problem(s)" if e.error_count() > 1 else ""
        return None, f"its summary is not what the job script writes ({field}: {first['msg']}{more})"
