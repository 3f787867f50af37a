"""Build the small example datasets under examples/data deterministically.

Arithmetic questions keep the data tiny yet learnable, and give GRPO a
checkable reward. Run: python examples/data/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SYSTEM = "You are a concise assistant that answers arithmetic questions."


def _problems(n: int, seed: int) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        op = rng.choice("+-")
        value = a + b if op == "+" else a - b
        out.append((f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}.", value))
    return out


def _write(name: str, rows: list[dict]) -> None:
    with (HERE / name).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    problems = _problems(96, seed=0)
    _write(
        "sft.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ]
            }
            for q, a, _ in problems
        ],
    )
    rng = random.Random(1)
    dpo = []
    for q, a, value in problems:
        wrong = value + rng.choice([-3, -2, -1, 1, 2, 3])
        dpo.append({"prompt": q, "chosen": a, "rejected": a.rsplit("=", 1)[0] + f"= {wrong}."})
    _write("dpo.jsonl", dpo)
    _write("grpo.jsonl", [{"prompt": q, "answer": str(value)} for q, _, value in problems])


if __name__ == "__main__":
    main()
