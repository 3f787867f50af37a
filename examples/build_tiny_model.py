"""Build the tiny offline example model: deterministic, no download.

A Llama-architecture causal LM (hidden 256, intermediate 512, so llama.cpp's K-quants
such as Q4_K_M quantize for real) with a SentencePiece tokenizer trained on the example
data in examples/data.

Why SentencePiece: llama.cpp's converter identifies a BPE tokenizer by hashing how it
tokenizes a test string and refuses hashes it does not know, which any home-made BPE
vocabulary fails. A SentencePiece model is converted as-is. To make llama.cpp and
transformers tokenize identically we remove the usual sources of drift: no dummy prefix
space, no whitespace or NFKC normalisation, no BOS, and the ChatML markers are
SentencePiece user-defined symbols (so both sides split them out the same way).

    python examples/build_tiny_model.py [--out examples/tiny-model]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECIALS = ["<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB_SIZE = 512


def corpus_lines() -> list[str]:
    """Every text in the example data, in file order, plus the chat markup."""
    lines: list[str] = []
    for name in ("sft.jsonl", "dpo.jsonl", "grpo.jsonl"):
        for raw in (HERE / "data" / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(raw)
            for value in row.values():
                if isinstance(value, str):
                    lines.append(value)
                elif isinstance(value, list):
                    lines += [f"{m['role']}\n{m['content']}" for m in value]
    return lines


def train_tokenizer(workdir: Path, lines: list[str] | None = None, specials: list[str] = SPECIALS) -> Path:
    """A SentencePiece BPE model trained on `lines` (default: the example data), with `specials` kept whole."""
    import sentencepiece as spm

    text = workdir / "corpus.txt"
    text.write_text("\n".join(lines or corpus_lines()) + "\n", encoding="utf-8")
    prefix = workdir / "tokenizer"
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), model_type="bpe", vocab_size=VOCAB_SIZE,
        character_coverage=1.0, byte_fallback=True, num_threads=1, seed_sentencepiece_size=10000,
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=-1, eos_id=1, pad_id=2, user_defined_symbols=specials,
        hard_vocab_limit=False, minloglevel=2,
    )
    # The trained proto records the temp paths it was trained from; drop them so builds are byte-identical.
    from sentencepiece import sentencepiece_model_pb2

    path = prefix.with_suffix(".model")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    path.write_bytes(proto.SerializeToString())
    return path


def build(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_model = train_tokenizer(Path(tmp))
        # llama.cpp's converter reads tokenizer.model itself; transformers converts it to a fast tokenizer.
        shutil.copyfile(spm_model, out / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(
            str(out), legacy=False, add_bos_token=False, add_eos_token=False,
            add_prefix_space=False, bos_token=None, eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
            additional_special_tokens=SPECIALS, clean_up_tokenization_spaces=False,
        )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 512

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # The converter reads user-defined tokens from added_tokens.json; without it llama.cpp would
    # spell the ChatML markers out byte by byte instead of matching them as single tokens.
    added = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "tiny-model")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
