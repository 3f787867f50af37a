"""What the plan needs to know about a base model: its size and shape.

Sources, best first: a local model's safetensors headers (exact, read without
torch), the Hub's safetensors metadata, a built-in table of well-known models, and
last a size read off the model's name ("Qwen3-0.6B"). The last two are guesses and
the plan says so.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from runner.errors import UserError

# Parameter counts (safetensors totals, rounded) of models people start from.
KNOWN_PARAMS: dict[str, int] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008,
    "HuggingFaceTB/SmolLM2-360M-Instruct": 361_821_120,
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1_711_376_384,
    "HuggingFaceTB/SmolLM3-3B": 3_075_098_624,
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen/Qwen2.5-3B-Instruct": 3_085_938_688,
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,
    "Qwen/Qwen3-0.6B": 751_632_384,
    "Qwen/Qwen3-1.7B": 2_031_739_904,
    "Qwen/Qwen3-4B": 4_022_468_096,
    "Qwen/Qwen3-8B": 8_190_735_360,
    "Qwen/Qwen3-14B": 14_768_307_200,
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
    "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824,
    "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
    "mistralai/Mistral-7B-Instruct-v0.3": 7_248_023_360,
    "google/gemma-3-1b-it": 999_885_952,
    "google/gemma-3-4b-it": 4_300_079_472,
}

Source = Literal["local", "hub", "table", "name"]


class ModelFacts(BaseModel):
    model: str
    params: int
    source: Source
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None
    architecture: str | None = None

    @property
    def is_guess(self) -> bool:
        return self.source in ("table", "name")


def from_local(directory: Path, name: str) -> ModelFacts:
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: cannot read config.json ({e})") from None
    params = _safetensors_params(directory) or _params_from_config(config)
    if not params:
        raise UserError(f"{name}: cannot tell the parameter count (no safetensors weights, unknown config)")
    return ModelFacts(model=name, params=params, source="local", **_shape(config))


def _shape(config: dict) -> dict:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    archs = config.get("architectures") or [None]
    return {
        "hidden_size": text.get("hidden_size"),
        "num_layers": text.get("num_hidden_layers"),
        "vocab_size": text.get("vocab_size"),
        "architecture": archs[0],
    }


def _safetensors_params(directory: Path) -> int | None:
    """Sum tensor sizes from safetensors headers (8-byte length + JSON), no weights read."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with f.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 * 1024 * 1024:
                return None
            header = json.loads(fh.read(length))
        for key, meta in header.items():
            if key != "__metadata__":
                n = 1
                for d in meta.get("shape", []):
                    n *= d
                total += n
    return total


def _params_from_config(c: dict) -> int | None:
    """Llama/Qwen-style decoder count from the config, for repos without safetensors."""
    try:
        h, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * h)
        heads = c.get("num_attention_heads", max(h // 64, 1))
        kv = c.get("num_key_value_heads", heads)
        hd = c.get("head_dim", h // heads)
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    attn = h * heads * hd * 2 + h * kv * hd * 2
    per_layer = attn + 3 * h * inter + 2 * h
    emb = V * h * (1 if c.get("tie_word_embeddings", False) else 2)
    return emb + L * per_layer + h


def from_name(model: str) -> ModelFacts | None:
    if model in KNOWN_PARAMS:
        return ModelFacts(model=model, params=KNOWN_PARAMS[model], source="table")
    m = re.search(r"(?<![\dx])(\d+(?:\.\d+)?)\s*([BbMm])(?![A-Za-z])", model.split("/")[-1])
    if m:
        scale = 1e9 if m.group(2).lower() == "b" else 1e6
        return ModelFacts(model=model, params=int(float(m.group(1)) * scale), source="name")
    return None


def from_hub(model: str, api, revision: str | None = None) -> ModelFacts:
    """Parameter count from the Hub's safetensors metadata. Raises UserError for a missing repo."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = api.model_info(model, revision=revision, expand=["safetensors", "config"])
    except GatedRepoError:
        raise UserError(f"{model}: gated model; accept its license on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"{model}: model not found on the Hub (or private without a token)") from None
    except RevisionNotFoundError:
        raise UserError(f"{model}: revision '{revision}' not found on the Hub") from None
    total = info.safetensors.total if info.safetensors else None
    if not total:
        raise LookupError("no safetensors metadata")
    config = info.config or {}
    archs = config.get("architectures") or [None]
    return ModelFacts(model=model, params=int(total), source="hub", architecture=archs[0])
