"""Build examples/data/vlm-dpo.parquet: a tiny RLAIF-V-shaped preference dataset with generated images.

Same columns as openbmb/RLAIF-V-Dataset (`image`, `question`, `chosen`, `rejected`), the
image stored as the `datasets` Image feature ({bytes, path} structs of PNG files). Each image
is a coloured shape on a plain background, and the chosen answer names its colour and shape.
Deterministic: run `python examples/data/make_vlm_data.py` to rebuild it.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

HERE = Path(__file__).parent
SIZE = 56  # pixels: 2 x 2 merged patches for the tiny Qwen2-VL model (patch 14, merge 2)
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SHAPES = ("square", "circle")
QUESTIONS = ("What is in the picture?", "Describe the image.", "What shape and colour do you see?")


def image_png(colour: tuple[int, int, int], shape: str) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    box = (12, 12, SIZE - 12, SIZE - 12)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        wrong = rng.choice([c for c in COLOURS if c != name])
        out.append({
            "image": {"bytes": image_png(COLOURS[name], shape), "path": None},
            "question": rng.choice(QUESTIONS),
            "chosen": f"A {name} {shape}.",
            "rejected": f"A {wrong} {shape}.",
        })
    return out


def main() -> None:
    from datasets import Dataset, Features, Image, Value

    features = Features({"image": Image(), "question": Value("string"), "chosen": Value("string"),
                         "rejected": Value("string")})
    Dataset.from_list(rows(16, seed=0), features=features).to_parquet(str(HERE / "vlm-dpo.parquet"))


if __name__ == "__main__":
    main()
