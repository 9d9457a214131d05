"""The bi-directional WKV operator: contract, PyTorch op, float64 references, CUDA kernel, TensorRT plugin."""

from .contract import CONTRACT, WKVContract
from .modes import WKV_MODES, WKVMode
from .op import biwkv, biwkv_closed_form, biwkv_eager, exponent_spread
from .reference import biwkv_direct, biwkv_scan, biwkv_vrwkv_direct, biwkv_vrwkv_scan
from .vrwkv import biwkv_vrwkv, biwkv_vrwkv_closed_form

__all__ = [
    "CONTRACT",
    "WKVContract",
    "WKV_MODES",
    "WKVMode",
    "biwkv",
    "biwkv_closed_form",
    "biwkv_direct",
    "biwkv_eager",
    "biwkv_scan",
    "biwkv_vrwkv",
    "biwkv_vrwkv_closed_form",
    "biwkv_vrwkv_direct",
    "biwkv_vrwkv_scan",
    "exponent_spread",
]
