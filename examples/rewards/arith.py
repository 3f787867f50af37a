"""Repo-local GRPO reward functions: plain Python, referenced from a recipe's `rewards`.

TRL calls each with the generated `completions` and every dataset column as a keyword
argument; return one float per completion. The pull-request check only parses this
file; it is imported only inside the training job.
"""


def _text(completion) -> str:
    # Conversational datasets give a list of messages per completion.
    if isinstance(completion, list):
        return " ".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def contains_answer(completions, answer, **kwargs):
    """1.0 when the expected number appears in the completion, else 0.0."""
    return [1.0 if str(a) in _text(c) else 0.0 for c, a in zip(completions, answer)]
