"""`DatasetReport`: what a bounded sample says about a dataset, per training method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from runner import formats, images, sampling
from runner.formats import MethodVerdict
from runner.images import ImageSummary
from runner.recipe import looks_local_dataset


class DatasetReport(BaseModel):
    dataset: str
    config: str | None = None
    split: str
    rows: int | None
    rows_exact: bool
    columns: list[str]
    methods: dict[str, MethodVerdict]
    sample_size: int
    source: str
    truncated_cells: bool = False
    images: ImageSummary | None = None  # set when a column holds images
    sample: list[dict[str, Any]] = Field(default_factory=list, exclude=True, repr=False)

    def public(self) -> dict[str, Any]:
        """The `inspect --json` document."""
        return self.model_dump(mode="json")


def from_sample(sample: sampling.Sample, mapping: dict[str, str] | None = None) -> DatasetReport:
    """Verdicts on the sample after the recipe's column mapping (as train.py will apply it)."""
    rows = formats.apply_mapping(sample.rows, mapping)
    columns = [(mapping or {}).get(c, c) for c in sample.columns]
    methods = formats.verdicts(rows, columns)
    missing = [c for c in (mapping or {}) if c not in sample.columns]
    if missing and sample.rows:
        wrong = MethodVerdict(status="incompatible", reason=f"dataset.columns maps '{missing[0]}', which is not a "
                              f"column (columns: {', '.join(sample.columns)})")
        methods = {m: wrong for m in methods}
    pictures = formats.image_columns(rows, columns)
    return DatasetReport(
        dataset=sample.dataset, config=sample.config, split=sample.split, rows=sample.num_rows,
        rows_exact=sample.rows_exact, columns=columns, methods=methods,
        sample_size=len(rows), source=sample.source, truncated_cells=sample.truncated_cells,
        images=images.summarize(rows, pictures[0]) if pictures else None, sample=rows,
    )


def load_sample(
    dataset: str,
    *,
    split: str = "train",
    config: str | None = None,
    revision: str | None = None,
    root: Path | None = None,
    token: str | None = None,
    display: str | None = None,
) -> sampling.Sample:
    """A bounded sample of a local file (relative to `root`) or a Hub dataset."""
    local = Path(dataset) if root is None else root / dataset
    if looks_local_dataset(dataset) or local.is_file():
        return sampling.sample_file(local, display=display or dataset)
    return sampling.sample_hub(dataset, config=config, split=split, revision=revision, token=token)
