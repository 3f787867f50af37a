"""Quality gates: a run publishes as the current model only when its numbers pass the recipe's gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BASE_RECIPE, write_recipe

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


BASE = BASE_RECIPE


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


# --- promotion ------------------------------------------------------------------------------------------------

def _record(root: Path, run_id: str, *, state: str = "recorded", commit: str | None = None) -> None:
    from conftest import train_summary_json

    from runner import ledger
    from runner.summaries import TrainSummary

    pushed = {"repo": "acme/demo", "commit": commit} if commit else None
    ledger.save(root, ledger.RunRecord(run_id=run_id, recipe="recipes/demo.yaml", recipe_sha256="0" * 64,
                                       commit=None, backend="hf", state=state,
                                       train_summary=TrainSummary.model_validate(train_summary_json(pushed=pushed))),
                "demo")


def test_promote_then_merge_moves_the_tag_on_the_hub(repo: Path, cli, hub) -> None:
    from runner import hub as hub_mod

    first = hub.commit("acme/demo", {"model.safetensors": b"one"})
    second = hub.commit("acme/demo", {"model.safetensors": b"two"})
    _record(repo, "r1", commit=first)
    _record(repo, "r2", commit=second)

    result = cli("promote", "demo", "r1", cwd=repo)
    assert result.code == 0, result.err
    assert json.loads((repo / "models" / "current.json").read_text()) == {"models": {"demo": "r1"}}
    assert not hub.state.repos["acme/demo"].tags  # the pull request only edits the file
    assert cli("promote", "--apply", cwd=repo).out.strip() == f"acme/demo: prod -> {first[:12]} (run r1 of demo)"
    api = hub_mod.api()  # the endpoint the runner uses, read from the environment now
    assert [(t.name, t.target_commit) for t in api.list_repo_refs("acme/demo").tags] == [("prod", first)]

    assert cli("promote", "demo", "r2", cwd=repo).code == 0
    assert cli("promote", "--apply", cwd=repo).code == 0
    assert [(t.name, t.target_commit) for t in api.list_repo_refs("acme/demo").tags] == [("prod", second)]
    moves = [(r.method, r.path) for r in hub.state.requests if "/tag/" in r.path]
    assert moves == [("POST", f"/api/models/acme/demo/tag/{first}"), ("DELETE", "/api/models/acme/demo/tag/prod"),
                     ("POST", f"/api/models/acme/demo/tag/{second}")]
    again = cli("promote", "--apply", cwd=repo)  # a rerun of the merge moves nothing
    assert again.code == 0 and again.out == ""
    assert len([r for r in hub.state.requests if "/tag/" in r.path]) == 3


@pytest.mark.parametrize(("args", "message"), [
    (("demo", "nope"), "'nope' is not a run of 'demo' (latest: r1, r2, r3)"),
    (("demo", "r2"), "run r2 is failed: only a recorded run can be promoted"),
    (("demo", "r3"), "run r3 pushed no model to the Hub (trained locally)"),
    (("other", "r1"), "no runs recorded for 'other'"),
])
def test_promote_refuses_what_cannot_be_current(repo: Path, cli, args, message) -> None:
    _record(repo, "r1", commit="a" * 40)
    _record(repo, "r2", state="failed", commit="b" * 40)
    _record(repo, "r3")
    result = cli("promote", *args, cwd=repo)
    assert result.code == 1
    assert result.err.startswith("error: ") and message in result.err, result.err
    assert not (repo / "models" / "current.json").exists()


def test_a_rejected_run_is_terminal_and_keeps_the_numbers(repo: Path) -> None:
    from runner import ledger

    verdict = judge(Gate(eval_loss="must_drop"), _s(eval_loss=1.0), _s(eval_loss=1.3))
    _record(repo, "r1", state="trained", commit="a" * 40)
    record = ledger.read(repo, "demo").runs[0]
    record.gate = verdict
    record.move("rejected")
    ledger.save(repo, record, "demo")
    again = ledger.read(repo, "demo").runs[0]
    assert again.state == "rejected" and again.terminal
    assert again.gate is not None and again.gate.reasons == ["eval_loss must drop: 1 -> 1.3"]
    with pytest.raises(ValueError, match="cannot go from rejected to converting"):
        again.move("converting")


@pytest.mark.slow  # trains for real
def test_a_run_that_got_worse_is_rejected_with_no_gguf_and_no_card(examples_repo: Path) -> None:
    """For real on the local backend: a learning rate far too high makes the held-out loss rise; the gate
    `eval_loss: must_drop` ends the run rejected with the numbers, and no conversion job is started."""
    pytest.importorskip("trl")
    from test_run_local import runner, variant

    repo = examples_repo
    path = variant(repo, "tiny-sft", "tiny-sft-worse", replace=(
        "  path: data/sft.jsonl\n", "  path: data/sft.jsonl\n  split: train[:90%]\n  eval_split: train[90%:]\n"))
    text = (repo / path).read_text().replace("max_steps: 30", "max_steps: 8").replace("learning_rate: 1e-3",
                                                                                      "learning_rate: 1.0")
    (repo / path).write_text(text + "  gate:\n    eval_loss: must_drop\n")
    proc = runner(repo, path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    run = json.loads((repo / "runs" / "tiny-sft-worse.json").read_text())["runs"][-1]
    assert run["state"] == "rejected"
    assert [h["state"] for h in run["history"]] == ["planned", "training", "trained", "rejected"]
    assert "gguf" not in run["jobs"]
    assert run["gate"]["passed"] is False
    before, after = (next(m[k] for m in run["evaluation"]["metrics"] if m["name"] == "eval_loss")
                     for k in ("before", "after"))
    assert after >= before
    assert run["gate"]["reasons"] == [f"eval_loss must drop: {before:.4g} -> {after:.4g}"]
    assert not (repo / "models" / "tiny-sft-worse" / "README.md").exists()


def test_the_run_comment_says_a_run_was_rejected_by_its_gate() -> None:
    from conftest import a_plan

    from runner import render
    from runner.gates import GateVerdict
    from runner.ledger import RunRecord

    record = RunRecord(run_id="r1", recipe="recipes/x.yaml", recipe_sha256="0" * 64, commit=None, backend="local",
                       state="rejected", plan=a_plan(),
                       gate=GateVerdict(passed=False, reasons=["eval_loss rose: 1.20 -> 1.35"]))
    body = render.run_markdown("x", record, "https://github.com/acme/models/blob/main")
    assert ":no_entry_sign:" in body and "Rejected by its quality gate" in body and "1.35" in body
    assert ":hourglass:" not in body
