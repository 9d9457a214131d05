"""HPCM models: the official HPCM-Base network and its RWKV variants, built from a ``VariantSpec``.

``HPCM_Baseline``, ``HPCM_Phase1``..``HPCM_Phase4`` and ``RWKVContextCell`` are the names of the report
and of the LIC-HPCM-LALIC fork (``HPCM_Phase2(M=320, N=256)``); each class name is a constructor of
``HPCM`` over the variant of that name.
"""

from .cells import RWKVContextCell
from .hpcm import HPCM, HPCM_Baseline, HPCM_Phase1, HPCM_Phase2, HPCM_Phase3, HPCM_Phase4, build_model
from .progressive import STEPS, ProgressiveSchedule, ProgressiveState
from .variants import VARIANTS, VariantSpec, get_variant

__all__ = ["HPCM", "HPCM_Baseline", "HPCM_Phase1", "HPCM_Phase2", "HPCM_Phase3", "HPCM_Phase4", "RWKVContextCell",
           "STEPS", "ProgressiveSchedule", "ProgressiveState", "VARIANTS", "VariantSpec", "build_model", "get_variant"]
