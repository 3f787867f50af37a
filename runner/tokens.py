"""Token counts from a dataset sample: about 4 characters per token, plus each image's tokens.

What the plan sizes memory and compute by; the counts are estimates the plan lists as guesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runner.dataset import DatasetReport
from runner.images import ImageInfo, images_in
from runner.modelfacts import ASSUMED_IMAGE, VisionFacts

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4  # chat-template markup around each turn


def _text_tokens(value: Any) -> float:
    if isinstance(value, ImageInfo) or images_in(value):
        return 0.0  # counted by image_tokens
    if isinstance(value, str):
        return len(value) / CHARS_PER_TOKEN
    if isinstance(value, list):  # a conversation
        return sum(_text_tokens(m.get("content", "")) + TOKENS_PER_MESSAGE if isinstance(m, dict) else _text_tokens(m)
                   for m in value)
    if isinstance(value, dict):
        return sum(_text_tokens(v) for v in value.values())
    return 0.0 if value is None else len(str(value)) / CHARS_PER_TOKEN


def image_tokens(row: dict[str, Any], vision: VisionFacts | None) -> int:
    """Tokens the row's images take in the prompt (none for a text-only model, which cannot see them)."""
    if vision is None:
        return 0
    return sum(vision.tokens(i.width, i.height) for v in row.values() for i in images_in(v))


def row_sequences(row: dict[str, Any], method: str, completion_tokens: int,
                  vision: VisionFacts | None = None) -> list[float]:
    """Token lengths of the sequences one row becomes in training, before truncation."""
    if method == "dpo":  # images sit in the prompt, which both the chosen and the rejected sequence repeat
        prompt = _text_tokens(row.get("prompt")) + image_tokens(row, vision)
        return [prompt + _text_tokens(row.get("chosen")), prompt + _text_tokens(row.get("rejected"))]
    if method == "sft":
        if "messages" in row:
            return [_text_tokens(row["messages"])]
        if "text" in row:
            return [_text_tokens(row["text"])]
        return [_text_tokens(row.get("prompt")) + _text_tokens(row.get("completion")) + 2 * TOKENS_PER_MESSAGE]
    if method == "grpo":
        return [_text_tokens(row.get("prompt")) + completion_tokens]
    return [_text_tokens(row)]


def sequence_stats(rows: Sequence[dict], method: str, max_length: int, completion_tokens: int,
                   vision: VisionFacts | None = None) -> tuple[float, float, float]:
    """(mean tokens per row, longest sequence, fraction of rows truncated), all after truncation."""
    if not rows:
        return 0.0, 0.0, 0.0
    per_row, longest, truncated = [], 0.0, 0
    for row in rows:
        seqs = row_sequences(row, method, completion_tokens, vision)
        truncated += any(s > max_length for s in seqs)
        clipped = [min(s, max_length) for s in seqs]
        per_row.append(sum(clipped))
        longest = max(longest, *clipped)
    return sum(per_row) / len(per_row), longest, truncated / len(rows)


def image_notes(report: DatasetReport, vision: VisionFacts, max_length: int) -> tuple[list[str], list[str]]:
    """(warnings, guesses) about the sample's image tokens."""
    if vision.kind == "qwen_vl":
        how = (f"patch {vision.patch_size} x merge {vision.merge_size}, {vision.min_pixels:,}-{vision.max_pixels:,} "
               "pixels")
    else:
        how = (f"{vision.image_seq_len} per {vision.tile_size}px tile, longest edge {vision.longest_edge}"
               + ("" if vision.splitting else ", no splitting"))
    guesses = [f"image tokens (from the processor settings: {how})"]
    unknown = sum(1 for r in report.sample for v in r.values() for i in images_in(v) if not i.pixels)
    if unknown:
        guesses.append(f"image size ({unknown} sampled image(s) of unknown size assumed "
                       f"{ASSUMED_IMAGE[0]}x{ASSUMED_IMAGE[1]})")
    most = max((image_tokens(r, vision) for r in report.sample), default=0)
    if most >= max_length:
        return [f"a sampled row's images take {most} tokens, more than max_length {max_length}: truncation would "
                "cut image tokens and training fails; raise training.max_length or use smaller images"], guesses
    return [], guesses


def image_tokens_per_row(report: DatasetReport, vision: VisionFacts | None) -> float | None:
    """Mean tokens the sampled rows' images take (None without images a model can see)."""
    if not (report.images and vision and report.sample):
        return None
    return round(sum(image_tokens(r, vision) for r in report.sample) / len(report.sample), 1)
