"""Result files of ``hpcm eval``: CompressAI's R-D JSON, and the per-image rows it is made from.

* ``OUT.json``: CompressAI's layout (``compressai.utils.plot`` and ``hpcm plot`` read it):
  ``{"name", "description", "results": {"psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time",
  "decoding_time"}}``, one list entry per rate point (a checkpoint, an export, a quality setting),
  each the mean over the images; ``points`` and ``setup`` are extra keys such readers ignore.
* ``OUT.rows.jsonl``: the journal, one JSON row per (rate point, image) appended and flushed to disk
  as soon as the image is done; a rerun reads it and skips what it holds, so an interrupted run goes
  on where it stopped. Its first line records the setup (backend, device); a rerun with another setup
  is refused rather than mixed into the same file.
* ``OUT.csv``: the same rows as a table, written atomically at the end.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from hpcm.errors import OutputError
from hpcm.files import atomic_output

# CompressAI's metric names, in its order; each row holds them under ROW_FIELDS' names.
RESULT_METRICS = ("psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time", "decoding_time")
ROW_METRICS = {"psnr-rgb": "psnr_rgb", "ms-ssim-rgb": "ms_ssim_rgb", "bpp": "bpp",
               "encoding_time": "encoding_time", "decoding_time": "decoding_time"}
ROW_FIELDS = ("point", "image", "width", "height", "bytes", "bpp", "psnr_rgb", "ms_ssim_rgb", "encoding_time",
              "decoding_time", "forward_max_diff")


def row_paths(output: Path) -> tuple[Path, Path]:
    """The journal and the CSV that go with result file ``output``."""
    stem = output.with_suffix("")
    return stem.with_name(stem.name + ".rows.jsonl"), stem.with_name(stem.name + ".csv")


class RowJournal:
    """Per-image rows appended as they complete (see the module notes); ``setup`` guards reuse."""

    def __init__(self, path: Path, setup: dict) -> None:
        self.path = Path(path)
        self.setup = setup
        self.rows: list[dict] = []
        if self.path.exists():
            self._read()
        else:
            self._append({"setup": setup})

    def _read(self) -> None:
        lines = self.path.read_bytes().split(b"\n")
        valid = 0  # bytes of complete, parseable lines; a torn last line (killed mid-write) is cut off
        for i, line in enumerate(lines):
            if not line.strip():
                valid += len(line) + 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i >= len(lines) - 2:  # only the last line may be torn
                    break
                raise OutputError(f"{self.path}: line {i + 1} is not JSON; delete the file to start over") from None
            if i == 0:
                if record.get("setup") != self.setup:
                    raise OutputError(f"{self.path} holds rows measured with {record.get('setup')}, not "
                                      f"{self.setup}: choose another -o, or delete it to start over")
            else:
                self.rows.append(record)
            valid += len(line) + 1
        if valid < sum(len(line) + 1 for line in lines) - 1:
            with self.path.open("r+b") as f:
                f.truncate(valid)

    def _append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self) -> set[tuple[str, str]]:
        return {(r["point"], r["image"]) for r in self.rows}

    def append(self, row: dict) -> None:
        self._append(row)
        self.rows.append(row)


def mean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Mean of the finite values (None when there are none)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def result_document(name: str, description: str, points: Sequence[str], rows: Sequence[dict], setup: dict) -> dict:
    """CompressAI's JSON of ``rows``: per rate point (in ``points`` order) the mean of each metric.
    Points without rows are left out."""
    kept = [p for p in points if any(r["point"] == p for r in rows)]
    results: dict[str, list] = {metric: [] for metric in RESULT_METRICS}
    counts = []
    for point in kept:
        mine = [r for r in rows if r["point"] == point]
        counts.append(len(mine))
        for metric in RESULT_METRICS:
            results[metric].append(mean(r[ROW_METRICS[metric]] for r in mine))
    if all(v is None for v in results["ms-ssim-rgb"]):
        del results["ms-ssim-rgb"]  # images too small for MS-SSIM: leave the metric out, not a list of nulls
    return {"name": name, "description": description, "results": results,
            "points": [{"point": p, "images": n} for p, n in zip(kept, counts)], "setup": setup}


def write_json(path: Path, document: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
