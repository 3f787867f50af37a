"""Pauses the runner takes on purpose, each from one environment variable.

The defaults are what the real services ask for; tests against local stand-ins set them near zero.
"""

from __future__ import annotations

import os

from runner.errors import UserError

CLAIM_SETTLE = ("RUNNER_CLAIM_SETTLE_SECONDS", 5.0)  # a job listing can lag a submission (see HfBackend.claim)
# PyGithub's own defaults (1 s between writes, a quarter of that between reads) keep under GitHub's
# secondary rate limits for content creation.
GITHUB_PAUSE = ("RUNNER_GITHUB_PAUSE_SECONDS", 1.0)


def seconds(setting: tuple[str, float]) -> float:
    """The setting's variable as a number of seconds >= 0; anything else is one line saying what to set."""
    variable, default = setting
    raw = os.environ.get(variable, "").strip() or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise UserError(f"{variable}={raw!r}: set it to a number of seconds >= 0 (default {default:g})")
    return value
