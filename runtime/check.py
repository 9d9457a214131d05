"""``hpcm check``: an export directory on a graph backend against eager PyTorch with the same weights.

Three levels, each on real images (Kodak when present, else synthetic):

* every graph on the inputs the eager pipeline produces for it: max / median / p99 absolute error
  per output, and the max relative to the output's largest magnitude;
* the codec across backends: eager-encoded streams decoded on the backend and the reverse, with the
  x_hat PSNR and bpp differences, or the decoding failure;
* scale-index mismatches per progressive step, the quantity that decides whether a stream decodes.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from hpcm.models.hpcm import HPCM, STEPS

from .codec import BackendMismatchWarning, compress, decompress, pad_image
from .errors import BitstreamError
from .graph_model import TRANSITION_GRAPHS, GraphModel
from .mismatch import count_mismatches, stepping_backend


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


def _graph_inputs(model: HPCM, x: torch.Tensor, with_forward: bool) -> dict[str, tuple[dict, dict]]:
    """Inputs and eager outputs of every codec graph, and of the forward when asked, for image ``x``
    (already padded). The forward is one more whole-model pass, so it runs only when checked."""
    cases: dict[str, tuple[dict, dict]] = {}
    with torch.no_grad():
        y, z = model.analyse(x)
        cases["analysis"] = ({"x": x}, {"y": y, "z": z})
        z_hat = torch.round(z - model.means_hyper) + model.means_hyper
        params = model.h_s(z_hat)
        cases["hyper_synthesis"] = ({"z_hat": z_hat}, {"params": params})
        state = model.begin_progressive(params)
        for step, s in enumerate(STEPS):
            if s.adaptor is not None:
                inputs = {"context_next": state.context_next, "y_hat": state.y_hat}
                scales_full, means_full, new_context = model.step_context(step, state.context_next, state.y_hat)
                cases[f"step{step:02d}"] = (inputs, {"scales": scales_full, "means": means_full,
                                                     "new_context_next": new_context})
            scales, means = model.step_parameters(state, step)
            symbols = torch.round(model.step_symbols(y, step) - means)
            if s.last_of_scale and s.scale < 2:
                before = {"context_next": state.pending_context if state.pending_context is not None
                          else state.context_next,
                          "y_hat": state.y_hat + model.step_mask(step).from_dense(symbols + means),
                          "scales_hyper": state.scales_hyper, "means_hyper": state.means_hyper}
                model.advance(state, step, symbols + means)
                cases[TRANSITION_GRAPHS[s.scale]] = (before, {"new_context_next": state.context_next,
                                                              "new_y_hat": state.y_hat})
            else:
                model.advance(state, step, symbols + means)
        y_hat = model.finish_progressive(state)
        cases["synthesis"] = ({"y_hat": y_hat}, {"x_hat": model.g_s(y_hat)})
        if not with_forward:
            return cases
        out = model(x, training=False)
        cases["forward"] = ({"x": x}, {"x_hat": out["x_hat"], "y_likelihoods": out["likelihoods"]["y"],
                                       "z_likelihoods": out["likelihoods"]["z"]})
    return cases


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = (a.clamp(0, 1) * 255).round()
    b = (b.clamp(0, 1) * 255).round()
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def _decode(model, data: bytes, original: torch.Tensor) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BackendMismatchWarning)
            x_hat = decompress(model, data)
        return {"ok": True, "psnr": _psnr(original, x_hat)}
    except (BitstreamError, RuntimeError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}


def check_export(model: HPCM, backend, images: Iterable[tuple[str, torch.Tensor]], tolerances: Tolerances,
                 graphs: Optional[list[str]] = None, log=print) -> dict:
    """Run every level for every image; returns the JSON-ready report with ``passed``."""
    model = model.eval()
    graph_model = GraphModel(model, backend)
    available = list(getattr(backend, "manifest", {}).get("graphs", {}))
    graphs = [g for g in (graphs or available) if g in available]
    images = list(images)
    precision = getattr(backend, "manifest", {}).get("precision", "fp32")
    # A reduced-precision export computes other scale indexes than float32 eager: its streams decode
    # on its own engines only, so cross-backend decodes and index mismatches are reported, not judged.
    cross_backend = precision == "fp32"
    report: dict = {"backend": backend.fingerprint, "precision": precision, "tolerances": tolerances.__dict__,
                    "cross_backend_decodes_judged": cross_backend, "graphs": {}, "codec": [], "failures": []}
    for name, x in images:
        xp, _, _ = pad_image(x, model.alignment)
        cases = _graph_inputs(model, xp, with_forward="forward" in graphs)
        for graph in graphs:
            inputs, expected = cases[graph]
            start = time.perf_counter()
            outputs = backend.run(graph, inputs)
            elapsed = time.perf_counter() - start
            stats = {k: error_stats(expected[k], outputs[k]) for k in expected}
            broken = [k for k in expected if not torch.isfinite(outputs[k]).all()]
            if broken:  # NaN would compare as within any tolerance
                report["failures"].append(f"{graph} on {name}: non-finite values in {', '.join(broken)}")
            report["graphs"].setdefault(graph, []).append({"image": name, "seconds": elapsed, "outputs": stats})
            worst = max(s["max"] for s in stats.values())
            if graph != "forward" and worst > tolerances.max_abs_error:
                report["failures"].append(f"{graph} on {name}: max abs error {worst:.3e}")
        log(f"{name}: graphs checked")

        eager_data = compress(model, x)
        backend_data = compress(graph_model, x)
        height, width = x.shape[-2:]
        entry = {
            "image": name,
            "bpp_eager": 8 * len(eager_data) / (height * width),
            "bpp_backend": 8 * len(backend_data) / (height * width),
            "eager_to_eager": _decode(model, eager_data, x),
            "eager_to_backend": _decode(graph_model, eager_data, x),
            "backend_to_eager": _decode(model, backend_data, x),
            "backend_to_backend": _decode(graph_model, backend_data, x),
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
        log(f"{name}: codec checked ({entry['bpp_eager']:.3f} bpp)")

    mismatches = count_mismatches(model, images, {"eager": stepping_backend(model),
                                                  "backend": stepping_backend(graph_model)})
    report["index_mismatches"] = mismatches
    # Flips the boundary guard covers decode correctly; only the others break streams.
    total = mismatches["totals"]["backend"]["unguarded_mismatches"]
    if cross_backend and total > tolerances.max_index_mismatches:
        report["failures"].append(f"{total} scale-index mismatches outside the boundary guard "
                                  f"(tolerance {tolerances.max_index_mismatches})")
    report["passed"] = not report["failures"]
    return report
