"""Which variant a state_dict without a recorded variant is, from its keys: the official HPCM-Base,
one of the LIC-HPCM-LALIC fork's classes (mapped onto this project's layout by ``fork``), or this
project's own layout, whose keys show the structure but not the RWKV block wiring or Bi-WKV mode.
M and N are read off the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hpcm.errors import VariantError

from .fork import ADAPTIVE_PARAMS_NOTICE, DATA_PARALLEL_PREFIX, from_fork_layout, is_fork_layout
from .variants import FORK_NAMES, VARIANTS, VRWKV_SUFFIX, VariantSpec, with_dimensions


def recognise_architecture(keys) -> Optional[str]:  # noqa: ANN001 - any iterable of keys
    """The variant whose module structure the keys (either layout) have, by its fork-era name:
    baseline, phase1..phase4, or phase4-preln (DWConvRB then RWKV blocks in the s3 prior); None when
    they fit none. The RWKV block wiring and the Bi-WKV mode are not in the keys."""
    keys = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    cross = [has(f"attn_{s}.conv_q.") for s in ("s1", "s2", "s3")]
    rwkv = [has(f"attn_{s}.input_proj.") for s in ("s1", "s2", "s3")]
    if cross == [True, True, True]:
        return "baseline"
    if cross == [True, True, False] and rwkv[2]:
        return "phase1"
    if rwkv != [True, True, True]:
        return None
    if not has("context_net.0.blocks."):
        return "phase2" if has("context_net.0.weight") else None
    prior_s1_rwkv = has("y_spatial_prior_s1_s2.branch_1.0.spatial_mix.")
    prior_s3_first_rwkv = has("y_spatial_prior_s3.branch_1.0.spatial_mix.")
    prior_s3_last_rwkv = has("y_spatial_prior_s3.branch_2.0.spatial_mix.")
    if prior_s1_rwkv and prior_s3_first_rwkv:
        return "phase4"
    if prior_s3_last_rwkv:
        return "phase4-preln"
    return "phase3"


@dataclass
class CheckpointContents:
    """What a checkpoint file holds, with its state_dict in this project's layout."""

    source: str  # who wrote it, in words
    variant: Optional[VariantSpec]  # recorded in the file, or recognised from its keys
    state_dict: dict
    found: list[str] = field(default_factory=list)  # what was recognised and mapped (hpcm info)
    notices: list[str] = field(default_factory=list)  # one line each, said when the checkpoint is loaded
    candidates: tuple[str, ...] = ()  # variants whose keys these are, when the keys cannot decide


def _training_state(payload: dict) -> str:
    values = [f"{k} {payload[k]}" for k in ("epoch", "global_step", "best_loss")
              if isinstance(payload.get(k), (int, float))]
    return f" ({', '.join(values)})" if values else ""


def _structure(spec: VariantSpec) -> tuple:
    """What of a spec its state_dict keys and shapes show (not its names, RWKV wiring or Bi-WKV mode)."""
    return spec.cells, spec.fusion, spec.prior_s1_s2, spec.prior_s3, spec.M, spec.N


def _with_dimensions(spec: VariantSpec, state_dict: dict) -> VariantSpec:
    """``spec`` with the M and N of a raw state_dict (its adaptor and hyper-prior shapes), named as the
    expression that builds it (``phase2+M=192+N=128``: what --variant must say for it)."""
    adaptor, hyper = state_dict.get("y_spatial_prior_adaptor_list_s1.0.weight"), state_dict.get("means_hyper")
    if adaptor is None or hyper is None or adaptor.dim() < 1 or hyper.dim() < 2:
        return spec
    try:
        return with_dimensions(spec, adaptor.shape[0] // 3, hyper.shape[1])
    except VariantError:  # sizes no variant may have: the strict load then names the mismatch
        return spec


def describe_state_dict(state_dict: dict, payload: dict) -> CheckpointContents:
    """What a state_dict without a recorded variant is (``payload``: the file it came in, for its
    training state and its keys as saved)."""
    saved = payload.get("state_dict", payload)
    found = ["'module.' (DataParallel) prefixes stripped"] if any(k.startswith(DATA_PARALLEL_PREFIX) for k in saved) \
        else []
    if is_fork_layout(state_dict):
        state_dict, mapping = from_fork_layout(state_dict)
        architecture = recognise_architecture(state_dict)
        found.append(f"LIC-HPCM-LALIC layout mapped: {mapping.summary()}")
        contents = CheckpointContents("LIC-HPCM-LALIC fork state_dict" + _training_state(payload), None, state_dict,
                                      found, [ADAPTIVE_PARAMS_NOTICE] if mapping.adaptive_params_added else [])
        if architecture in FORK_NAMES:
            contents.variant = _with_dimensions(VARIANTS[architecture + VRWKV_SUFFIX], state_dict)
            found.append(f"recognised {architecture} from the keys; trained with the fork's CUDA Bi-WKV, so it "
                         f"runs as {contents.variant.name} (the kernel's formula: Bi-WKV mode vrwkv)")
        else:
            found.append("the keys fit none of the fork's phase1..phase4")
        return contents
    architecture = recognise_architecture(state_dict)
    contents = CheckpointContents("state_dict" + _training_state(payload), None, state_dict, found)
    if architecture == "baseline":
        contents.variant = _with_dimensions(VARIANTS["baseline"], state_dict)
        found.append("recognised HPCM-Base (official layout) from the keys")
        contents.notices.append("records no variant; its keys are HPCM-Base's (the official layout), so it loads "
                                "as baseline (pass --variant if it is another)")
    elif architecture is not None:
        # This project's layout: the RWKV block wiring and the Bi-WKV mode are not in the keys.
        contents.candidates = tuple(_with_dimensions(spec, state_dict).name for spec in VARIANTS.values()
                                    if _structure(spec) == _structure(VARIANTS[architecture]))
        found.append(f"the keys fit {', '.join(contents.candidates)} (RWKV block wiring and Bi-WKV mode are not "
                     "in the keys)")
    else:
        found.append("the keys fit no known variant")
    return contents
