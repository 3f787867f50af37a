"""The watcher (issue 20, item 4): runs record the Hub commits they trained on, and `runner watch` proposes
retraining, one pull request per recipe whose base model or Hub dataset moved since, never twice, never training.

Through the CLI against the Hub stand-in (HfApi model_info / dataset_info, commits moved with `hub.move`) and
the GitHub stand-in (branches, commits, pull requests, comments through PyGithub).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SFT_ROWS, git, train_summary_json
from hubstub import JobScript

GH_TOKEN = "test-only-not-a-token-github-watch"
HUB_CHAT = """\
# yaml-language-server: $schema=./schema.json
# A chat model on a Hub base and Hub data: the watcher follows both.
name: hub-chat
base_model: acme/base   # the Hub base
method: sft
dataset: acme/chats     # the Hub data
training:
  max_steps: 2
gguf:
  enabled: false
"""
HUB_BASE = """\
name: hub-base
base_model: acme/base
method: sft
dataset:
  path: data/sft.jsonl  # local data: only the base can move
training:
  max_steps: 2
gguf:
  enabled: false
"""


@pytest.fixture
def trained(hub, workspace: Path, cli) -> Path:
    """The workspace with two Hub-based recipes, each with a current model trained (scripted) on the stand-in."""
    hub.state.models["acme/base"] = {"params": 5_000_000}
    hub.state.datasets["acme/chats"] = {("default", "train"): SFT_ROWS}
    (workspace / "recipes" / "hub-chat.yaml").write_text(HUB_CHAT)
    (workspace / "recipes" / "hub-base.yaml").write_text(HUB_BASE)
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "hub recipes")
    for name in ("hub-chat", "hub-base"):
        hub.state.job_scripts.append(JobScript(summary=train_summary_json()))
        result = cli("run", f"recipes/{name}.yaml", "--backend", "hf", "--quiet", cwd=workspace)
        assert result.code == 0, result.err
    return workspace


@pytest.fixture
def gh(github, monkeypatch: pytest.MonkeyPatch):
    """The GitHub stand-in as this workflow's GitHub, with the workspace's recipes on main."""
    for key, value in {"GITHUB_API_URL": github.url, "GITHUB_TOKEN": GH_TOKEN,
                       "GITHUB_REPOSITORY": "acme/models"}.items():
        monkeypatch.setenv(key, value)
    return github


def runs(ws: Path, name: str) -> list[dict]:
    return json.loads((ws / "runs" / f"{name}.json").read_text())["runs"]


def watch(cli, ws: Path, gh) -> tuple[list[dict], str]:
    """Both halves of the workflow: look (Hub, read token) then open (GitHub, no Hub token)."""
    gh.state.commit("main", {p.relative_to(ws).as_posix(): p.read_bytes() for p in (ws / "recipes").glob("*.yaml")},
                    "recipes as in the checkout")
    out = ws.parent / "proposals.json"
    looked = cli("watch", "--out", str(out), cwd=ws)
    assert looked.code == 0, looked.err
    opened = cli("watch", "--open", str(out), cwd=ws)
    assert opened.code == 0, opened.err
    return json.loads(out.read_text())["proposals"], looked.out + opened.out


def watch_pulls(gh) -> list[dict]:
    return [p for p in gh.state.pulls.values() if p["head"]["ref"].startswith("watch/")]


def test_a_run_records_the_commits_it_trains_on_and_the_job_loads_exactly_those(hub, trained) -> None:
    chat, base = runs(trained, "hub-chat")[-1], runs(trained, "hub-base")[-1]
    assert chat["base_revision"] == hub.head("model", "acme/base") == "a" * 40
    assert chat["dataset_revision"] == hub.head("dataset", "acme/chats") == "d" * 40
    assert base["base_revision"] == "a" * 40 and base["dataset_revision"] is None  # local data: no revision
    configs = [json.loads(j.spec["environment"]["RUNNER_JOB_CONFIG"]) for j in hub.state.jobs.values()]
    by_recipe = {c["run_name"]: c for c in configs}
    assert by_recipe[chat["run_id"]]["model_revision"] == "a" * 40
    assert by_recipe[chat["run_id"]]["dataset_revision"] == "d" * 40
    assert by_recipe[base["run_id"]]["dataset_revision"] is None
    asked = [r.path for r in hub.state.requests if r.method == "GET"]
    assert "/api/datasets/acme/chats" in asked and "/api/models/acme/base" in asked


def test_a_local_run_records_no_revision(workspace, cli) -> None:
    result = cli("run", "recipes/tiny-sft.yaml", "--dry-run", "--json", cwd=workspace)
    assert result.code == 0, result.err
    config = json.loads(result.out)["jobs"][0]["config"]
    assert config["model_revision"] is None and config["dataset_revision"] is None


def test_nothing_moved_no_pull_request(hub, trained, gh, cli) -> None:
    found, out = watch(cli, trained, gh)
    assert found == [] and "nothing moved" in out
    assert watch_pulls(gh) == []


def test_one_pull_request_per_recipe_that_moved_never_twice_and_never_a_job(hub, trained, gh, cli) -> None:
    jobs_before, requests_before = len(hub.state.jobs), len(hub.state.requests)
    new_base = hub.move("model", "acme/base")
    found, out = watch(cli, trained, gh)
    assert sorted(p["name"] for p in found) == ["hub-base", "hub-chat"]
    pulls = watch_pulls(gh)
    assert len(pulls) == 2, out
    for pr in pulls:
        name = pr["head"]["ref"].removeprefix("watch/").rsplit("-", 1)[0]
        assert pr["head"]["ref"] == f"watch/{name}-{new_base[:8]}" and pr["state"] == "open"
        text = gh.state.file(pr["head"]["ref"], f"recipes/{name}.yaml").decode()
        assert f'base_model_revision: "{new_base}"' in text
        before = (trained / "recipes" / f"{name}.yaml").read_text()
        # A one-line diff: every line of the recipe kept, comments included.
        assert [ln for ln in text.splitlines() if ln not in before.splitlines()] == \
            [f'base_model_revision: "{new_base}"']
        assert "a" * 12 in pr["body"] and new_base[:12] in pr["body"]
        comments = gh.state.comments_on(pr["number"])
        assert len(comments) == 1 and comments[0]["body"].startswith("<!-- recipes-runner:plan -->")
        assert name in comments[0]["body"] and "$" in comments[0]["body"]  # what retraining would cost
    # Again: the same revisions are never proposed twice, and an unmoved dataset adds nothing.
    found, out = watch(cli, trained, gh)
    assert len(watch_pulls(gh)) == 2 and out.count("already proposed") == 2
    # It never trains: no job was created, no run recorded, nothing sent to the Jobs API.
    assert len(hub.state.jobs) == jobs_before
    assert {r.method for r in hub.state.requests[requests_before:]} == {"GET"}  # it only asks the Hub
    assert len(runs(trained, "hub-chat")) == 1 and len(runs(trained, "hub-base")) == 1
    assert GH_TOKEN not in out


def test_data_that_moved_is_pinned_in_the_dataset_shorthand(hub, trained, gh, cli) -> None:
    new_data = hub.move("dataset", "acme/chats")
    found, _ = watch(cli, trained, gh)
    assert [p["name"] for p in found] == ["hub-chat"]
    assert [(m["kind"], m["trained"], m["now"]) for m in found[0]["moved"]] == [("dataset", "d" * 40, new_data)]
    (pr,) = watch_pulls(gh)
    text = gh.state.file(pr["head"]["ref"], "recipes/hub-chat.yaml").decode()
    assert f'dataset: {{path: acme/chats, revision: "{new_data}"}}     # the Hub data' in text
    # The plan comment plans the pinned recipe: data pinned to main's head is sampled as main (the viewer).
    (comment,) = gh.state.comments_on(pr["number"])
    assert ":white_check_mark: hub-chat" in comment["body"] and "SFT: READY" in comment["body"]


def test_a_merged_proposal_is_not_proposed_again_while_it_retrains(hub, trained, gh, cli) -> None:
    hub.move("dataset", "acme/chats")
    watch(cli, trained, gh)
    for pr in watch_pulls(gh):  # merged: the checkout now pins the new commit, the current model is still the old
        name = pr["head"]["ref"].removeprefix("watch/").rsplit("-", 1)[0]
        path = f"recipes/{name}.yaml"
        (trained / path).write_text(gh.state.file(pr["head"]["ref"], path).decode())
        pr["state"] = "closed"
    gh.state.pulls = {}  # even with no pull request left to find, the pin says it is proposed
    found, out = watch(cli, trained, gh)
    assert found == [] and "nothing moved" in out


HUB_TAGGED = """\
name: hub-tagged
base_model: acme/base
base_model_revision: v2-stable   # the publisher's stable tag
method: sft
dataset: {path: acme/chats, revision: main}   # main by name: a branch too
training:
  max_steps: 2
gguf:
  enabled: false
"""


def test_a_named_tag_or_branch_is_kept_and_the_merge_trains_on_where_it_moved(hub, trained, gh, cli) -> None:
    tag, branch = hub.move("model", "acme/base", ref="v2-stable"), hub.head("dataset", "acme/chats")
    (trained / "recipes" / "hub-tagged.yaml").write_text(HUB_TAGGED)
    hub.state.job_scripts.append(JobScript(summary=train_summary_json()))
    assert cli("run", "recipes/hub-tagged.yaml", "--backend", "hf", "--quiet", cwd=trained).code == 0
    assert (runs(trained, "hub-tagged")[-1]["base_revision"], runs(trained, "hub-tagged")[-1]["dataset_revision"]) \
        == (tag, branch)
    new_tag, new_branch = hub.move("model", "acme/base", ref="v2-stable"), hub.move("dataset", "acme/chats")
    assert hub.head("model", "acme/base") == "a" * 40  # the base's main did not move: only its tag did
    found, _ = watch(cli, trained, gh)
    assert [(p["name"], [(m["ref"], m["now"]) for m in p["moved"]]) for p in found] == \
        [("hub-chat", [("main", new_branch)]), ("hub-tagged", [("v2-stable", new_tag), ("main", new_branch)])]
    (pr,) = [p for p in watch_pulls(gh) if p["head"]["ref"].startswith("watch/hub-tagged-")]
    text = gh.state.file(pr["head"]["ref"], "recipes/hub-tagged.yaml").decode()
    # The refs stay as named; the change is one comment line above each, saying which commit it moved to.
    assert [ln for ln in text.splitlines() if ln not in HUB_TAGGED.splitlines()] == [
        f"# runner watch: base_model_revision v2-stable moved to {new_tag}; merging retrains on it",
        f"# runner watch: dataset.revision main moved to {new_branch}; merging retrains on it"]
    assert len(text.splitlines()) == len(HUB_TAGGED.splitlines()) + 2
    assert new_tag[:12] in pr["body"] and "keeps the `v2-stable` and `main` the recipe names" in pr["body"]
    (comment,) = gh.state.comments_on(pr["number"])
    assert ":white_check_mark: hub-tagged" in comment["body"]
    # Merged: while it retrains, the comment says it is proposed; the run resolves the refs to their new commits.
    (trained / "recipes" / "hub-tagged.yaml").write_text(text)
    gh.state.pulls = {}
    assert [p["name"] for p in watch(cli, trained, gh)[0]] == ["hub-chat"]
    hub.state.job_scripts.append(JobScript(summary=train_summary_json()))
    assert cli("run", "recipes/hub-tagged.yaml", "--backend", "hf", "--quiet", cwd=trained).code == 0
    assert (runs(trained, "hub-tagged")[-1]["base_revision"], runs(trained, "hub-tagged")[-1]["dataset_revision"]) \
        == (new_tag, new_branch)
    # The tag moves again: the next proposal replaces the comment, the ref still as named.
    newest = hub.move("model", "acme/base", ref="v2-stable")
    _, out = watch(cli, trained, gh)
    assert f"watch/hub-tagged-{newest[:8]}" in out, out
    (pr,) = [p for p in watch_pulls(gh) if p["head"]["ref"] == f"watch/hub-tagged-{newest[:8]}"]
    again = gh.state.file(pr["head"]["ref"], "recipes/hub-tagged.yaml").decode()
    assert f"# runner watch: base_model_revision v2-stable moved to {newest}; merging retrains on it" in again
    assert new_tag not in again and "base_model_revision: v2-stable   # the publisher's stable tag" in again


def test_a_run_versioned_before_named_refs_counted_is_not_trained_again(hub, trained, cli) -> None:
    """A record from before a named ref's commits joined the version: a re-trigger on the same commits carries it
    on (nothing bought); once the tag moves, the version is new and trains."""
    from runner.recipe import load
    from runner.runs import recipe_version

    hub.move("model", "acme/base", ref="v2-stable")
    path = trained / "recipes" / "hub-tagged.yaml"
    path.write_text(HUB_TAGGED)
    hub.state.job_scripts.append(JobScript(summary=train_summary_json()))
    assert cli("run", "recipes/hub-tagged.yaml", "--backend", "hf", "--quiet", cwd=trained).code == 0
    record = trained / "runs" / "hub-tagged.json"
    doc = json.loads(record.read_text())
    assert doc["runs"][-1]["version"] != recipe_version(load(path))  # the tag's commit counts
    doc["runs"][-1]["version"] = recipe_version(load(path))  # as an older runner versioned it
    record.write_text(json.dumps(doc))
    jobs = len(hub.state.jobs)
    again = cli("run", "recipes/hub-tagged.yaml", "--backend", "hf", cwd=trained)
    assert again.code == 0 and "already has run" in again.err and len(hub.state.jobs) == jobs
    hub.move("model", "acme/base", ref="v2-stable")
    hub.state.job_scripts.append(JobScript(summary=train_summary_json()))
    assert cli("run", "recipes/hub-tagged.yaml", "--backend", "hf", "--quiet", cwd=trained).code == 0
    assert len(hub.state.jobs) == jobs + 1 and len(runs(trained, "hub-tagged")) == 2


def test_newer_revisions_supersede_the_open_proposal(hub, trained, gh, cli) -> None:
    hub.move("dataset", "acme/chats")
    watch(cli, trained, gh)
    newest = hub.move("dataset", "acme/chats")
    watch(cli, trained, gh)
    first, second = watch_pulls(gh)
    assert first["state"] == "closed" and second["state"] == "open"  # one open proposal per recipe: the newest
    assert second["head"]["ref"] == f"watch/hub-chat-{newest[:8]}"
    assert f"Superseded by #{second['number']}" in gh.state.comments_on(first["number"])[-1]["body"]


@pytest.mark.parametrize(("proposal", "why"), [
    ({"name": "hub-chat", "path": "recipes/hub-base.yaml", "run_id": "r1", "moved": []}, "not that recipe"),
    ({"name": "hub-base", "path": "recipes/hub-base.yaml", "run_id": "r1",
      "moved": [{"kind": "dataset", "repo": "evil/data", "ref": "main", "trained": "d" * 40, "now": "e" * 40}]},
     "does not train on"),
    ({"name": "hub-base", "path": "../outside.yaml", "run_id": "r1", "moved": []}, "not that recipe"),
])
def test_a_proposals_file_is_data_checked_against_the_checkout(trained, gh, cli, tmp_path, proposal, why) -> None:
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"proposals": [proposal]}))
    result = cli("watch", "--open", str(bad), cwd=trained)
    assert result.code == 1 and why in result.err and len(result.err.splitlines()) == 1
    assert watch_pulls(gh) == []


def test_a_record_names_only_commits_of_the_recipes_own_hub_inputs(trained) -> None:
    from runner.recipe import load
    from runner.revisions import Resolved, consistent

    base = load(trained / "recipes" / "hub-base.yaml")  # Hub model, local data
    assert consistent(base, Resolved(base_model="b" * 40)) is None
    assert "local dataset" in consistent(base, Resolved(base_model="b" * 40, dataset="d" * 40))
    pinned = (trained / "recipes" / "hub-base.yaml")
    pinned.write_text(HUB_BASE.replace("method:", f'base_model_revision: "{"c" * 40}"\nmethod:'))
    assert "the recipe pins cccccccccccc" in consistent(load(pinned), Resolved(base_model="b" * 40))
    assert consistent(load(pinned), Resolved(base_model="c" * 40)) is None


SHA = "1234567890" * 4  # all digits: must stay a string once written


@pytest.mark.parametrize(("before", "after"), [
    ("dataset:\n  path: org/d  # data\n  split: train\n",
     f'dataset:\n  path: org/d  # data\n  revision: "{SHA}"\n  split: train\n'),
    ("dataset: {path: org/d, split: train}\n", f'dataset: {{revision: "{SHA}", path: org/d, split: train}}\n'),
    ("dataset:\n  revision: 'v1'   # was a tag\n  path: org/d\n",
     f'dataset:\n  revision: "{SHA}"   # was a tag\n  path: org/d\n'),
    ("dataset: org/d", f'dataset: {{path: org/d, revision: "{SHA}"}}'),
])
def test_pinning_edits_one_value_and_keeps_the_rest(before: str, after: str) -> None:
    from runner.yamledit import set_values

    assert set_values(before, "recipes/x.yaml", {("dataset", "revision"): SHA}, {("dataset", "revision"): "path"}) \
        == after


def test_a_value_it_cannot_edit_safely_is_one_located_line() -> None:
    from runner.errors import UserError
    from runner.yamledit import set_values

    with pytest.raises(UserError, match=r"^recipes/x.yaml:2:13: dataset.revision: cannot set it") as e:
        set_values("dataset:\n  revision: >\n    v1\n  path: org/d\n", "recipes/x.yaml", {("dataset", "revision"): SHA})
    assert len(str(e.value).splitlines()) == 1


def test_an_edited_record_cannot_pick_the_revision_a_paid_job_loads(hub, trained, cli) -> None:
    # A merged pull request adds a planned run naming a revision for the recipe's local data file.
    path = trained / "runs" / "hub-base.json"
    doc = json.loads(path.read_text())
    edited = doc["runs"][-1] | {"run_id": "edited", "state": "planned", "jobs": {}, "dataset_revision": "e" * 40}
    doc["runs"].append(edited)
    path.write_text(json.dumps(doc))
    jobs = len(hub.state.jobs)
    result = cli("run", "recipes/hub-base.yaml", "--backend", "hf", "--quiet", cwd=trained)  # the merge's re-trigger
    assert result.code == 1 and "the record names a dataset revision for a local dataset; not submitting" in result.err
    assert len(hub.state.jobs) == jobs  # nothing bought


def test_a_base_the_hub_will_not_show_is_one_line_and_the_others_go_on(hub, trained, cli) -> None:
    hub.move("dataset", "acme/chats")
    hub.state.gated.add("acme/base")  # the read token may not see the base any more
    result = cli("watch", "--json", cwd=trained)
    assert result.code == 1 and "error: model acme/base: gated on the Hub" in result.err
    [proposal] = json.loads(result.out)
    assert proposal["name"] == "hub-chat" and [m["kind"] for m in proposal["moved"]] == ["dataset"]


def test_a_proposal_supersedes_only_its_own_recipes_branches() -> None:
    """Closing the older proposal of `qwen` must leave `qwen-chat`'s open."""
    from runner.watch import proposes_for

    assert proposes_for("watch/qwen-1234abcd", "qwen") and proposes_for("watch/qwen-1234abcd-89abcdef", "qwen")
    assert not proposes_for("watch/qwen-chat-1234abcd", "qwen")
    assert not proposes_for("watch/qwen-1234abcd", "qwen-chat") and not proposes_for("watch/qwen-", "qwen")
