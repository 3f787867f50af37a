"""`runner new`: write a recipe from a model and a dataset, checked the way the pull request checks it.

The recipe states what the person (or agent) asked for and only what the data or the
plan requires on top: the column mapping the dataset needs, a reward for GRPO, and
`adapter.lora: true` when a full fine-tune would not fit or not stay within the budget.
Hardware and timeout stay `auto`: the plan re-decides them from current prices every
time, which a pinned flavor would stop.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner import planning, recipe, yamlsafe
from runner.dataset import DatasetReport, from_sample, load_sample
from runner.errors import RecipeInvalid, UserError
from runner.plan import NO_OUTPUT, Plan

# Columns the built-in exact_answer reward can read as its `answer`, in order of preference.
ANSWER_ALIASES = ("answer", "solution", "ground_truth", "final_answer", "target")
# Recipe fields `runner new` fills from its arguments: a refusal names the argument too.
ARGUMENTS = {"name": "NAME", "base_model": "--model", "dataset": "--dataset", "training.epochs": "--epochs",
             "budget_usd": "--budget"}


@dataclass(frozen=True)
class NewRecipe:
    """What `runner new` wrote: the recipe's path (repo-relative), its plan, and what it decided."""

    path: str
    plan: Plan
    notes: list[str] = field(default_factory=list)


def new_recipe(root: Path, name: str, *, model: str, dataset: str, method: str = "sft", epochs: float | None = None,
               budget: float | None = None, token: str | None = None) -> NewRecipe:
    """Inspect, plan and validate a new recipe, then write recipes/NAME.yaml atomically; refuse to overwrite."""
    if not recipe.SLUG.match(name):
        raise UserError(f"NAME '{name}' is not a slug: use lowercase letters, digits and '-', e.g. support-bot")
    folder = root / "recipes"
    if not folder.is_dir():
        raise UserError(f"no recipes/ folder in {root}: run `runner new` from the repository root")
    target = folder / f"{name}.yaml"
    _refuse_existing(target)
    base_model = _model_ref(root, model)
    data_ref = _dataset_ref(root, dataset)
    try:
        sample = load_sample(data_ref, root=root, token=token)
    except UserError as e:
        raise UserError(f"--dataset {dataset}: cannot be read: {e}") from None

    notes: list[str] = []
    columns = _columns(from_sample(sample), method, dataset, notes)
    doc: dict[str, Any] = {"name": name, "base_model": base_model, "method": method,
                           "dataset": {"path": data_ref} | ({"columns": columns} if columns else {}),
                           "training": {"epochs": _number(epochs if epochs is not None else 1)}}
    if method == "grpo":
        doc["rewards"] = _rewards(sample.columns, columns, doc["dataset"], dataset, notes)
    if budget is not None:
        doc["budget_usd"] = _number(budget)

    header = [f"{method.upper()} of {base_model} on {data_ref}, written by `runner new`."]
    plan = _plan(doc, header, target, token)
    if not _writable(plan) and not plan.lora and plan.dataset.status == "ready":  # too big or too dear in full
        why = "a full fine-tune fits no flavor" if not plan.fits else \
            f"a full fine-tune (${plan.cost_usd:.2f}) is over the budget"
        pinned_header = header + [f"adapter.lora pinned to true: {why}."]
        pinned = _plan(doc | {"adapter": {"lora": True}}, pinned_header, target, token)
        if _writable(pinned):
            doc, header, plan = doc | {"adapter": {"lora": True}}, pinned_header, pinned
            notes.append(f"adapter.lora pinned to true: {why}")
    if not _writable(plan):
        raise UserError(f"recipes/{name}.yaml not written: {_why_not(plan, dataset)}")
    if plan.output_repo is None:
        notes.append("no output repo yet: set `namespace: <your Hub user or organization>` in recipes/_defaults.yaml "
                     "(models go to <namespace>/<recipe name>) before the pull request; the plan check fails without "
                     "it, as a run on the Hub would")
    notes.append(f"hardware and timeout left auto: the plan picks {plan.flavor} now and re-decides from current "
                 "prices on every plan")
    _publish(_text(doc, header), target)
    return NewRecipe(path=f"recipes/{target.name}", plan=plan, notes=notes)


# --- arguments ---------------------------------------------------------------------------------


def _refuse_existing(target: Path) -> None:
    for existing in (target, target.with_suffix(".yml")):
        if existing.exists():
            raise UserError(f"recipes/{existing.name} already exists; not overwriting it: pick another NAME, or edit "
                            f"the file by hand and check it with `runner validate recipes/{existing.name}`")
    # Two recipes with one name would share runs/<name>.json and the model repo.
    for other in sorted(target.parent.rglob("*.y*ml")):
        if other.suffix not in (".yaml", ".yml") or other.name == recipe.DEFAULTS_FILE:
            continue
        try:
            name = yamlsafe.load(other).data.get("name", other.stem)
        except RecipeInvalid:
            continue  # `runner validate` reports that file
        if name == target.stem:
            shown = other.relative_to(target.parent.parent).as_posix()
            raise UserError(f"{shown} already has name: {name}; pick another NAME (runs and the model repo are "
                            "named after it)")


def _inside(root: Path, value: str, flag: str) -> str:
    """A local path as the recipe spells it: relative to the repository root, never outside it."""
    path = Path(value) if Path(value).is_absolute() else root / value
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise UserError(f"{flag} {value}: is outside the repository; copy it into the repository (recipes may "
                        "only name files inside it) or give a Hub id") from None


def _model_ref(root: Path, model: str) -> str:
    local = model.startswith(("./", "../", "/")) or (root / model).is_dir()
    return "./" + _inside(root, model, "--model") if local else model


def _dataset_ref(root: Path, dataset: str) -> str:
    local = recipe.looks_local_dataset(dataset) or dataset.startswith(("../", "/")) or (root / dataset).is_file()
    return _inside(root, dataset, "--dataset") if local else dataset


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


# --- what the data needs -------------------------------------------------------------------------


def _columns(data: DatasetReport, method: str, dataset: str, notes: list[str]) -> dict[str, str] | None:
    verdict = data.methods[method]
    if verdict.status == "ready":
        return None
    if verdict.status == "needs_mapping" and verdict.mapping:
        notes.append("dataset.columns: " + ", ".join(f"{k} -> {v}" for k, v in verdict.mapping.items())
                     + f" ({verdict.reason})")
        return dict(verdict.mapping)
    fits = [m for m in ("sft", "dpo", "grpo") if data.methods[m].status in ("ready", "needs_mapping")]
    hint = f"; it fits --method {' or --method '.join(fits)}" if fits else \
        f"; see `runner inspect {dataset}` and the dataset formats in README.md"
    raise UserError(f"--dataset {dataset}: not usable for {method.upper()}: {verdict.reason}{hint}")


def _rewards(sample_columns: list[str], columns: dict[str, str] | None, dataset_doc: dict[str, Any], dataset: str,
             notes: list[str]) -> list[dict[str, str]]:
    """GRPO needs a reward: the built-in exact_answer when the data has an answer to check against."""
    mapping = dict(columns or {})
    renamed = {mapping.get(c, c) for c in sample_columns}
    if "answer" not in renamed:
        source = next((c for c in ANSWER_ALIASES if c in sample_columns and c not in mapping), None)
        if source is None:
            raise UserError(f"--dataset {dataset}: GRPO needs a reward, and the data has no answer column "
                            f"({', '.join(ANSWER_ALIASES)}) for the built-in exact_answer; add one, or write the "
                            "recipe by hand with a repo-local reward (rewards: [{file: rewards/x.py, function: f}])")
        mapping[source] = "answer"
        dataset_doc["columns"] = mapping
        notes.append(f"dataset.columns: {source} -> answer, for the exact_answer reward")
    notes.append("rewards: the built-in exact_answer (1.0 when the completion's last number is the row's answer); "
                 "add your own under rewards/")
    return [{"builtin": "exact_answer"}]


# --- check, plan, write --------------------------------------------------------------------------


def _text(doc: dict[str, Any], header: list[str]) -> str:
    comments = ["yaml-language-server: $schema=./schema.json", *header,
                "Check it with `runner validate` and `runner plan`; fields: README.md, \"Recipes\"."]
    # Comments carry dataset and model text: keep each on its own line.
    lines = ["# " + re.sub(r"[\x00-\x1f\x7f]", " ", c) for c in comments]
    return "\n".join(lines) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False,
                                                    allow_unicode=True, width=100)


def _plan(doc: dict[str, Any], header: list[str], target: Path, token: str | None) -> Plan:
    """Validate the exact text with the recipe loader and plan it, from a private file beside the target."""
    tmp = target.with_name(f".{target.stem}.new-{os.getpid()}")
    tmp_display = f"recipes/{tmp.name}"
    shown = f"recipes/{target.name}"
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(_text(doc, header))
        loaded = recipe.load(tmp)
        plan = planning.plan_recipe(loaded, token=token, price_table=planning.prices(token))
    except RecipeInvalid as e:
        raise UserError(f"{shown} not written, the recipe would be invalid: "
                        + "; ".join(_argument_problem(p) for p in e.problems)) from None
    except UserError as e:
        raise UserError(f"{shown} not written: {str(e).replace(tmp_display, shown)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return plan.model_copy(update={"recipe": shown})


def _argument_problem(problem: Any) -> str:
    flag = next((f for key, f in ARGUMENTS.items() if problem.field == key or problem.field.startswith(key + ".")),
                None)
    where = f"{flag} ({problem.field})" if flag else problem.field or "recipe"
    return f"{where}: {problem.message}"


def _writable(plan: Plan) -> bool:
    """The plan passes, or only the output repo is missing: a repository setting, which a note names."""
    only_output = plan.refusal == NO_OUTPUT and plan.fits and plan.within_budget and plan.dataset.status == "ready"
    return plan.ok or only_output


def _why_not(plan: Plan, dataset: str) -> str:
    if plan.dataset.status != "ready":
        return f"--dataset {dataset}: not ready for {plan.method.upper()}: {plan.dataset.reason}"
    if not plan.fits:
        return ("no Hugging Face Jobs flavor fits this run, even with LoRA; pick a smaller --model, or write the "
                "recipe by hand with a shorter training.max_length")
    if plan.budget_usd is None:
        return ("no budget: pass --budget USD, the most this run may cost (or set budget_usd in "
                "recipes/_defaults.yaml); nothing trains on Hugging Face Jobs without one")
    # Room for the estimate and for the worst case (the whole timeout billed), as the spend gate wants.
    suggestion = max(1, math.ceil(max(plan.cost_usd * 1.25, plan.max_cost_usd)))
    return (f"{plan.refusal or 'over budget'}; pass --budget {suggestion} (at most max_budget_usd in "
            "recipes/_defaults.yaml), or train for fewer --epochs")


def _publish(text: str, target: Path) -> None:
    """Write the whole file or nothing, and never over an existing one (a hard link fails if the name exists)."""
    tmp = target.with_name(f".{target.stem}.new-{os.getpid()}")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            _refuse_existing(target)
            raise
        except OSError:  # a filesystem without hard links: check, then rename into place
            _refuse_existing(target)
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

