"""``hpcm check``: an export directory on a graph backend against eager PyTorch with the same weights.

Three levels, each on real images (Kodak when present, else synthetic):

* every graph on the inputs the eager pipeline produces for it: max / median / p99 absolute error
  per output, and the max relative to the output's largest magnitude;
* the codec across backends: eager-encoded streams decoded on the backend and the reverse, with the
  x_hat PSNR and bpp differences, or the decoding failure;
* scale-index mismatches per progressive step, the quantity that decides whether a stream decodes.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from hpcm.codec import BackendMismatchWarning, Codec, pad_image
from hpcm.codec.images import psnr_rgb8
from hpcm.errors import BitstreamError
from hpcm.log import LOG

from .mismatch import count_mismatches


@dataclass(frozen=True)
class Tolerances:
    max_abs_error: float = 1e-3
    max_index_mismatches: int = 0  # flips the boundary guard does not cover
    max_psnr_diff_db: float = 0.01


def error_stats(reference: torch.Tensor, other: torch.Tensor) -> dict:
    diff = (reference.double() - other.double().to(reference.device)).abs().flatten().cpu().numpy()
    scale = float(reference.abs().max()) or 1.0
    return {"max": float(diff.max()), "median": float(np.median(diff)), "p99": float(np.percentile(diff, 99)),
            "max_relative_to_scale": float(diff.max()) / scale, "elements": int(diff.size)}


class RecordingRunner:
    """A runner that remembers the first inputs and outputs of every graph it runs."""

    def __init__(self, runner) -> None:  # noqa: ANN001 - any runner
        self.runner = runner
        self.device = runner.device
        self.fingerprint = runner.fingerprint
        self.calls: dict[str, tuple[dict, dict]] = {}

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.runner.run(graph, inputs)
        self.calls.setdefault(graph, (dict(inputs), outputs))
        return outputs


def reference_run(reference: Codec, x: torch.Tensor, with_forward: bool
                  ) -> tuple[dict[str, tuple[dict, dict]], bytes, dict]:
    """The reference codec encoding and decoding ``x``: the inputs and outputs of every graph it ran
    (and of the whole-model forward on the padded image, when asked: one more full pass), its
    stream, and its own decode of that stream."""
    recorder = RecordingRunner(reference.runner)
    recording = Codec(recorder, reference.parameters)
    data = recording.compress(x).data
    decoded = _decode(recording, data, x)
    if with_forward:
        padded, _, _ = pad_image(x.to(reference.device), reference.alignment)
        with torch.no_grad():
            recorder.run("forward", {"x": padded})
    return recorder.calls, data, decoded


def _decode(codec: Codec, data: bytes, original: torch.Tensor) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BackendMismatchWarning)
            x_hat = codec.decompress(data).x_hat
        return {"ok": True, "psnr": psnr_rgb8(original, x_hat)}
    except (BitstreamError, RuntimeError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}


def check_export(reference: Codec, backend: Codec, images: Iterable[tuple[str, torch.Tensor]],
                 tolerances: Tolerances, graphs: Optional[list[str]] = None, precision: str = "fp32") -> dict:
    """Run every level for every image; returns the JSON-ready report with ``passed``.

    ``reference``: the eager codec on the weights the export was made from; ``backend``: the codec on
    the export's runner; ``precision``: the export's compute precision."""
    available = list(backend.runner.graphs)
    graphs = [g for g in (graphs or available) if g in available]
    images = list(images)
    # A reduced-precision export computes other scale indexes than float32 eager: its streams decode
    # on its own engines only, so cross-backend decodes and index mismatches are reported, not judged.
    cross_backend = precision == "fp32"
    report: dict = {"backend": backend.fingerprint, "reference": reference.fingerprint, "precision": precision,
                    "tolerances": tolerances.__dict__, "cross_backend_decodes_judged": cross_backend,
                    "graphs": {}, "codec": [], "failures": []}
    for name, x in images:
        cases, eager_data, eager_to_eager = reference_run(reference, x, with_forward="forward" in graphs)
        for graph in graphs:
            inputs, expected = cases[graph]
            start = time.perf_counter()
            outputs = backend.runner.run(graph, inputs)
            elapsed = time.perf_counter() - start
            stats = {k: error_stats(expected[k], outputs[k]) for k in expected}
            broken = [k for k in expected if not torch.isfinite(outputs[k]).all()]
            if broken:  # NaN would compare as within any tolerance
                report["failures"].append(f"{graph} on {name}: non-finite values in {', '.join(broken)}")
            report["graphs"].setdefault(graph, []).append({"image": name, "seconds": elapsed, "outputs": stats})
            worst = max(s["max"] for s in stats.values())
            if graph != "forward" and worst > tolerances.max_abs_error:
                report["failures"].append(f"{graph} on {name}: max abs error {worst:.3e}")
        LOG.info(f"{name}: graphs checked")

        backend_data = backend.compress(x).data
        height, width = x.shape[-2:]
        entry = {
            "image": name,
            "bpp_eager": 8 * len(eager_data) / (height * width),
            "bpp_backend": 8 * len(backend_data) / (height * width),
            "eager_to_eager": eager_to_eager,
            "eager_to_backend": _decode(backend, eager_data, x),
            "backend_to_eager": _decode(reference, backend_data, x),
            "backend_to_backend": _decode(backend, backend_data, x),
        }
        entry["bpp_diff"] = entry["bpp_backend"] - entry["bpp_eager"]
        if not entry["backend_to_backend"]["ok"]:
            report["failures"].append(f"backend_to_backend on {name}: {entry['backend_to_backend']['error']}")
        for route in ("eager_to_backend", "backend_to_eager"):
            result = entry[route]
            if not result["ok"]:
                if cross_backend:
                    report["failures"].append(f"{route} on {name}: {result['error']}")
            elif entry["eager_to_eager"]["ok"]:
                result["psnr_diff_db"] = result["psnr"] - entry["eager_to_eager"]["psnr"]
                if abs(result["psnr_diff_db"]) > tolerances.max_psnr_diff_db:
                    report["failures"].append(f"{route} on {name}: PSNR differs by {result['psnr_diff_db']:.3f} dB")
        report["codec"].append(entry)
        LOG.info(f"{name}: codec checked ({entry['bpp_eager']:.3f} bpp)")

    mismatches = count_mismatches({"eager": reference, "backend": backend}, images)
    report["index_mismatches"] = mismatches
    # Flips the boundary guard covers decode correctly; only the others break streams.
    total = mismatches["totals"]["backend"]["unguarded_mismatches"]
    if cross_backend and total > tolerances.max_index_mismatches:
        report["failures"].append(f"{total} scale-index mismatches outside the boundary guard "
                                  f"(tolerance {tolerances.max_index_mismatches})")
    report["passed"] = not report["failures"]
    return report
