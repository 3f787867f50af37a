"""The model card: what was trained on what, how, how it went, where the files are, and what it cost."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import UserError
from runner.evaluation import Evaluation
from runner.jobs.gguf import human_bytes
from runner.jobspec import DPOJobConfig, GRPOJobConfig, TrainJobConfig
from runner.ledger import RunRecord
from runner.plan import Plan
from runner.recipe import looks_local_dataset
from runner.render import code, md, sweep_markdown
from runner.summaries import GgufSummary, LogEntry

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData


def loss_points(log_history: list[LogEntry]) -> list[tuple[float, float]]:
    """(step, training loss) from the trainer's log lines that have both as finite numbers."""
    points = []
    for e in log_history:
        step, loss = e.get("step"), e.get("loss")
        # Log lines are free-form JSON: anything else under these names is not a point.
        if isinstance(step, (int, float)) and isinstance(loss, (int, float)) and math.isfinite(loss):
            points.append((float(step), float(loss)))
    return points


def loss_plot_png(log_history: list[LogEntry], title: str) -> bytes | None:
    """The training loss curve as a PNG, or None when the log has no loss."""
    points = loss_points(log_history)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _gguf_lines(gguf: GgufSummary, repo: str | None) -> list[str]:
    """The GGUF table and how to run it; a vision model's projector goes beside the text model (--mmproj)."""
    lines = ["", "## GGUF", "", "| file | quantization | size |", "| --- | --- | --- |"]
    lines += [f"| `{f.name}` | {f.quantization}"
              f"{' (vision projector)' if f.kind == 'mmproj' else ''} | {human_bytes(f.bytes)} |"
              for f in gguf.files]
    models = gguf.models
    projector = gguf.projector.name if gguf.projector else None
    quant = next((f.quantization for f in models if f.quantization == "Q4_K_M"), models[0].quantization)
    if gguf.imatrix:
        lines += ["", f"Quantized with an importance matrix from {gguf.imatrix.tokens} tokens of the training data."]
    if repo:  # -hf fetches a repo's mmproj file by itself
        lines += ["", f"Run it with llama.cpp, LM Studio or Ollama ([{repo}-GGUF](https://huggingface.co/{repo}-GGUF) "
                  "has its own card and an Ollama `Modelfile`):", "", "```bash",
                  f"llama-server -hf {repo}-GGUF:{quant}",
                  f"ollama run hf.co/{repo}-GGUF:{quant}", "```"]
    first = models[0].name
    local = f"llama-server -m {first}" + (f" --mmproj {projector}" if projector else "")
    return lines + ["", "Or from a local copy:", "", "```bash", local, "```"]


def build(record: RunRecord, *, has_plot: bool, license: str = "other") -> str:
    """The card text (YAML metadata + Markdown) via huggingface_hub's ModelCard, from the run record alone:
    what the run fixed when it started (its plan and job configs) and what its jobs reported."""
    from huggingface_hub import ModelCard

    plan, config = record.plan, record.configs.train
    if plan is None or config is None:
        raise UserError(f"run {record.run_id}: the record has no plan or training config to write a card from")
    summary, gguf = record.train_summary, record.gguf_summary
    adapter = summary.adapter if summary else config.use_peft
    dataset = plan.dataset_path or config.dataset_name
    data = _metadata(record, plan, dataset, adapter, license)
    lines = _training_lines(record, plan, config, dataset, adapter)
    lines += _results_lines(record, plan, config, has_plot)
    if record.sweep:  # this run won a sweep: every trial it was judged beside
        lines += ["", "## Sweep", *sweep_markdown(record.sweep, record.run_id)]
    if gguf and gguf.skipped:
        lines += ["", "## GGUF", "", f"Not converted: {gguf.skipped}."]
    if gguf and gguf.models:
        lines += _gguf_lines(gguf, config.repo)
    lines += _provenance_lines(record, config) + _cost_lines(record)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return str(card)


def _metadata(record: RunRecord, plan: Plan, dataset: str, adapter: bool, license: str) -> ModelCardData:
    """The card's YAML header: base model, data, library, tags and scores, as the Hub indexes them."""
    from huggingface_hub import ModelCardData

    gguf = record.gguf_summary
    vision = record.train_summary.vision if record.train_summary else False
    return ModelCardData(
        base_model=plan.base_model if not plan.base_model.startswith("./") else None,
        datasets=[dataset] if not looks_local_dataset(dataset) else None,
        library_name="peft" if adapter else "transformers",
        license=license,
        model_name=plan.name,
        tags=["trl", plan.method, "recipes-runner"] + (["lora"] if adapter else []) + (
            ["gguf"] if gguf and gguf.files else []) + (["vision-language"] if vision else []),
        pipeline_tag="image-text-to-text" if vision else "text-generation",
        eval_results=eval_results(record, dataset) or None,
    )


def _training_lines(record: RunRecord, plan: Plan, config: TrainJobConfig, dataset: str, adapter: bool) -> list[str]:
    """The title, what was trained from what, and the settings table (as the job resolved them, when it said)."""
    setup = record.train_summary.setup if record.train_summary else None  # see runner/jobs/train_policy.py
    if setup:
        batch = (f"{setup.per_device_train_batch_size} x {setup.gradient_accumulation_steps} "
                 f"x {setup.world_size} process(es)")
        packing = "on" if setup.packing else "off"
    else:
        batch = f"{config.per_device_train_batch_size} x {config.gradient_accumulation_steps}"
        mode = config.packing_mode
        packing = "auto" if mode == "auto" else ("on" if mode else "off")
    max_length = getattr(config, "max_length", None)
    lines = [
        f"# {plan.name}",
        "",
        f"Fine-tuned from `{plan.base_model}` with TRL {plan.method.upper()}"
        f" ({'LoRA' if adapter else 'full fine-tuning'}) on `{dataset}`"
        f" (split `{config.dataset_train_split}`). Trained from the recipe `{record.recipe}`.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| method | {plan.method} |",
        f"| learning rate | {config.learning_rate} ({config.lr_scheduler_type}, warmup {config.warmup_steps}) |",
        f"| epochs / max steps | {config.num_train_epochs:g} / {config.max_steps if config.max_steps > 0 else '-'} |",
        f"| batch size x accumulation | {batch} |",
        f"| max length | {max_length or '-'} (packing {packing}) |",
        f"| seed | {config.seed} |",
    ]
    if setup:
        liger = "on" if setup.use_liger_kernel else "off"
        lines.append(f"| precision | {setup.model_dtype} weights, {setup.autocast} autocast, "
                     f"{setup.attn_implementation} attention, Liger {liger}, "
                     f"{setup.strategy} on {setup.device} |")
    return lines + _method_rows(config, adapter)


def _method_rows(config: TrainJobConfig, adapter: bool) -> list[str]:
    """The settings rows only some runs have: LoRA, DPO's beta, GRPO's rewards."""
    rows = []
    if adapter:
        rows.append(f"| LoRA | r={config.lora_r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}, "
                    f"targets {config.lora_target_modules} |")
    if isinstance(config, DPOJobConfig):
        rows.append(f"| DPO beta | {config.beta} |")
    if isinstance(config, GRPOJobConfig):
        names = [w.name or f"{Path(w.path or '').name}:{w.function}" for w in config.rewards]
        rows.append(f"| GRPO rewards | {', '.join(names)} |")
    return rows


def _results_lines(record: RunRecord, plan: Plan, config: TrainJobConfig, has_plot: bool) -> list[str]:
    """Final metrics, how long it trained, the loss plot and the evaluation."""
    summary = record.train_summary
    lines = ["", "## Results", ""]
    if record.metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(record.metrics.items())]
    if summary:
        lines += ["", f"{summary.steps} steps, {summary.tokens_seen} tokens seen, "
                  f"{summary.train_runtime_s:.1f} s of training on {summary.world_size} process(es)."]
    if has_plot:
        lines += ["", "![training loss](loss.png)"]
    if record.evaluation:
        lines += evaluation_section(record.evaluation, plan.base_model, config.evaluation.model_dump())
    return lines


def _provenance_lines(record: RunRecord, config: TrainJobConfig) -> list[str]:
    """Where the model came from: run, recipe, commit, model and data revisions, and the exact job scripts."""
    lines = ["", "## Provenance", "", "| | |", "| --- | --- |",
             f"| run | {code(record.run_id)} ({md(record.backend)} backend) |",
             f"| recipe | `{record.recipe}` (sha256 `{record.recipe_sha256[:16]}`) |",
             f"| commit | {code(record.commit or 'not a git checkout')} |",
             f"| base model revision | {code(config.model_revision or 'latest')} |",
             f"| dataset revision | `{config.dataset_revision or 'latest'}` |"]
    for stage, job in record.jobs.items():
        modules = "".join(f", {m} sha256 `{h[:16]}`" for m, h in job.modules_sha256.items())
        lines.append(f"| {stage} job | `{job.id}`, script sha256 `{(job.script_sha256 or '')[:16]}`{modules} |")
    return lines


def _cost_lines(record: RunRecord) -> list[str]:
    """The estimate against what the Hub billed (nothing, for a run on this machine)."""
    from runner.backends import engine  # light: the engine's class, no client

    est, worst, actual = (record.cost_usd.get(k) for k in ("estimated", "max", "actual"))
    hours = record.billed_hours
    return ["", "## Cost", "",
            f"Estimated ${est or 0:.2f} on {record.plan.flavor if record.plan else None}"
            + (f" (worst case ${worst:.2f}, every job running to its timeout)" if worst is not None else "")
            + "; actual "
            + ("$0.00 (trained locally)" if not engine(record.backend).bills else
               (f"${actual:.2f} ({hours:.2f} h billed running time)" if actual is not None else "unknown")) + "."]


def _fence(text: str) -> list[str]:
    return ["```text", text.replace("```", "'''"), "```"]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def evaluation_section(ev: Evaluation, base_model: str, settings: dict[str, Any]) -> list[str]:
    """The card's Evaluation section: before/after table, benchmark scores, side-by-side samples."""
    lines = ["", "## Evaluation", "",
             f"On {ev.rows} held-out rows ({ev.held_out}). *Base* is `{base_model}` before the "
             "first step, *tuned* the model after the last, on the same rows.", ""]
    if ev.metrics:
        lines += ["| metric | base | tuned | change |", "| --- | --- | --- | --- |"]
        lines += [f"| {m.label} | {_num(m.before)} | {_num(m.after)} | "
                  f"{'-' if m.delta is None else f'{m.delta:+.4g}'} |" for m in ev.metrics]
    if ev.benchmarks or ev.benchmark_error:
        limit = next((b.limit for b in ev.benchmarks if b.limit), settings.get("task_limit"))
        lines += ["", "### Benchmarks", "",
                  "Tuned model, [lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness), "
                  f"at most {limit} samples per task (a sample, not the full benchmark).", ""]
        if ev.benchmarks:
            lines += ["| task | metric | score |", "| --- | --- | --- |"]
            lines += [f"| {b.task} | {b.metric} | {b.value:.4g}" + (f" ± {b.stderr:.2g}" if b.stderr else "") + " |"
                      for b in ev.benchmarks]
        if ev.benchmark_error:
            lines += ["", f"The benchmark run failed: `{ev.benchmark_error.replace('`', chr(39))}`"]
    if ev.samples:
        tokens = settings.get("max_new_tokens")
        bound = f" (at most {tokens} new tokens)" if tokens else ""
        lines += ["", "### Samples", "",
                  "Held-out prompts as the model sees them (chat template applied to conversations), answered "
                  f"greedily{bound} by the base and the tuned model."]
        for i, sample in enumerate(ev.samples, 1):
            lines += ["", f"**Prompt {i}**", "", *_fence(sample.prompt)]
            if sample.reference is not None:
                lines += ["", "Reference:", "", *_fence(sample.reference)]
            lines += ["", "Base:", "", *_fence(sample.base), "", "Tuned:", "", *_fence(sample.tuned)]
    return lines


def eval_results(record: RunRecord, dataset: str) -> list:
    """The tuned model's scores as `model-index` entries, which the Hub shows on the model page."""
    ev, config = record.evaluation, record.configs.train
    if ev is None or config is None:
        return []
    from huggingface_hub import EvalResult

    out = [EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=f"{dataset} (held out)",
                      dataset_config=config.dataset_config,
                      dataset_split=config.dataset_test_split or config.dataset_train_split, metric_type=m.name,
                      metric_name=m.label, metric_value=round(m.after, 6))
           for m in ev.metrics if m.after is not None]
    out += [EvalResult(task_type="text-generation", dataset_type=b.dataset or b.task, dataset_name=b.task,
                       metric_type=b.metric.split(" ")[0], metric_name=f"{b.metric} ({b.limit} samples)",
                       metric_value=round(b.value, 6))
            for b in ev.benchmarks]
    return out
