"""The edge to the Hugging Face Hub: token, endpoint, HTTP session, and `HfApi`.

The token is read from the environment or huggingface_hub's own store and only ever
travels in an Authorization header; it is never printed or logged.
"""

from __future__ import annotations

import os
from typing import Any


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def token() -> str | None:
    from huggingface_hub import get_token

    return get_token() or None


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def api(tok: str | None = None) -> Any:
    """An `HfApi` on the configured endpoint (a local stand-in in tests)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=tok if tok is not None else token())


def session() -> Any:
    from huggingface_hub import get_session

    return get_session()


def auth_headers(tok: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"} if tok else {}
