"""Sweeps: a recipe's `sweep:` expands into trials that are ordinary recipes, planned and gated as a whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import BASE_RECIPE, write_recipe

from runner import planning, runs
from runner import recipe as recipe_mod
from runner import sweep as sweeps
from runner.errors import RecipeInvalid

BASE = BASE_RECIPE + "budget_usd: 5\n"

GRID = BASE + """\
sweep:
  grid:
    training.learning_rate: [1e-4, 2e-4]
    adapter.r: [8, 16]
"""


def _load(repo: Path, text: str) -> recipe_mod.LoadedRecipe:
    return recipe_mod.load(write_recipe(repo, "demo", text))


def test_grid_expands_to_every_combination_as_recipes(repo: Path) -> None:
    loaded = _load(repo, GRID)
    trials = sweeps.expand(loaded.recipe)
    got = [(t.recipe.training.learning_rate, t.recipe.adapter.r) for t in trials]
    assert got == [(1e-4, 8), (1e-4, 16), (2e-4, 8), (2e-4, 16)]
    assert all(t.recipe.sweep is None for t in trials)
    assert len({t.id for t in trials}) == 4
    assert trials[0].suffix == "learning-rate0.0001-r8"


def test_trials_list_and_trial_ids_are_stable_across_order_and_other_trials(repo: Path) -> None:
    a = sweeps.expand(_load(repo, BASE + "sweep:\n  trials:\n    - {training.epochs: 2, adapter.r: 8}\n").recipe)
    b = sweeps.expand(_load(repo, BASE + "sweep:\n  trials:\n    - {training.epochs: 3}\n"
                                  "    - {adapter.r: 8, training.epochs: 2}\n").recipe)
    assert [t.recipe.training.epochs for t in b] == [3.0, 2.0]
    assert a[0].id == b[1].id


def test_trial_version_is_the_recipe_with_the_overrides(repo: Path) -> None:
    """A trial's run version equals that of the plain recipe written with the same values: records, retries and
    reconcile treat it as any run, and adding a trial does not change the others' versions."""
    loaded = _load(repo, GRID)
    trial = sweeps.expand(loaded.recipe)[3]
    trial_version = runs.recipe_version(dataclasses.replace(loaded, recipe=trial.recipe))
    plain = _load(repo, BASE + "training:\n  learning_rate: 2e-4\nadapter:\n  r: 16\n")
    assert trial_version == runs.recipe_version(plain)
    versions = {runs.recipe_version(dataclasses.replace(loaded, recipe=t.recipe))
                for t in sweeps.expand(loaded.recipe)}
    assert len(versions) == 4


@pytest.mark.parametrize(("sweep_yaml", "line", "field", "message"), [
    ("sweep:\n  grid:\n    training.learning_rat: [1e-4]\n", 9, "sweep.grid.training.learning_rat",
     "unknown field 'learning_rat' in training (did you mean training.learning_rate?)"),
    ("sweep:\n  grid:\n    dataset.path: [a.jsonl]\n", 9, "sweep.grid.dataset.path",
     "'dataset.path' is not an override path"),
    ("sweep:\n  grid:\n    training.learning_rate: [1e-4, 5]\n", 9, "sweep.grid.training.learning_rate[1]",
     "trial learning-rate5: Input should be less than or equal to 1"),
    ("sweep:\n  trials:\n    - {adapter.r: 8}\n    - {adapter.r: 0}\n", 10, "sweep.trials[1].adapter.r",
     "trial r0: Input should be greater than or equal to 1"),
    ("sweep:\n  trials:\n    - {adapter.r: 8}\n    - {adapter.r: 8}\n", 10, "sweep.trials[1]",
     "the same trial is listed twice"),
    ("sweep:\n  grid:\n    adapter.r: [1, 2, 3]\n    training.seed: [1, 2, 3]\n", 7, "sweep",
     "9 trials, above max_sweep_trials 8"),
    ("sweep:\n  metric: eval_loss\n", 8, "sweep", "set exactly one of grid"),
])
def test_bad_sweeps_are_located_errors(repo: Path, cli, sweep_yaml: str, line: int, field: str,
                                       message: str) -> None:
    write_recipe(repo, "demo", BASE + sweep_yaml)
    result = cli("validate", "recipes/demo.yaml", cwd=repo)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"recipes/demo.yaml:{line}:"), lines[0]
    assert f" {field}: " in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in result.err


def test_trial_cap_comes_from_defaults(repo: Path) -> None:
    (repo / "recipes" / "_defaults.yaml").write_text("max_sweep_trials: 2\n")
    with pytest.raises(RecipeInvalid, match="4 trials, above max_sweep_trials 2"):
        _load(repo, GRID)
    (repo / "recipes" / "_defaults.yaml").write_text("max_sweep_trials: 4\n")
    assert len(sweeps.expand(_load(repo, GRID).recipe)) == 4


R = sweeps.TrialResult


@pytest.mark.parametrize(("results", "metric", "mode", "winner", "reason"), [
    ([R(id="a", suffix="a", metrics={"eval_loss": 1.2}), R(id="b", suffix="b", metrics={"eval_loss": 0.9})],
     "eval_loss", "min", "b", "b: lowest eval_loss 0.9 of 2 trials"),
    ([R(id="a", suffix="a", metrics={"gsm8k": 0.3}), R(id="b", suffix="b", metrics={"gsm8k": 0.2})],
     "gsm8k", "max", "a", "a: highest gsm8k 0.3 of 2 trials"),
    ([R(id="a", suffix="a", metrics={"eval_loss": 1.0}), R(id="b", suffix="b", metrics={"eval_loss": 1.0})],
     "eval_loss", "min", "a", "a: lowest"),
    ([R(id="a", suffix="a"), R(id="b", suffix="b", metrics={"eval_loss": float("nan")}),
      R(id="c", suffix="c", metrics={"eval_loss": 2.0})],
     "eval_loss", "min", "c", "2 trial(s) without eval_loss could not win"),
    ([R(id="a", suffix="a"), R(id="b", suffix="b", metrics={"train_loss": 1.0})],
     "eval_loss", "min", None, "no winner: none of the 2 trials reported eval_loss (1 failed"),
])
def test_pick_winner(results, metric, mode, winner, reason) -> None:
    verdict = sweeps.pick_winner(results, metric, mode)
    assert verdict.winner == winner
    assert reason in verdict.reason


@pytest.mark.parametrize(("metric", "mode", "direction"), [
    ("eval_loss", None, "min"), ("perplexity", None, "min"), ("gsm8k", None, "max"), ("gsm8k", "min", "min")])
def test_metric_direction(metric, mode, direction) -> None:
    assert sweeps.Sweep(trials=[{"adapter.r": 8}], metric=metric, mode=mode).direction == direction


PRICED = "hardware: t4-small\ntimeout: 1h\noutput:\n  repo: acme/demo\n"


def _plans(loaded: recipe_mod.LoadedRecipe) -> sweeps.SweepPlan:
    prices = planning.prices(None)

    def plan_one(r: recipe_mod.Recipe):
        return planning.plan_recipe(dataclasses.replace(loaded, recipe=r), token=None, price_table=prices)
    return sweeps.plan_sweep(sweeps.expand(loaded.recipe), plan_one, loaded.recipe.budget_usd)


def test_sweep_plan_sums_worst_cases_and_converts_once(repo: Path) -> None:
    loaded = _load(repo, GRID.replace("budget_usd: 5", "budget_usd: 50") + PRICED)
    sp = _plans(loaded)
    trains = [tp.plan.job("train").max_cost_usd for tp in sp.trials]
    gguf = max(tp.plan.job("gguf").max_cost_usd for tp in sp.trials)
    assert sp.worst_usd == pytest.approx(sum(trains) + gguf, abs=0.01)
    assert sp.refusal is None and sp.ok
    text = sweeps.markdown(sp)
    assert len([ln for ln in text.splitlines() if ln.startswith("| `")]) == 4
    assert f"| **total** | 4 trials (the winner's GGUF conversion included) | | ${sp.estimate_usd:.2f} | " \
           f"${sp.worst_usd:.2f} |" in text
    assert "within budget as a whole" in text


def test_sweep_over_budget_as_a_whole_is_one_refusal_with_the_numbers(repo: Path) -> None:
    """Each trial fits the budget alone; the four together do not."""
    loaded = _load(repo, GRID.replace("budget_usd: 5", "budget_usd: 1") + PRICED)
    sp = _plans(loaded)
    assert all(tp.plan.refusal is None for tp in sp.trials)
    assert sp.worst_usd > 1 and not sp.ok
    assert sp.refusal == (f"sweep over budget: 4 trials may cost ${sp.worst_usd:.2f} together in the worst case "
                          f"(estimate ${sp.estimate_usd:.2f}), above budget_usd $1.00; raise budget_usd to at least "
                          f"${sp.worst_usd:.2f}, drop trials, or lower the timeout")
    assert sweeps.markdown(sp).count("**refused**") == 1


def test_recipe_without_sweep_has_no_trials(repo: Path) -> None:
    assert sweeps.expand(_load(repo, BASE).recipe) == []


@pytest.mark.slow  # trains and converts for real
def test_a_four_trial_sweep_runs_locally_and_converts_only_the_winner(examples_repo: Path) -> None:
    """For real on the local backend: four trials train one at a time, each its own recorded run; the lowest
    held-out loss wins; only the winner is converted to GGUF and carded, the others end rejected with why."""
    import json

    pytest.importorskip("trl")
    pytest.importorskip("llama_cpp")
    from test_run_local import runner, variant

    repo = examples_repo
    path = variant(repo, "tiny-sft", "tiny-sweep", replace=(
        "  path: data/sft.jsonl\n", "  path: data/sft.jsonl\n  split: train[:90%]\n  eval_split: train[90%:]\n"))
    text = (repo / path).read_text().replace("max_steps: 30", "max_steps: 6")
    # Which quantization the winner gets is not the claim: one plain file (no importance matrix) is enough.
    text = text.replace("[Q4_K_M, IQ4_XS]", "[Q8_0]").replace("imatrix: true", "imatrix: false")
    (repo / path).write_text(text + "sweep:\n  grid:\n    training.learning_rate: [1e-4, 1e-3]\n"
                                    "    training.seed: [1, 2]\n")
    proc = runner(repo, path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    runs_ = json.loads((repo / "runs" / "tiny-sweep.json").read_text())["runs"]
    assert len(runs_) == 4 and len({r["version"] for r in runs_}) == 4
    assert {r["trial"] for r in runs_} == set(out["trials"])
    losses = {r["trial"]: next(m["after"] for m in r["evaluation"]["metrics"] if m["name"] == "eval_loss")
              for r in runs_}
    best = min(losses, key=losses.__getitem__)
    assert out["winner"] == best
    by_trial = {r["trial"]: r for r in runs_}
    assert by_trial[best]["state"] == "recorded" and by_trial[best]["jobs"]["gguf"]["stage"] == "COMPLETED"
    # Each trial trained into a folder of its own, and the winner's conversion read the winner's weights.
    assert len({r["configs"]["train"]["output_dir"] for r in runs_}) == 4
    assert by_trial[best]["configs"]["gguf"]["model_dir"] == by_trial[best]["configs"]["train"]["output_dir"]
    for trial, r in by_trial.items():
        if trial != best:
            assert r["state"] == "rejected" and "gguf" not in r["jobs"]
            assert r["gate"]["reasons"][0].startswith(f"lost the sweep to trial {best}")
    card = (repo / "models" / "tiny-sweep" / "README.md").read_text()
    assert card.count("| winner |") == 1 and all(f"`{r['run_id']}`" in card.split("## Sweep", 1)[1] for r in runs_)


# --- on the Hub stand-in ----------------------------------------------------------------------------------------

HUB_SWEEP = ("sweep:\n  grid:\n    training.learning_rate: [1e-4, 2e-4]\n    training.seed: [1, 2]\n"
             "  parallel: 4\nhardware: t4-small\ntimeout: 1h\n")


def _sweep_workspace(workspace: Path, budget: float, *, parallel: int = 4, gate: bool = False) -> str:
    from conftest import git

    path = workspace / "recipes" / "tiny-sft.yaml"
    text = path.read_text().replace("evaluation:\n", "evaluation:\n  gate:\n    eval_loss: must_drop\n") if gate \
        else path.read_text()
    path.write_text(text + HUB_SWEEP.replace("parallel: 4", f"parallel: {parallel}") + f"budget_usd: {budget}\n")
    git(workspace, "commit", "-qam", "sweep")
    return "recipes/tiny-sft.yaml"


def _summary(after: float) -> dict:
    from conftest import train_summary_json

    return train_summary_json(evaluation={"held_out": "split test", "rows": 10, "metrics": [
        {"name": "eval_loss", "before": 2.0, "after": after}]})


REPO = "alice/tiny-sft"
LFS = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def _train_jobs(hub) -> list:
    """The sweep's training jobs in the order they were submitted, each with the config it runs with."""
    import json

    jobs = sorted((j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "train"),
                  key=lambda j: j.created_mono)
    return [(j, json.loads(j.spec["environment"]["RUNNER_JOB_CONFIG"])) for j in jobs]


def _model(tree: dict[str, bytes]) -> dict[str, bytes]:
    """The model files of a repo tree: not the job bundles, checkpoints, .gitattributes or the card."""
    return {k: v for k, v in tree.items() if not k.startswith(("runner/", "last-checkpoint/"))
            and k not in (".gitattributes", "README.md", "loss.png")}


def test_a_sweep_on_the_hub_submits_trials_in_parallel_and_converts_the_winner(hub, workspace, monkeypatch,
                                                                              capsys) -> None:
    import json

    from hubstub import JobScript
    from test_hf_backend import GGUF_SUMMARY, run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    # The repo's main holds an earlier model (full weights and a stale adapter) and an earlier run's bundle.
    hub.commit(REPO, {".gitattributes": LFS, "model.safetensors": b"an earlier model", "config.json": b"{}",
                      "adapter_config.json": b"{}", "README.md": b"an earlier card", "runner/old/train.py": b"#"})
    losses = [1.5, 1.2, 0.9, 1.1]
    hub.state.job_scripts += [JobScript(running=8.0, summary=_summary(x), checkpoint=True) for x in losses]
    hub.state.job_scripts.append(JobScript(summary=GGUF_SUMMARY))
    code, out = run(workspace, monkeypatch, capsys, "run", _sweep_workspace(workspace, 5), "--backend", "hf")
    assert code == 0, out
    train = [j for j, _ in _train_jobs(hub)]
    gguf = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "gguf"]
    assert len(train) == 4 and len(gguf) == 1
    # In parallel: every trial was submitted before the first one finished.
    assert max(j.created_at for j in train) < min(j.finished_at for j in train)
    runs_ = json.loads((workspace / "runs" / "tiny-sft.json").read_text())["runs"]
    by_version = {r["version"]: r for r in runs_}
    assert len(by_version) == 4
    winner = next(r for r in runs_ if r["state"] == "recorded")
    assert winner["evaluation"]["metrics"][0]["after"] == 0.9
    assert gguf[0].spec["labels"]["version"] == winner["version"]
    assert sorted(r["state"] for r in runs_) == ["recorded", "rejected", "rejected", "rejected"]
    # The winner's record, card and outcome comment carry the table of every trial.
    table = winner["sweep"]
    assert (table["metric"], table["mode"]) == ("eval_loss", "min")
    assert sorted(t["value"] for t in table["trials"]) == sorted(losses)
    assert {t["run_id"] for t in table["trials"]} == {r["run_id"] for r in runs_}
    card = hub.files(winner["configs"]["train"]["hub_model_id"])["README.md"].decode()
    section = card.split("## Sweep", 1)[1]
    for t in table["trials"]:
        row = next(ln for ln in section.splitlines() if f"`{t['run_id']}`" in ln)
        assert t["suffix"] in row and f"{t['value']:.4g}" in row
        assert ("winner" in row) == (t["run_id"] == winner["run_id"]), row
    from runner import ledger, render

    comment = render.outcome_markdown("tiny-sft", ledger.RunRecord.model_validate(winner), "https://x")
    assert comment.count("| winner |") == 1 and "4 trials, judged by held-out eval\\_loss (lower wins)" in comment
    _assert_trials_pushed_to_their_branches(hub, runs_)
    _assert_main_is_the_winner(hub, runs_, winner)


def _assert_trials_pushed_to_their_branches(hub, runs_: list[dict]) -> None:
    """Each trial's job config names a branch of its own, which existed (without main's model) before the job."""
    by_run = {r["run_id"]: r for r in runs_}
    for job, config in _train_jobs(hub):
        r = by_run[config["run_id"]]
        branch = config["hub_revision"]
        assert branch == f"trial-{r['trial']}-{r['version'][:8]}" == r["configs"]["train"]["hub_revision"]
        made = [q.at for q in hub.state.requests
                if (q.method, q.path) == ("POST", f"/api/models/{REPO}/branch/{branch}")]
        assert len(made) == 1 and made[0] < job.created_mono
        pushed = r["train_summary"]["pushed"]["commit"]
        assert hub.state.repos[REPO].branches[branch] == pushed  # the job's model push was its branch's last commit
        assert "adapter_config.json" not in hub.files(REPO, branch)  # main's earlier model stayed out of it
        assert "last-checkpoint/trainer_state.json" in hub.files(REPO, branch)
    assert len({c["hub_revision"] for _, c in _train_jobs(hub)}) == 4


def _assert_main_is_the_winner(hub, runs_: list[dict], winner: dict) -> None:
    """main holds exactly the winner's model (bytes of its pushed commit) and its card, arrived in one commit;
    no loser's weights and no checkpoint were ever on main; the runs' bundles stayed."""
    pushed = winner["train_summary"]["pushed"]["commit"]
    main = hub.files(REPO)
    assert _model(main) == _model(hub.files(REPO, pushed)) and set(_model(main)) == {"config.json", "model.safetensors"}
    assert main["README.md"].decode().startswith("---") and "## Sweep" in main["README.md"].decode()
    assert main[".gitattributes"] == LFS and "runner/old/train.py" in main
    assert all(f"runner/{r['run_id']}/train.py" in main for r in runs_)
    history = hub.history(REPO)
    losers = {hub.files(REPO, r["train_summary"]["pushed"]["commit"])["model.safetensors"] for r in runs_
              if r["state"] == "rejected"}
    assert len(losers) == 3 and main["model.safetensors"] not in losers
    assert not any(tree.get("model.safetensors") in losers or "last-checkpoint/config.json" in tree
                   for _, tree in history)
    first = [tree for _, tree in history if tree.get("model.safetensors") == main["model.safetensors"]][-1]
    assert _model(first) == _model(main)  # every file of the winner's model arrived in that one commit
    # The copy as huggingface_hub makes it: a regular file downloaded at the winner's commit and committed again,
    # the LFS weights copied on the Hub's side by their sha256 (never downloaded).
    resolved = [q.path for q in hub.state.requests if q.method == "GET" and f"/resolve/{pushed}/" in q.path]
    assert resolved == [f"/{REPO}/resolve/{pushed}/config.json"]


def test_a_failed_trials_checkpoint_is_looked_for_on_its_own_branch(hub, workspace, monkeypatch, capsys) -> None:
    """Two trials fail, one timing out after a checkpoint push: each failure reads its own branch, so only that one
    says a retry can resume; main never holds a checkpoint; the winner of the other two reaches main."""
    import json

    from hubstub import JobScript
    from test_hf_backend import GGUF_SUMMARY, run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.state.timeout_scale = 1800  # the trials' hour passes in two seconds
    hub.state.job_scripts += [JobScript(outlive_timeout=True, checkpoint=True),
                              JobScript(end="ERROR", message="exit code 1"),
                              JobScript(summary=_summary(0.9)), JobScript(summary=_summary(1.1)),
                              JobScript(summary=GGUF_SUMMARY)]
    code, out = run(workspace, monkeypatch, capsys, "run", _sweep_workspace(workspace, 5), "--backend", "hf")
    assert "lowest eval_loss 0.9" in out, out
    by_run = {r["run_id"]: r for r in json.loads((workspace / "runs" / "tiny-sft.json").read_text())["runs"]}
    (_, saved), (_, unsaved), (_, won), _ = _train_jobs(hub)
    first, second = by_run[saved["run_id"]], by_run[unsaved["run_id"]]
    assert first["state"] == second["state"] == "failed"
    assert first["failure"]["checkpoint_on_hub"] is True
    assert f"{REPO}/last-checkpoint/ (branch {saved['hub_revision']})" in first["failure"]["reason"]
    assert second["failure"]["checkpoint_on_hub"] is False  # the other trial's checkpoint is not its own
    looked = {q.path for q in hub.state.requests
              if q.method == "GET" and q.path.startswith(f"/api/models/{REPO}/tree/")}
    assert {f"/api/models/{REPO}/tree/{c['hub_revision']}" for c in (saved, unsaved)} <= looked
    assert not any(k.startswith("last-checkpoint/") for _, tree in hub.history(REPO) for k in tree)
    assert by_run[won["run_id"]]["state"] == "recorded"
    winner_commit = by_run[won["run_id"]]["train_summary"]["pushed"]["commit"]
    assert _model(hub.files(REPO)) == _model(hub.files(REPO, winner_commit))


def test_a_sweep_over_budget_on_the_hub_is_one_refusal_and_no_job(hub, workspace, monkeypatch, capsys) -> None:
    from test_hf_backend import run

    code, out = run(workspace, monkeypatch, capsys, "run", _sweep_workspace(workspace, 1), "--backend", "hf")
    assert code == 1
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "sweep over budget: 4 trials may cost $" in lines[0], out
    assert "above budget_usd $1.00" in lines[0]
    assert not hub.state.jobs


def test_plan_command_shows_a_line_per_trial_and_refuses_the_total(repo: Path, cli) -> None:
    write_recipe(repo, "demo", GRID.replace("budget_usd: 5", "budget_usd: 50") + PRICED)
    ok = cli("plan", "recipes/demo.yaml", "--markdown", cwd=repo)
    assert ok.code == 0, ok.err
    assert "#### Sweep of recipes/demo.yaml" in ok.out
    assert len([ln for ln in ok.out.splitlines() if ln.startswith("| `")]) == 4
    assert "| **total** | 4 trials" in ok.out and "within budget as a whole" in ok.out
    write_recipe(repo, "demo", GRID.replace("budget_usd: 5", "budget_usd: 1") + PRICED)
    refused = cli("plan", "recipes/demo.yaml", "--markdown", cwd=repo)
    assert refused.code == 1
    assert refused.out.count("sweep over budget: 4 trials may cost") == 2  # the errors list, and the sweep's verdict


def test_an_edited_trial_record_cannot_publish_another_repos_main(hub, workspace, monkeypatch, capsys) -> None:
    """A loser's record edited to `trained`, with the lowest loss and another repo as its output. The sweep judges by
    the summary its training job wrote, read again from the backend: with the record's evaluation edited, and with
    its summary edited too, the loser loses again; neither repo gets a commit, no job is bought."""
    import json

    from hubstub import JobScript
    from test_hf_backend import GGUF_SUMMARY, run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.state.job_scripts += [JobScript(running=0.5, summary=_summary(x)) for x in (1.5, 1.2, 0.9, 1.1)]
    hub.state.job_scripts.append(JobScript(summary=GGUF_SUMMARY))
    recipe = _sweep_workspace(workspace, 5)
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf")[0] == 0
    victim = hub.commit("alice/victim", {"model.safetensors": b"victim weights", "extra.bin": b"x"})
    path = workspace / "runs" / "tiny-sft.json"
    doc = json.loads(path.read_text())
    loser = next(r for r in doc["runs"] if r["state"] == "rejected")
    loser.update(state="trained", gate=None)
    loser["evaluation"]["metrics"][0]["after"] = 0.1
    loser["configs"]["train"]["hub_model_id"] = "alice/victim"
    path.write_text(json.dumps(doc))
    jobs, main = len(hub.state.jobs), hub.history(REPO)[0][0]
    code, out = run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf")
    assert code == 0 and "lowest eval_loss 0.9 of 4 trials" in out, out
    again = next(r for r in json.loads(path.read_text())["runs"] if r["run_id"] == loser["run_id"])
    assert again["state"] == "rejected" and hub.history(REPO)[0][0] == main and len(hub.state.jobs) == jobs
    doc = json.loads(path.read_text())
    loser = next(r for r in doc["runs"] if r["run_id"] == loser["run_id"])
    loser.update(state="trained", gate=None)
    loser["train_summary"]["evaluation"]["metrics"][0]["after"] = 0.1
    path.write_text(json.dumps(doc))
    code, out = run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf")
    assert code == 0 and "lowest eval_loss 0.9 of 4 trials" in out, out
    again = next(r for r in json.loads(path.read_text())["runs"] if r["run_id"] == loser["run_id"])
    assert again["state"] == "rejected" and hub.history(REPO)[0][0] == main
    assert hub.history("alice/victim")[0][0] == victim and b"x" == hub.files("alice/victim")["extra.bin"]
    assert len(hub.state.jobs) == jobs


# --- a sweep the merge left running, carried on by reconcile --------------------------------------------------

def _runs(workspace: Path) -> list[dict]:
    import json

    return json.loads((workspace / "runs" / "tiny-sft.json").read_text())["runs"]


def _reconcile_until_done(workspace: Path, monkeypatch, capsys, trials: int = 4, rounds: int = 80) -> str:
    """`runner reconcile` on a schedule (here every 0.2 s) until every trial's run has ended; its output."""
    import time

    from test_hf_backend import run

    said = []
    for _ in range(rounds):
        code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
        said.append(out)
        assert code == 0, out
        runs_ = _runs(workspace)
        if len(runs_) == trials and all(r["state"] in ("recorded", "rejected", "failed", "canceled") for r in runs_):
            return "\n".join(said)
        time.sleep(0.2)
    raise AssertionError("reconcile did not finish the sweep:\n" + "\n".join(said[-3:]))


def _at_most_at_once(hub, width: int) -> None:
    """No training job was created while `width` others of the sweep were still running."""
    jobs = [j for j, _ in _train_jobs(hub)]
    for j in jobs:
        running = [k for k in jobs if k is not j and k.created_mono < j.created_mono
                   and (k.finished_mono is None or k.finished_mono > j.created_mono)]
        assert len(running) < width, (j.id, [k.id for k in running])


@pytest.mark.parametrize("follow", [("--detach",), ("--follow-for", "0.01")], ids=["detach", "follow-for"])
def test_a_sweep_the_merge_left_is_finished_by_reconcile(hub, workspace, monkeypatch, capsys, follow) -> None:
    """`runner run` of a sweep with --detach, or a follow window shorter than its jobs, submits what `parallel`
    allows and returns 0. Scheduled reconciles then follow the trials, start the others from the recipe at the
    reviewed commit (never more than `parallel` at once), pick the winner, reject the losers and carry only the
    winner on: one GGUF job, main the winner's model, the same result as a followed `runner run`."""
    from conftest import git
    from hubstub import JobScript
    from test_hf_backend import GGUF_SUMMARY, run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.commit(REPO, {".gitattributes": LFS, "model.safetensors": b"an earlier model", "config.json": b"{}",
                      "runner/old/train.py": b"#"})
    losses = [1.5, 1.2, 0.9, 1.1]
    hub.state.job_scripts += [JobScript(running=2.0, summary=_summary(x), checkpoint=True) for x in losses]
    hub.state.job_scripts.append(JobScript(summary=GGUF_SUMMARY))
    recipe = _sweep_workspace(workspace, 5, parallel=2)
    reviewed = git(workspace, "rev-parse", "HEAD")
    code, out = run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", *follow)
    assert code == 0 and "`runner reconcile` carries it on" in out, out
    assert len(_train_jobs(hub)) == 2 and len(hub.state.jobs) == 2
    said = _reconcile_until_done(workspace, monkeypatch, capsys)
    assert "lowest eval_loss 0.9 of 4 trials" in said
    train = _train_jobs(hub)
    gguf = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "gguf"]
    assert len(train) == 4 and len(gguf) == 1
    _at_most_at_once(hub, 2)
    runs_ = _runs(workspace)
    assert sorted(r["state"] for r in runs_) == ["recorded", "rejected", "rejected", "rejected"]
    winner = next(r for r in runs_ if r["state"] == "recorded")
    assert winner["evaluation"]["metrics"][0]["after"] == 0.9 and gguf[0].spec["labels"]["version"] == winner["version"]
    # The trials reconcile started record the reviewed commit, as their jobs' labels do.
    assert {r["commit"] for r in runs_} == {reviewed}
    assert {j.spec["labels"]["commit"] for j, _ in train} == {reviewed[:12]}
    # The winner's table has every trial's final state; its own row says recorded, with its GGUF job's cost.
    rows = {t["run_id"]: t for t in winner["sweep"]["trials"]}
    assert {k: t["state"] for k, t in rows.items()} == {r["run_id"]: r["state"] for r in runs_}
    assert rows[winner["run_id"]]["actual_usd"] == winner["cost_usd"]["actual"]
    _assert_trials_pushed_to_their_branches(hub, runs_)
    _assert_main_is_the_winner(hub, runs_, winner)
    # Done: another pass submits nothing and publishes nothing.
    main = hub.history(REPO)[0][0]
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    assert code == 0 and len(hub.state.jobs) == 5 and hub.history(REPO)[0][0] == main, out


def test_a_loser_edited_back_to_planned_adopts_its_job_and_loses_again(hub, workspace, monkeypatch, capsys) -> None:
    """After the sweep ended, a loser's record edited to `planned` (and its gate cleared): reconcile finds the trial's
    training job on the backend and adopts it instead of training again; judged by the numbers its job wrote, it
    loses again. No job, no publication."""
    import json

    from hubstub import JobScript
    from test_hf_backend import GGUF_SUMMARY, run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.state.job_scripts += [JobScript(running=0.3, summary=_summary(x)) for x in (1.5, 1.2, 0.9, 1.1)]
    hub.state.job_scripts.append(JobScript(summary=GGUF_SUMMARY))
    recipe = _sweep_workspace(workspace, 5)
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf")[0] == 0
    path = workspace / "runs" / "tiny-sft.json"
    doc = json.loads(path.read_text())
    loser = next(r for r in doc["runs"] if r["state"] == "rejected")
    loser.update(state="planned", gate=None, jobs={}, train_summary=None)
    loser["evaluation"]["metrics"][0]["after"] = 0.1
    path.write_text(json.dumps(doc))
    main = hub.history(REPO)[0][0]
    said = _reconcile_until_done(workspace, monkeypatch, capsys)
    assert len(hub.state.jobs) == 5 and hub.history(REPO)[0][0] == main, said
    again = next(r for r in _runs(workspace) if r["run_id"] == loser["run_id"])
    assert again["state"] == "rejected" and again["gate"]["reasons"][0].startswith("lost the sweep to trial")
    assert "adopting job" in said


def test_reconcile_starts_no_trial_of_a_sweep_the_merge_did_not_begin(hub, workspace, monkeypatch, capsys) -> None:
    """A trial's run left `planned` (the train workflow died, or a record was written by hand) of a sweep no job shows
    the merge began: reconcile starts nothing, as for any planned record; `runner run` (the train workflow) does."""
    from conftest import git
    from test_spend import TOKEN

    from runner import planning, runs
    from runner.backends.hf import HfBackend

    recipe = _sweep_workspace(workspace, 5, parallel=2)
    monkeypatch.chdir(workspace)
    loaded = recipe_mod.load(workspace / recipe)
    first = sweeps.expand(loaded.recipe)[0]
    trial = dataclasses.replace(loaded, recipe=first.recipe)
    plan = planning.plan_recipe(trial, token=None, price_table=planning.prices(None))
    record = runs.start(trial, plan, HfBackend(None, "alice", TOKEN), trial=first.id)
    assert record.commit == git(workspace, "rev-parse", "HEAD")
    from test_hf_backend import run

    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    assert code == 0 and not hub.state.jobs, out
    assert "not starting trial(s)" in out and "no job shows the merge began this sweep" in out
    assert _runs(workspace)[0]["state"] == "planned"


def test_records_naming_a_later_commit_start_nothing_there(hub, workspace, monkeypatch, capsys) -> None:
    """The merge began a sweep at one commit; a later merged pull request widens the sweep and edits the trials'
    records to name its own commit (reviewed, but its train workflow never ran). Reconcile follows the running
    trials from the recipe at that commit, and starts none of its trials: no job carries that commit."""
    import json

    from conftest import git
    from hubstub import JobScript
    from test_hf_backend import run

    hub.state.job_scripts += [JobScript(running=0.5, summary=_summary(x)) for x in (1.5, 1.2)]
    recipe = _sweep_workspace(workspace, 5, parallel=2)
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")[0] == 0
    path = workspace / recipe
    path.write_text(path.read_text().replace("training.seed: [1, 2]", "training.seed: [1, 2, 3]"))
    doc = json.loads((workspace / "runs" / "tiny-sft.json").read_text())
    git(workspace, "commit", "-qam", "a wider sweep")
    later = git(workspace, "rev-parse", "HEAD")
    for r in doc["runs"]:
        r["commit"] = later
    (workspace / "runs" / "tiny-sft.json").write_text(json.dumps(doc))
    said = []
    for _ in range(40):
        code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
        said.append(out)
        if all(r["state"] == "trained" for r in _runs(workspace)):
            break
        import time
        time.sleep(0.2)
    assert [r["state"] for r in _runs(workspace)] == ["trained", "trained"], said[-1]
    assert len(hub.state.jobs) == 2 and "no job shows the merge began this sweep" in said[-1]


@pytest.mark.parametrize("how", ["gate", "gguf"])
def test_a_winner_its_gate_rejects_or_whose_conversion_fails_says_so_in_its_table(hub, workspace, monkeypatch, capsys,
                                                                                how) -> None:
    """The sweep's table on the winner's record shows each trial's final state when the winner's run ends: a winner
    its own gate rejected (no GGUF job, main untouched) or whose conversion failed reads so, not `winner`/trained."""
    from hubstub import JobScript
    from test_hf_backend import run

    from runner import ledger, render, sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    losses = [2.5, 2.2, 2.1, 2.3] if how == "gate" else [1.5, 1.2, 0.9, 1.1]  # before: 2.0 (must drop)
    hub.state.job_scripts += [JobScript(running=0.3, summary=_summary(x)) for x in losses]
    hub.state.job_scripts.append(JobScript(end="ERROR", message="convert failed"))
    hub.commit(REPO, {"model.safetensors": b"an earlier model"})
    code, out = run(workspace, monkeypatch, capsys, "run", _sweep_workspace(workspace, 5, gate=how == "gate"),
                    "--backend", "hf")
    assert code == 1, out
    runs_ = _runs(workspace)
    winner = next(r for r in runs_ if r["sweep"])
    ended = "rejected" if how == "gate" else "failed"
    assert winner["state"] == ended and winner["evaluation"]["metrics"][0]["after"] == min(losses)
    rows = {t["run_id"]: t["state"] for t in winner["sweep"]["trials"]}
    assert rows == {r["run_id"]: r["state"] for r in runs_} and rows[winner["run_id"]] == ended
    comment = render.outcome_markdown("tiny-sft", ledger.RunRecord.model_validate(winner), "https://x")
    row = next(ln for ln in comment.split("**Sweep**", 1)[1].splitlines() if f"`{winner['run_id']}`" in ln)
    assert f"| winner, then {ended} |" in row and comment.count("winner") == comment.count("winner, then") == 1
    gguf = [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "gguf"]
    if how == "gate":
        # Rejected: nothing converted, and main still holds the earlier model (only the runs' job bundles arrived).
        assert not gguf and _model(hub.files(REPO)) == {"model.safetensors": b"an earlier model"}
    else:
        assert len(gguf) == 1


# --- a decided sweep stays decided, whatever its records say --------------------------------------------------

def _decided_sweep(hub, workspace: Path, monkeypatch, capsys, losses=(1.5, 1.2, 0.9, 1.1), *, gate: bool = False,
                   code: int = 0) -> tuple[Path, dict]:
    """A four-trial sweep run to its end on the Hub stand-in; its run file and that file's content."""
    import json

    from hubstub import JobScript
    from test_hf_backend import GGUF_SUMMARY, run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.state.job_scripts += [JobScript(running=0.3, summary=_summary(x)) for x in losses]
    hub.state.job_scripts += [JobScript(summary=GGUF_SUMMARY), JobScript(summary=GGUF_SUMMARY)]
    hub.commit(REPO, {"model.safetensors": b"an earlier model"})
    recipe = _sweep_workspace(workspace, 5, gate=gate)
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf")[0] == code
    path = workspace / "runs" / "tiny-sft.json"
    return path, json.loads(path.read_text())


def _best_loser(doc: dict) -> dict:
    return min((r for r in doc["runs"] if r["state"] == "rejected"),
               key=lambda r: r["train_summary"]["evaluation"]["metrics"][0]["after"])


def _loser_back_to_trained(hub, workspace, monkeypatch, capsys, path, doc) -> tuple[str, dict]:
    """The best loser's record edited back to `trained` with no gate verdict, then reconcile: it buys and publishes
    nothing. What reconcile said, and the loser's record after."""
    import json

    loser = _best_loser(doc)
    loser.update(state="trained", gate=None)
    path.write_text(json.dumps(doc))
    main, jobs = hub.history(REPO)[0][0], len(hub.state.jobs)
    said = _reconcile_until_done(workspace, monkeypatch, capsys)
    assert len(hub.state.jobs) == jobs and hub.history(REPO)[0][0] == main, said
    return said, next(r for r in _runs(workspace) if r["run_id"] == loser["run_id"])


def test_edited_summaries_cannot_make_a_loser_win_a_decided_sweep(hub, workspace, monkeypatch, capsys) -> None:
    """After the sweep was recorded, a merged pull request worsens the winner's recorded summary and sets the best
    loser back to `trained` with no gate verdict. The sweep is judged by the summaries its training jobs wrote, read
    again from the backend: reconcile rejects the loser again; no job, main untouched."""

    path, doc = _decided_sweep(hub, workspace, monkeypatch, capsys)
    winner = next(r for r in doc["runs"] if r["state"] == "recorded")
    winner["train_summary"]["evaluation"]["metrics"][0]["after"] = 9.0
    said, again = _loser_back_to_trained(hub, workspace, monkeypatch, capsys, path, doc)
    assert again["state"] == "rejected" and again["gate"]["reasons"][0].startswith(f"lost the sweep to trial "
                                                                                   f"{winner['trial']}"), said


def test_a_sweep_whose_conversion_was_bought_publishes_and_converts_no_other_trial(hub, workspace, monkeypatch,
                                                                                   capsys) -> None:
    """The winner's summary is gone from the Hub (so the numbers now pick another trial) and the best loser's record
    says `trained`: the winner's GGUF job on the backend says the sweep was decided. Nothing is published or
    converted; the loser is rejected again, naming that decision."""

    path, doc = _decided_sweep(hub, workspace, monkeypatch, capsys)
    winner = next(r for r in doc["runs"] if r["state"] == "recorded")
    train = winner["configs"]["train"]
    hub.commit(train["summary_repo"], {}, deleted=(train["summary_repo_path"],))
    said, again = _loser_back_to_trained(hub, workspace, monkeypatch, capsys, path, doc)
    assert again["state"] == "rejected", said
    assert f"decided earlier: trial {winner['trial']}'s GGUF conversion is on the backend" in \
        again["gate"]["reasons"][0]


def test_a_winners_gate_is_judged_again_not_read_from_its_record(hub, workspace, monkeypatch, capsys) -> None:
    """A winner its gate rejected (every trial's loss rose), its record edited back to `trained` with no gate rule
    and no verdict: the gate is judged again from the recipe's rule and the numbers its job wrote, and rejects it
    again. No GGUF job, main untouched."""
    import json

    path, doc = _decided_sweep(hub, workspace, monkeypatch, capsys, (2.5, 2.2, 2.1, 2.3), gate=True, code=1)
    winner = next(r for r in doc["runs"] if r["sweep"])
    assert winner["state"] == "rejected"
    winner.update(state="trained", gate=None, gate_rule=None)
    path.write_text(json.dumps(doc))
    main = hub.history(REPO)[0][0]
    said = _reconcile_until_done(workspace, monkeypatch, capsys)
    assert not [j for j in hub.state.jobs.values() if j.spec["labels"]["stage"] == "gguf"], said
    assert hub.history(REPO)[0][0] == main and _model(hub.files(REPO)) == {"model.safetensors": b"an earlier model"}
    again = next(r for r in _runs(workspace) if r["run_id"] == winner["run_id"])
    assert again["state"] == "rejected" and not again["gate"]["passed"], said


# --- a sweep whose recipe names a Hub ref -----------------------------------------------------------------------

NAMED_SWEEP = """\
name: hub-sweep
base_model: acme/base
method: sft
dataset: {path: acme/chats, revision: main}
training:
  max_steps: 2
gguf:
  enabled: false
sweep:
  grid:
    training.learning_rate: [1e-4, 2e-4]
  parallel: PARALLEL
hardware: t4-small
timeout: 1h
budget_usd: 5
"""


def _named_sweep(hub, workspace: Path, monkeypatch, parallel: int) -> str:
    """A two-trial sweep over the dataset's `main` (a branch: each commit it points at is a version of its own)."""
    from conftest import SFT_ROWS, git
    from hubstub import JobScript

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.state.models["acme/base"] = {"params": 5_000_000}
    hub.state.datasets["acme/chats"] = {("default", "train"): SFT_ROWS}
    hub.state.job_scripts += [JobScript(running=0.5, summary=_summary(x)) for x in (1.5, 1.2, 1.1, 1.0)]
    (workspace / "recipes" / "hub-sweep.yaml").write_text(NAMED_SWEEP.replace("PARALLEL", str(parallel)))
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "a sweep over a named ref")
    return "recipes/hub-sweep.yaml"


def _named_runs(workspace: Path) -> list[dict]:
    import json

    return json.loads((workspace / "runs" / "hub-sweep.json").read_text())["runs"]


def test_a_sweep_over_a_named_ref_is_finished_by_reconcile_on_the_commit_it_began(hub, workspace, monkeypatch,
                                                                                   capsys) -> None:
    """The merge resolves the dataset's `main` once for the sweep and starts one trial; the ref moves; reconcile
    takes the commit from the trials' records, finds its own trials (their versions count that commit), starts the
    held-back trial on the same commit and decides. Two training jobs, both on the first commit."""
    import time

    from test_hf_backend import run

    recipe = _named_sweep(hub, workspace, monkeypatch, parallel=1)
    first = hub.head("dataset", "acme/chats")
    code, out = run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")
    assert code == 0 and len(hub.state.jobs) == 1, out
    hub.move("dataset", "acme/chats")
    said = []
    for _ in range(60):
        code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
        said.append(out)
        assert code == 0, out
        runs_ = _named_runs(workspace)
        if len(runs_) == 2 and all(r["state"] in ("recorded", "rejected") for r in runs_):
            break
        time.sleep(0.2)
    runs_ = _named_runs(workspace)
    assert sorted(r["state"] for r in runs_) == ["recorded", "rejected"], said[-1]
    assert {r["dataset_revision"] for r in runs_} == {first} and len(hub.state.jobs) == 2
    configs = [j.spec["environment"]["RUNNER_JOB_CONFIG"] for j in hub.state.jobs.values()]
    assert all(first in c for c in configs)


def test_a_named_ref_moving_mid_sweep_retrains_no_trial(hub, workspace, monkeypatch, capsys) -> None:
    """Both trials train; the dataset's `main` moves; the train workflow runs again: the sweep goes on with the
    commit its unfinished trials recorded, and nothing is trained twice."""
    import time

    from test_hf_backend import run

    recipe = _named_sweep(hub, workspace, monkeypatch, parallel=2)
    first = hub.head("dataset", "acme/chats")
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")[0] == 0
    time.sleep(1.0)
    hub.move("dataset", "acme/chats")
    code, out = run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")
    assert code == 0 and len(hub.state.jobs) == 2, out
    runs_ = _named_runs(workspace)
    assert len(runs_) == 2 and {r["dataset_revision"] for r in runs_} == {first}


def test_trials_naming_different_commits_are_refused_by_reconcile(hub, workspace, monkeypatch, capsys) -> None:
    """A merged pull request edits one trial's record to another commit of the dataset: the sweep's trials no longer
    agree on what they train on, and reconcile refuses the sweep in one line, starting nothing."""
    import json

    from test_hf_backend import run

    recipe = _named_sweep(hub, workspace, monkeypatch, parallel=1)
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")[0] == 0
    other = hub.move("dataset", "acme/chats")
    path = workspace / "runs" / "hub-sweep.json"
    doc = json.loads(path.read_text())
    doc["runs"].append(doc["runs"][0] | {"run_id": "20990101-000000-abcdef", "trial": "0" * 8,
                                         "dataset_revision": other, "state": "planned", "jobs": {}})
    path.write_text(json.dumps(doc))
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    lines = [ln for ln in out.splitlines() if "name different commits of its Hub inputs" in ln]
    assert len(lines) == 1 and "runs/hub-sweep.json" in lines[0], out
    assert len(hub.state.jobs) == 1 and "Traceback" not in out


# --- stopping a sweep -------------------------------------------------------------------------------------------

def test_runner_cancel_stops_every_unfinished_trial_and_reconcile_starts_none(hub, workspace, monkeypatch,
                                                                             capsys) -> None:
    """`runner cancel RECIPE` of a sweep cancels every trial that trains (not only the newest run); neither reconcile
    nor the train workflow run again starts any of the trials `parallel` held back: the sweep ends with no winner."""
    from hubstub import JobScript
    from test_hf_backend import run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.state.job_scripts += [JobScript(running=30.0, summary=_summary(x)) for x in (1.5, 1.2, 0.9, 1.1)]
    recipe = _sweep_workspace(workspace, 5, parallel=2)
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")[0] == 0
    assert len(hub.state.jobs) == 2
    code, out = run(workspace, monkeypatch, capsys, "cancel", "tiny-sft")
    assert code == 0 and len([ln for ln in out.splitlines() if ln.startswith("tiny-sft: run ")
                              and ln.endswith(" canceled")]) == 2, out
    assert [r["state"] for r in _runs(workspace)] == ["canceled", "canceled"]
    assert {j.stage for j in hub.state.jobs.values()} == {"CANCELED"}
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    assert code == 0 and len(hub.state.jobs) == 2, out
    code, out = run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")
    assert code == 1 and "the sweep is stopped: it ends with no winner" in out and len(hub.state.jobs) == 2, out


def test_reconcile_starts_no_trial_once_a_trials_job_was_canceled_on_the_backend(hub, workspace, monkeypatch,
                                                                                capsys) -> None:
    """One trial's job is canceled on the Hub (its record still says `training`): the backend says the sweep was
    stopped, so reconcile follows the trials that run, records the canceled one, and starts no other. The sweep then
    ends with no winner: the trial waiting for its decision is rejected; nothing is published or converted."""
    import time

    from hubstub import JobScript
    from test_hf_backend import run

    from runner import sweeprun

    monkeypatch.setattr(sweeprun, "POLL_SECONDS", 0.2)
    hub.state.job_scripts += [JobScript(running=0.5, summary=_summary(x)) for x in (1.5, 1.2, 0.9, 1.1)]
    recipe = _sweep_workspace(workspace, 5, parallel=2)
    assert run(workspace, monkeypatch, capsys, "run", recipe, "--backend", "hf", "--detach")[0] == 0
    first = _runs(workspace)[0]["jobs"]["train"]["id"]
    hub.end_job(first, "CANCELED", "canceled by alice")
    said = []
    for _ in range(30):
        code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
        said.append(out)
        assert code == 0, out
        if all(r["state"] in ("canceled", "rejected") for r in _runs(workspace)):
            break
        time.sleep(0.2)
    runs_ = _runs(workspace)
    assert [r["state"] for r in runs_] == ["canceled", "rejected"], said[-1]
    assert "the sweep is stopped" in runs_[1]["gate"]["reasons"][0] and "the sweep is stopped" in said[-1]
    main = hub.history(REPO)[0][0]
    code, out = run(workspace, monkeypatch, capsys, "reconcile", "--backend", "hf")
    assert code == 0 and len(hub.state.jobs) == 2 and hub.history(REPO)[0][0] == main, out
