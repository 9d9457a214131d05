"""Bjøntegaard deltas between R-D curves in CompressAI's JSON layout.

The integrals are the ``bjontegaard`` package's with piecewise-cubic Hermite (PCHIP) interpolation,
the method of the JVET/VCEG common-test-condition spreadsheet: BD-rate integrates log10(bpp) over
the quality range both curves cover (in percent: negative = fewer bits than the reference at equal
quality), BD-PSNR integrates PSNR over the log-rate range both cover. MS-SSIM is taken on the dB
scale (-10 log10(1 - MS-SSIM)). A curve is first sorted by rate, and points that do not raise the
quality are dropped (PCHIP needs both axes increasing); every table names its reference curve.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hpcm.errors import HPCMError

from .metrics import ms_ssim_db

BD_METHOD = "pchip"


class ResultsError(HPCMError, ValueError):
    """A result file that cannot be read as an R-D curve."""


@dataclass(frozen=True)
class Curve:
    name: str
    bpp: tuple[float, ...]
    psnr: tuple[float, ...]
    ms_ssim: Optional[tuple[float, ...]] = None
    source: str = ""  # the file it was read from
    description: str = ""

    def ms_ssim_db(self) -> Optional[tuple[float, ...]]:
        return None if self.ms_ssim is None else tuple(ms_ssim_db(v) for v in self.ms_ssim)


MAX_RESULT_BYTES = 16 << 20  # a result file holds a few lists of numbers; larger is not one
MAX_METRIC = 1e6  # bpp, PSNR and MS-SSIM of any image lie far inside; beyond, no figure axis can be drawn


def _number(value: object) -> float:
    """A metric value: a number, or null or a non-finite number for one not measured (NaN, left out
    of the deltas and the figure)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
        raise TypeError(value)
    if value is None or not math.isfinite(value):
        return math.nan
    if abs(value) > MAX_METRIC:
        raise TypeError(value)
    return float(value)


def read_curve(path: Path) -> Curve:
    """A result file in CompressAI's layout (``results`` with ``bpp`` and ``psnr-rgb``, lists of
    numbers or nulls of one length); anything else is a ``ResultsError`` naming the file and what is wrong."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ResultsError(f"{path} is not a regular file (a folder, device or pipe), not a result file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RESULT_BYTES + 1)
        if len(data) > MAX_RESULT_BYTES:
            raise ResultsError(f"{path}: larger than {MAX_RESULT_BYTES >> 20} MiB, not a result file")
        raw = json.loads(data.decode("utf-8"))
    except FileNotFoundError as exc:
        raise ResultsError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
        raise ResultsError(f"{path}: not a JSON result file ({reason})") from exc
    results = raw.get("results", raw) if isinstance(raw, dict) else None
    if not isinstance(results, dict) or "bpp" not in results or "psnr-rgb" not in results:
        raise ResultsError(f"{path}: expected CompressAI's layout, results.bpp and results.psnr-rgb")

    def values(key: str) -> Optional[tuple[float, ...]]:
        if key not in results:
            return None
        column = results[key]
        if not isinstance(column, list):
            raise ResultsError(f"{path}: results.{key} must be a list of numbers")
        if len(column) != len(results["bpp"]):
            raise ResultsError(f"{path}: results.{key} must be a list as long as results.bpp")
        try:
            return tuple(_number(v) for v in column)
        except TypeError as exc:
            raise ResultsError(f"{path}: results.{key} holds {str(exc.args[0])[:40]!r}; its values must be numbers "
                               f"within +-{MAX_METRIC:g} (or null)") from None

    return Curve(name=str(raw.get("name", path.stem))[:200], bpp=values("bpp"), psnr=values("psnr-rgb"),
                 ms_ssim=values("ms-ssim-rgb"), source=str(path), description=str(raw.get("description", ""))[:2000])


def anchor_curves(folder: Path) -> dict[str, Curve]:
    """The curves of a folder of result files, by file stem (``vtm`` for vtm.json)."""
    return {p.stem: read_curve(p) for p in sorted(Path(folder).glob("*.json"))}


def monotone(rate: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points sorted by rate, keeping only those that raise the quality (finite values only)."""
    pairs = sorted((r, q) for r, q in zip(rate, quality) if math.isfinite(r) and math.isfinite(q) and r > 0)
    kept: list[tuple[float, float]] = []
    for r, q in pairs:
        if not kept or (r > kept[-1][0] and q > kept[-1][1]):
            kept.append((r, q))
    return np.array([r for r, _ in kept]), np.array([q for _, q in kept])


@dataclass
class Delta:
    """One Bjøntegaard delta: its value, or why there is none, and how far the curves overlap."""

    value: Optional[float]
    overlap: Optional[float] = None  # share of the joint range both curves cover
    note: str = ""


def _delta(function_name: str, ref_rate, ref_quality, rate, quality) -> Delta:  # noqa: ANN001 - sequences
    import bjontegaard

    ref = monotone(ref_rate, ref_quality)
    test = monotone(rate, quality)
    if len(ref[0]) < 2 or len(test[0]) < 2:
        return Delta(None, note="fewer than 2 increasing points")
    # BD-rate integrates over quality, BD-PSNR over log rate: the overlap is measured on that axis
    ref_x, test_x = (ref[1], test[1]) if function_name == "bd_rate" else (np.log10(ref[0]), np.log10(test[0]))
    joint = max(ref_x.max(), test_x.max()) - min(ref_x.min(), test_x.min())
    common = min(ref_x.max(), test_x.max()) - max(ref_x.min(), test_x.min())
    overlap = max(common, 0.0) / joint if joint > 0 else 0.0
    if overlap <= 0:
        return Delta(None, 0.0, "the curves do not overlap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns below 75 % overlap; the table reports it
        try:
            value = getattr(bjontegaard, function_name)(ref[0], ref[1], test[0], test[1], BD_METHOD,
                                                        require_matching_points=False)
        except (ValueError, ArithmeticError) as exc:  # e.g. values so large that the interpolation overflows
            return Delta(None, overlap, f"not computable from these points: {exc}")
    return Delta(float(value), overlap)


def bd_rate(reference: tuple[Sequence[float], Sequence[float]], test: tuple[Sequence[float], Sequence[float]]) -> Delta:
    """BD-rate in percent of ``test`` (rates, qualities) against ``reference``."""
    return _delta("bd_rate", *reference, *test)


def bd_quality(reference: tuple[Sequence[float], Sequence[float]], test: tuple[Sequence[float], Sequence[float]]) -> Delta:
    """BD-PSNR (dB, or MS-SSIM dB) of ``test`` (rates, qualities) against ``reference``."""
    return _delta("bd_psnr", *reference, *test)


@dataclass
class BDRow:
    curve: Curve
    rate_psnr: Delta
    psnr: Delta
    rate_ms_ssim: Delta = field(default_factory=lambda: Delta(None, note="no MS-SSIM"))


def bd_table(curves: Sequence[Curve], reference: Curve) -> list[BDRow]:
    rows = []
    for curve in curves:
        row = BDRow(curve, bd_rate((reference.bpp, reference.psnr), (curve.bpp, curve.psnr)),
                    bd_quality((reference.bpp, reference.psnr), (curve.bpp, curve.psnr)))
        if curve.ms_ssim is not None and reference.ms_ssim is not None:
            row.rate_ms_ssim = bd_rate((reference.bpp, reference.ms_ssim_db()), (curve.bpp, curve.ms_ssim_db()))
        rows.append(row)
    return rows


def _cell(delta: Delta, unit: str) -> str:
    if delta.value is None:
        return f"n/a ({delta.note})"
    text = f"{delta.value:+.2f}{unit}"
    return text + (f" (overlap {100 * delta.overlap:.0f} %)" if delta.overlap is not None and delta.overlap < 0.75
                   else "")


def markdown_table(rows: Sequence[BDRow], reference: Curve) -> str:
    """The BD table in Markdown, headed by the reference it was computed against."""
    source = f" ({Path(reference.source).name})" if reference.source else ""
    lines = [f"BD against **{reference.name}**{source}, {BD_METHOD.upper()} interpolation "
             "(negative BD-rate: fewer bits than the reference at equal quality)", "",
             f"| curve | BD-rate PSNR vs {reference.name} | BD-PSNR vs {reference.name} | "
             f"BD-rate MS-SSIM (dB) vs {reference.name} |",
             "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.curve.name} | {_cell(row.rate_psnr, ' %')} | {_cell(row.psnr, ' dB')} | "
                     f"{_cell(row.rate_ms_ssim, ' %')} |")
    return "\n".join(lines)
