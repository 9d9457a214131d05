"""Variants as data: which context cell at which scale, how contexts are fused, what the priors hold.

A new ablation (say RWKV only at s2) is a new ``VariantSpec`` value, never a new model class:

    spec = dataclasses.replace(VARIANTS["baseline"], name="rwkv-s2",
                               cells=(CROSS_S1, RWKVCell(hidden_rate=3), CROSS_S3))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Union

from hpcm.config import DEFAULT_VARIANT
from hpcm.errors import VariantError


@dataclass(frozen=True)
class CrossAttentionCellSpec:
    window: int
    kind: Literal["cross_attention"] = "cross_attention"


@dataclass(frozen=True)
class RWKVCellSpec:
    hidden_rate: int
    kind: Literal["rwkv"] = "rwkv"


CellSpec = Union[CrossAttentionCellSpec, RWKVCellSpec]


@dataclass(frozen=True)
class FusionSpec:
    """How the up-scaled context is fused at the s1->s2 and s2->s3 transitions (``context_net``)."""

    kind: Literal["conv1x1", "rwkv"] = "conv1x1"
    num_blocks: int = 1
    hidden_rate: int = 4


@dataclass(frozen=True)
class PriorSpec:
    """Blocks of a spatial prior: ``branch_1``, multiply by the adaptive parameter, ``branch_2``, conv1x1.

    Block kinds: "dwconv" (DWConvRB) or "rwkv" (RWKVBlock with ``rwkv_hidden_rate``).
    """

    branch_1: tuple[str, ...]
    branch_2: tuple[str, ...]
    rwkv_hidden_rate: int = 2


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    cells: tuple[CellSpec, CellSpec, CellSpec]  # s1, s2, s3
    fusion: FusionSpec = field(default_factory=FusionSpec)
    prior_s1_s2: PriorSpec = PriorSpec(("dwconv", "dwconv"), ("dwconv",))
    prior_s3: PriorSpec = PriorSpec(("dwconv", "dwconv", "dwconv"), ("dwconv", "dwconv"))
    M: int = 320
    N: int = 256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "VariantSpec":
        def cell(c: dict) -> CellSpec:
            if c["kind"] == "cross_attention":
                return CrossAttentionCellSpec(window=int(c["window"]))
            if c["kind"] == "rwkv":
                return RWKVCellSpec(hidden_rate=int(c["hidden_rate"]))
            raise VariantError(f"unknown cell kind {c['kind']!r}")

        def prior(p: dict) -> PriorSpec:
            return PriorSpec(tuple(p["branch_1"]), tuple(p["branch_2"]), int(p.get("rwkv_hidden_rate", 2)))

        return cls(
            name=raw["name"],
            description=raw.get("description", ""),
            cells=tuple(cell(c) for c in raw["cells"]),
            fusion=FusionSpec(**raw.get("fusion", {})),
            prior_s1_s2=prior(raw["prior_s1_s2"]) if "prior_s1_s2" in raw else PriorSpec(("dwconv", "dwconv"), ("dwconv",)),
            prior_s3=prior(raw["prior_s3"]) if "prior_s3" in raw else PriorSpec(("dwconv",) * 3, ("dwconv",) * 2),
            M=int(raw.get("M", 320)),
            N=int(raw.get("N", 256)),
        )


CROSS_S1 = CrossAttentionCellSpec(window=4)
CROSS_S2 = CrossAttentionCellSpec(window=8)
CROSS_S3 = CrossAttentionCellSpec(window=8)
_RWKV_CELLS = (RWKVCellSpec(2), RWKVCellSpec(3), RWKVCellSpec(4))
_RWKV_FUSION = FusionSpec(kind="rwkv", num_blocks=1, hidden_rate=4)

VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec("baseline", "official HPCM-Base: windowed cross-attention cells at every scale",
                    (CROSS_S1, CROSS_S2, CROSS_S3)),
        VariantSpec("phase1", "RWKV context cell at s3 only", (CROSS_S1, CROSS_S2, RWKVCellSpec(4))),
        VariantSpec("phase2", "RWKV context cells at every scale", _RWKV_CELLS),
        VariantSpec("phase3", "phase2 + RWKV fusion of up-scaled contexts", _RWKV_CELLS, _RWKV_FUSION),
        VariantSpec("phase4", "phase3 + two RWKV blocks inside the s3 spatial prior", _RWKV_CELLS, _RWKV_FUSION,
                    prior_s3=PriorSpec(("dwconv", "dwconv", "dwconv"), ("rwkv", "rwkv"))),
    )
}


def get_variant(variant: Union[str, VariantSpec, Path]) -> VariantSpec:
    """A variant by name, by JSON file (``VariantSpec.to_dict`` layout), or as given."""
    if isinstance(variant, VariantSpec):
        return variant
    if str(variant) in VARIANTS:
        return VARIANTS[str(variant)]
    path = Path(variant)
    if path.suffix == ".json" and path.is_file():
        return VariantSpec.from_dict(json.loads(path.read_text()))
    raise VariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)} (or a variant .json file)")
