"""What the plan needs to know about a base model: its size and shape.

Sources, best first: a local model's safetensors headers (exact, read without
torch), the Hub's safetensors metadata, a built-in table of well-known models, and
last a size read off the model's name ("Qwen3-0.6B"). The last two are guesses and
the plan says so.
"""

from __future__ import annotations

import json
import math
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
    # Vision-language models (weights of the vision tower included).
    "Qwen/Qwen2-VL-2B-Instruct": 2_208_985_600,
    "Qwen/Qwen2-VL-7B-Instruct": 8_291_375_616,
    "Qwen/Qwen2.5-VL-3B-Instruct": 3_754_622_976,
    "Qwen/Qwen2.5-VL-7B-Instruct": 8_292_166_656,
    "HuggingFaceTB/SmolVLM-256M-Instruct": 256_484_928,
    "HuggingFaceTB/SmolVLM-500M-Instruct": 507_482_304,
    "HuggingFaceTB/SmolVLM-Instruct": 2_246_272_880,
    # Mixture-of-experts models (total parameters; the active ones are below).
    "Qwen/Qwen3-30B-A3B": 30_532_122_624,
    "Qwen/Qwen3-30B-A3B-Instruct-2507": 30_532_122_624,
    "Qwen/Qwen3-235B-A22B": 235_093_634_560,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 46_702_792_704,
    "openai/gpt-oss-20b": 20_914_757_184,
    "openai/gpt-oss-120b": 116_829_156_672,
}

# Parameters active per token of mixture-of-experts models (the model cards' figures): compute
# follows these, memory the totals above.
KNOWN_ACTIVE_PARAMS: dict[str, int] = {
    "Qwen/Qwen3-30B-A3B": 3_300_000_000,
    "Qwen/Qwen3-30B-A3B-Instruct-2507": 3_300_000_000,
    "Qwen/Qwen3-235B-A22B": 22_000_000_000,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 12_900_000_000,
    "openai/gpt-oss-20b": 3_610_000_000,
    "openai/gpt-oss-120b": 5_130_000_000,
}

# (hidden size, layers, vocabulary, architecture) from the configs of the models above people use most:
# the memory model sizes activations from these instead of a rule of thumb.
KNOWN_SHAPES: dict[str, tuple[int, int, int, str]] = {
    "Qwen/Qwen3-0.6B": (1024, 28, 151_936, "Qwen3ForCausalLM"),
    "Qwen/Qwen3-1.7B": (2048, 28, 151_936, "Qwen3ForCausalLM"),
    "Qwen/Qwen3-4B": (2560, 36, 151_936, "Qwen3ForCausalLM"),
    "Qwen/Qwen3-8B": (4096, 36, 151_936, "Qwen3ForCausalLM"),
    "Qwen/Qwen3-14B": (5120, 40, 151_936, "Qwen3ForCausalLM"),
    "Qwen/Qwen3-30B-A3B": (2048, 48, 151_936, "Qwen3MoeForCausalLM"),
    "meta-llama/Llama-3.2-1B-Instruct": (2048, 16, 128_256, "LlamaForCausalLM"),
    "meta-llama/Llama-3.2-3B-Instruct": (3072, 28, 128_256, "LlamaForCausalLM"),
    "meta-llama/Llama-3.1-8B-Instruct": (4096, 32, 128_256, "LlamaForCausalLM"),
}

QWEN_VL = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
IDEFICS3 = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
VISION_ARCHITECTURES = QWEN_VL + IDEFICS3
ASSUMED_IMAGE = (640, 480)  # width, height of an image whose size the sample could not tell


class VisionFacts(BaseModel):
    """How a vision-language model's processor turns one image into tokens (its processor settings)."""

    kind: Literal["qwen_vl", "idefics3"]
    patch_size: int = 14
    merge_size: int = 2  # Qwen: spatial_merge_size; the vision tower merges merge x merge patches per token
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384
    image_seq_len: int = 81  # Idefics3/SmolVLM: tokens per tile
    tile_size: int = 384  # Idefics3: max_image_size.longest_edge
    longest_edge: int = 1536  # Idefics3: an image is scaled to this longest side, then cut into tiles
    splitting: bool = True

    def tokens(self, width: int | None, height: int | None) -> int:
        """Tokens one image takes in the sequence (the processor's resize rules, computed)."""
        w, h = (width, height) if width and height else ASSUMED_IMAGE
        if self.kind == "qwen_vl":
            f = self.patch_size * self.merge_size
            hb, wb = max(f, round(h / f) * f), max(f, round(w / f) * f)
            if hb * wb > self.max_pixels:
                beta = math.sqrt(h * w / self.max_pixels)
                hb, wb = max(f, math.floor(h / beta / f) * f), max(f, math.floor(w / beta / f) * f)
            elif hb * wb < self.min_pixels:
                beta = math.sqrt(self.min_pixels / (h * w))
                hb, wb = math.ceil(h * beta / f) * f, math.ceil(w * beta / f) * f
            return (hb // f) * (wb // f) + 2  # + <|vision_start|> and <|vision_end|>
        if not self.splitting:
            return self.image_seq_len + 3
        sh, sw = (round(side * self.longest_edge / max(w, h)) for side in (h, w))
        tiles = -(-sh // self.tile_size) * -(-sw // self.tile_size)  # each side rounded up to whole tiles
        pieces = tiles + 1 if tiles > 1 else 1  # the tiles plus one downscaled global image
        return pieces * (self.image_seq_len + 3)  # + <fake_token_around_image> and position markers


# Processor settings of the well-known vision-language models (their preprocessor_config.json).
KNOWN_VISION: dict[str, VisionFacts] = {
    "HuggingFaceTB/SmolVLM-256M-Instruct": VisionFacts(kind="idefics3", patch_size=16, image_seq_len=64,
                                                       tile_size=512, longest_edge=2048),
    "HuggingFaceTB/SmolVLM-500M-Instruct": VisionFacts(kind="idefics3", patch_size=16, image_seq_len=64,
                                                       tile_size=512, longest_edge=2048),
}


def vision_defaults(architecture: str | None, model: str) -> VisionFacts | None:
    if model in KNOWN_VISION:
        return KNOWN_VISION[model]
    if architecture in QWEN_VL or re.search(r"qwen2(\.5)?-vl", model, re.IGNORECASE):
        return VisionFacts(kind="qwen_vl")
    if architecture in IDEFICS3 or re.search(r"smolvlm|idefics3", model, re.IGNORECASE):
        return VisionFacts(kind="idefics3")
    return None

Source = Literal["local", "hub", "table", "name"]


class ModelFacts(BaseModel):
    model: str
    params: int  # total: what memory holds
    source: Source
    active_params: int | None = None  # per token, for mixture-of-experts models: what compute costs
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None
    architecture: str | None = None
    vision: VisionFacts | None = None  # set for a vision-language model

    @property
    def is_guess(self) -> bool:
        return self.source in ("table", "name")

    @property
    def compute_params(self) -> int:
        """Parameters each token passes through: all of them, or a mixture-of-experts' active ones."""
        return self.active_params or self.params


def from_local(directory: Path, name: str) -> ModelFacts:
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{name}: cannot read config.json ({e})") from None
    params = _safetensors_params(directory) or _params_from_config(config)
    if not params:
        raise UserError(f"{name}: cannot tell the parameter count (no safetensors weights, unknown config)")
    shape = _shape(config)
    return ModelFacts(model=name, params=params, source="local", vision=_local_vision(directory, config, name),
                      active_params=active_from_config(config, params), **shape)


def _sub(doc: dict, key: str, default: dict | None = None) -> dict:
    """doc[key] when it is a mapping (configs nest their parts, but not always), else `default` or {}."""
    value = doc.get(key)
    return value if isinstance(value, dict) else ({} if default is None else default)


def _processor_settings(directory: Path) -> dict:
    """The image processor's settings: preprocessor_config.json, or processor_config.json's
    `image_processor` (the layout transformers 5 saves), with the processor's own keys beside them."""
    merged: dict = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            doc = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            merged |= {k: v for k, v in doc.items() if k != "image_processor"} | _sub(doc, "image_processor")
    return merged


def _local_vision(directory: Path, config: dict, name: str) -> VisionFacts | None:
    """Image-token settings from a local model's config.json and preprocessor_config.json."""
    architecture = (config.get("architectures") or [None])[0]
    base = vision_defaults(architecture, name)
    if base is None:
        return None
    pre = _processor_settings(directory)
    vision = _sub(config, "vision_config")
    size = _sub(pre, "size")
    update: dict = {}
    if base.kind == "qwen_vl":
        update["patch_size"] = pre.get("patch_size") or vision.get("patch_size") or base.patch_size
        update["merge_size"] = pre.get("merge_size") or vision.get("spatial_merge_size") or base.merge_size
        update["min_pixels"] = pre.get("min_pixels") or size.get("shortest_edge") or base.min_pixels
        update["max_pixels"] = pre.get("max_pixels") or size.get("longest_edge") or base.max_pixels
    else:
        patch = vision.get("patch_size") or base.patch_size
        image = vision.get("image_size") or base.tile_size
        scale = config.get("scale_factor") or 2
        update["patch_size"] = patch
        update["image_seq_len"] = pre.get("image_seq_len") or (image // patch) ** 2 // (scale * scale)
        update["tile_size"] = (pre.get("max_image_size") or {}).get("longest_edge") or image
        update["longest_edge"] = size.get("longest_edge") or base.longest_edge
        update["splitting"] = bool(pre.get("do_image_splitting", True))
    return base.model_copy(update=update)


def _shape(config: dict) -> dict:
    text = _sub(config, "text_config", config)
    archs = config.get("architectures") or [None]
    return {
        "hidden_size": text.get("hidden_size"),
        "num_layers": text.get("num_hidden_layers"),
        "vocab_size": text.get("vocab_size"),
        "architecture": archs[0],
    }


def active_from_config(config: dict, total: int) -> int | None:
    """Active parameters of a mixture-of-experts config: the total less the experts a token skips."""
    c = _sub(config, "text_config", config)
    experts = c.get("num_experts") or c.get("num_local_experts") or c.get("n_routed_experts")
    per_token = c.get("num_experts_per_tok")
    if experts is None or per_token is None:
        return None  # a dense model
    try:
        experts, per_token = int(experts), int(per_token)
        hidden, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
        inter = int(c.get("moe_intermediate_size") or c["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        return None
    if experts <= per_token or per_token < 1:
        return None
    skipped = layers * (experts - per_token) * 3 * hidden * inter  # gate, up and down of each skipped expert
    return max(total - skipped, total * per_token // experts)


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
        hidden, layers, vocab, arch = KNOWN_SHAPES.get(model, (None, None, None, None))
        return ModelFacts(model=model, params=KNOWN_PARAMS[model], source="table", vision=vision_defaults(None, model),
                          active_params=KNOWN_ACTIVE_PARAMS.get(model) or active_from_name(model),
                          hidden_size=hidden, num_layers=layers, vocab_size=vocab, architecture=arch)
    m = re.search(r"(?<![\dxA])(\d+(?:\.\d+)?)\s*([BbMm])(?![A-Za-z])", model.split("/")[-1])
    if m:
        scale = 1e9 if m.group(2).lower() == "b" else 1e6
        return ModelFacts(model=model, params=int(float(m.group(1)) * scale), source="name",
                          vision=vision_defaults(None, model), active_params=active_from_name(model))
    return None


def active_from_name(model: str) -> int | None:
    """Active parameters from a mixture-of-experts name such as Qwen3-30B-A3B (A = active)."""
    m = re.search(r"-A(\d+(?:\.\d+)?)B(?![A-Za-z])", model.split("/")[-1])
    return int(float(m.group(1)) * 1e9) if m else None


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
    active = active_from_config(config, int(total)) or KNOWN_ACTIVE_PARAMS.get(model) or active_from_name(model)
    return ModelFacts(model=model, params=int(total), source="hub", architecture=archs[0],
                      vision=vision_defaults(archs[0], model), active_params=active)
