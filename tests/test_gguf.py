"""GGUF for every runtime: several quantizations from one f16 conversion, an importance matrix
from the training data, the chat template checked, an Ollama Modelfile and a GGUF card, all
published in one commit. Real llama.cpp on the tiny example model (hidden 256, so K- and
IQ-quants are real), the Hub through the real HfApi against the stand-in."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import JOBS, ROOT, job_env, keys_outside, load_job
from hubstub import HubStub

# Trains, quantizes or builds a model: the slow tier (`pytest -m "not slow"` skips it).
pytestmark = pytest.mark.slow


TINY = ROOT / "examples" / "tiny-model"
DATA = ROOT / "examples" / "data" / "sft.jsonl"
TOKEN = "test-only-not-a-token-gguf"
CHATML = ("<|im_start|>system\nYou are a concise assistant that answers arithmetic questions.<|im_end|>\n"
          "<|im_start|>user\n")

pytest.importorskip("llama_cpp")


def gguf_job(config: dict, tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp / "gguf-config.json"
    path.write_text(json.dumps(config))
    return subprocess.run([sys.executable, str(JOBS / "gguf.py"), "--config", str(path)], env=job_env(**(env or {})),
                          capture_output=True, text=True, timeout=900)


def config_for(tmp: Path, quantizations: list[str], *, imatrix: bool = False, model: Path = TINY, **extra) -> dict:
    return {"model_dir": str(model), "base_model": None, "name": "tiny", "quantizations": quantizations,
            "imatrix": imatrix, "dataset_name": str(DATA), "dataset_columns": None, "model_id": "alice/tiny",
            "output_dir": str(tmp / "out"), "hub_repo": None, "private": True,
            "summary_path": str(tmp / "summary.json"), **extra}


def card_metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture(scope="module")
def imatrix_run(module_hub: HubStub, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Q4_K_M and IQ2_XXS with an importance matrix, published to the stand-in."""
    tmp = tmp_path_factory.mktemp("imatrix")
    config = config_for(tmp, ["Q4_K_M", "IQ2_XXS"], imatrix=True, hub_repo="alice/tiny-GGUF")
    proc = gguf_job(config, tmp, {"HF_ENDPOINT": module_hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp / "summary.json").read_text())
    return {"summary": summary, "out": tmp / "out", "stdout": proc.stdout + proc.stderr}


def test_two_quantizations_with_imatrix_give_both_files_the_modelfile_and_the_card(imatrix_run: dict) -> None:
    from gguf import GGUFReader

    summary, out = imatrix_run["summary"], imatrix_run["out"]
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "tiny-IQ2_XXS.gguf",
                                                     "tiny-Q4_K_M.gguf", "tiny-imatrix.gguf"]
    files = {f["quantization"]: f for f in summary["files"]}
    assert list(files) == ["Q4_K_M", "IQ2_XXS"]
    for quant, f in files.items():
        reader = GGUFReader(f["path"])
        fields = {name: reader.fields[name] for name in reader.fields}
        # llama.cpp really used the matrix: it records it, and IQ2_XXS (which it refuses without one) is in the file
        entries = fields["quantize.imatrix.entries_count"]
        assert int(entries.parts[entries.data[0]][0]) == summary["imatrix"]["matrices"] > 0
        source = fields["quantize.imatrix.file"]
        assert bytes(source.parts[source.data[0]]).decode() == "tiny-imatrix.gguf"
        types = {t.tensor_type.name for t in reader.tensors}
        assert ("IQ2_XXS" if quant == "IQ2_XXS" else "Q4_K") in types
        assert f["imatrix"] is True and isinstance(f["smoke_test"], str) and f["smoke_test"]
        assert f["bytes"] == Path(f["path"]).stat().st_size
    # the matrix file is llama.cpp's imatrix format: one in_sum2/counts pair per block matrix
    matrix = GGUFReader(str(out / "tiny-imatrix.gguf"))
    names = {t.name for t in matrix.tensors}
    assert "blk.0.attn_q.weight.in_sum2" in names and "blk.1.ffn_down.weight.counts" in names
    assert len(names) == 2 * summary["imatrix"]["matrices"] == 2 * 2 * 7  # 2 blocks x q,k,v,o,gate,up,down
    assert summary["imatrix"]["tokens"] >= 512 and summary["imatrix"]["dataset"] == "sft.jsonl"


def test_the_runner_reads_every_key_of_the_summary(imatrix_run: dict) -> None:
    from runner.summaries import GgufSummary

    # imatrix, the template check with its messages, a Hub commit: the parts only this run writes
    assert keys_outside(GgufSummary, imatrix_run["summary"]) == []
    parsed = GgufSummary.model_validate(imatrix_run["summary"])
    raw = imatrix_run["summary"]["imatrix"]
    assert parsed.imatrix is not None and parsed.imatrix.model_dump() == {k: raw[k] for k in parsed.imatrix.model_dump()}
    assert parsed.imatrix.dataset == "sft.jsonl" and parsed.imatrix.tokens >= 512


def test_chat_template_check_passes_for_the_example_model(imatrix_run: dict) -> None:
    check = imatrix_run["summary"]["chat_template"]
    assert check["checked"] is True
    # the held-out conversation is a real one from the data, rendered as ChatML by both sides
    assert check["messages"][-1]["role"] == "assistant" and check["rendered"]["conversation"].startswith(CHATML)
    assert check["rendered"]["prompt"].endswith("<|im_start|>assistant\n")


def test_ollama_modelfile_and_gguf_card(imatrix_run: dict) -> None:
    out = imatrix_run["out"]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./tiny-Q4_K_M.gguf\n" in modelfile
    assert ('TEMPLATE """{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
            '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
            '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
            '{{ if $last }}<|im_start|>assistant\n{{ end }}'
            '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}{{ if not $last }}<|im_end|>\n'
            '{{ end }}{{ end }}{{ end }}"""') in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile

    card = (out / "README.md").read_text()
    meta = card_metadata(card)
    assert meta["base_model"] == "alice/tiny" and meta["base_model_relation"] == "quantized"
    assert "gguf" in meta["tags"] and "imatrix" in meta["tags"]
    for f in imatrix_run["summary"]["files"]:
        size = Path(f["path"]).stat().st_size
        row = next(line for line in card.splitlines() if line.startswith(f"| [`{Path(f['path']).name}`]"))
        assert f"| {f['quantization']} |" in row and ("KiB" in row or "MiB" in row)
        assert size > 0
    for usage in ("llama-server -hf alice/tiny-GGUF:Q4_K_M", "lms get alice/tiny-GGUF@Q4_K_M",
                  "ollama run hf.co/alice/tiny-GGUF:Q4_K_M", "ollama create tiny -f Modelfile"):
        assert usage in card


def test_all_files_go_up_in_one_commit(module_hub: HubStub, imatrix_run: dict) -> None:
    repo = module_hub.state.repos["alice/tiny-GGUF"]
    assert repo.private is True
    # the repo's creation commit (.gitattributes), then exactly one with everything
    assert len(repo.commits) == 2
    before, after = repo.commits[0][1], repo.commits[1][1]
    added = {name: data for name, data in after.items() if name not in before}
    assert sorted(added) == ["Modelfile", "README.md", "tiny-IQ2_XXS.gguf", "tiny-Q4_K_M.gguf", "tiny-imatrix.gguf"]
    for name, data in added.items():
        assert data == (imatrix_run["out"] / name).read_bytes()
    assert imatrix_run["summary"]["commit"] == repo.commits[1][0]
    assert TOKEN not in imatrix_run["stdout"]


def test_tampered_chat_template_fails_the_conversion_showing_both_renderings(tmp_path: Path) -> None:
    # A stale template in tokenizer_config.json beside chat_template.jinja: llama.cpp's converter embeds
    # the former, transformers uses the latter. The GGUF would chat differently from the model.
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    tok_config = json.loads((model / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                                   "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(tok_config))
    proc = gguf_job(config_for(tmp_path, ["Q8_0"], model=model), tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stdout[-2000:]
    error = errors[0]
    assert "the chat template in convert-f16.gguf renders the held-out conversation differently" in error
    assert "transformers renders '" + CHATML.replace("\n", "\\n") in error  # the tokenizer's rendering...
    assert "the GGUF renders 'system: You are a concise assistant" in error  # ...and the GGUF's
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.gguf"))


def test_iq_quantization_without_imatrix_is_refused(tmp_path: Path) -> None:
    proc = gguf_job(config_for(tmp_path, ["Q4_K_M", "IQ3_XXS"]), tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines() == ["error: IQ3_XXS needs an importance matrix: set gguf.imatrix: true"]


def test_importance_matrix_is_the_squared_input_of_every_linear_layer(tmp_path: Path) -> None:
    """What llama.cpp's graph callback collects equals the sum over tokens of the squared activations
    entering each linear layer of the transformers model (fed the same token ids), up to f16 rounding."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = load_job("gguf")
    f16 = tmp_path / "f16.gguf"
    job.convert(TINY, f16, "f16")
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:10]]
    text = job.calibration_text(rows, tokenizer)
    matrix = job.compute_imatrix(f16, text, 2)
    assert matrix.chunks == 1 and 64 <= matrix.tokens < 512  # less than one chunk of data: all of it, once

    ids = Llama(model_path=str(f16), vocab_only=True, verbose=False).tokenize(text.encode(), add_bos=True,
                                                                              special=True)[:matrix.tokens]
    model = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)
    seen: dict[str, np.ndarray] = {}
    gguf_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
    for i, layer in enumerate(model.model.layers):
        for hf, name in gguf_names.items():
            def hook(_module, args, key=f"blk.{i}.{name}.weight"):
                seen[key] = args[0].double().square().sum(dim=(0, 1)).numpy()
            layer.get_submodule(hf).register_forward_pre_hook(hook)
    with torch.no_grad():
        model(torch.tensor([ids]))
    assert sorted(matrix.sums) == sorted(seen)
    for name, expected in seen.items():
        assert matrix.counts[name] == len(ids)
        np.testing.assert_allclose(matrix.sums[name], expected, rtol=0.02, atol=1e-3)

    # llama.cpp itself refuses the lowest IQ types without an importance matrix, and takes this one.
    with pytest.raises(job.JobError, match="quantizing to IQ2_XXS failed"):
        job.quantize(f16, tmp_path / "without.gguf", "IQ2_XXS")
    job.quantize(f16, tmp_path / "with.gguf", "IQ2_XXS", matrix)
    assert (tmp_path / "with.gguf").read_bytes()[:4] == b"GGUF"


def test_ollama_template_is_left_to_ollama_when_the_chat_template_has_logic() -> None:
    """A template that adds a default system prompt is not per-message text: no TEMPLATE is derived."""
    from jinja2 import Template

    job = load_job("gguf")
    source = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
              "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    render = lambda msgs, gen: Template(source).render(messages=msgs, add_generation_prompt=gen)  # noqa: E731
    assert job.ollama_template(render) is None
    plain = source.split("{% endif %}", 1)[1]
    template, stops = job.ollama_template(lambda msgs, gen: Template(plain).render(messages=msgs,
                                                                                    add_generation_prompt=gen))
    assert template.startswith("{{ range $i") and stops == ["<|im_end|>", "<|im_start|>user"]
    # A BOS written by the template is left to llama.cpp's tokenizer, which adds it itself.
    with_bos = "{{ bos_token }}" + plain
    template_bos, _ = job.ollama_template(lambda msgs, gen: Template(with_bos).render(
        messages=msgs, add_generation_prompt=gen, bos_token="<s>"), "<s>")
    assert template_bos == template
    assert "No TEMPLATE" in job.modelfile("x-Q4_K_M.gguf", None, "</s>")


def test_the_trained_model_is_downloaded_at_the_commit_its_job_pushed(hub: HubStub, tmp_path: Path) -> None:
    """A later push to the model repo (another run, a hand edit) is not what gets converted."""
    files = {p.relative_to(TINY).as_posix(): p.read_bytes() for p in TINY.rglob("*") if p.is_file()}
    trained = hub.commit("alice/tiny-trained", files)
    hub.commit("alice/tiny-trained", {"config.json": b"{}"}, deleted=("model.safetensors",))  # main moves on
    model = tmp_path / "model"
    config = config_for(tmp_path, ["Q8_0"], model=model, model_repo="alice/tiny-trained", model_revision=trained)
    proc = gguf_job(config, tmp_path, {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"downloading alice/tiny-trained at {trained[:12]}" in proc.stdout
    assert (model / "config.json").read_bytes() == (TINY / "config.json").read_bytes()
    assert json.loads((tmp_path / "summary.json").read_text())["files"][0]["quantization"] == "Q8_0"
