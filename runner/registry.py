"""The repository is the model registry: every run in runs/*.json as a typed row, and models/README.md from them.

Pure over what the repository holds: run records through runner/ledger.py, the promoted run of each recipe through
runner/promote.py (models/current.json). `runner models` prints it, commit-back and a local `runner run` write
models/README.md, and the plan comment shows a recipe's current model beside its new plan. Records are data any
merged pull request can edit, so every value reaches Markdown through render.md / render.code.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from runner import ledger, promote
from runner.errors import UserError
from runner.evaluation import label
from runner.gates import scores
from runner.plan import Plan
from runner.render import code, link, md

REGISTRY_FILE = Path("models") / "README.md"
SCHEMA_VERSION = 1
_CARD = re.compile(r"^models/[A-Za-z0-9][A-Za-z0-9._-]*/README\.md$")  # the only card path a row links to


class Links(BaseModel):
    """Where a run's outputs are: Hub pages (https), local paths (the local backend), the card in this repo."""

    hub: str | None = None  # the model repo
    model: str | None = None  # the exact weights: the repo at the commit the run pushed, or a local directory
    gguf: str | None = None
    card: str | None = None  # relative to the repository root; only the newest recorded run's card is in the tree


class ModelEntry(BaseModel):
    """One run of one recipe, as the registry lists it."""

    recipe: str
    run_id: str
    trial: str | None = None
    state: ledger.State
    current: bool = False  # the recipe's promoted run (models/current.json)
    base_model: str | None = None
    method: str | None = None
    lora: bool | None = None
    learning_rate: float | None = None
    dataset: str | None = None
    backend: ledger.BackendName
    flavor: str | None = None
    before: dict[str, float] = Field(default_factory=dict)  # held-out metrics of the base model
    after: dict[str, float] = Field(default_factory=dict)  # of the tuned model, and benchmark scores
    final_loss: float | None = None
    estimated_usd: float | None = None
    actual_usd: float  # what the Hub billed (0 on the local backend)
    billed_hours: float
    created_at: str
    updated_at: str
    note: str | None = None  # why it was rejected, failed or canceled
    links: Links = Field(default_factory=Links)


class Registry(BaseModel):
    """Every run the repository recorded, by recipe then age, and each recipe's promoted run."""

    schema_version: int = SCHEMA_VERSION
    current: dict[str, str] = Field(default_factory=dict)  # recipe -> promoted run id
    models: list[ModelEntry] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)  # files that did not read: their runs are not listed

    def of(self, recipe: str) -> list[ModelEntry]:
        """The recipe's runs, oldest first."""
        return [m for m in self.models if m.recipe == recipe]

    def current_of(self, recipe: str) -> ModelEntry | None:
        """The recipe's promoted run, else its newest recorded one (None: nothing recorded yet)."""
        runs = self.of(recipe)
        return next((m for m in runs if m.current), None) or next(
            (m for m in reversed(runs) if m.state == "recorded"), None)


def _note(record: ledger.RunRecord) -> str | None:
    if record.state == "rejected" and record.gate is not None:
        return "; ".join(record.gate.reasons) or record.gate.line()
    if record.failure is not None:
        f = record.failure
        return f.reason if record.state == "canceled" else f"{f.stage}: {f.reason}"
    return None


def _links(record: ledger.RunRecord, newest_card: bool) -> Links:
    pushed = promote.model_commit(record)
    card = record.links.get("card")
    return Links(hub=f"https://huggingface.co/{pushed[0]}" if pushed else None,
                 model=f"https://huggingface.co/{pushed[0]}/tree/{pushed[1]}" if pushed else record.links.get("model"),
                 gguf=record.links.get("gguf"),
                 card=card if newest_card and card and _CARD.match(card) else None)


def entry(name: str, record: ledger.RunRecord, *, current: bool = False, newest_card: bool = False) -> ModelEntry:
    """The registry row of one run record (its numbers through gates.scores, its cost through the record)."""
    plan, config, summary, ev = record.plan, record.configs.train, record.train_summary, record.evaluation
    train_job = record.jobs.get("train")
    return ModelEntry(
        recipe=name, run_id=record.run_id, trial=record.trial, state=record.state, current=current,
        base_model=plan.base_model if plan else (config.model_name_or_path if config else None),
        method=plan.method if plan else (summary.method if summary else None),
        lora=plan.lora if plan else (summary.adapter if summary else None),
        learning_rate=plan.learning_rate if plan else (config.learning_rate if config else None),
        dataset=(plan.dataset_path or None) if plan else (config.dataset_name if config else None),
        backend=record.backend, flavor=train_job.flavor if train_job else (plan.flavor if plan else None),
        before=scores(ev, after=False).values if ev else {}, after=scores(ev).values if ev else {},
        final_loss=record.metrics.get("final_loss"), estimated_usd=record.cost_usd.get("estimated"),
        actual_usd=record.actual_usd(),
        billed_hours=round(record.billed_hours, 4),
        created_at=record.created_at, updated_at=record.updated_at, note=_note(record),
        links=_links(record, newest_card))


def load(root: Path) -> Registry:
    """The registry of the repository at `root`; a file that does not read is a problem, never a stop."""
    problems: list[str] = []
    try:
        current = promote.read(root).models
    except UserError as e:
        current, problems = {}, [str(e)]
    models: list[ModelEntry] = []
    for group in ledger.all_runs(root, problems):
        recorded = [r for r in group.runs if r.state == "recorded"]
        newest = max(recorded, key=lambda r: (r.updated_at, r.run_id)) if recorded else None
        runs = sorted(group.runs, key=lambda r: (r.created_at, r.run_id))
        models += [entry(group.name, r, current=current.get(group.name) == r.run_id, newest_card=r is newest)
                   for r in runs]
    for name, run_id in current.items():
        if not any(m.current for m in models if m.recipe == name):
            problems.append(f"{promote.CURRENT_FILE}: {name} -> {run_id}, but runs/{name}.json has no such run")
    return Registry(current=dict(current), models=models, problems=problems)


def load_files(files: Mapping[str, bytes]) -> Registry:
    """The registry of a tree given as {path: bytes} (runs/*.json, models/current.json), e.g. a branch on GitHub."""
    with tempfile.TemporaryDirectory() as tmp:
        for path, data in files.items():
            if re.fullmatch(r"runs/[A-Za-z0-9][A-Za-z0-9._-]*\.json", path) or path == promote.CURRENT_FILE.as_posix():
                (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / path).write_bytes(data)
        return load(Path(tmp))


# --- text --------------------------------------------------------------------------------------------


def _billed(m: ModelEntry) -> bool:
    """Whether the engine the run used bills its jobs (its capability, not its name)."""
    from runner.backends import engine  # light: the engine's class, no client

    return engine(m.backend).bills


def _usd(m: ModelEntry) -> str:
    est = f" (est. ${m.estimated_usd:.2f})" if m.estimated_usd is not None else ""
    return f"${m.actual_usd:.2f}{est}" if _billed(m) else f"$0.00 local{est}"


def _method(m: ModelEntry) -> str:
    return f"{(m.method or '?').upper()}, {'LoRA' if m.lora else 'full'}" if m.lora is not None \
        else (m.method or "?").upper()


def metrics_phrase(m: ModelEntry, most: int = 3, escape: Callable[[str], str] = str) -> str:
    """The key numbers before -> after, e.g. 'eval loss 3.2 -> 1.1; gsm8k 0.41'; the final training loss without.

    `escape` applies to the names (a record's text), not to the numbers or the arrow."""
    parts = [f"{escape(label(k))} {m.before[k]:.4g} -> {v:.4g}" if k in m.before else f"{escape(label(k))} {v:.4g}"
             for k, v in m.after.items()]
    if not parts and m.final_loss is not None:
        parts = [f"train loss {m.final_loss:.4g}"]
    return "; ".join(parts[:most]) + ("; ..." if len(parts) > most else "") if parts else "-"


def _state_md(m: ModelEntry) -> str:
    bold = f"**{md(m.state)}**" if m.state in ("rejected", "failed") else md(m.state)
    return bold + (f": {md(m.note, 300)}" if m.note else "")


def _links_md(m: ModelEntry) -> str:
    parts = [f"Hub {link(m.links.hub)}" if m.links.hub else "",
             f"weights {link(m.links.model)}" if m.links.model and m.links.model != m.links.hub else "",
             f"GGUF {link(m.links.gguf)}" if m.links.gguf else "",
             # Relative to models/README.md: the card beside it.
             f"[card]({m.links.card.removeprefix('models/')})" if m.links.card else ""]
    return "<br>".join(p for p in parts if p) or "-"


def _row_md(m: ModelEntry) -> str:
    run = code(m.run_id) + (" **current**" if m.current else "") + (f" (trial {code(m.trial)})" if m.trial else "")
    cells = [run, _state_md(m), code(m.base_model or "?"), md(_method(m)), code(m.dataset or "?"),
             metrics_phrase(m, escape=md), md(_usd(m)), md(m.updated_at[:10]), _links_md(m)]
    return "| " + " | ".join(cells) + " |"


def markdown(reg: Registry) -> str:
    """models/README.md: one table per recipe, newest run first, the promoted run marked current."""
    names = sorted({m.recipe for m in reg.models})
    billed = sum(m.actual_usd for m in reg.models)
    out = ["# Models", "",
           "<!-- Written by recipes-runner on every commit-back (`runner models --markdown`); edits are replaced. -->",
           "", f"{len(reg.models)} run(s) of {len(names)} recipe(s), ${billed:.2f} billed on Hugging Face Jobs. "
           "**current** marks a recipe's promoted model (`models/current.json`, `runner promote NAME RUN_ID`).", ""]
    out += [f"- :warning: {md(p)}" for p in reg.problems] + ([""] if reg.problems else [])
    for name in names:
        runs = reg.of(name)
        chosen = reg.current_of(name)
        where = ("current: " if chosen.current else "no run promoted; newest recorded: ") + code(chosen.run_id) \
            if chosen else "nothing recorded yet"
        out += [f"## {md(name)}", "", f"{len(runs)} run(s); {where}.", "",
                "| run | state | base | method | data | eval (base -> tuned) | cost | date | links |",
                "|---|---|---|---|---|---|---|---|---|", *map(_row_md, reversed(runs)), ""]
    return "\n".join(out)


def refresh(root: Path) -> Path | None:
    """Regenerate models/README.md from the checkout's runs/ where the repository keeps models (a models/ folder:
    cards, or the page, are there), as commit-back does in Actions; the page written, or None."""
    if not (root / "models").is_dir():
        return None
    write(root)
    return root / REGISTRY_FILE


def write(root: Path) -> bytes:
    """Regenerate models/README.md in the checkout from its runs/; the bytes written."""
    data = markdown(load(root)).encode("utf-8")
    ledger.atomic_write(root / REGISTRY_FILE, data)
    return data


def _plain(value: object) -> str:
    """A record value for a terminal: no control characters (an escape sequence in a record is data, not a colour)."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def text(reg: Registry) -> str:
    """`runner models`: one aligned line per run, grouped by recipe, '*' on the current model."""
    if not reg.models:
        return "no runs recorded yet (runs/ is empty)"
    header = ["", "recipe", "run", "state", "method", "base", "data", "eval (base -> tuned)", "cost", "date"]
    rows = [["*" if m.current else "", m.recipe, m.run_id + (f" [{m.trial}]" if m.trial else ""),
             m.state, _method(m), m.base_model or "?", m.dataset or "?", metrics_phrase(m, 2), _usd(m),
             m.updated_at[:10]] for m in reg.models]
    rows = [[_plain(c)[:60] for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    notes = [f"  {_plain(m.recipe)} {_plain(m.run_id)}: {_plain(m.note)}" for m in reg.models if m.note]
    return "\n".join(lines + notes + ["* the recipe's promoted model (models/current.json)"])


# --- beside a plan -------------------------------------------------------------------------------------


def comparison_markdown(m: ModelEntry, plan: Plan) -> list[str]:
    """The current model's figures beside a new plan of its recipe (the plan comment of a changed recipe)."""
    which = "promoted in `models/current.json`" if m.current else "newest recorded; none promoted"
    hours = f"{m.billed_hours * 60:.0f} min billed" if _billed(m) else "trained locally"
    plan_metrics = "measured after training" if plan.eval_rows else "no held-out evaluation planned"
    planned = f"{md(plan.flavor or 'none fits')}, ~{plan.hours * 60:.0f} min"
    lr = f", lr {m.learning_rate:g}" if m.learning_rate is not None else ""
    return [f"**Current model:** run {code(m.run_id)} ({which}), {md(m.state)} {md(m.updated_at[:10])}", "",
            "| | current model | this plan |", "|---|---|---|",
            f"| Base model | {code(m.base_model or '?')} | {code(plan.base_model)} |",
            f"| Method | {md(_method(m))}{lr} | {md(plan.method.upper())}, {'LoRA' if plan.lora else 'full'}, "
            f"lr {plan.learning_rate:g} |",
            f"| Data | {code(m.dataset or '?')} | {code(plan.dataset_path or '?')} |",
            f"| Hardware | {md(m.flavor or '-')}, {hours} | {planned} |",
            f"| Cost | {md(_usd(m))} | ${plan.cost_usd:.2f} estimated |",
            f"| Eval | {metrics_phrase(m, 6, md)} | {plan_metrics} |", ""]


def beside(reg: Registry, plans: Sequence[Plan]) -> dict[str, list[str]]:
    """Plan name -> the comparison lines, for each planned recipe that already has a model."""
    out = {}
    for p in plans:
        chosen = reg.current_of(p.name)
        if chosen is not None:
            out[p.name] = comparison_markdown(chosen, p)
    return out
