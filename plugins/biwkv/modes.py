"""The Bi-WKV modes a model can compute, by name: the one table variants, cells, the op and the exporter read.

* ``exact``: the formula of ``shared/design/biwkv.md``, the project's own.
* ``vrwkv``: the formula of Vision-RWKV's public CUDA kernel, which LIC-HPCM-LALIC checkpoints
  were trained with (``vrwkv.py``).

Every mode the contract lists (``contract.json``, ``modes``) is a mode of the one custom op
``hpcm::biwkv``: a custom node carrying the mode under ONNX export, served by the CUDA kernel, the
TensorRT plugin and the native ONNX Runtime op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .contract import CONTRACT
from .op import ClosedForm, biwkv, biwkv_closed_form, biwkv_eager
from .reference import biwkv_scan, biwkv_vrwkv_scan
from .vrwkv import biwkv_vrwkv, biwkv_vrwkv_closed_form


@dataclass(frozen=True)
class WKVMode:
    name: str
    eager: ClosedForm  # guarded vectorised evaluation: the op's implementation wherever no kernel is registered
    closed_form: ClosedForm  # vectorised standard ops, what ``--wkv decomposed`` traces
    reference: ClosedForm  # the float64 oracle
    doc: str

    @property
    def custom_node(self) -> bool:
        """Whether the contract's op computes this mode (exported as its custom node, served by the kernel
        and the plugins)."""
        return self.name in CONTRACT.modes

    def evaluate(self, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The op in this mode: eager PyTorch (the CUDA kernel where registered), one custom node under export."""
        return biwkv(w, u, k, v, self.name)


WKV_MODES: dict[str, WKVMode] = {
    mode.name: mode
    for mode in (
        WKVMode("exact", biwkv_eager, biwkv_closed_form, biwkv_scan, "the exact formula of contract.json"),
        WKVMode("vrwkv", biwkv_vrwkv, biwkv_vrwkv_closed_form, biwkv_vrwkv_scan,
                "the formula of Vision-RWKV's CUDA kernel (32 chunks, chunk starts one decay step off), "
                "which LIC-HPCM-LALIC checkpoints were trained with"),
    )
}
