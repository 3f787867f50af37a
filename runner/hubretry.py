"""One retry layer for every request huggingface_hub makes in this process.

huggingface_hub 2.4 retries some calls itself (`list_jobs`, the upload steps) and not
others (`run_job`, `inspect_job`, the job logs). A retry loop around its calls nests
inside the library's own, so an unreachable Hub took minutes to fail. Instead the
library's shared HTTP client gets a transport that retries transient failures here,
once, and hands the library only final answers: a response that is not transient, or
an exception that none of the library's own loops retries (not an httpx error).

- Connection failures, 408, 429 and 5xx are retried with exponential backoff, or after
  `Retry-After` when the Hub sends one (0 included), one short line each; after
  `patience` seconds of consecutive failure the request fails with one clear line.
- A request whose effect cannot be repeated safely (creating a job) is never re-sent
  blindly when its answer was lost (a timeout, a reset, a 5xx after sending): it raises
  `AnswerLost` and the caller looks the job up first. A refusal before any processing
  (connection refused, 429) is re-sent here.
- Job log streams are not retried: a log error falls back to polling the job's stage.
- An answer (any status outside the retried ones) ends a failure streak; until then the
  budget is shared by all requests, so a Hub that is down does not get a fresh minute per call.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx2  # huggingface_hub's HTTP client; this module is imported only on the Hub path

from runner.errors import UserError

RETRIABLE = frozenset({408, 429, 500, 502, 503, 504})
PATIENCE = 30.0  # seconds of consecutive failure before a request gives up
CREATE_JOB = re.compile(r"^/api/jobs/[^/]+/?$")  # POST here starts (and bills) a job
# Best effort, never retried: a job's log or metrics stream (a log error falls back to polling the
# job's stage) and the client's own agent-registry lookup (which never fails a process).
BEST_EFFORT = re.compile(r"^/api/(agent-harnesses|jobs/[^/]+/[^/]+/(logs|metrics))$")

Echo = Callable[[str], None]


class HubUnavailable(UserError):
    """The Hub gave no usable answer within the retry budget: the user's environment, said in one line."""


class AnswerLost(Exception):
    """A request that may have taken effect got no answer; only the caller can tell whether it did."""


def retry_after(headers: Any) -> float | None:
    """`Retry-After` in seconds (0 is a real answer: retry now); None when absent or not a number."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None and value.strip() != "" else None
    except ValueError:
        return None


def _problem(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:100]


class Budget:
    """Consecutive failures across all requests: a Hub that is down is down for every call, so a
    later call does not start a fresh budget while nothing has answered yet."""

    def __init__(self, patience: float = PATIENCE, base_delay: float = 1.0, max_delay: float = 16.0) -> None:
        self.patience = patience
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failing_since: float | None = None
        self._failures = 0
        self._lock = threading.Lock()

    def answered(self) -> None:
        with self._lock:
            self._failing_since, self._failures = None, 0

    def next_wait(self, wait: float | None, what: str, problem: str) -> float:
        """How long to wait before the next try; HubUnavailable once the budget is spent."""
        now = time.monotonic()
        with self._lock:
            if self._failing_since is None:
                self._failing_since = now
            self._failures += 1
            failing = now - self._failing_since
            asked = wait is not None
            if wait is None:
                wait = min(self.base_delay * 2 ** (self._failures - 1), self.max_delay) * (1 + random.random() / 4)
        if failing + wait > self.patience:
            why = f"asked to retry in {wait:.0f} s" if asked else f"no usable answer for {failing:.0f} s"
            raise HubUnavailable(f"the Hugging Face Hub is unavailable: {why} ({what}: {problem}); try again later, "
                                 "or set HF_HUB_OFFLINE=1 to work with local files only")
        return wait


class RetryTransport(httpx2.BaseTransport):
    """An httpx transport wrapper: the single place Hub requests are retried."""

    def __init__(self, inner: httpx2.BaseTransport, budget: Budget, echo: Echo) -> None:
        self.inner = inner
        self.budget = budget
        self.echo = echo

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        replayable = request.method in ("GET", "HEAD") or isinstance(request.stream, httpx2.ByteStream)
        unsafe = request.method == "POST" and CREATE_JOB.match(path) is not None
        best_effort = BEST_EFFORT.match(path) is not None
        while True:
            wait: float | None = None
            try:
                response = self.inner.handle_request(request)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as e:  # never reached the Hub: safe to re-send
                if not replayable or best_effort:
                    raise
                problem, lost = _problem(e), False
            except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError) as e:
                if not replayable or best_effort:
                    raise
                problem, lost = _problem(e), True
            else:
                if response.status_code not in RETRIABLE or not replayable or best_effort:
                    if response.status_code not in RETRIABLE:
                        self.budget.answered()
                    return response
                response.read()
                response.close()
                problem = f"HTTP {response.status_code}"
                lost = response.status_code != 429  # 429: refused before any processing
                wait = retry_after(response.headers)
            wait = self.budget.next_wait(wait, f"{request.method} {request.url.scheme}://{request.url.netloc.decode()}"
                                         f"{path}", problem)
            self.echo(f"[hub] {request.method} {path}: {problem}; retrying in {wait:.0f} s")
            time.sleep(wait)
            if unsafe and lost:
                raise AnswerLost(f"{request.method} {path}: {problem}")

    def close(self) -> None:
        self.inner.close()


def install(echo: Echo, *, patience: float = PATIENCE) -> Budget:
    """Make every huggingface_hub request in this process go through one RetryTransport."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import hf_request_event_hook

    budget = Budget(patience)

    def factory() -> httpx2.Client:
        # huggingface_hub's default client (its request hook, redirects) plus the retrying transport and
        # timeouts: a Hub that never answers is as unreachable as one that refuses the connection.
        # (Log streams pass their own, longer read timeout.)
        return httpx2.Client(transport=RetryTransport(httpx2.HTTPTransport(), budget, echo),
                             event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True,
                             timeout=httpx2.Timeout(60.0, connect=10.0))

    set_client_factory(factory)
    return budget


def uninstall() -> None:
    """Back to huggingface_hub's own client (a command is over; in-process callers start clean)."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    set_client_factory(default_client_factory)
