"""What evaluation found: held-out metrics before and after training, samples, benchmark scores.

The training job (runner/jobs/train.py) writes these under `evaluation` in its summary
(runner/summaries.py); the run record keeps them typed, and the card, the pull-request comment and `status`
show them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

# The trainers' metric names, as people read them.
LABELS = {
    "eval_loss": "eval loss",
    "eval_mean_token_accuracy": "token accuracy",
    "eval_rewards/margins": "reward margin",
    "eval_rewards/accuracies": "reward accuracy",
    "eval_reward": "mean reward",
}


def label(name: str) -> str:
    """A metric's name for people: 'eval_rewards/contains_answer/mean' -> 'reward contains_answer'."""
    if name in LABELS:
        return LABELS[name]
    if name.startswith("eval_rewards/") and name.endswith("/mean"):
        return "reward " + name.removeprefix("eval_rewards/").removesuffix("/mean")
    return name.removeprefix("eval_").replace("_", " ")


class MetricChange(BaseModel):
    """One held-out metric of the base model (before the first step) and of the tuned model."""

    name: str
    before: float | None = None
    after: float | None = None

    @property
    def label(self) -> str:
        return label(self.name)

    @property
    def delta(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before


class Sample(BaseModel):
    """One held-out prompt, as the model saw it (chat template applied), answered greedily by both models."""

    prompt: str
    reference: str | None = None
    base: str
    tuned: str


class BenchmarkScore(BaseModel):
    task: str
    metric: str
    value: float
    stderr: float | None = None
    limit: int | None = None  # samples evaluated (the recipe's task_limit)
    dataset: str | None = None  # the task's Hub dataset, for the card's model-index


class Evaluation(BaseModel):
    held_out: str  # where the rows came from, e.g. "split test" or "2% of train"
    rows: int
    metrics: list[MetricChange] = Field(default_factory=list)
    samples: list[Sample] = Field(default_factory=list)
    benchmarks: list[BenchmarkScore] = Field(default_factory=list)
    benchmark_error: str | None = None
    seconds: float = 0.0  # wall time the evaluation added to the training job

    @property
    def headline(self) -> MetricChange | None:
        """The metric that says most about this method: the first one the job reported."""
        return next((m for m in self.metrics if m.before is not None and m.after is not None), None)

    def phrase(self) -> str:
        """One short before -> after phrase, e.g. 'eval loss 2.31 -> 1.05'."""
        m = self.headline
        return f"{m.label} {m.before:.4g} -> {m.after:.4g}" if m and m.before is not None and m.after is not None \
            else ""
