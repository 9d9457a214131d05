"""The Bi-WKV modes a model can compute, by name: the one table variants, cells and the exporter read.

* ``exact``: the formula of ``contract.json`` (``shared/design/biwkv.md``), the project's op: a
  custom node under ONNX export, the CUDA kernel, the TensorRT plugin and the native ONNX Runtime op.
* ``vrwkv``: the formula of Vision-RWKV's public CUDA kernel, which LIC-HPCM-LALIC checkpoints
  were trained with (``vrwkv.py``). It runs in PyTorch and exports as standard ONNX ops only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .op import ClosedForm, biwkv, biwkv_closed_form
from .reference import biwkv_scan, biwkv_vrwkv_scan
from .vrwkv import biwkv_vrwkv, biwkv_vrwkv_closed_form


@dataclass(frozen=True)
class WKVMode:
    name: str
    evaluate: ClosedForm  # guarded evaluation in eager PyTorch (for "exact", the custom op)
    closed_form: ClosedForm  # vectorised standard ops, what ``--wkv decomposed`` traces
    reference: ClosedForm  # the float64 oracle
    custom_node: bool  # exported as the contract's custom node and served by the kernel/plugins
    doc: str


WKV_MODES: dict[str, WKVMode] = {
    mode.name: mode
    for mode in (
        WKVMode("exact", biwkv, biwkv_closed_form, biwkv_scan, True,
                "the exact formula of contract.json"),
        WKVMode("vrwkv", biwkv_vrwkv, biwkv_vrwkv_closed_form, biwkv_vrwkv_scan, False,
                "the formula of Vision-RWKV's CUDA kernel (32 chunks, chunk starts one decay step off), "
                "which LIC-HPCM-LALIC checkpoints were trained with"),
    )
}
