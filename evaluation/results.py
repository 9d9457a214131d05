"""Result files of ``hpcm eval``: CompressAI's R-D JSON, and the per-image rows it is made from.

* ``OUT.json``: CompressAI's layout (``compressai.utils.plot`` and ``hpcm plot`` read it):
  ``{"name", "description", "results": {"psnr-rgb", "ms-ssim-rgb", "bpp", "encoding_time",
  "decoding_time"}}``, one list entry per rate point (a checkpoint, an export, a quality setting),
  each the mean over the images; ``points`` and ``setup`` are extra keys such readers ignore.
* ``OUT.rows.jsonl``: the journal, one JSON row per (rate point, image) appended and flushed to disk
  as soon as the image is done; a rerun reads it and skips what it holds, so an interrupted run goes
  on where it stopped. A row is keyed by its rate point (a digest of the weights, or the codec and
  quality) and its image's content (SHA-256) and name, so rows of another image of the same name
  (another folder given with the same -o) are never taken for this one's. The first line records the
  format and the setup (backend, device); a rerun with another setup is refused rather than mixed
  into the same file, and so is a file that is not such a journal (it is never truncated). One
  process at a time writes it (``hpcm.files.exclusive`` on -o, taken by ``evaluate_images``).
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
ROW_FIELDS = ("point", "image", "image_sha256", "width", "height", "bytes", "bpp", "psnr_rgb", "ms_ssim_rgb",
              "encoding_time", "decoding_time", "forward_max_diff")
_TEXT_FIELDS = ("point", "image", "image_sha256")
_OPTIONAL_FIELDS = ("ms_ssim_rgb", "forward_max_diff")  # None where not measured

JOURNAL_FORMAT = "hpcm-eval-rows"
# 2: rows keyed by their image's SHA-256 as well as its name (1 keyed them by the name only).
JOURNAL_VERSION = 2
MAX_JOURNAL_BYTES = 64 << 20  # about 200,000 rows; a larger file is not one of our journals

RowKey = tuple[str, str, str]


def row_key(row: dict) -> RowKey:
    """What identifies a row: its rate point, its image's SHA-256 and name."""
    return row["point"], row["image_sha256"], row["image"]


def row_paths(output: Path) -> tuple[Path, Path]:
    """The journal and the CSV that go with result file ``output``."""
    stem = output.with_suffix("")
    return stem.with_name(stem.name + ".rows.jsonl"), stem.with_name(stem.name + ".csv")


def _is_row(record: object) -> bool:
    """Whether ``record`` is a row as ``measure_image`` writes it (text keys, numeric metrics)."""
    if not isinstance(record, dict) or any(not isinstance(record.get(k), str) for k in _TEXT_FIELDS):
        return False
    for name in ROW_FIELDS:
        if name in _TEXT_FIELDS:
            continue
        value = record.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
    return True


class RowJournal:
    """Per-image rows appended as they complete (see the module notes); ``setup`` guards reuse."""

    def __init__(self, path: Path, setup: dict) -> None:
        self.path = Path(path)
        self.setup = setup
        self.rows: list[dict] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self._append(self._header())

    def _header(self) -> dict:
        return {"journal": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "setup": self.setup}

    def _refuse(self, why: str) -> OutputError:
        return OutputError(f"{self.path} {why}: choose another -o, or delete it to measure again")

    def _check_header(self, line: bytes) -> None:
        try:
            header = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("journal", JOURNAL_FORMAT) != JOURNAL_FORMAT \
                or "setup" not in header:
            raise self._refuse("is not a row journal of hpcm eval (its first line is not the journal's header)")
        if header.get("version") != JOURNAL_VERSION:
            raise self._refuse(f"is a row journal of another hpcm eval version ({header.get('version', 1)!r}; this "
                               f"one writes {JOURNAL_VERSION}, keyed by each image's content)")
        if header["setup"] != self.setup:
            raise self._refuse(f"holds rows measured with {header['setup']}, not {self.setup}")

    def _read(self) -> None:
        if self.path.stat().st_size > MAX_JOURNAL_BYTES:
            raise self._refuse(f"is larger than {MAX_JOURNAL_BYTES >> 20} MiB, too large to be a row journal")
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a last line without its newline was torn by a kill
        lines = complete.split(b"\n")
        self._check_header(lines[0] if complete else data)
        seen: set[RowKey] = set()
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not _is_row(record):
                raise self._refuse(f"line {number} is not a row of hpcm eval")
            if row_key(record) not in seen:  # a row measured twice counts once
                seen.add(row_key(record))
                self.rows.append(record)
        if len(complete) < len(data):
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
            if not complete:  # the header itself was torn
                self._append(self._header())

    def _append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self) -> set[RowKey]:
        return {row_key(r) for r in self.rows}

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
