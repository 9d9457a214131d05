"""Ablation matrices for ``hpcm bench --ablate``: each one-part change of a base variant.

The changes swap a part for the other kind the built-in variants use there, as variant expressions
(``models.variants.derive_variant``), so every ablated variant has a name that rebuilds it:

* ``cells``: at each scale, a cross-attention cell becomes the RWKV cell phase2 has there, and an RWKV
  cell the cross-attention cell of the baseline (``baseline+s2=rwkv3`` is RWKV at s2 only);
* ``fusion``: the transitions' context fusion swapped between conv1x1 and phase3's RWKV fusion;
* ``prior``: the s3 prior's second branch swapped between DWConvRB blocks and phase4-preln's RWKV blocks.

These are speed, memory and cost ablations; an R-D ablation needs one trained checkpoint per variant
(``hpcm eval -c``).
"""

from __future__ import annotations

from hpcm.errors import VariantError
from hpcm.models.variants import VARIANTS, CrossAttentionCellSpec, VariantSpec, get_variant


def _cell_token(cell) -> str:  # noqa: ANN001 - a CellSpec
    if isinstance(cell, CrossAttentionCellSpec):
        return f"cross{cell.window}"
    return f"rwkv{cell.hidden_rate}"


def _cells(base: VariantSpec) -> list[str]:
    rwkv, cross = VARIANTS["phase2"].cells, VARIANTS["baseline"].cells
    changes = []
    for scale, cell in enumerate(base.cells):
        other = rwkv[scale] if isinstance(cell, CrossAttentionCellSpec) else cross[scale]
        changes.append(f"s{scale + 1}={_cell_token(other)}")
    return changes


def _fusion(base: VariantSpec) -> list[str]:
    rwkv = VARIANTS["phase3"].fusion
    if base.fusion.kind == "conv1x1":
        return [f"fusion=rwkv{rwkv.hidden_rate}x{rwkv.num_blocks}"]
    return ["fusion=conv1x1"]


def _prior(base: VariantSpec) -> list[str]:
    branch_1 = "-".join(base.prior_s3.branch_1)
    second = VARIANTS["phase4-preln"].prior_s3.branch_2 if "rwkv" not in base.prior_s3.branch_2 else \
        VARIANTS["phase3"].prior_s3.branch_2
    return [f"prior_s3={branch_1}/{'-'.join(second)}"]


ABLATIONS = {"cells": _cells, "fusion": _fusion, "prior": _prior}


def ablation_variants(base: str, what: str) -> list[VariantSpec]:
    """The variants that change one part of ``base`` (a variant name, file or expression)."""
    if what not in ABLATIONS:
        raise VariantError(f"--ablate {what}: choose one of {', '.join(ABLATIONS)}")
    spec = get_variant(base)
    return [get_variant(f"{base}+{change}") for change in ABLATIONS[what](spec)]
