"""Evaluation without training: held-out rows, recipe fields, the plan's eval time, benchmark wiring, display.

The runs that really evaluate (base vs tuned, for SFT, DPO and GRPO) are in test_run_local.py.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, load_job, train_summary_json, write_jsonl, write_recipe

from runner import card, jobspec, plan, planning, recipe, render
from runner.evaluation import Evaluation
from runner.ledger import RunRecord
from runner.summaries import TrainSummary

JOB = ROOT / "runner" / "jobs" / "train.py"


@pytest.fixture(scope="module")
def job():
    """runner/jobs/train.py as a module (it is a script, not part of the package)."""
    return load_job("train")


def rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"{i + 1}."}]} for i in range(n)]


def job_config(job, path: Path, seed: int = 7, **ours):
    """A training job's config, parsed as the job parses it (runner/jobs/train.py parse_config)."""
    return job.parse_config({"run_id": "t", "method": "sft", "model_name_or_path": "m", "dataset_name": str(path),
                             "dataset_train_split": "train", "num_train_epochs": 1, "learning_rate": 1e-3,
                             "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_length": 64,
                             "seed": seed, "output_dir": "out", "summary_path": "out/s.json",
                             "evaluation": {"max_rows": 20, "samples": 3}, **ours})


def test_held_out_rows_are_seeded_capped_and_never_trained_on(job, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(400))
    config = job_config(job, path, eval_fraction=0.02)
    data = job.load_data(config.job)
    train, held, where = job.split_held_out(config, data)
    assert len(held) == 8 and len(train) == 392  # 2% of 400
    questions = lambda d: [r["messages"][0]["content"] for r in d]  # noqa: E731
    assert not set(questions(held)) & set(questions(train))
    assert set(questions(held)) | set(questions(train)) == set(questions(data))
    again = job.split_held_out(config, data)[1]
    assert questions(again) == questions(held)  # same seed, same rows
    other = job.split_held_out(job_config(job, path, seed=8, eval_fraction=0.02), data)[1]
    assert questions(other) != questions(held)
    assert "never trained on" in where

    config = job_config(job, path, eval_fraction=0.3)  # 120 rows, capped at max_rows
    assert len(job.split_held_out(config, data)[1]) == 20
    config = job_config(job, path, eval_fraction=0.0)  # off
    train, held, _ = job.split_held_out(config, data)
    assert held is None and len(train) == 400


def test_planner_and_job_hold_out_the_same_number_of_rows(job) -> None:
    for n in (0, 1, 5, 9, 10, 40, 96, 400, 10_000, 1_000_000):
        for fraction in (0.0, 0.01, 0.02, 0.2, 0.5):
            for cap, samples in ((256, 3), (5, 0), (1000, 10)):
                held = plan.held_out_rows(n, fraction, cap, samples)
                assert held == job.held_out_rows(n, fraction, cap, samples)
                assert 0 <= held <= min(cap, max(n - 1, 0))
    assert plan.held_out_rows(96, 0.02, 256, 3) == 3  # enough for the samples on the tiny example


def test_eval_split_of_a_local_file_is_a_slice_of_it(job, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(50))
    config = job_config(job, path, dataset_train_split="train[:80%]", dataset_test_split="train[80%:]")
    data = job.load_data(config.job)
    train, held, where = job.split_held_out(config, data)
    assert len(train) == 40 and len(held) == 10 and where == "split train[80%:]"
    assert held[0]["messages"][0]["content"] == "What is 40 + 1?"
    config = job_config(job, path, dataset_train_split="train[:80%]", dataset_test_split="validation")
    with pytest.raises(job.JobError, match="split validation"):
        job.split_held_out(config, data)


def test_sample_prompts_per_data_format(job) -> None:
    chat = rows(1)[0] | {"messages": [{"role": "system", "content": "Be brief."}] + rows(1)[0]["messages"]}
    prompt, reference = job.prompt_of(chat)
    assert [m["role"] for m in prompt] == ["system", "user"] and reference == "1."
    assert job.prompt_of({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) == ("2+2?", "4")
    assert job.prompt_of({"prompt": "2+2?", "answer": "4"}) == ("2+2?", "4")
    assert job.prompt_of({"prompt": [{"role": "user", "content": "hi"}],
                          "completion": [{"role": "assistant", "content": "hello"}]})[1] == "hello"
    assert job.prompt_of({"text": "abcdef"}) == ("abc", "def")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "examples" / "tiny-model")
    rendered = job.render_prompt(tok, prompt)
    assert rendered == tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("extra,line,message", [
    ("  eval_split: test\n  eval_fraction: 0.1\n", 5, "set eval_split or eval_fraction, not both"),
    ("  eval_split: train\n", 5, "is the training split"),
    ("  eval_fraction: 0.9\n", 6, "less than or equal to 0.5"),
])
def test_held_out_recipe_fields_are_checked(repo: Path, cli, extra: str, line: int, message: str) -> None:
    write_recipe(repo, "r", "base_model: ./models/tiny\nmethod: sft\ndataset:\n  path: data/sft.jsonl\n" + extra)
    res = cli("validate", "recipes/r.yaml", cwd=repo)
    assert res.code == 1
    assert re.search(rf"recipes/r.yaml:\d+:\d+: .*{re.escape(message)}", res.out + res.err), res.out + res.err


def test_evaluation_section_is_checked(repo: Path, cli) -> None:
    write_recipe(repo, "r", "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n"
                            "evaluation:\n  tasks: [gsm8k, 'rm -rf']\n  samples: 5\n")
    res = cli("validate", "recipes/r.yaml", cwd=repo)
    assert res.code == 1
    assert "recipes/r.yaml:5:" in res.out + res.err and "'rm -rf' is not a task name" in res.out + res.err
    write_recipe(repo, "r", "base_model: ./models/tiny\nmethod: sft\ndataset: data/sft.jsonl\n"
                            "evaluation:\n  tasks: [gsm8k, ifeval]\n  task_limit: 50\n  every_steps: 100\n")
    assert cli("validate", "recipes/r.yaml", cwd=repo).code == 0


def test_plan_prices_evaluation_in_the_training_job(repo: Path, cli) -> None:
    # One flavor for all three (left to itself, the planner moves benchmark-heavy runs to a GPU).
    base = "base_model: Qwen/Qwen3-0.6B\nmethod: sft\ndataset: data/sft.jsonl\nbudget_usd: 50\nhardware: a10g-small\n"
    write_recipe(repo, "plain", base)
    write_recipe(repo, "bench", base + "evaluation:\n  tasks: [gsm8k, ifeval]\n  task_limit: 200\n")
    write_recipe(repo, "off", base.replace("dataset: data/sft.jsonl\n",
                                           "dataset:\n  path: data/sft.jsonl\n  eval_fraction: 0\n"))
    res = cli("plan", "recipes/plain.yaml", "recipes/bench.yaml", "recipes/off.yaml", "--json", cwd=repo)
    plans = {p["name"]: p for p in json.loads(res.out)["plans"]}
    plain, bench, off = plans["plain"], plans["bench"], plans["off"]
    assert off["eval_hours"] == 0 and off["eval_rows"] == 0
    assert plain["eval_rows"] == 3 and 0 < plain["eval_hours"] < plain["hours"]  # 2% of 40 rows is 1; samples need 3
    assert bench["eval_hours"] > plain["eval_hours"] + 0.01  # generating answers to 400 benchmark prompts
    assert bench["flavor"] == plain["flavor"]
    assert bench["hours"] - plain["hours"] == pytest.approx(bench["eval_hours"] - plain["eval_hours"], abs=1e-3)
    assert bench["train_cost_usd"] > plain["train_cost_usd"] >= off["train_cost_usd"]  # paid in the training job
    text = cli("plan", "recipes/bench.yaml", cwd=repo).out
    assert "incl. evaluation" in text


def test_benchmark_harness_wiring(job, tmp_path: Path) -> None:
    header = JOB.read_text().split("# ///", 2)[1]
    assert re.search(r'"lm-eval\[ifeval\][^"]*"', header), "lm-eval must be a PEP 723 dependency of train.py"
    config = job_config(job, tmp_path / "d.jsonl", seed=3, model_name_or_path="Qwen/Qwen3-0.6B",
                        output_dir=str(tmp_path / "model"), evaluation={"tasks": ["gsm8k", "ifeval"], "task_limit": 25})
    full = job.harness_kwargs(config, adapter=False, chat=True)
    assert full["model"] == "hf" and full["model_args"]["pretrained"] == str(tmp_path / "model")
    assert "peft" not in full["model_args"]
    assert full["tasks"] == ["gsm8k", "ifeval"] and full["limit"] == 25 and full["apply_chat_template"] is True
    assert full["random_seed"] == 3
    lora = job.harness_kwargs(config, adapter=True, chat=False)
    assert lora["model_args"]["pretrained"] == "Qwen/Qwen3-0.6B"
    assert lora["model_args"]["peft"] == str(tmp_path / "model")

    lm_eval = pytest.importorskip("lm_eval")
    accepted = set(inspect.signature(lm_eval.simple_evaluate).parameters)
    assert set(full) | {"task_manager"} <= accepted


def test_benchmark_results_become_scores(job) -> None:
    # The shape of lm-eval's simple_evaluate result (results per task, "metric,filter" keys).
    results = {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
                                     "exact_match_stderr,strict-match": 0.04, "exact_match,flexible-extract": 0.3,
                                     "exact_match_stderr,flexible-extract": 0.05}},
               "configs": {"gsm8k": {"dataset_path": "openai/gsm8k"}}}
    scores = job.benchmark_scores(results, 25)
    assert [(s["metric"], s["value"], s["stderr"]) for s in scores] == [
        ("exact_match (strict-match)", 0.25, 0.04), ("exact_match (flexible-extract)", 0.3, 0.05)]
    assert all(s["dataset"] == "openai/gsm8k" and s["limit"] == 25 for s in scores)


def summary_with_evaluation() -> dict:
    return train_summary_json(evaluation={
        "held_out": "0.02 of train held out by seed 42, never trained on", "rows": 3,
        "metrics": [{"name": "eval_loss", "before": 5.5, "after": 2.25},
                    {"name": "eval_mean_token_accuracy", "before": 0.1, "after": 0.5}],
        "samples": [{"prompt": "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n",
                     "reference": "2.", "base": "zz ```rm``` zz", "tuned": "1 + 1 = 2."}],
        "benchmarks": [{"task": "gsm8k", "metric": "exact_match (strict-match)", "value": 0.25, "stderr": 0.04,
                        "limit": 25, "dataset": "openai/gsm8k"}],
        "benchmark_error": None, "seconds": 1.5})


def test_card_comment_and_status_show_before_and_after(tmp_path: Path, cli) -> None:
    from huggingface_hub import ModelCard

    summary = TrainSummary.model_validate(summary_with_evaluation())
    ev = summary.evaluation
    assert isinstance(ev, Evaluation) and ev.phrase() == "eval loss 5.5 -> 2.25"
    # An unreadable evaluation is dropped: it must not cost the run its trained model.
    assert TrainSummary.model_validate(train_summary_json(evaluation={"rows": "many"})).evaluation is None
    assert TrainSummary.model_validate(train_summary_json()).evaluation is None

    (tmp_path / "recipes").mkdir()
    write_jsonl(tmp_path / "data" / "d.jsonl", rows(10))
    path = write_recipe(tmp_path, "ev", "base_model: Qwen/Qwen3-0.6B\nmethod: sft\ndataset: data/d.jsonl\n")
    loaded = recipe.load(path)
    plan = planning.plan_recipe(loaded, token=None, price_table=planning.prices(None))
    train = jobspec.train_config(loaded, plan, "r1", jobspec.Places(tmp_path / "m", tmp_path / "g", tmp_path),
                                 push=False).model_copy(update={"evaluation": recipe.Evaluation(max_new_tokens=64)})
    record = RunRecord(run_id="r1", recipe="recipes/ev.yaml", recipe_sha256="0" * 64, commit=None, backend="local",
                       state="recorded", train_summary=summary, evaluation=ev, cost_usd={"estimated": 0.01},
                       plan=plan, configs=jobspec.JobConfigs(train=train))
    text = card.build(record, has_plot=False)
    (tmp_path / "README.md").write_text(text)
    loaded_card = ModelCard.load(tmp_path / "README.md")
    results = {(r.metric_type, r.metric_value) for r in loaded_card.data.eval_results}
    assert {("eval_loss", 2.25), ("eval_mean_token_accuracy", 0.5), ("exact_match", 0.25)} <= results
    assert "model-index" in text
    body = loaded_card.text
    assert "## Evaluation" in body and "| eval loss | 5.5 | 2.25 | -3.25 |" in body
    assert "### Samples" in body and "at most 64 new tokens" in body and "1 + 1 = 2." in body
    assert "```rm```" not in body  # an answer cannot close the code fence
    assert "| gsm8k | exact_match (strict-match) | 0.25 ± 0.04 |" in body

    comment = render.outcome_markdown("ev", record, "https://github.com/o/r/blob/main")
    assert "| eval loss | 5.5 | 2.25 | -3.25 |" in comment
    assert "| token accuracy | 0.1 | 0.5 | +0.4 |" in comment

    runs = tmp_path / "runs" / "ev.json"
    runs.parent.mkdir()
    runs.write_text(json.dumps({"name": "ev", "runs": [record.model_dump(mode="json")]}))
    res = cli("status", cwd=tmp_path)
    assert res.code == 0 and "ev: recorded" in res.out and "eval loss 5.5 -> 2.25" in res.out


@pytest.mark.slow
def test_benchmark_harness_runs_alone_and_its_failure_is_recorded(job, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The real harness, called as a job calls it, on the example model: it gets as far as fetching the
    benchmark's data, which this machine cannot, and the failure lands in the evaluation, not in a crash."""
    pytest.importorskip("lm_eval")
    # As if inside a torchrun process: the harness process must not join that group (nor relaunch one).
    for var, value in {"WORLD_SIZE": "2", "RANK": "0", "RUNNER_NPROC": "2", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(var, value)
    tiny = str(ROOT / "examples" / "tiny-model")
    config = job_config(job, tmp_path / "d.jsonl", seed=1, model_name_or_path=tiny, output_dir=tiny,
                        evaluation={"tasks": ["gsm8k"], "task_limit": 2})
    evaluation = {"seconds": 1.0, "benchmarks": [], "benchmark_error": None}
    job.run_benchmarks(config, evaluation, adapter=False)
    assert evaluation["benchmarks"] == []
    assert "gsm8k" in evaluation["benchmark_error"] and "Offline" in evaluation["benchmark_error"]
    assert evaluation["seconds"] > 1.0
