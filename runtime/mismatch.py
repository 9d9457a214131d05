"""Cross-backend check: how many scale bucket indexes differ when another runner computes the
entropy parameters.

A decoder must compute the same bucket for every symbol as the encoder did. The first codec plays
encoder once (float32, TF32 off) to fix z_hat and every step's symbols; then every codec plays
decoder: given z_hat and the symbols (as a decoder has them after decoding correctly), it computes its
own scales and means step by step, feeding ``symbols + its own means`` back exactly like a real
decoder (``Codec.entropy_parameters``). Every codec's bucket indexes are compared with the first's.

The codecs may run on any runner: eager PyTorch in another dtype or on another device, ONNX Runtime,
TensorRT (``backend_codecs``: one codec per backend over the one model or export a request names).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import torch

from hpcm.codec import Codec
from hpcm.codec.guard import DEFAULT_EPSILON, nearest_boundary
from hpcm.errors import ConfigError, RunnerError
from hpcm.models.cdf_tables import scale_indexes

from .runners import GRAPH_RUNNERS
from .session import CodecRequest, check_backend, open_codec, resolve


def backend_options(item: str) -> tuple[str, dict[str, Any]]:
    """(backend, runner options) of a backend to compare: a graph backend's name, or eager PyTorch as
    DEVICE-DTYPE (``cpu-float64``, ``cuda-float32``; the dtype defaults to float32)."""
    if item in GRAPH_RUNNERS:
        return item, {}
    device, _, dtype_name = item.partition("-")
    dtype = getattr(torch, dtype_name or "float32", None)
    if not device or not isinstance(dtype, torch.dtype):
        raise ConfigError(f"--backends {item!r}: expected DEVICE-DTYPE such as cpu-float64, or a graph backend "
                          f"({', '.join(GRAPH_RUNNERS)}) with --export")
    return "eager", {"device": device, "dtype": dtype}


@contextlib.contextmanager
def backend_codecs(request: CodecRequest, backends: Sequence[str]) -> Iterator[dict[str, Codec]]:
    """A codec per item of ``backends`` (``backend_options``), all over the model or export folder
    ``request`` names (an export's own eager model for the eager ones), released when the block ends."""
    if len(backends) < 2:
        raise ConfigError("--backends needs at least two backends")
    options = {item: backend_options(item) for item in backends}
    for item, (backend, extra) in options.items():  # every backend checked before anything loads
        try:
            check_backend(backend, request.export is not None, **extra)
        except RunnerError as exc:
            raise RunnerError(f"--backends {item}: {exc}") from exc
    source = resolve(request, need_model=any(backend == "eager" for backend, _ in options.values()))
    with contextlib.ExitStack() as stack:
        codecs = {}
        for item, (backend, extra) in options.items():
            device = extra.pop("device", None)
            given = CodecRequest(model=source.model, export=source.export, backend=backend, device=device)
            codecs[item] = stack.enter_context(open_codec(given, **extra)).codec
        yield codecs


def _step_report(scales: torch.Tensor, means: torch.Tensor, ref_scales: torch.Tensor, ref_means: torch.Tensor,
                 table: torch.Tensor, guard_epsilon: float) -> dict:
    idx = scale_indexes(scales.detach().cpu(), table)
    ref_idx = scale_indexes(ref_scales.detach().cpu(), table)
    bound = float(table[0])
    # below the GGM's lower bound every scale lands in bucket 0, so only bounded differences can
    # move an index
    s64 = scales.detach().cpu().double().clamp_min(bound)
    r64 = ref_scales.detach().cpu().double().clamp_min(bound)
    flipped = (idx != ref_idx).reshape(-1).numpy()
    _, distance = nearest_boundary(ref_scales, table)
    return {"symbols": int(idx.numel()), "mismatches": int(flipped.sum()),
            "unguarded_mismatches": int((flipped & (distance >= guard_epsilon)).sum()),
            "max_rel_scale_diff": ((s64 - r64).abs() / r64).max().item(),
            "max_abs_mean_diff": (means.detach().cpu().double() - ref_means.detach().cpu().double()).abs().max().item()}


def count_mismatches(codecs: dict[str, Codec], images: Iterable[tuple[str, torch.Tensor]],
                     guard_epsilon: float = DEFAULT_EPSILON) -> dict:
    """Per image and step: symbols, index mismatches against the first codec, those of them the
    boundary guard (``guard_epsilon``) does not cover, and the largest relative scale and absolute
    mean differences. Returns a JSON-ready dict."""
    if len(codecs) < 2:
        raise ValueError("need at least two codecs to compare")
    names = list(codecs)
    reference = codecs[names[0]]
    table = reference.parameters.tables.scale_table
    report: dict = {"reference": names[0], "backends": names, "images": [], "totals": {}}
    totals = {n: {"symbols": 0, "mismatches": 0, "unguarded_mismatches": 0} for n in names[1:]}
    for image_name, x in images:
        z_hat, symbols = reference.latents(x)
        results = {n: codec.entropy_parameters(z_hat, symbols) for n, codec in codecs.items()}
        entry = {"image": image_name, "size": list(x.shape[-2:]), "steps": {}}
        for n in names[1:]:
            steps = []
            for step, ((scales, means), (ref_scales, ref_means)) in enumerate(zip(results[n], results[names[0]])):
                row = {"step": step, **_step_report(scales, means, ref_scales, ref_means, table, guard_epsilon)}
                steps.append(row)
                for key in totals[n]:
                    totals[n][key] += row[key]
            entry["steps"][n] = steps
        report["images"].append(entry)
    report["totals"] = totals
    return report
