"""Bounded samples of a dataset: never the whole thing.

Local JSON Lines, JSON arrays and CSV are read with the standard library, a few rows
at a time; Parquet through pyarrow's row groups. Hub datasets come from the dataset
viewer API (first rows, size), falling back to `datasets` streaming. Row counts are
reported when they are cheap to know: exact for Parquet metadata, the viewer's /size
and small files; estimated from bytes per sampled row for large line-based files.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from runner import images
from runner.errors import UserError

SAMPLE_ROWS = 256
IMAGE_SAMPLE_ROWS = 64  # rows of a Parquet file with image columns: their bytes are read, so fewer
EXACT_COUNT_BYTES = 256 * 1024 * 1024  # newline-count JSONL up to this size (~0.1 s); estimate above
SMALL_FILE_BYTES = 8 * 1024 * 1024  # parse CSV / JSON arrays in full up to this size to count rows
VIEWER_URL = "https://datasets-server.huggingface.co"
HTTP_TIMEOUT = 10.0


class Sample(BaseModel):
    dataset: str
    config: str | None = None
    split: str
    rows: list[dict[str, Any]] = Field(repr=False)
    columns: list[str]
    num_rows: int | None = None
    rows_exact: bool = False
    source: Literal["file", "viewer", "streaming"]
    truncated_cells: bool = False


def viewer_url() -> str:
    return os.environ.get("RUNNER_DATASETS_SERVER_URL", VIEWER_URL).rstrip("/")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            seen.setdefault(str(k), None)
    return list(seen)


# --- local files ---------------------------------------------------------------------------


def read_rows(path: Path, name: str, limit: int) -> tuple[list[dict], int | None, bool]:
    """Up to `limit` rows of a local data file as read (Parquet image structs measured), the row count, and
    whether that count is exact."""
    if not path.is_file():
        raise UserError(f"{name}: file not found")
    suffix = path.suffix.lower()
    size = path.stat().st_size
    if suffix == ".parquet":
        return _parquet(path, name, limit)
    if suffix == ".csv":
        return _csv(path, name, limit, size)
    if suffix in (".jsonl", ".json"):
        return _json(path, name, limit, size)
    raise UserError(f"{name}: unsupported file type '{suffix}' (use .jsonl, .json, .csv or .parquet)")


def sample_file(path: Path, *, display: str | None = None, limit: int = SAMPLE_ROWS) -> Sample:
    """The first `limit` rows of a local data file, images measured (their paths are relative to the file)."""
    name = display or str(path)
    rows, total, exact = read_rows(path, name, limit)
    rows = images.replace_images(rows, path.parent)  # image paths are relative to the data file
    return Sample(dataset=name, split="train", rows=rows, columns=_columns(rows), num_rows=total,
                  rows_exact=exact, source="file")


def _estimate(size: int, consumed: int, rows: int) -> int | None:
    return round(size * rows / consumed) if consumed and rows else None


def _json(path: Path, name: str, limit: int, size: int) -> tuple[list[dict], int | None, bool]:
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return _json_array(path, name, limit, size)
    rows: list[dict] = []
    consumed = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            consumed += len(raw)
            line = raw.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{name}:{lineno}: not valid JSON ({getattr(e, 'msg', 'bad encoding')})") from None
            if not isinstance(row, dict):
                raise UserError(f"{name}:{lineno}: each line must be a JSON object, found {type(row).__name__}")
            rows.append(row)
            if len(rows) >= limit:
                break
        else:  # read it all: the count is exact
            return rows, len(rows), True
    if size <= EXACT_COUNT_BYTES:
        return rows, _count_lines(path), True
    return rows, _estimate(size, consumed, len(rows)), False


def _count_lines(path: Path) -> int:
    """Non-empty lines, counted in big binary chunks (fast enough to stay O(sample) in practice)."""
    count = 0
    last = b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        count += 1
    # Blank lines are rare; they only make the count an upper bound.
    return count


def _json_array(path: Path, name: str, limit: int, size: int) -> tuple[list[dict], int | None, bool]:
    """Decode the first objects of a top-level JSON array incrementally."""
    decoder = json.JSONDecoder()
    rows: list[dict] = []
    with path.open("r", encoding="utf-8-sig", errors="strict") as f:
        buf = ""
        pos = 0
        started = False
        eof = False
        while len(rows) < limit:
            if not eof and len(buf) - pos < 1 << 16:
                chunk = f.read(1 << 20)
                eof = not chunk
                buf = buf[pos:] + chunk
                pos = 0
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if not started:
                if pos >= len(buf):
                    break
                pos += 1  # the opening '['
                started = True
                continue
            if pos < len(buf) and buf[pos] == "]":
                return rows, len(rows), True
            if pos >= len(buf):
                if eof:
                    raise UserError(f"{name}: JSON array is not closed")
                continue
            try:
                row, pos = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if not eof:
                    chunk = f.read(1 << 20)
                    eof = not chunk
                    buf += chunk
                    continue
                line = buf[: e.pos].count("\n") + 1
                raise UserError(f"{name}: not valid JSON near row {len(rows) + 1} ({e.msg}, line {line} of the "
                                "read window)") from None
            if not isinstance(row, dict):
                raise UserError(f"{name}: array element {len(rows)} must be a JSON object, found {type(row).__name__}")
            rows.append(row)
    if size <= SMALL_FILE_BYTES:
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            return rows, len(data), True
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{name}: not valid JSON") from None
    return rows, None, False


def _csv(path: Path, name: str, limit: int, size: int) -> tuple[list[dict], int | None, bool]:
    rows: list[dict] = []
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise UserError(f"{name}: CSV file has no header row")
            for row in reader:
                if None in row:
                    raise UserError(f"{name}:{reader.line_num}: more fields than the header has")
                rows.append(dict(row))
                if len(rows) >= limit:
                    break
            else:
                return rows, len(rows), True
    except UnicodeDecodeError:
        raise UserError(f"{name}: CSV file is not valid UTF-8") from None
    except csv.Error as e:
        raise UserError(f"{name}: malformed CSV ({e})") from None
    if size <= SMALL_FILE_BYTES:
        with path.open("r", encoding="utf-8-sig", newline="") as f:
            return rows, sum(1 for _ in csv.DictReader(f)), True
    sample_bytes = sum(len(",".join(str(v) for v in r.values()).encode()) + 1 for r in rows)
    return rows, _estimate(size, sample_bytes, len(rows)), False


def _parquet(path: Path, name: str, limit: int) -> tuple[list[dict], int | None, bool]:
    try:
        import pyarrow.parquet as pq  # lazy: only Parquet needs it
    except ImportError:  # pragma: no cover - pyarrow is a core dependency
        raise UserError(f"{name}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(path)
        image_columns = [f.name for f in pf.schema_arrow if _arrow_image_type(f.type)]
        if image_columns:
            limit = min(limit, IMAGE_SAMPLE_ROWS)
        batch = next(pf.iter_batches(batch_size=limit), None)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"{name}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if batch is None:
        return [], pf.metadata.num_rows, True
    text = [c for c in batch.schema.names if c not in image_columns]
    rows = batch.select(text).to_pylist()
    for column in image_columns:  # measured from Arrow buffers in place: the bytes are never copied out
        for row, cell in zip(rows, batch.column(column)):
            row[column] = _arrow_image_cell(cell, path.parent)
    order = batch.schema.names
    return [{k: r[k] for k in order} for r in rows], pf.metadata.num_rows, True


def _arrow_image_type(t: Any) -> bool:
    """The `datasets` Image feature in Arrow: struct<bytes: binary, path: string>, alone or in a list."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} == {"bytes", "path"}


def _arrow_image_cell(cell: Any, base: Path) -> Any:
    import pyarrow as pa

    if not cell.is_valid:
        return None
    if isinstance(cell, (pa.ListScalar, pa.LargeListScalar)):  # a list of image structs
        return [_arrow_image_cell(v, base) for v in cell.values]
    data, where = cell["bytes"], cell["path"]
    if data.is_valid:
        return images.from_bytes(memoryview(data.as_buffer()))
    if where.is_valid and where.as_py():
        return images.measure_string(where.as_py(), base)
    return images.ImageInfo(source="bytes", problem="image struct with neither bytes nor path")


# --- Hub datasets ------------------------------------------------------------------------------


def sample_hub(
    dataset: str,
    *,
    config: str | None = None,
    split: str = "train",
    revision: str | None = None,
    token: str | None = None,
    base_url: str | None = None,
) -> Sample:
    """First rows and size from the dataset viewer; `datasets` streaming when the viewer cannot serve it."""
    from runner import hub  # lazy: keep huggingface_hub off the local-file path

    if hub.offline():
        raise UserError(f"{dataset}: Hub dataset cannot be sampled offline (HF_HUB_OFFLINE is set)")
    base = (base_url or viewer_url()).rstrip("/")
    if revision in (None, "main"):
        try:
            return _viewer(dataset, config, split, token, base)
        except _ViewerUnavailable as e:
            reason = str(e)
            if e.unreachable:
                _require_hub(dataset)
    else:
        reason = "the dataset viewer only serves the main revision"
    return _streaming(dataset, config, split, revision, token, reason)


class _ViewerUnavailable(Exception):
    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # no answer at all (not an error status)


def _require_hub(dataset: str) -> None:
    """One quick look at the Hub before streaming: unreachable is one line, not minutes of library retries."""
    from runner import hub

    try:
        hub.session().get(f"{hub.endpoint()}/api/datasets/{dataset}", timeout=HTTP_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - any transport error means the same to the user
        raise UserError(f"{dataset}: the Hugging Face Hub is unreachable at {hub.endpoint()} ({type(e).__name__}); "
                        "check the network, or set HF_HUB_OFFLINE=1 to check local files only") from None


def _viewer_get(base: str, route: str, params: dict[str, str], token: str | None) -> Any:
    from runner import hub

    try:
        response = hub.session().get(f"{base}/{route}", params=params, headers=hub.auth_headers(token),
                                     timeout=HTTP_TIMEOUT)
    except Exception as e:  # network errors: try streaming instead
        raise _ViewerUnavailable(f"dataset viewer unreachable ({type(e).__name__})", unreachable=True) from None
    if response.status_code in (401, 403, 404):
        hint = "" if token else " (private or gated? set HF_TOKEN)"
        raise UserError(f"{params.get('dataset')}: dataset not found or not accessible{hint}")
    if response.status_code >= 400:
        raise _ViewerUnavailable(f"dataset viewer answered {response.status_code} on /{route}")
    try:
        return response.json()
    except ValueError:
        raise _ViewerUnavailable(f"dataset viewer sent invalid JSON on /{route}") from None


def _viewer(dataset: str, config: str | None, split: str, token: str | None, base: str) -> Sample:
    if config is None:
        splits = _viewer_get(base, "splits", {"dataset": dataset}, token).get("splits", [])
        configs = [s.get("config") for s in splits if s.get("split") == split]
        if not configs:
            available = sorted({f"{s.get('config')}/{s.get('split')}" for s in splits})
            raise UserError(f"{dataset}: no split '{split}' (available: {', '.join(available) or 'none'})")
        config = "default" if "default" in configs else configs[0]
    first = _viewer_get(base, "first-rows", {"dataset": dataset, "config": config, "split": split}, token)
    rows = images.replace_images([r.get("row", {}) for r in first.get("rows", [])], None)
    columns = [f.get("name") for f in first.get("features", [])] or _columns(rows)
    truncated = any(r.get("truncated_cells") for r in first.get("rows", []))
    num_rows: int | None = None
    try:
        size = _viewer_get(base, "size", {"dataset": dataset, "config": config}, token)
        for s in size.get("size", {}).get("splits", []):
            if s.get("config") == config and s.get("split") == split:
                num_rows = s.get("num_rows")
    except _ViewerUnavailable:
        pass  # the count is optional
    return Sample(dataset=dataset, config=config, split=split, rows=rows, columns=columns, num_rows=num_rows,
                  rows_exact=num_rows is not None, source="viewer", truncated_cells=truncated)


def _streaming(dataset: str, config: str | None, split: str, revision: str | None, token: str | None,
               why: str) -> Sample:
    try:
        import datasets  # lazy: heavy, and only this fallback needs it
    except ImportError:  # pragma: no cover
        raise UserError(f"{dataset}: {why}, and the `datasets` package is not installed") from None
    try:
        stream = datasets.load_dataset(dataset, config, split=split, revision=revision, streaming=True, token=token)
        rows = images.replace_images([dict(r) for r in stream.take(SAMPLE_ROWS)], None)
    except Exception as e:  # datasets raises many types; one line for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{dataset}: cannot read the dataset ({why}; streaming failed: {first})") from None
    return Sample(dataset=dataset, config=config, split=split, rows=rows, columns=_columns(rows), num_rows=None,
                  source="streaming")
