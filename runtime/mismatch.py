"""Cross-backend check: how many scale bucket indexes differ when another backend computes the
entropy parameters.

A decoder must compute the same bucket for every symbol as the encoder did. This tool runs the
encoder once (the model as given, float32, TF32 off) to fix z_hat and every step's symbols, then
lets each backend play decoder: it gets z_hat and the symbols (as a decoder would after decoding
them correctly), computes its own scales and means step by step, feeding ``symbols + its own means``
back as y_hat exactly like a real decoder. Every backend's bucket indexes are compared with the
first backend's, per step.

A backend is any callable ``(z_hat, symbols_per_step) -> [(scales, means) per step]`` (see
:data:`EntropyBackend`), so an ONNX Runtime or TensorRT session can be plugged in next to the
eager PyTorch backends built by :func:`torch_backend`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from hpcm.models.cdf_tables import scale_indexes

from .codec import deterministic_precision, pad_image
from .guard import DEFAULT_EPSILON, nearest_boundary

EntropyBackend = Callable[[torch.Tensor, Sequence[torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]


def torch_backend(model: torch.nn.Module, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> EntropyBackend:
    """Eager PyTorch on ``device`` in ``dtype`` (a private copy of the model)."""
    device = torch.device(device)
    return stepping_backend(copy.deepcopy(model).to(device=device, dtype=dtype).eval(), device, dtype)


def stepping_backend(net, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> EntropyBackend:
    """Any object with HPCM's step API (an eager model, or a ``GraphModel`` on ONNX Runtime/TensorRT)."""
    device = torch.device(device)

    def run(z_hat: torch.Tensor, symbols: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        with torch.no_grad(), deterministic_precision(device):
            state = net.begin_progressive(net.h_s(z_hat.to(device=device, dtype=dtype)))
            for step in range(net.num_steps):
                scales, means = net.step_parameters(state, step)
                out.append((scales, means))
                state = net.advance(state, step, symbols[step].to(device=device, dtype=dtype) + means)
        return out

    return run


def reference_symbols(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The encoder's z_hat and per-step symbols for image ``x`` (padded like the codec pads)."""
    device = next(model.parameters()).device
    with torch.no_grad(), deterministic_precision(device):
        xp, _, _ = pad_image(x.to(device=device, dtype=torch.float32), model.alignment)
        y, z = model.analyse(xp)
        z_hat = torch.round(z - model.means_hyper) + model.means_hyper
        state = model.begin_progressive(model.h_s(z_hat))
        symbols = []
        for step in range(model.num_steps):
            scales, means = model.step_parameters(state, step)
            q = torch.round(model.step_symbols(y, step) - means)
            symbols.append(q)
            state = model.advance(state, step, q + means)
    return z_hat, symbols


def count_mismatches(model: torch.nn.Module, images: Iterable[tuple[str, torch.Tensor]],
                     backends: dict[str, EntropyBackend], guard_epsilon: float = DEFAULT_EPSILON) -> dict:
    """Per image and step: symbols, index mismatches against the first backend, those of them the
    boundary guard (``guard_epsilon``) does not cover, and the largest relative scale and absolute
    mean differences. Returns a JSON-ready dict."""
    if len(backends) < 2:
        raise ValueError("need at least two backends to compare")
    names = list(backends)
    reference = names[0]
    table = model.scale_table.detach().cpu()
    bound = float(table[0])
    report: dict = {"reference": reference, "backends": names, "images": [], "totals": {}}
    totals = {n: {"symbols": 0, "mismatches": 0, "unguarded_mismatches": 0} for n in names[1:]}
    for image_name, x in images:
        z_hat, symbols = reference_symbols(model, x)
        results = {n: backends[n](z_hat, symbols) for n in names}
        ref_idx = [scale_indexes(s.detach().cpu(), table) for s, _ in results[reference]]
        entry = {"image": image_name, "size": list(x.shape[-2:]), "steps": {}}
        for n in names[1:]:
            steps = []
            for step, (scales, means) in enumerate(results[n]):
                idx = scale_indexes(scales.detach().cpu(), table)
                ref_scales, ref_means = results[reference][step]
                # below the GGM's lower bound every scale lands in bucket 0, so only bounded
                # differences can move an index
                s64 = scales.detach().cpu().double().clamp_min(bound)
                r64 = ref_scales.detach().cpu().double().clamp_min(bound)
                rel = ((s64 - r64).abs() / r64).max().item()
                mean_diff = (means.detach().cpu().double() - ref_means.detach().cpu().double()).abs().max().item()
                flipped = (idx != ref_idx[step]).reshape(-1).numpy()
                _, distance = nearest_boundary(ref_scales, table)
                unguarded = int((flipped & (distance >= guard_epsilon)).sum())
                mism = int(flipped.sum())
                steps.append({"step": step, "symbols": int(idx.numel()), "mismatches": mism,
                              "unguarded_mismatches": unguarded,
                              "max_rel_scale_diff": rel, "max_abs_mean_diff": mean_diff})
                totals[n]["symbols"] += int(idx.numel())
                totals[n]["mismatches"] += mism
                totals[n]["unguarded_mismatches"] += unguarded
            entry["steps"][n] = steps
        report["images"].append(entry)
    report["totals"] = totals
    return report


def load_images(folder: Path | None, limit: int, crop: int | None, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """RGB images from ``folder`` (sorted, at most ``limit``, optionally a top-left crop), or smooth
    synthetic images when the folder is absent."""
    from PIL import Image

    out = []
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff"):
                continue
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
            if crop:
                x = x[..., :crop, :crop]
            out.append((path.name, x))
            if len(out) >= limit:
                break
        if out:
            return out
    gen = torch.Generator().manual_seed(seed)
    side = crop or 256
    for i in range(limit):
        coarse = torch.rand(1, 3, side // 16 + 1, side // 16 + 1, generator=gen)
        x = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        out.append((f"synthetic{i}", x))
    return out
