"""`runner inspect`: bounded samples, structure-aware verdicts per method, and the Hub viewer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl
from hubstub import HubStub

from runner import sampling

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def inspect_rows(cli, tmp_path: Path, rows: list[dict], *extra: str) -> tuple[int, dict]:
    write_jsonl(tmp_path / "d.jsonl", rows)
    result = cli("inspect", "d.jsonl", "--json", *extra, cwd=tmp_path)
    assert result.err == ""
    return result.code, json.loads(result.out)


# (rows, method, status, reason fragment, mapping)
CASES = {
    "messages": ([{"messages": [S("be brief"), U("hi"), A("hello")]}] * 3, "sft", "ready",
                 "found 'messages' column with conversation format", None),
    "text": ([{"text": "Once upon a time."}] * 3, "sft", "ready", "found 'text' column", None),
    "prompt completion": ([{"prompt": "2+2?", "completion": "4"}] * 3, "sft", "ready",
                          "prompt-completion format", None),
    "sharegpt": ([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}] * 3, "sft",
                 "needs_mapping", "ShareGPT", {"conversations": "messages"}),
    "question answer": ([{"question": "2+2?", "answer": "4"}] * 3, "sft", "needs_mapping", "question -> prompt",
                        {"question": "prompt", "answer": "completion"}),
    "conversation alias": ([{"chat": [U("hi"), A("yo")]}] * 2, "sft", "needs_mapping", "'chat' holds conversations",
                           {"chat": "messages"}),
    "bad role": ([{"messages": [U("hi"), {"role": "bot", "content": "yo"}]}], "sft", "incompatible",
                 "unknown message role 'bot'", None),
    "empty turn": ([{"messages": [U("hi"), A("yo")]}, {"messages": [U("  "), A("yo")]}], "sft", "incompatible",
                   "row 2: 'messages': empty user turn", None),
    "ends with user": ([{"messages": [U("hi"), A("yo"), U("and?")]}], "sft", "incompatible",
                       "does not end with an assistant turn", None),
    "two users in a row": ([{"messages": [U("hi"), U("hi again"), A("yo")]}], "sft", "incompatible",
                           "two 'user' turns in a row", None),
    "starts with assistant": ([{"messages": [A("yo"), U("hi"), A("ok")]}], "sft", "incompatible",
                              "starts with a 'assistant' turn", None),
    "mixed prompt types": ([{"prompt": "x", "completion": [A("y")]}], "sft", "incompatible",
                           "must both be strings or both message lists", None),
    "nothing usable": ([{"foo": 1, "bar": 2}], "sft", "incompatible", "no 'messages', 'text'", None),
    "dpo explicit strings": ([{"prompt": "p", "chosen": "good", "rejected": "bad"}] * 2, "dpo", "ready",
                             "explicit prompt, string preferences", None),
    "dpo implicit conversational": ([{"chosen": [U("q"), A("good")], "rejected": [U("q"), A("bad")]}] * 2, "dpo",
                                    "ready", "implicit prompt", None),
    "dpo implicit no shared prompt": ([{"chosen": [U("q1"), A("good")], "rejected": [U("q2"), A("bad")]}], "dpo",
                                      "incompatible", "share no prompt turns", None),
    "dpo mixed string and list": ([{"prompt": "p", "chosen": "good", "rejected": [A("bad")]}], "dpo",
                                  "incompatible", "must both be strings or both message lists", None),
    "dpo prompt type mismatch": ([{"prompt": [U("p")], "chosen": "good", "rejected": "bad"}], "dpo",
                                 "incompatible", "'prompt' must be a string", None),
    "dpo identical": ([{"prompt": "p", "chosen": "same", "rejected": "same"}], "dpo", "incompatible",
                      "row 1: 'chosen' and 'rejected' are identical", None),
    "dpo aliases": ([{"question": "p", "response_j": "good", "response_k": "bad"}], "dpo", "needs_mapping",
                    "question -> prompt", {"question": "prompt", "response_j": "chosen", "response_k": "rejected"}),
    "dpo empty chosen": ([{"prompt": "p", "chosen": "", "rejected": "bad"}], "dpo", "incompatible",
                         "row 1: empty 'chosen'", None),
    "grpo string prompt": ([{"prompt": "2+2?", "answer": "4"}] * 2, "grpo", "ready",
                           "plain-text prompts; answer passed to reward functions", None),
    "grpo conversational": ([{"prompt": [S("x"), U("2+2?")]}], "grpo", "ready", "conversational prompts", None),
    "grpo prompt ends with assistant": ([{"prompt": [U("2+2?"), A("4")]}], "grpo", "incompatible",
                                        "ends with an assistant turn", None),
    "grpo question": ([{"question": "2+2?"}], "grpo", "needs_mapping", "map it to 'prompt'", {"question": "prompt"}),
    "grpo messages only": ([{"messages": [U("hi"), A("yo")]}], "grpo", "incompatible", "split off the prompt", None),
    "kto ready": ([{"prompt": "p", "completion": "c", "label": True}], "kto", "ready", "boolean 'label'", None),
    "kto string label": ([{"prompt": "p", "completion": "c", "label": "yes"}], "kto", "incompatible",
                         "'label' must be true or false", None),
    "kto paired": ([{"prompt": "p", "chosen": "a", "rejected": "b"}], "kto", "incompatible",
                   "unpair_preference_dataset", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_verdicts(cli, tmp_path: Path, case: str) -> None:
    rows, method, status, fragment, mapping = CASES[case]
    code, doc = inspect_rows(cli, tmp_path, rows)
    assert code == 0
    verdict = doc["methods"][method]
    assert verdict["status"] == status, verdict
    assert fragment in verdict["reason"], verdict["reason"]
    assert verdict["mapping"] == mapping


def test_json_shape(cli, tmp_path: Path) -> None:
    code, doc = inspect_rows(cli, tmp_path, [{"text": "a"}, {"text": "b"}])
    assert {"dataset", "split", "rows", "columns", "methods"} <= set(doc)
    assert doc["dataset"] == "d.jsonl" and doc["split"] == "train" and doc["rows"] == 2
    assert doc["columns"] == ["text"]
    assert set(doc["methods"]) == {"sft", "dpo", "grpo", "kto"}
    for verdict in doc["methods"].values():
        assert set(verdict) == {"status", "reason", "mapping"}


def test_method_flag_sets_exit_code_and_text_output(cli, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    ready = cli("inspect", "d.jsonl", "--method", "grpo", cwd=tmp_path)
    assert ready.code == 1  # needs mapping is not ready
    assert "GRPO: NEEDS_MAPPING - " in ready.out and "mapping: question -> prompt" in ready.out
    assert "SFT:" not in ready.out
    write_jsonl(tmp_path / "e.jsonl", [{"text": "hello"}])
    assert cli("inspect", "e.jsonl", "--method", "sft", cwd=tmp_path).code == 0


def test_csv_json_array_and_parquet(cli, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text('prompt,completion\n"a, b",c\nd,"e\nf"\n', encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "p", "chosen": "x", "rejected": "y"}] * 5))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["p"] * 1000, "answer": ["1"] * 1000}), tmp_path / "d.parquet",
                   row_group_size=100)
    csv_doc = json.loads(cli("inspect", "d.csv", "--json", cwd=tmp_path).out)
    assert csv_doc["rows"] == 2 and csv_doc["methods"]["sft"]["status"] == "ready"
    json_doc = json.loads(cli("inspect", "d.json", "--json", cwd=tmp_path).out)
    assert json_doc["rows"] == 5 and json_doc["methods"]["dpo"]["status"] == "ready"
    pq_doc = json.loads(cli("inspect", "d.parquet", "--json", cwd=tmp_path).out)
    assert pq_doc["rows"] == 1000 and pq_doc["rows_exact"] is True
    assert pq_doc["sample_size"] == sampling.SAMPLE_ROWS
    assert pq_doc["methods"]["grpo"]["status"] == "ready"


def test_sample_is_bounded_and_large_counts_are_estimated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": "x" * 20}] * 5000)
    exact = sampling.sample_file(path)
    assert len(exact.rows) == sampling.SAMPLE_ROWS and exact.num_rows == 5000 and exact.rows_exact
    monkeypatch.setattr(sampling, "EXACT_COUNT_BYTES", 1000)
    estimated = sampling.sample_file(path)
    assert not estimated.rows_exact and 4500 <= estimated.num_rows <= 5500


def test_json_array_read_incrementally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"text": f"row {i}"} for i in range(3000)]))
    monkeypatch.setattr(sampling, "SMALL_FILE_BYTES", 100)
    sample = sampling.sample_file(path)
    assert [r["text"] for r in sample.rows[:2]] == ["row 0", "row 1"]
    assert len(sample.rows) == sampling.SAMPLE_ROWS and sample.num_rows is None


@pytest.mark.parametrize("name,content,fragment", [
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', "bad.jsonl:2: not valid JSON"),
    ("list.jsonl", '{"text": "a"}\n[1, 2]\n', "list.jsonl:2: each line must be a JSON object"),
    ("nohead.csv", "", "nohead.csv: CSV file has no header row"),
    ("extra.csv", "a,b\n1,2,3\n", "extra.csv:2: more fields than the header has"),
    ("broken.parquet", "PAR1 not really", "broken.parquet: not a readable Parquet file"),
    ("open.json", '[{"text": "a"}, {"text": ', "open.json: not valid JSON"),
    ("d.txt", "hello", "unsupported file type '.txt'"),
])
def test_broken_files_give_one_line(cli, tmp_path: Path, name: str, content: str, fragment: str) -> None:
    (tmp_path / name).write_text(content)
    result = cli("inspect", name, cwd=tmp_path)
    assert result.code == 1
    assert result.err.startswith("error: ") and fragment in result.err and result.err.count("\n") == 1, result.err


def test_missing_local_file(cli, tmp_path: Path) -> None:
    result = cli("inspect", "nope.jsonl", cwd=tmp_path)
    assert result.code == 1 and "nope.jsonl: file not found" in result.err


# --- Hub datasets through the viewer stand-in ---------------------------------------------------


def test_hub_dataset_via_viewer(cli, tmp_path: Path, hub: HubStub, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(150)]
    hub.state.datasets["org/prefs"] = {("default", "train"): rows, ("default", "test"): rows[:10]}
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value_for_tests_only")
    result = cli("inspect", "org/prefs", "--json", cwd=tmp_path)
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["rows"] == 150 and doc["config"] == "default" and doc["source"] == "viewer"
    assert doc["sample_size"] == 100
    assert doc["methods"]["dpo"]["status"] == "ready"
    first = next(r for r in hub.state.requests if r.path == "/first-rows")
    assert first.query == {"dataset": ["org/prefs"], "config": ["default"], "split": ["train"]}
    assert first.headers.get("authorization") == "Bearer hf_secret_token_value_for_tests_only"
    assert "hf_secret" not in result.out + result.err
    assert all("hf_secret" not in json.dumps(r.query) for r in hub.state.requests)


def test_hub_dataset_picks_config_with_split(cli, tmp_path: Path, hub: HubStub) -> None:
    hub.state.datasets["org/multi"] = {("en", "train"): [{"text": "a"}], ("fr", "validation"): [{"text": "b"}]}
    doc = json.loads(cli("inspect", "org/multi", "--split", "validation", "--json", cwd=tmp_path).out)
    assert doc["config"] == "fr" and doc["rows"] == 1
    missing = cli("inspect", "org/multi", "--split", "nope", cwd=tmp_path)
    assert missing.code == 1 and "no split 'nope' (available: en/train, fr/validation)" in missing.err


def test_hub_dataset_not_found(cli, tmp_path: Path, hub: HubStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")  # without a token, the message says to set one
    result = cli("inspect", "org/missing", cwd=tmp_path)
    assert result.code == 1
    assert "org/missing: dataset not found or not accessible (private or gated? set HF_TOKEN)" in result.err


def test_viewer_failure_falls_back_to_streaming_with_clear_error(cli, tmp_path: Path, hub: HubStub) -> None:
    hub.state.datasets["org/x"] = {("default", "train"): [{"text": "a"}]}
    hub.state.faults["/splits"] = [503]
    result = cli("inspect", "org/x", cwd=tmp_path)
    # Streaming is the fallback; offline in tests, it fails, and says why in one line.
    assert result.code == 1 and result.err.count("\n") == 1
    assert "dataset viewer answered 503 on /splits" in result.err and "streaming failed" in result.err


def test_offline_hub_dataset(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("inspect", "org/x", cwd=tmp_path)
    assert result.code == 1 and "cannot be sampled offline" in result.err
