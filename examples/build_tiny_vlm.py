"""Build the tiny offline vision-language model: SmolVLM's architecture (Idefics3), random weights.

Why Idefics3: its processor is an image processor plus a tokenizer. Qwen2-VL's processor also
loads a video processor, which needs torchvision, and PyPI's torchvision does not import beside
the CPU torch wheel used here. llama.cpp's converter writes both halves of this architecture
(text model and vision projector), so the example exercises the whole GGUF path.

The text side matches examples/tiny-model (a Llama with hidden 256 and 2 layers, and a
SentencePiece tokenizer so llama.cpp takes the vocabulary as-is and K-quants work). The vision
tower is one SigLIP block of width 32 seeing 56 x 56 tiles in 14 x 14 patches; with pixel
shuffle 2 a tile is 4 tokens. The image processor (the PIL one) scales an image to a longest
side of 112 and cuts it into 56 x 56 tiles plus one global view, as SmolVLM does at full size.

    python examples/build_tiny_vlm.py [--out examples/tiny-vlm]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build_tiny_model import corpus_lines as text_corpus  # noqa: E402
from build_tiny_model import train_tokenizer  # noqa: E402
from data.make_vlm_data import COLOURS, QUESTIONS, SHAPES  # noqa: E402

TILE, PATCH, SCALE, LONGEST = 56, 14, 2, 112
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2
GRID = [f"<row_{r}_col_{c}>" for r in range(1, LONGEST // TILE + 1) for c in range(1, LONGEST // TILE + 1)]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
            *GRID]  # every token the processor inserts, so none is added beyond the embedding
# ChatML; an image part renders as the processor's <image> placeholder.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus_lines() -> list[str]:
    """The example VLM data's texts, the tiny text model's corpus, and the chat markup."""
    return list(QUESTIONS) + [f"A {c} {s}." for c in COLOURS for s in SHAPES] + text_corpus()


def build(out: Path) -> None:
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, LlamaTokenizer)

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_model = train_tokenizer(Path(tmp), lines=corpus_lines(), specials=SPECIALS)
        shutil.copyfile(spm_model, out / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(  # local_files_only: saved into the config, so fixed here
            str(out), local_files_only=True, legacy=False, add_bos_token=False, add_eos_token=False,
            add_prefix_space=False, bos_token=None, eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
            additional_special_tokens=SPECIALS, clean_up_tokenization_spaces=False,
        )
    tokenizer.model_max_length = 512
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}

    text = {
        "model_type": "llama", "architectures": ["VLlama3ForCausalLM"],  # SmolVLM's name, which llama.cpp knows
        "vocab_size": len(tokenizer), "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 512,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": TILE, "patch_size": PATCH}
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=SCALE,
                            image_token_id=ids["<image>"], tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    config.dtype = "float32"
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.bos_token_id = None
    model.save_pretrained(out, safe_serialization=True)

    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": LONGEST}, max_image_size={"longest_edge": TILE},
                                                do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN,
                                  chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    # llama.cpp's converter reads user-defined tokens from added_tokens.json (see build_tiny_model.py).
    (out / "added_tokens.json").write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "tiny-vlm")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
