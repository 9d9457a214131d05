"""The bi-directional WKV operator: contract, PyTorch op, float64 references, CUDA kernel, TensorRT plugin."""

from .contract import CONTRACT, WKVContract
from .op import biwkv, biwkv_closed_form, biwkv_eager, exponent_spread
from .reference import biwkv_direct, biwkv_scan

__all__ = [
    "CONTRACT",
    "WKVContract",
    "biwkv",
    "biwkv_closed_form",
    "biwkv_direct",
    "biwkv_eager",
    "biwkv_scan",
    "exponent_spread",
]
