"""Quality gates: a run publishes as the current model only when its numbers pass the recipe's gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_recipe

from runner import recipe as recipe_mod
from runner.evaluation import BenchmarkScore, Evaluation, MetricChange
from runner.gates import Gate, Scores, judge, scores

S = Scores


def _s(**values: float) -> Scores:
    return Scores(values=values)


@pytest.mark.parametrize(("gate", "before", "after", "current", "passed", "says"), [
    (None, _s(), _s(), None, True, []),
    (Gate(eval_loss="must_drop"), _s(eval_loss=2.0), _s(eval_loss=1.5), None, True, []),
    (Gate(eval_loss="must_drop"), _s(eval_loss=1.5), _s(eval_loss=1.7), None, False,
     ["eval_loss must drop: 1.5 -> 1.7"]),
    (Gate(eval_loss="must_drop"), _s(eval_loss=1.5), _s(eval_loss=1.5), None, False,
     ["eval_loss must drop: 1.5 -> 1.5"]),
    (Gate(eval_loss="must_drop"), _s(), _s(eval_loss=1.0), None, False,
     ["eval_loss must drop, but the run has no eval loss before and after training"]),
    (Gate(max_task_drop={"gsm8k": 0.02}), _s(gsm8k=0.50), _s(gsm8k=0.49), None, True, []),
    (Gate(max_task_drop={"gsm8k": 0.02}), _s(gsm8k=0.50), _s(gsm8k=0.40), None, False,
     ["gsm8k fell 0.1 (base model 0.5 -> 0.4), more than 0.02"]),
    (Gate(max_task_drop={"gsm8k": 0.02}), _s(gsm8k=0.30), _s(gsm8k=0.40), _s(gsm8k=0.45), False,
     ["gsm8k fell 0.05 (current model 0.45 -> 0.4), more than 0.02"]),
    (Gate(max_task_drop={"gsm8k": 0.02}), _s(), _s(), None, False,
     ["gsm8k may fall at most 0.02, but there is no gsm8k score for the run"]),
    (Gate(beat_current=True), _s(), _s(eval_loss=1.0), None, True, []),
    (Gate(beat_current=True), _s(), _s(eval_loss=1.0), _s(eval_loss=0.9), False,
     ["must beat the current model on eval_loss: 1 vs current 0.9 (lower wins)"]),
    (Gate(beat_current=True), _s(), _s(eval_loss=0.8), _s(eval_loss=0.9), True, []),
    (Gate(beat_current=True), _s(), _s(eval_loss=0.8), _s(), False,
     ["must beat the current model on eval_loss, but the current model has no eval_loss"]),
    (Gate(eval_loss="must_drop", beat_current=True), _s(eval_loss=1.0), _s(eval_loss=1.2), _s(eval_loss=0.9),
     False, ["eval_loss must drop: 1 -> 1.2", "must beat the current model on eval_loss: 1.2 vs current 0.9"]),
])
def test_judge(gate, before, after, current, passed, says) -> None:
    verdict = judge(gate, before, after, current)
    assert verdict.passed is passed
    assert verdict.state == ("passed" if passed else "rejected")
    assert len(verdict.reasons) == len(says)
    for reason, expected in zip(verdict.reasons, says, strict=True):
        assert reason.startswith(expected), reason
    if not passed:
        assert verdict.line().startswith("rejected: ")


def test_beat_current_on_a_score_metric_higher_wins() -> None:
    gate = Gate(beat_current=True)
    assert judge(gate, _s(), _s(gsm8k=0.5), _s(gsm8k=0.4), metric="gsm8k", mode="max").passed
    assert not judge(gate, _s(), _s(gsm8k=0.3), _s(gsm8k=0.4), metric="gsm8k", mode="max").passed


def test_scores_from_an_evaluation() -> None:
    ev = Evaluation(held_out="split test", rows=10,
                    metrics=[MetricChange(name="eval_loss", before=2.0, after=1.5),
                             MetricChange(name="eval_mean_token_accuracy", before=0.4, after=None)],
                    benchmarks=[BenchmarkScore(task="gsm8k", metric="acc", value=0.3)])
    assert scores(ev).values == {"eval_loss": 1.5, "gsm8k": 0.3}
    assert scores(ev, after=False).values == {"eval_loss": 2.0, "eval_mean_token_accuracy": 0.4}


BASE = """\
name: demo
base_model: ./models/tiny
method: sft
dataset:
  path: data/sft.jsonl
"""


def test_gate_in_a_recipe(repo: Path) -> None:
    loaded = recipe_mod.load(write_recipe(repo, "demo", BASE + "evaluation:\n  gate:\n    eval_loss: must_drop\n"
                                          "    max_task_drop: {gsm8k: 0.02}\n"))
    assert loaded.recipe.evaluation.gate == Gate(eval_loss="must_drop", max_task_drop={"gsm8k": 0.02})


def test_bad_gate_is_a_located_error(repo: Path, cli) -> None:
    write_recipe(repo, "demo", BASE + "evaluation:\n  gate:\n    eval_loss: must_fall\n")
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1
    assert result.err.strip() == ("recipes/demo.yaml:8:16: evaluation.gate.eval_loss: 'must_fall' is not one of "
                                  "must_drop (did you mean 'must_drop'?)")
