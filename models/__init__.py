"""HPCM models: the official HPCM-Base network and its RWKV variants, built from a ``VariantSpec``."""

from .hpcm import HPCM, build_model
from .progressive import STEPS, ProgressiveSchedule, ProgressiveState
from .variants import VARIANTS, VariantSpec, get_variant

__all__ = ["HPCM", "STEPS", "ProgressiveSchedule", "ProgressiveState", "VARIANTS", "VariantSpec", "build_model", "get_variant"]
