"""HPCM models: the official HPCM-Base network and its RWKV variants, built from a ``VariantSpec``."""

from .hpcm import HPCM, STEPS, ProgressiveState, build_model
from .variants import VARIANTS, VariantSpec, get_variant

__all__ = ["HPCM", "STEPS", "ProgressiveState", "VARIANTS", "VariantSpec", "build_model", "get_variant"]
