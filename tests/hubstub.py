"""A local stand-in for the Hugging Face Hub and its dataset viewer.

It speaks the HTTP contract that huggingface_hub's `HfApi` and the viewer clients
use (real routes, field names, error headers), records every request, and injects
faults on request. Tests drive it through the real clients; nothing is patched.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

HARDWARE = [
    # name, pretty, cpu, ram, accelerator, micro-USD per minute
    ("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", None, 167),
    ("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", None, 500),
    ("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", ("T4", "1", "16 GB"), 6667),
    ("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", ("A10G", "1", "24 GB"), 16667),
    ("a10g-large", "Nvidia A10G - large", "12 vCPU", "46 GB", ("A10G", "1", "24 GB"), 25000),
    ("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", ("A100", "1", "80 GB"), 41667),
]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class HubState:
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {"params": int, "architectures": [...]}
    gated: set[str] = field(default_factory=set)
    # dataset id -> {(config, split): rows}
    datasets: dict[str, dict[tuple[str, str], list[dict]]] = field(default_factory=dict)
    hardware_prices: dict[str, int] = field(default_factory=dict)  # override micro-USD per minute
    faults: dict[str, list[int]] = field(default_factory=dict)  # path prefix -> statuses to return first
    requests: list[Request] = field(default_factory=list)


class HubStub:
    def __init__(self) -> None:
        self.state = HubState()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                state.requests.append(Request("GET", url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()}))
                for prefix, statuses in state.faults.items():
                    if url.path.startswith(prefix) and statuses:
                        status = statuses.pop(0)
                        return self._send(status, {"error": f"injected {status}"})
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if url.path == "/api/jobs/hardware":
                    return self._send(200, [self._hardware(h) for h in HARDWARE])
                if url.path.startswith("/api/models/"):
                    return self._model(url.path[len("/api/models/"):])
                if url.path == "/splits":
                    return self._splits(q)
                if url.path == "/first-rows":
                    return self._first_rows(q)
                if url.path == "/size":
                    return self._size(q)
                return self._send(404, {"error": "Not Found"})

            def _hardware(self, h: tuple) -> dict[str, Any]:
                name, pretty, cpu, ram, acc, micro = h
                micro = state.hardware_prices.get(name, micro)
                return {
                    "name": name, "prettyName": pretty, "cpu": cpu, "ram": ram, "ephemeralStorage": "50 GB",
                    "accelerator": None if acc is None else {
                        "type": "gpu", "model": acc[0], "quantity": acc[1], "vram": acc[2], "manufacturer": "Nvidia"},
                    "unitCostMicroUSD": micro, "unitCostUSD": micro / 1e6, "unitLabel": "minute",
                }

            def _model(self, rest: str) -> None:
                repo = rest.split("/revision/")[0]
                if repo in state.gated:
                    return self._send(403, {"error": "gated"}, {"X-Error-Code": "GatedRepo"})
                model = state.models.get(repo)
                if model is None:
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return self._send(200, {
                    "_id": "0" * 24, "id": repo, "sha": "a" * 40, "private": False,
                    "lastModified": "2025-01-01T00:00:00.000Z",
                    "safetensors": {"parameters": {"BF16": model["params"]}, "total": model["params"]},
                    "config": {"architectures": model.get("architectures", ["Qwen3ForCausalLM"]),
                               "model_type": "qwen3"},
                })

            def _dataset(self, q: dict[str, str]) -> dict | None:
                ds = state.datasets.get(q.get("dataset", ""))
                if ds is None:
                    self._send(404, {"error": "The dataset does not exist."}, {"X-Error-Code": "DatasetNotFoundError"})
                return ds

            def _splits(self, q: dict[str, str]) -> None:
                ds = self._dataset(q)
                if ds is not None:
                    self._send(200, {"splits": [{"dataset": q["dataset"], "config": c, "split": s} for c, s in ds],
                                     "pending": [], "failed": []})

            def _first_rows(self, q: dict[str, str]) -> None:
                ds = self._dataset(q)
                if ds is None:
                    return
                rows = ds.get((q.get("config", ""), q.get("split", "")))
                if rows is None:
                    return self._send(404, {"error": "Not found."}, {"X-Error-Code": "ResponseNotFound"})
                names = list(dict.fromkeys(k for r in rows for k in r))
                self._send(200, {
                    "dataset": q["dataset"], "config": q["config"], "split": q["split"],
                    "features": [{"feature_idx": i, "name": n, "type": {"_type": "Value", "dtype": "string"}}
                                 for i, n in enumerate(names)],
                    "rows": [{"row_idx": i, "row": r, "truncated_cells": []} for i, r in enumerate(rows[:100])],
                    "truncated": len(rows) > 100,
                })

            def _size(self, q: dict[str, str]) -> None:
                ds = self._dataset(q)
                if ds is None:
                    return
                splits = [{"dataset": q["dataset"], "config": c, "split": s, "num_rows": len(r),
                           "num_columns": len(r[0]) if r else 0} for (c, s), r in ds.items()
                          if "config" not in q or c == q["config"]]
                self._send(200, {"size": {"dataset": {"dataset": q["dataset"],
                                                      "num_rows": sum(s["num_rows"] for s in splits)},
                                          "configs": [], "splits": splits},
                                 "pending": [], "failed": [], "partial": False})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
