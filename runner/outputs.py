"""Verify before recording: a job that ended COMPLETED has done its work only if its outputs exist.

A training job must leave its summary and the model (full weights, or a LoRA adapter)
where it said it pushed it: on the Hub, in the output repo at the commit its summary
names; locally, in its output directory. A GGUF job must leave its summary and every
promised `.gguf` file. Each check returns what is missing and where it was expected
(words that follow "the job ended COMPLETED, but"), or None when everything is there.
"""

from __future__ import annotations

from typing import Protocol

from runner.jobspec import GgufJobConfig, TrainJobConfig
from runner.summaries import GgufSummary, TrainSummary


class Lister(Protocol):
    def files(self, place: str, revision: str | None = None) -> set[str] | None: ...


# Folders of the model repo that are not the model: TRL's checkpoints, the runs' job bundles.
NOT_THE_MODEL = ("last-checkpoint/", "checkpoint-", "runner/")


def _summary_place(config: TrainJobConfig | GgufJobConfig) -> str:
    if config.summary_repo:
        return f"{config.summary_repo_path} in {config.summary_repo}"
    return config.summary_path


def model_place(config: TrainJobConfig, summary: TrainSummary) -> tuple[str, str | None]:
    """Where the trained model should be: (Hub repo or local directory, commit or None)."""
    pushed = summary.pushed
    if config.repo:
        return (pushed.repo, pushed.commit) if pushed else (config.repo, None)
    return config.output_dir, None


def _model_files(files: set[str], adapter: bool) -> tuple[bool, str]:
    """Whether `files` hold the model; and what was expected, for the message."""
    top = {f for f in files if "/" not in f and not f.startswith(NOT_THE_MODEL)}
    if adapter:
        ok = "adapter_config.json" in top and bool(top & {"adapter_model.safetensors", "adapter_model.bin"})
        return ok, "adapter_config.json and adapter_model.safetensors (a LoRA adapter)"
    weights = {f for f in top if f.endswith((".safetensors", ".bin")) and not f.startswith("adapter_")}
    return "config.json" in top and bool(weights), "config.json and the weights (*.safetensors)"


def missing_model(lister: Lister, config: TrainJobConfig, summary: TrainSummary | None) -> str | None:
    """What the training job failed to leave behind, or None when its summary and model are there."""
    if summary is None:
        return f"it wrote no summary (expected {_summary_place(config)})"
    place, commit = model_place(config, summary)
    at = f" at commit {commit[:12]}" if commit else ""
    files = lister.files(place, commit)
    if files is None:
        return f"{place}{at}, where the trained model was expected, does not exist"
    ok, expected = _model_files(files, summary.adapter)
    return None if ok else f"no trained model is in {place}{at} (expected {expected})"


def promised_ggufs(config: GgufJobConfig) -> list[str]:
    """The file names the GGUF job was asked for: <name>-<QUANT>.gguf."""
    return [f"{config.name}-{q.upper()}.gguf" for q in config.quantizations]


def missing_ggufs(lister: Lister, config: GgufJobConfig, summary: GgufSummary | None) -> str | None:
    """What the GGUF job failed to leave behind, or None when its summary and every promised file are there."""
    if summary is None:
        return f"it wrote no summary (expected {_summary_place(config)})"
    if summary.skipped:  # an architecture llama.cpp cannot convert: the job says why, and promises nothing
        return None
    place = config.repo or config.output_dir
    files = lister.files(place) or set()
    missing = [name for name in promised_ggufs(config) if name not in files]
    if missing:
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from {place}"
    return None
