"""Image cells in a dataset sample: recognised and measured from their headers, never decoded.

An image arrives in one of these shapes, and each becomes an `ImageInfo`:
- the `datasets` Image feature in Parquet: a `{bytes, path}` struct (its bytes hold the file);
- the dataset viewer's first rows: `{src, height, width}`;
- JSON Lines: a path (relative to the data file), an http(s) URL or a `data:image/...` URI;
- `datasets` streaming: a decoded PIL image (only its size is read).

Width and height come from the file header (PNG, JPEG, GIF, WebP, BMP): a few bytes,
never the pixels, and for a local path at most `HEADER_BYTES` of the file.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

HEADER_BYTES = 64 * 1024  # a JPEG's size marker can sit behind EXIF data; PNG/GIF/WebP need < 32 bytes
SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
# Column names that say "image" even when the value (a URL without a suffix) does not.
NAMES = re.compile(r"(^|_)(image|images|img|imgs|picture|photo|pic)(_|s?$)", re.IGNORECASE)
MAX_PATH_CHARS = 2048


class ImageInfo(BaseModel):
    """One image cell: where it is, and its size when the header tells."""

    model_config = ConfigDict(frozen=True)

    source: Literal["bytes", "path", "url", "decoded"]
    format: str | None = None
    width: int | None = None
    height: int | None = None
    nbytes: int | None = None
    problem: str | None = None  # why the image cannot be used (missing file, not an image)

    @property
    def pixels(self) -> int | None:
        return self.width * self.height if self.width and self.height else None


def header_size(head: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the first bytes of an image file, or None if unrecognised."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return "png", w, h
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return "gif", w, h
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8 ":
            w, h = struct.unpack("<HH", head[26:30])
            return "webp", w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and len(head) >= 25:
            b = head[21:25]
            w = 1 + (((b[1] & 0x3F) << 8) | b[0])
            h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
            return "webp", w, h
        if kind == b"VP8X":
            w = 1 + int.from_bytes(head[24:27], "little")
            h = 1 + int.from_bytes(head[27:30], "little")
            return "webp", w, h
    if head[:2] == b"BM" and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return "bmp", w, abs(h)
    if head[:2] == b"\xff\xd8":
        return _jpeg(head)
    return None


def _jpeg(data: bytes) -> tuple[str, int, int] | None:
    """Walk the JPEG markers to the first start-of-frame, which holds the size."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return "jpeg", w, h
        i += 2 + length
    return None


def from_bytes(data: bytes | memoryview, source: Literal["bytes", "path"] = "bytes") -> ImageInfo:
    size = header_size(bytes(data[:HEADER_BYTES]))
    if size is None:
        return ImageInfo(source=source, nbytes=len(data), problem="not a PNG, JPEG, GIF, WebP or BMP image")
    fmt, w, h = size
    return ImageInfo(source=source, format=fmt, width=w, height=h, nbytes=len(data))


def from_path(value: str, base: Path | None) -> ImageInfo:
    """A local image file, relative to the data file's folder; only its header is read."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or base is None:
        # Confined like data files; said before any look at the disk, so the answer reveals nothing outside.
        return ImageInfo(source="path", problem=f"image path '{value}' must be relative to the data file's folder, "
                                                "without '..' (absolute paths are not read)")
    path = base / path
    if not path.resolve().is_relative_to(base.resolve()) or any(
            p.is_symlink() for p in [path, *path.parents] if p.is_relative_to(base) and p != base):
        return ImageInfo(source="path", problem=f"image path '{value}' goes through a symbolic link; "
                                                "images must be regular files beside the data")
    try:
        with path.open("rb") as f:
            head = f.read(HEADER_BYTES)
        total = path.stat().st_size
    except OSError:
        return ImageInfo(source="path", problem=f"image file '{value}' not found")
    info = from_bytes(head, "path")
    return info.model_copy(update={"nbytes": total})


def from_data_uri(value: str) -> ImageInfo:
    head = value.split(",", 1)[1] if "," in value else ""
    try:
        data = base64.b64decode(head[: HEADER_BYTES * 4 // 3 // 4 * 4] or "", validate=False)
    except (binascii.Error, ValueError):
        return ImageInfo(source="bytes", problem="data URI is not valid base64")
    info = from_bytes(data)
    return info.model_copy(update={"nbytes": len(head) * 3 // 4})


def looks_like_image_string(value: str, column: str) -> bool:
    """A path or URL of an image: an image suffix, a data URI, or a URL in an image-named column."""
    if not value or len(value) > MAX_PATH_CHARS or any(c in value for c in "\n\r\t"):
        return False
    if value.startswith("data:image/"):
        return True
    bare = value.split("?", 1)[0].split("#", 1)[0].lower()
    if bare.endswith(SUFFIXES) and " " not in value.strip():
        return True
    return bool(NAMES.search(column)) and value.startswith(("http://", "https://"))


def _is_image_struct(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"bytes", "path"}


def _is_viewer_image(value: Any) -> bool:
    return isinstance(value, dict) and "src" in value and ("height" in value or "width" in value)


def _is_pil(value: Any) -> bool:
    return hasattr(value, "size") and hasattr(value, "mode") and hasattr(value, "getbands")


def measure(value: Any, column: str, base: Path | None) -> ImageInfo | None:
    """The ImageInfo for one cell if it holds an image, else None."""
    if isinstance(value, ImageInfo):
        return value
    if _is_image_struct(value):
        if value["bytes"] is not None:
            return from_bytes(value["bytes"])
        if isinstance(value["path"], str) and value["path"]:
            return measure_string(value["path"], base)
        return ImageInfo(source="bytes", problem="image struct with neither bytes nor path")
    if _is_viewer_image(value):
        return ImageInfo(source="url", width=_int(value.get("width")), height=_int(value.get("height")))
    if _is_pil(value):
        w, h = value.size
        return ImageInfo(source="decoded", format=(getattr(value, "format", None) or "").lower() or None,
                         width=w, height=h)
    if isinstance(value, str) and looks_like_image_string(value, column):
        return measure_string(value, base)
    return None


def measure_string(value: str, base: Path | None) -> ImageInfo:
    if value.startswith("data:image/"):
        return from_data_uri(value)
    if value.startswith(("http://", "https://")):
        return ImageInfo(source="url")  # never fetched at plan time: size unknown
    return from_path(value, base)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def measure_cell(value: Any, column: str, base: Path | None) -> ImageInfo | list[ImageInfo] | None:
    """One image, a list of images, or None when the cell holds something else."""
    if isinstance(value, list):
        if not value:
            return None
        infos = [i for i in (measure(v, column, base) for v in value) if i is not None]
        return infos if len(infos) == len(value) else None
    return measure(value, column, base)


def replace_images(rows: list[dict[str, Any]], base: Path | None) -> list[dict[str, Any]]:
    """The rows with every image cell replaced by its ImageInfo (a column is an image column when all
    its non-empty cells are images), so the sample holds sizes, not pixels."""
    columns: dict[str, None] = {}
    for r in rows:
        for k in r:
            columns.setdefault(k, None)
    image_columns = []
    for c in columns:
        values = [r.get(c) for r in rows if r.get(c) not in (None, [])]
        if values and all(_candidate(v, c) for v in values):
            image_columns.append(c)
    if not image_columns:
        return rows
    out = []
    for r in rows:
        new = dict(r)
        for c in image_columns:
            if new.get(c) not in (None, []):
                new[c] = measure_cell(new[c], c, base)
        out.append(new)
    return out


def _candidate(value: Any, column: str) -> bool:
    """Cheap shape test (no file reads) used to decide whether a column holds images."""
    if isinstance(value, list):
        return bool(value) and all(_candidate(v, column) for v in value)
    if isinstance(value, str):
        return looks_like_image_string(value, column)
    return isinstance(value, ImageInfo) or _is_image_struct(value) or _is_viewer_image(value) or _is_pil(value)


def images_in(value: Any) -> list[ImageInfo]:
    """The images of one cell (none for a text cell)."""
    if isinstance(value, ImageInfo):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, ImageInfo) for v in value):
        return list(value)
    return []


class ImageSummary(BaseModel):
    """What the sample says about a dataset's images (for `inspect` and the plan)."""

    column: str
    images: int  # in the sample
    per_row: float
    measured: int  # images whose size the header told
    mean_width: int | None = None
    mean_height: int | None = None
    max_width: int | None = None
    max_height: int | None = None
    formats: list[str] = []
    sources: list[str] = []


def summarize(rows: list[dict[str, Any]], column: str) -> ImageSummary:
    found = [i for r in rows for i in images_in(r.get(column))]
    sized = [(i.width, i.height) for i in found if i.width and i.height]
    return ImageSummary(
        column=column, images=len(found), per_row=round(len(found) / len(rows), 3) if rows else 0.0,
        measured=len(sized),
        mean_width=round(sum(w for w, _ in sized) / len(sized)) if sized else None,
        mean_height=round(sum(h for _, h in sized) / len(sized)) if sized else None,
        max_width=max((w for w, _ in sized), default=None),
        max_height=max((h for _, h in sized), default=None),
        formats=sorted({i.format for i in found if i.format}), sources=sorted({i.source for i in found}),
    )
