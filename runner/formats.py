"""Which TRL trainer a sample of rows is ready for, and what mapping would make it ready.

Pure functions over a list of row dicts. Structure is checked, not only column names:
message roles and order, empty turns, string vs message-list preference pairs, and
implicit prompts. Formats follow TRL's dataset-format guide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel

from runner.images import images_in

Status = Literal["ready", "needs_mapping", "incompatible", "unknown"]  # unknown: the data could not be read
METHODS = ("sft", "dpo", "grpo", "kto")
ROLES = {"system", "user", "assistant", "tool", "developer"}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant",
                  "tool": "tool", "function_call": "assistant", "observation": "tool"}

# Common column names and the TRL column they stand for.
PROMPT_ALIASES = ("question", "instruction", "query", "input", "problem", "prompt_text", "context")
COMPLETION_ALIASES = ("answer", "response", "output", "completion_text", "solution", "target")
CHOSEN_ALIASES = ("chosen_response", "response_chosen", "preferred", "better", "pos", "positive", "response_j")
REJECTED_ALIASES = ("rejected_response", "response_rejected", "dispreferred", "worse", "neg", "negative", "response_k")
MESSAGES_ALIASES = ("conversation", "chat", "dialog", "dialogue", "turns", "messages_list")
LABEL_ALIASES = ("is_desirable", "desirable", "good", "thumbs_up", "feedback")


class MethodVerdict(BaseModel):
    status: Status
    reason: str
    mapping: dict[str, str] | None = None


def _shown(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, list) else "list"


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(m, dict) and "role" in m and "content" in m for m in v)


def _is_sharegpt(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(m, dict) and "from" in m and "value" in m for m in v)


def _column(rows: Sequence[dict], name: str) -> list[Any]:
    return [r.get(name) for r in rows]


def _all(rows: Sequence[dict], name: str, check) -> bool:
    return all(check(v) for v in _column(rows, name))


def conversation_problem(messages: list[dict], *, needs_assistant_last: bool) -> str | None:
    """Why a role/content message list is not a usable chat, or None."""
    roles = [m.get("role") for m in messages]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        return f"unknown message role {bad[0]!r} (expected system, user, assistant or tool)"
    for m in messages:
        content = m.get("content")
        if content is None or (isinstance(content, str) and not content.strip()) or (
            isinstance(content, list) and not content
        ):
            if not (m.get("role") == "assistant" and m.get("tool_calls")):
                return f"empty {m.get('role')} turn"
    body = [r for r in roles if r not in ("system", "developer")]
    if roles and roles[0] not in ("system", "developer", "user"):
        return f"conversation starts with a {roles[0]!r} turn; it should start with system or user"
    if any(r in ("system", "developer") for r in roles[1:]) and roles[0] not in ("system", "developer"):
        return "system turn in the middle of a conversation"
    chat = [r for r in body if r != "tool"]
    for a, b in zip(chat, chat[1:]):
        if a == b:
            return f"two {a!r} turns in a row; user and assistant should alternate"
    if needs_assistant_last and (not chat or chat[-1] != "assistant"):
        return "conversation does not end with an assistant turn, so there is nothing to learn from"
    return None


def _first_problem(rows: Sequence[dict], name: str, *, needs_assistant_last: bool) -> str | None:
    for i, v in enumerate(_column(rows, name), start=1):  # rows count from 1, as in the data file
        if not _is_messages(v):
            return f"row {i}: '{name}' is not a list of {{role, content}} messages"
        problem = conversation_problem(v, needs_assistant_last=needs_assistant_last)
        if problem:
            return f"row {i}: '{name}': {problem}"
    return None


def _empty_string_row(rows: Sequence[dict], names: Sequence[str]) -> str | None:
    for i, r in enumerate(rows, start=1):
        for n in names:
            v = r.get(n)
            if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
                return f"row {i}: empty '{n}'"
    return None


def _find(columns: Sequence[str], aliases: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[a] for a in aliases if a in lower), None)


def _sharegpt_mapping(rows: Sequence[dict], columns: Sequence[str]) -> tuple[str, str | None] | None:
    """A ShareGPT `conversations[{from, value}]` column, and a role problem if any."""
    for c in columns:
        if _all(rows, c, _is_sharegpt):
            unknown = {m["from"] for v in _column(rows, c) for m in v} - set(SHAREGPT_ROLES)
            return c, (f"unknown ShareGPT speaker {sorted(unknown)[0]!r}" if unknown else None)
    return None


def _messages_alias(rows: Sequence[dict], columns: Sequence[str], skip: str = "messages") -> str | None:
    for c in columns:
        if c != skip and _all(rows, c, _is_messages):
            return c
    return None


# --- per method --------------------------------------------------------------------------


def sft(rows: Sequence[dict], columns: Sequence[str]) -> MethodVerdict:
    if "messages" in columns:
        problem = _first_problem(rows, "messages", needs_assistant_last=True)
        if problem:
            return MethodVerdict(status="incompatible", reason=problem)
        return MethodVerdict(status="ready", reason="found 'messages' column with conversation format")
    if "text" in columns:
        if not _all(rows, "text", _is_str):
            return MethodVerdict(status="incompatible", reason="'text' column is not a string in every row")
        empty = _empty_string_row(rows, ["text"])
        if empty:
            return MethodVerdict(status="incompatible", reason=empty)
        return MethodVerdict(status="ready", reason="found 'text' column with plain text (language modeling)")
    if "prompt" in columns and "completion" in columns:
        return _prompt_completion(rows, "prompt", "completion", {})
    sharegpt = _sharegpt_mapping(rows, columns)
    if sharegpt:
        col, problem = sharegpt
        if problem:
            return MethodVerdict(status="incompatible", reason=f"'{col}' looks like ShareGPT but has {problem}")
        return MethodVerdict(status="needs_mapping", mapping={col: "messages"},
                             reason=f"'{col}' is ShareGPT format ({{from, value}} turns); map it to 'messages'")
    alias = _messages_alias(rows, columns)
    if alias:
        problem = _first_problem(rows, alias, needs_assistant_last=True)
        if problem:
            return MethodVerdict(status="incompatible", reason=problem)
        return MethodVerdict(status="needs_mapping", mapping={alias: "messages"},
                             reason=f"'{alias}' holds conversations; map it to 'messages'")
    prompt = "prompt" if "prompt" in columns else _find(columns, PROMPT_ALIASES)
    completion = "completion" if "completion" in columns else _find(columns, COMPLETION_ALIASES)
    if prompt and completion:
        mapping = {k: v for k, v in ((prompt, "prompt"), (completion, "completion")) if k != v}
        return _prompt_completion(rows, prompt, completion, mapping)
    body = _find(columns, ("content", "body", "document"))
    if body and _all(rows, body, _is_str):
        return MethodVerdict(status="needs_mapping", mapping={body: "text"},
                             reason=f"'{body}' holds plain text; map it to 'text'")
    return MethodVerdict(status="incompatible",
                         reason="no 'messages', 'text' or 'prompt'+'completion' columns (columns: "
                         + ", ".join(columns) + ")")


def _prompt_completion(rows: Sequence[dict], p: str, c: str, mapping: dict[str, str]) -> MethodVerdict:
    kinds = {(_is_str(r.get(p)), _is_str(r.get(c))) for r in rows}
    conversational = all(_is_messages(r.get(p)) and _is_messages(r.get(c)) for r in rows)
    if kinds != {(True, True)} and not conversational:
        return MethodVerdict(status="incompatible",
                             reason=f"'{p}' and '{c}' must both be strings or both message lists in every row")
    empty = _empty_string_row(rows, [p, c])
    if empty:
        return MethodVerdict(status="incompatible", reason=empty)
    form = "conversational prompt-completion" if conversational else "prompt-completion"
    if mapping:
        pairs = ", ".join(f"{k} -> {v}" for k, v in mapping.items())
        return MethodVerdict(status="needs_mapping", mapping=mapping, reason=f"{form} data under other names: {pairs}")
    return MethodVerdict(status="ready", reason=f"found 'prompt' and 'completion' columns ({form} format)")


class _Preferences(BaseModel):
    form: str
    mapping: dict[str, str]
    explicit_prompt: bool


def _preferences(rows: Sequence[dict], columns: Sequence[str]) -> MethodVerdict | _Preferences:
    """The preference-pair form of the rows, or an incompatible verdict saying why there is none."""
    chosen = "chosen" if "chosen" in columns else _find(columns, CHOSEN_ALIASES)
    rejected = "rejected" if "rejected" in columns else _find(columns, REJECTED_ALIASES)
    if not (chosen and rejected):
        return MethodVerdict(status="incompatible",
                             reason="preference data needs 'chosen' and 'rejected' columns (columns: "
                             + ", ".join(columns) + ")")
    prompt = "prompt" if "prompt" in columns else _find(columns, PROMPT_ALIASES)
    mapping = {k: v for k, v in ((prompt, "prompt"), (chosen, "chosen"), (rejected, "rejected")) if k and k != v}
    names = [n for n in (prompt, chosen, rejected) if n]
    empty = _empty_string_row(rows, names)
    if empty:
        return MethodVerdict(status="incompatible", reason=empty)
    strings = all(_is_str(r.get(chosen)) and _is_str(r.get(rejected)) for r in rows)
    convs = all(_is_messages(r.get(chosen)) and _is_messages(r.get(rejected)) for r in rows)
    if not (strings or convs):
        return MethodVerdict(status="incompatible",
                             reason=f"'{chosen}' and '{rejected}' must both be strings or both message lists")
    if prompt:
        prompt_ok = all((_is_str(r.get(prompt)) if strings else _is_messages(r.get(prompt))) for r in rows)
        if not prompt_ok:
            want = "a string" if strings else "a message list"
            return MethodVerdict(status="incompatible", reason=f"'{prompt}' must be {want} like '{chosen}'")
        form = "explicit prompt, " + ("string preferences" if strings else "conversational preferences")
    else:
        for i, r in enumerate(rows, start=1):
            a, b = r[chosen], r[rejected]
            shared = _common_prefix_len(a, b)
            if convs:
                if shared == 0:
                    return MethodVerdict(status="incompatible",
                                         reason=f"row {i}: no 'prompt' column and chosen/rejected share no "
                                         "prompt turns")
                problem = conversation_problem(a, needs_assistant_last=True)
                if problem:
                    return MethodVerdict(status="incompatible", reason=f"row {i}: '{chosen}': {problem}")
            elif shared == 0:
                return MethodVerdict(status="incompatible",
                                     reason=f"row {i}: no 'prompt' column and chosen/rejected share no common prefix")
        form = "implicit prompt (shared start of chosen and rejected)"
    same = next((i for i, r in enumerate(rows, start=1) if r[chosen] == r[rejected]), None)
    if same is not None:
        return MethodVerdict(status="incompatible", reason=f"row {same}: 'chosen' and 'rejected' are identical")
    return _Preferences(form=form, mapping=mapping, explicit_prompt=prompt is not None)


def dpo(rows: Sequence[dict], columns: Sequence[str]) -> MethodVerdict:
    found = _preferences(rows, columns)
    if isinstance(found, MethodVerdict):
        return found
    if found.mapping:
        pairs = ", ".join(f"{k} -> {v}" for k, v in found.mapping.items())
        return MethodVerdict(status="needs_mapping", mapping=found.mapping,
                             reason=f"preference data ({found.form}): {pairs}")
    return MethodVerdict(status="ready", reason=f"found 'chosen' and 'rejected' columns ({found.form})")


def _common_prefix_len(a: Any, b: Any) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def grpo(rows: Sequence[dict], columns: Sequence[str]) -> MethodVerdict:
    prompt = "prompt" if "prompt" in columns else _find(columns, PROMPT_ALIASES)
    if not prompt:
        if "messages" in columns:
            return MethodVerdict(status="incompatible",
                                 reason="GRPO needs a 'prompt' column; 'messages' holds whole conversations "
                                 "(answers included), so split off the prompt turns first")
        return MethodVerdict(status="incompatible",
                             reason="GRPO needs a 'prompt' column (columns: " + ", ".join(columns) + ")")
    values = _column(rows, prompt)
    if all(_is_messages(v) for v in values):
        for i, v in enumerate(values, start=1):
            problem = conversation_problem(v, needs_assistant_last=False)
            if problem:
                return MethodVerdict(status="incompatible", reason=f"row {i}: '{prompt}': {problem}")
            if v[-1].get("role") == "assistant":
                return MethodVerdict(status="incompatible",
                                     reason=f"row {i}: '{prompt}' ends with an assistant turn; the model has "
                                     "nothing to generate")
        form = "conversational prompts"
    elif all(_is_str(v) for v in values):
        form = "plain-text prompts"
    else:
        return MethodVerdict(status="incompatible",
                             reason=f"'{prompt}' must be a string or a message list in every row")
    empty = _empty_string_row(rows, [prompt])
    if empty:
        return MethodVerdict(status="incompatible", reason=empty)
    extra = [c for c in columns if c != prompt]
    hint = f"; {', '.join(extra)} passed to reward functions" if extra else ""
    if prompt != "prompt":
        return MethodVerdict(status="needs_mapping", mapping={prompt: "prompt"},
                             reason=f"{form} in '{prompt}': map it to 'prompt'{hint}")
    return MethodVerdict(status="ready", reason=f"found 'prompt' column with {form}{hint}")


def kto(rows: Sequence[dict], columns: Sequence[str]) -> MethodVerdict:
    prompt = "prompt" if "prompt" in columns else _find(columns, PROMPT_ALIASES)
    completion = "completion" if "completion" in columns else _find(columns, COMPLETION_ALIASES)
    label = "label" if "label" in columns else _find(columns, LABEL_ALIASES)
    if "chosen" in columns and "rejected" in columns and not label:
        return MethodVerdict(status="incompatible",
                             reason="paired preferences (chosen/rejected); unpair them first, e.g. with TRL's "
                             "unpair_preference_dataset")
    if not (prompt and completion and label):
        return MethodVerdict(status="incompatible",
                             reason="KTO needs 'prompt', 'completion' and a boolean 'label' (columns: "
                             + ", ".join(columns) + ")")
    bad = next((i for i, v in enumerate(_column(rows, label), start=1) if not isinstance(v, bool)), None)
    if bad is not None:
        return MethodVerdict(status="incompatible",
                             reason=f"row {bad}: '{label}' must be true or false, "
                             f"found {_shown(rows[bad - 1].get(label))}")
    inner = _prompt_completion(rows, prompt, completion, {})
    if inner.status == "incompatible":
        return inner
    mapping = {k: v for k, v in ((prompt, "prompt"), (completion, "completion"), (label, "label")) if k != v}
    if mapping:
        pairs = ", ".join(f"{k} -> {v}" for k, v in mapping.items())
        return MethodVerdict(status="needs_mapping", mapping=mapping, reason=f"unpaired preference data: {pairs}")
    return MethodVerdict(status="ready", reason="found 'prompt', 'completion' and boolean 'label' columns")


CHECKS = {"sft": sft, "dpo": dpo, "grpo": grpo, "kto": kto}
VISION_METHODS = ("dpo",)  # what this runner trains vision-language models with


def image_columns(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    """Columns holding images (measured ImageInfo cells, see runner/images.py), `images` and `image` first."""
    found = [c for c in columns if any(images_in(r.get(c)) for r in rows)
             and all(r.get(c) in (None, []) or images_in(r.get(c)) for r in rows)]
    return sorted(found, key=lambda c: (c != "images", c != "image"))


def vision_dpo(rows: Sequence[dict], columns: Sequence[str], pictures: Sequence[str]) -> MethodVerdict:
    """TRL's vision preference format: `images` (a list per row), an explicit `prompt`, `chosen`, `rejected`."""
    column = pictures[0]
    for i, r in enumerate(rows, start=1):
        images = images_in(r.get(column))
        if not images:
            return MethodVerdict(status="incompatible", reason=f"row {i}: no image in '{column}'")
        bad = next((p.problem for p in images if p.problem), None)
        if bad:
            return MethodVerdict(status="incompatible", reason=f"row {i}: '{column}': {bad}")
    text_rows = [{k: v for k, v in r.items() if k not in pictures} for r in rows]
    found = _preferences(text_rows, [c for c in columns if c not in pictures])
    if isinstance(found, MethodVerdict):
        return found
    if not found.explicit_prompt:
        return MethodVerdict(status="incompatible", reason="vision DPO needs an explicit prompt column (the question "
                             "asked about the image); chosen and rejected should hold only the answers")
    mapping = ({column: "images"} if column != "images" else {}) | found.mapping
    per_row = sum(len(images_in(r.get(column))) for r in rows) / len(rows)
    what = f"vision preference data ({per_row:.3g} image(s) per row in '{column}', {found.form})"
    if mapping:
        pairs = ", ".join(f"{k} -> {v}" for k, v in mapping.items())
        return MethodVerdict(status="needs_mapping", mapping=mapping, reason=f"{what}: {pairs}")
    return MethodVerdict(status="ready", reason=f"found 'images', 'prompt', 'chosen' and 'rejected' columns: {what}")


def _text_only(method: str, column: str) -> MethodVerdict:
    return MethodVerdict(status="incompatible",
                         reason=f"'{column}' holds images; {method.upper()} here trains text-only "
                         "models and would drop them (vision-language models train with DPO: method: dpo)")


def apply_mapping(rows: Sequence[dict], mapping: dict[str, str] | None) -> list[dict]:
    """Rename columns as train.py will; ShareGPT turns mapped to 'messages' become role/content."""
    if not mapping:
        return list(rows)
    out = []
    for r in rows:
        new = {mapping.get(k, k): v for k, v in r.items()}
        for src, dst in mapping.items():
            if dst == "messages" and _is_sharegpt(r.get(src)):
                new[dst] = [{"role": SHAREGPT_ROLES.get(m["from"], m["from"]), "content": m["value"]} for m in r[src]]
        out.append(new)
    return out


def verdicts(rows: Sequence[dict], columns: Sequence[str]) -> dict[str, MethodVerdict]:
    """One verdict per method; a dataset with images is judged for vision-language DPO."""
    if not rows:
        empty = MethodVerdict(status="incompatible", reason="the sample has no rows")
        return {m: empty for m in METHODS}
    pictures = image_columns(rows, columns)
    if pictures:
        return {m: vision_dpo(rows, columns, pictures) if m in VISION_METHODS else _text_only(m, pictures[0])
                for m in METHODS}
    return {m: check(rows, columns) for m, check in CHECKS.items()}
