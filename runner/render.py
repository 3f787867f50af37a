"""Plans and reports as text for people: terminal lines and the PR-comment Markdown.

Dataset column names, reasons and warnings can carry text from a pull request or a
dataset, so everything interpolated into Markdown is escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from runner.dataset import DatasetReport
from runner.evaluation import Evaluation
from runner.ledger import RunRecord, SweepResult
from runner.plan import Plan

COMMENT_MARKER = "<!-- recipes-runner:plan -->"
MAX_COMMENT_CHARS = 65_000  # GitHub's limit is 65,536


def md(text: object, limit: int = 2000) -> str:
    """Escape untrusted text for Markdown table cells and lists: no HTML, links, formatting or @mentions."""
    s = str(text).replace("\r", " ").replace("\n", " ")
    if len(s) > limit:
        s = s[:limit] + "..."
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([\\`*_\[\]|#!~])", r"\\\1", s)
    # A zero-width space keeps "@user", "@org/team" and addresses readable, but never a ping or a link.
    s = re.sub(r"(?i)(www)\.", "\\1\u200b.", s.replace("://", ":\u200b//"))
    return s.replace("@", "@\u200b")


def code(text: object, limit: int = 300) -> str:
    """Untrusted text as inline code: no formatting, no mentions, bounded."""
    s = str(text).replace("\r", " ").replace("\n", " ").replace("`", "'")[:limit]
    return f"`{s}`"


def no_recipe_markdown() -> str:
    return f"{COMMENT_MARKER}\n## Training plan\n\nNo recipe changed in this pull request.\n"


def verdict_line(method: str, status: str, reason: str) -> str:
    return f"{method.upper()}: {status.upper()} - {reason}"


def _duration(hours: float) -> str:
    minutes = hours * 60
    if minutes < 90:
        return f"{max(minutes, 1):.0f} min"
    return f"{hours:.1f} h"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def report_text(r: DatasetReport, method: str | None = None) -> str:
    rows = "unknown" if r.rows is None else (f"{r.rows:,}" if r.rows_exact else f"~{r.rows:,} (estimated)")
    lines = [
        f"dataset: {r.dataset}" + (f" [{r.config}]" if r.config else "") + f"  split: {r.split}",
        f"rows: {rows}  (sampled {r.sample_size} via {r.source})",
        f"columns: {', '.join(r.columns) or '(none)'}",
    ]
    if r.images:
        i = r.images
        size = (f"mean {i.mean_width}x{i.mean_height}, max {i.max_width}x{i.max_height}" if i.measured
                else "size unknown")
        lines.append(f"images: '{i.column}', {i.images} in the sample ({i.per_row:g} per row; {size}"
                     + (f"; {', '.join(i.formats)}" if i.formats else "") + ")")
    for m, v in r.methods.items():
        if method and m != method:
            continue
        line = verdict_line(m, v.status, v.reason)
        if v.mapping:
            line += "  mapping: " + ", ".join(f"{k} -> {t}" for k, t in v.mapping.items())
        lines.append(line)
    return "\n".join(lines)


def setup_line(p: Plan) -> str | None:
    """Precision, kernels and batch split on the chosen flavor, in one line; None without a flavor."""
    s = p.setup
    if s is None:
        return None
    batches = "packed, padding-free" if s.packing else ("length-grouped" if s.group_by_length else "padded")
    autocast = "no autocast" if s.autocast == "none" else f"{s.autocast} autocast"
    repo, _, revision = s.attn_implementation.partition("@")  # a Hub kernel pinned to a commit: its short sha
    attention = f"{repo}@{revision[:7]}" if revision else repo
    return (f"{s.model_dtype} weights, {autocast}; {attention} attention"
            f"{', Liger' if s.use_liger_kernel else ''}; batch {s.per_device_train_batch_size} x "
            f"{s.gradient_accumulation_steps} x {s.world_size} ({batches}"
            f"{', checkpointed' if s.gradient_checkpointing else ''})")


def _method(p: Plan) -> str:
    """Method, adapter and learning rate, with where the rate comes from when the recipe left it."""
    source = f" ({p.learning_rate_source})" if p.learning_rate_source not in (None, "recipe") else ""
    return f"{p.method.upper()}, {'LoRA' if p.lora else 'full fine-tune'}, lr {p.learning_rate:g}{source}"


def _timeout(p: Plan) -> str:
    return f"timeout {p.timeout_seconds // 60} min" if p.jobs else "no job"


def _eval_part(p: Plan) -> str:
    """The evaluation share of the job's time, when there is one."""
    if not p.eval_hours:
        return ""
    seconds = p.eval_hours * 3600
    return f" incl. evaluation {seconds:.0f} s" if seconds < 90 else f" incl. evaluation {_duration(p.eval_hours)}"


def plan_text(p: Plan) -> str:
    status = "OK" if p.ok else "BLOCKED"
    lines = [
        f"{p.recipe}: {p.name} [{status}]",
        "  " + verdict_line(p.method, p.dataset.status, p.dataset.reason),
        f"  model: {p.base_model} ({_count(p.params)} params, {p.params_source}); {_method(p)}",
        f"  hardware: {p.flavor or 'none fits'}" + (f" ({p.strategy}, {p.devices} device(s))" if p.flavor else "")
        + f", est. peak {p.memory_gb:.1f} GB" + (f" of {p.memory_capacity_gb:g} GB" if p.memory_capacity_gb else ""),
        *([f"  setup: {setup_line(p)}"] if p.setup else []),
        f"  tokens: {_count(p.tokens)}" + (f" (images: {p.image_tokens_per_row:g} per row)"
                                            if p.image_tokens_per_row else "")
        + f"; time: {_duration(p.hours)}{_eval_part(p)}; {_timeout(p)}",
        f"  cost: ${p.cost_usd:.2f} (training ${p.train_cost_usd:.2f} + GGUF ${p.gguf_cost_usd:.2f}); "
        f"worst case ${p.max_cost_usd:.2f}; budget " + (f"${p.budget_usd:.2f}" if p.budget_usd else "none"),
        "  jobs: " + ("; ".join(f"{j.stage} on {j.flavor} (timeout {j.timeout_seconds // 60} min, worst case "
                                f"${j.max_cost_usd:.2f})" for j in p.jobs) or "none")
        + f"; GitHub runner ~{p.runner_minutes:.0f} min",
    ]
    lines += [f"  warning: {w}" for w in p.warnings]
    if p.guesses:
        lines.append("  guesses: " + "; ".join(p.guesses))
    return "\n".join(lines)


def plan_markdown(plans: Sequence[Plan], errors: Sequence[str] = (), commit: str | None = None,
                  beside: Mapping[str, Sequence[str]] | None = None) -> str:
    """The body of the sticky PR comment; every value from a recipe, a dataset or a model is escaped.

    `beside`: plan name -> Markdown lines shown after its table (the recipe's current model, runner/registry.py)."""
    out = [COMMENT_MARKER, "## Training plan", ""]
    for line in errors:
        out.append(f"- :x: {code(line)}")
    if errors:
        out.append("")
    for p in plans:
        mark = ":white_check_mark:" if p.ok else ":x:"
        out += [f"### {mark} {md(p.name)} ({code(p.recipe)})", "",
                f"**{md(verdict_line(p.method, p.dataset.status, p.dataset.reason))}**", ""]
        hardware = (f"{md(p.flavor)} ({p.devices}x, {p.strategy}), est. peak {p.memory_gb:.1f} GB of "
                    f"{p.memory_capacity_gb:g} GB" if p.flavor else "no flavor fits")
        budget = f"${p.budget_usd:.2f}" if p.budget_usd else "none"
        rows = "unknown" if p.rows is None else f"{p.rows:,}"
        out += [
            "| | |", "|---|---|",
            f"| Base model | {code(p.base_model)} ({_count(p.params)} params) |",
            f"| Method | {md(_method(p))} |",
            f"| Hardware | {hardware} |",
            *([f"| Setup | {md(setup_line(p) or '')} |"] if p.setup else []),
            f"| Data | {rows} rows, {_count(p.tokens)} training tokens"
            + (f" (images: {p.image_tokens_per_row:g} tokens per row)" if p.image_tokens_per_row else "") + " |",
            f"| Time | ~{_duration(p.hours)}{_eval_part(p)} ({_timeout(p)}) |",
            f"| Cost | **${p.cost_usd:.2f}** (training ${p.train_cost_usd:.2f} + GGUF ${p.gguf_cost_usd:.2f}), "
            f"worst case ${p.max_cost_usd:.2f} |",
            f"| Budget | {budget}: {'within' if p.within_budget else '**refused**'} |",
            "| Jobs | " + "; ".join(f"{j.stage} on {md(j.flavor)}, timeout {j.timeout_seconds // 60} min, worst case "
                                    f"${j.max_cost_usd:.2f}" for j in p.jobs) + " |",
            f"| GitHub runner | ~{p.runner_minutes:.0f} min |",
            f"| Output | {code(p.output_repo) if p.output_repo else 'none'} |",
            "",
        ]
        out += (beside or {}).get(p.name, [])
        if p.warnings:
            out += ["**Warnings**", ""] + [f"- {md(w)}" for w in p.warnings] + [""]
        if p.calibration:
            c = p.calibration
            out += [f"Past estimates in this repository: actual/estimate cost {c.cost_ratio:.2f}, time "
                    f"{c.time_ratio:.2f} (median of {c.runs} run(s); {c.comparable} comparable)"
                    + (f"; this plan's time is scaled by {c.applied:.2f}." if c.applied else
                       "; scaling starts at 3 comparable runs."), ""]
        if p.guesses:
            out += [f"<sub>Estimated: {md('; '.join(p.guesses))}. Prices: {md(p.price_source)}.</sub>", ""]
    if len(plans) > 1:
        out += [total_line(plans), ""]
    if commit:
        out.append(f"<sub>Planned by the default branch's runner from the files of {code(commit[:12])}; "
                   "the merge plans again and gates every spend.</sub>")
    text = "\n".join(out)
    if len(text) > MAX_COMMENT_CHARS:
        text = text[: MAX_COMMENT_CHARS - 80] + "\n\n_(plan truncated: too long for one comment)_\n"
    return text


def total_line(plans: Sequence[Plan]) -> str:
    """What all recipes of the pull request cost together: they are merged, approved and paid for at once."""
    return (f"**Total of {len(plans)} recipes:** ${sum(p.cost_usd for p in plans):.2f} estimated, "
            f"${sum(p.max_cost_usd for p in plans):.2f} worst case (every job's whole timeout, billed)")


def run_marker(name: str, record: RunRecord) -> str:
    """One comment per run: created at submission, updated as it moves, the outcome at the end."""
    # A re-trigger of the same version and attempt adopts the same jobs, so it keeps the same comment.
    return f"<!-- recipes-runner:run:{name}:{record.version or record.run_id}:{record.attempt} -->"


def _elapsed(since: str, now: datetime) -> float:
    return max((now - datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)).total_seconds(), 0)


def run_markdown(name: str, record: RunRecord, blob_url: str, now: datetime | None = None) -> str:
    """The live comment of a run: where it is while it runs, then its outcome."""
    if record.terminal:
        return outcome_markdown(name, record, blob_url)
    now = now or datetime.now(timezone.utc)
    stage = "gguf" if "gguf" in record.jobs else "train"
    job = record.jobs.get(stage)
    out = [f"### :hourglass: {md(name)}: {record.state}", "", "| | |", "|---|---|",
           f"| Run | {code(record.run_id)} on the {md(record.backend)} backend, attempt {record.attempt} |"]
    if job:
        namespace = ((record.configs.train.repo if record.configs.train else None) or "/").split("/")[0]
        where = _link(f"https://huggingface.co/jobs/{namespace}/{job.id}") if record.push and namespace \
            else code(job.id)
        out.append(f"| {stage.upper()} job | {where} ({md(job.stage)}) |")
        elapsed = _elapsed(job.submitted_at, now)
        out.append(f"| Elapsed | {_duration(elapsed / 3600)} |")
    p = record.progress
    if p and p.total:
        line = f"| Step | {p.step} / {p.total} ({p.step / p.total:.0%})"
        if job and p.step:
            eta = (job.running_seconds or _elapsed(job.submitted_at, now)) / p.step * (p.total - p.step)
            line += f", ETA ~{_duration(eta / 3600)}"
        out.append(line + " |")
        if p.loss is not None:
            out.append(f"| Latest loss | {p.loss:.4g} |")
    est = record.cost_usd.get("estimated")
    out.append(f"| Cost so far | ${record.actual_usd():.2f} of an estimated ${est or 0:.2f} |")
    space = record.configs.train.trackio_space_id if record.configs.train else None
    if space:
        out.append(f"| Trackio | {_link('https://huggingface.co/spaces/' + space)} |")
    if record.links.get("model"):
        out.append(f"| Model | {_link(record.links['model'])} |")
    out += ["", "<sub>Updated as the run moves (each `train` follow and each `reconcile`); "
                "this comment becomes the outcome.</sub>"]
    return "\n".join(out) + "\n"


def outcome_markdown(name: str, record: RunRecord, blob_url: str) -> str:
    """The comment on a merged pull request: what training produced, where, and for how much."""
    marks = {"recorded": ":white_check_mark:", "failed": ":x:", "canceled": ":no_entry:",
             "rejected": ":no_entry_sign:"}
    mark = marks.get(record.state, ":hourglass:")
    links = record.links
    space = record.configs.train.trackio_space_id if record.configs.train else None
    est, actual = record.cost_usd.get("estimated"), record.cost_usd.get("actual")
    out = [f"### {mark} {md(name)}: {record.state}", "", "| | |", "|---|---|",
           f"| Run | {code(record.run_id)} on the {md(record.backend)} backend |"]
    if links.get("model"):
        out.append(f"| Model | {_link(links['model'])} |")
    if links.get("gguf"):
        out.append(f"| GGUF | {_link(links['gguf'])} |")
    project = record.configs.train.project if record.configs.train else name
    out.append("| Trackio | " + (_link(f"https://huggingface.co/spaces/{space}") if space else
                                 f"project `{md(project)}` (local logs; "
                                 "set tracking.space for a dashboard)")
               + " |")
    if record.state == "recorded":
        out.append(f"| Loss curve | {_link(f'{blob_url}/models/{name}/loss.png')} |")
        out.append(f"| Card | {_link(f'{blob_url}/models/{name}/README.md')} |")
    if record.metrics.get("final_loss") is not None:
        out.append(f"| Final loss | {record.metrics['final_loss']:.4g} |")
    worst = record.cost_usd.get("max")
    out.append(f"| Cost | estimated ${est or 0:.2f}" + (f", worst case ${worst:.2f}" if worst is not None else "")
               + ", actual " + (f"${actual:.2f}" if actual is not None else "unknown") + " |")
    if record.evaluation:
        out += evaluation_markdown(record.evaluation)
    if record.sweep:
        out += sweep_markdown(record.sweep, record.run_id)
    if record.state == "rejected" and record.gate is not None:  # trained, then held back by its quality gate
        out += ["", f"**Rejected by its quality gate:** {md(record.gate.line())}; not published, no GGUF job."]
    if record.failure:
        f = record.failure
        verb = "Canceled" if record.state == "canceled" else "Failed"
        out += ["", f"**{verb} in {md(f.stage)}:** {md(f.reason)}", "",
                "Fix the recipe (or the data) in a new pull request, or train this version again on purpose: "
                "Actions > train > Run workflow with `retry` (`runner run RECIPE --backend hf --retry`).",
                "" if not f.checkpoint_on_hub else
                "A checkpoint reached the Hub (`last-checkpoint/`): a rerun can resume.",
                "", "<details><summary>Log tail</summary>", "", "```",
                *[line.replace("```", "'''") for line in f.log_tail[-20:]], "```", "</details>"]
    return "\n".join(out) + "\n"


def evaluation_markdown(ev: Evaluation) -> list[str]:
    """The compact before -> after table of the outcome comment (samples stay in the card)."""
    out = ["", f"**Evaluation** on {ev.rows} held-out rows ({md(ev.held_out)})", "",
           "| metric | base | tuned | change |", "|---|---|---|---|"]
    for m in ev.metrics[:6]:
        change = "" if m.delta is None else f"{m.delta:+.4g}"
        out.append(f"| {md(m.label)} | {_num(m.before)} | {_num(m.after)} | {change} |")
    out += [f"| {md(b.task)} {md(b.metric)} | | {b.value:.4g} | |" for b in ev.benchmarks]
    if ev.benchmark_error:
        out.append(f"| benchmarks | | failed: {md(ev.benchmark_error)} | |")
    return out


def sweep_markdown(result: SweepResult, winner_run: str) -> list[str]:
    """The table of a sweep's trials beside its winner (the card and the outcome comment)."""
    better = "lower" if result.mode == "min" else "higher"
    out = ["", f"**Sweep** of {len(result.trials)} trials, judged by held-out {md(result.metric)} ({better} wins): "
               f"{md(result.reason)}", "", f"| trial | {md(result.metric)} | outcome | run | cost |",
           "|---|---|---|---|---|"]
    for t in result.trials:
        won = t.run_id == winner_run
        cost = "-" if t.actual_usd is None else f"${t.actual_usd:.2f}"
        # A winner its own gate rejected, or whose conversion failed, says so (its row is settled as it ends).
        outcome = ("winner" if t.state not in ("rejected", "failed", "canceled") else f"winner, then {t.state}") \
            if won else md(t.state)
        out.append(f"| {f'**{md(t.suffix)}**' if won else md(t.suffix)} | {_num(t.value)} | "
                   f"{outcome} | {code(t.run_id)} | {cost} |")
    return out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _link(url: str) -> str:
    """A link only to http(s) addresses we built; anything else is shown as text."""
    if url.startswith(("https://", "http://")) and not any(c in url for c in " <>()[]"):
        return f"[{md(url.split('://', 1)[1])}]({url})"
    return f"`{md(url)}`"


link = _link  # the public name, for other renderers (runner/registry.py)
