"""Variants as data: which context cell at which scale, how contexts are fused, what the priors hold,
how RWKV blocks are wired and which Bi-WKV formula they compute.

A new ablation (say RWKV only at s2) is a new ``VariantSpec`` value, never a new model class:

    spec = dataclasses.replace(VARIANTS["baseline"], name="rwkv-s2",
                               cells=(CROSS_S1, RWKVCellSpec(hidden_rate=3), CROSS_S3))

or, wherever a variant is named (``--variant`` of every command), a variant expression: a base (name
or .json file) and ``+FIELD=VALUE`` changes, e.g. ``baseline+s2=rwkv3`` (``derive_variant``).

``phase1``..``phase4`` are the classes of the LIC-HPCM-LALIC fork (``src/models/hpcm_variants``),
whose code is what trained checkpoints follow: post-LN blocks, and in phase4 all-RWKV spatial priors.
``phaseN-vrwkv`` are the same networks computing the Bi-WKV as the fork's CUDA kernel did in
training (its checkpoints load as these). ``phaseN-preln`` are this project's earlier reading of the
report: pre-LN blocks as in LALIC itself, whose identity path is open from initialisation, and in
phase4-preln two RWKV blocks (hidden 2) after three DWConvRB in the s3 prior only. A spec that does
not say its ``rwkv_block`` wiring is pre-LN, what every spec meant before the field existed; a
recorded "phaseN" without it (checkpoints and exports of that time) loads as phaseN-preln.

A spec is validated when it is made, wherever it comes from (the built-ins, ``dataclasses.replace``,
a checkpoint, an export manifest, a ``--variant`` JSON file): field types, required fields and
ranges, before any module is built. The ranges (``LIMITS``) keep the largest spec within about
twice the official model's widths, so a spec from an untrusted file cannot ask for terabytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Sequence, Union

from hpcm.errors import VariantError
from hpcm.plugins.biwkv import WKV_MODES

from .cells import RWKV_WIRINGS
from .layout import Y_ALIGNMENT

# field -> (smallest, largest) of every integer a spec holds
LIMITS = {
    "M": (16, 640),  # official 320; a multiple of 16 (the 32 attention heads over 2M channels)
    "N": (8, 640),  # official 256
    "window": (1, 16),  # a power of two; official 4 and 8
    "hidden_rate": (1, 8),  # RWKV channel-mix expansion; official RWKV uses 4
    "num_blocks": (1, 4),
    "rwkv_hidden_rate": (1, 8),
    "prior_blocks": (0, 4),  # blocks per branch of a spatial prior; official 1 to 3
}
MAX_NAME = 64  # the bitstream stores the name in at most 64 ASCII bytes
PRIOR_BLOCKS = ("dwconv", "rwkv")
MAX_SPEC_FILE_BYTES = 1 << 20


def _integer(value: Any, name: str) -> int:
    """``value`` if it is an int (not a bool, float or text) within ``LIMITS[name]``."""
    if type(value) is not int:
        raise VariantError(f"{name} must be a whole number, got {value!r}")
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise VariantError(f"{name} = {value} is out of range ({low}..{high})")
    return value


@dataclass(frozen=True)
class CrossAttentionCellSpec:
    window: int
    kind: Literal["cross_attention"] = "cross_attention"

    def __post_init__(self) -> None:
        _integer(self.window, "window")
        if self.window & (self.window - 1):
            raise VariantError(f"window = {self.window} must be a power of two")


@dataclass(frozen=True)
class RWKVCellSpec:
    hidden_rate: int
    kind: Literal["rwkv"] = "rwkv"

    def __post_init__(self) -> None:
        _integer(self.hidden_rate, "hidden_rate")


CellSpec = Union[CrossAttentionCellSpec, RWKVCellSpec]
_CELLS = {"cross_attention": CrossAttentionCellSpec, "rwkv": RWKVCellSpec}


@dataclass(frozen=True)
class FusionSpec:
    """How the up-scaled context is fused at the s1->s2 and s2->s3 transitions (``context_net``)."""

    kind: Literal["conv1x1", "rwkv"] = "conv1x1"
    num_blocks: int = 1
    hidden_rate: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("conv1x1", "rwkv"):
            raise VariantError(f"unknown fusion kind {self.kind!r} (conv1x1 or rwkv)")
        _integer(self.num_blocks, "num_blocks")
        _integer(self.hidden_rate, "hidden_rate")


@dataclass(frozen=True)
class PriorSpec:
    """Blocks of a spatial prior: ``branch_1``, multiply by the adaptive parameter, ``branch_2``, conv1x1.

    Block kinds: "dwconv" (DWConvRB) or "rwkv" (RWKVBlock with ``rwkv_hidden_rate``).
    """

    branch_1: tuple[str, ...]
    branch_2: tuple[str, ...]
    rwkv_hidden_rate: int = 2

    def __post_init__(self) -> None:
        for name in ("branch_1", "branch_2"):
            blocks = getattr(self, name)
            if not isinstance(blocks, tuple):
                raise VariantError(f"{name} must be a list of block kinds, got {blocks!r}")
            low, high = LIMITS["prior_blocks"]
            if not low <= len(blocks) <= high:
                raise VariantError(f"{name} has {len(blocks)} blocks; a branch takes {low}..{high}")
            unknown = [b for b in blocks if b not in PRIOR_BLOCKS]
            if unknown:
                raise VariantError(f"{name}: unknown block kind {unknown[0]!r} ({' or '.join(PRIOR_BLOCKS)})")
        _integer(self.rwkv_hidden_rate, "rwkv_hidden_rate")


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
    rwkv_block: str = "pre_ln"  # how every RWKV block adds its mixes: cells.RWKV_WIRINGS
    wkv: str = "exact"  # the Bi-WKV formula of every RWKV block: hpcm.plugins.biwkv.WKV_MODES

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_NAME or not self.name.isascii() \
                or not self.name.isprintable():
            raise VariantError(f"name must be 1..{MAX_NAME} printable ASCII characters, got {self.name!r}")
        if not isinstance(self.description, str):
            raise VariantError(f"description must be text, got {self.description!r}")
        if not isinstance(self.cells, tuple) or len(self.cells) != 3 \
                or not all(isinstance(c, (CrossAttentionCellSpec, RWKVCellSpec)) for c in self.cells):
            raise VariantError("cells must be three cell specs (s1, s2, s3)")
        if not isinstance(self.fusion, FusionSpec) or not isinstance(self.prior_s1_s2, PriorSpec) \
                or not isinstance(self.prior_s3, PriorSpec):
            raise VariantError("fusion, prior_s1_s2 and prior_s3 must be FusionSpec and PriorSpec values")
        _integer(self.M, "M")
        _integer(self.N, "N")
        if self.M % 16:
            raise VariantError(f"M = {self.M} must be a multiple of 16")
        if self.rwkv_block not in RWKV_WIRINGS:
            raise VariantError(f"unknown rwkv_block {self.rwkv_block!r} ({' or '.join(RWKV_WIRINGS)})")
        if self.wkv not in WKV_MODES:
            raise VariantError(f"unknown wkv mode {self.wkv!r} ({' or '.join(WKV_MODES)})")

    @property
    def alignment(self) -> int:
        """Image sides must be multiples of this (pixels): the y tiling, and every attention window."""
        alignment = 16 * Y_ALIGNMENT
        for scale, cell in enumerate(self.cells):
            if isinstance(cell, CrossAttentionCellSpec):
                alignment = math.lcm(alignment, 16 * 2 ** (2 - scale) * cell.window)
        return alignment

    @property
    def has_rwkv(self) -> bool:
        return (any(isinstance(c, RWKVCellSpec) for c in self.cells) or self.fusion.kind == "rwkv"
                or "rwkv" in self.prior_s1_s2.branch_1 + self.prior_s1_s2.branch_2
                + self.prior_s3.branch_1 + self.prior_s3.branch_2)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> "VariantSpec":
        """A spec from its ``to_dict`` form (a checkpoint, a manifest, a JSON file): every field checked;
        unknown fields are refused rather than ignored."""
        spec = _fields(raw, cls, "variant", required=("name", "cells"))
        cells = spec.get("cells")
        if not isinstance(cells, (list, tuple)) or len(cells) != 3:
            raise VariantError(f"cells must be a list of three cells (s1, s2, s3), got {cells!r}")
        built = []
        for i, cell in enumerate(cells):
            if not isinstance(cell, dict) or cell.get("kind") not in _CELLS:
                kind = cell.get("kind") if isinstance(cell, dict) else cell
                raise VariantError(f"cells[{i}]: unknown cell kind {kind!r} ({' or '.join(_CELLS)})")
            kind = _CELLS[cell["kind"]]
            required = [f.name for f in fields(kind) if f.name != "kind"]
            built.append(_made(kind, _fields(cell, kind, f"cells[{i}]", required), f"cells[{i}]"))
        spec["cells"] = tuple(built)
        spec.setdefault("description", "")
        if "fusion" in spec:
            spec["fusion"] = _made(FusionSpec, _fields(spec["fusion"], FusionSpec, "fusion"), "fusion")
        for prior in ("prior_s1_s2", "prior_s3"):
            if prior in spec:
                values = _fields(spec[prior], PriorSpec, prior, required=("branch_1", "branch_2"))
                for branch in ("branch_1", "branch_2"):
                    if not isinstance(values[branch], (list, tuple)):
                        raise VariantError(f"{prior}.{branch} must be a list of block kinds, got {values[branch]!r}")
                    values[branch] = tuple(values[branch])
                spec[prior] = _made(PriorSpec, values, prior)
        made = cls(**spec)
        if "rwkv_block" not in spec and made.name in FORK_NAMES and made.has_rwkv:
            # Recorded before "phaseN" named the fork's post-LN classes: it is the pre-LN variant.
            made = replace(made, name=made.name + PRELN_SUFFIX)
            known = VARIANTS.get(made.name)
            if known is not None and replace(known, description=made.description) == made:
                made = known
        return made


def _fields(raw: Any, kind: type, where: str, required: Sequence[str] = ()) -> dict:
    """The fields of ``raw`` as a dict, refusing non-objects, unknown fields and missing required ones."""
    if not isinstance(raw, dict):
        raise VariantError(f"{where} must be an object with fields, got {type(raw).__name__}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise VariantError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    missing = [name for name in required if name not in raw]
    if missing:
        raise VariantError(f"{where}: missing field {missing[0]!r}")
    return dict(raw)


def _made(kind: type, values: dict, where: str) -> Any:
    """``kind(**values)`` with a validation error prefixed by where the values came from."""
    try:
        return kind(**values)
    except VariantError as exc:
        raise VariantError(f"{where}: {exc}") from exc


CROSS_S1 = CrossAttentionCellSpec(window=4)
CROSS_S2 = CrossAttentionCellSpec(window=8)
CROSS_S3 = CrossAttentionCellSpec(window=8)
_RWKV_CELLS = (RWKVCellSpec(2), RWKVCellSpec(3), RWKVCellSpec(4))
_RWKV_FUSION = FusionSpec(kind="rwkv", num_blocks=1, hidden_rate=4)

# The fork's variants (LIC-HPCM-LALIC src/models/hpcm_variants/hpcm_phase{1..4}.py) ...
_FORK = (
    VariantSpec("phase1", "LIC-HPCM-LALIC phase1: RWKV context cell at s3 only", (CROSS_S1, CROSS_S2, RWKVCellSpec(4)),
                rwkv_block="post_ln"),
    VariantSpec("phase2", "LIC-HPCM-LALIC phase2: RWKV context cells at every scale", _RWKV_CELLS,
                rwkv_block="post_ln"),
    VariantSpec("phase3", "LIC-HPCM-LALIC phase3: phase2 + RWKV fusion of up-scaled contexts", _RWKV_CELLS,
                _RWKV_FUSION, rwkv_block="post_ln"),
    VariantSpec("phase4", "LIC-HPCM-LALIC phase4: phase3 + all-RWKV spatial priors (2+1 and 3+2 blocks, hidden 4)",
                _RWKV_CELLS, _RWKV_FUSION,
                prior_s1_s2=PriorSpec(("rwkv", "rwkv"), ("rwkv",), rwkv_hidden_rate=4),
                prior_s3=PriorSpec(("rwkv", "rwkv", "rwkv"), ("rwkv", "rwkv"), rwkv_hidden_rate=4),
                rwkv_block="post_ln"),
)
FORK_NAMES = tuple(spec.name for spec in _FORK)
VRWKV_SUFFIX = "-vrwkv"
PRELN_SUFFIX = "-preln"
# ... the same computing the Bi-WKV as the fork's CUDA kernel (what its checkpoints were trained with) ...
_VRWKV = tuple(replace(spec, name=spec.name + VRWKV_SUFFIX, wkv="vrwkv",
                       description=spec.description + ", Bi-WKV of the fork's CUDA kernel (vrwkv mode)")
               for spec in _FORK)
# ... and this project's earlier pre-LN reading of the report (kept for its checkpoints and exports).
_PRELN = (
    VariantSpec("phase1-preln", "pre-LN RWKV context cell at s3 only", (CROSS_S1, CROSS_S2, RWKVCellSpec(4)),
                rwkv_block="pre_ln"),
    VariantSpec("phase2-preln", "pre-LN RWKV context cells at every scale", _RWKV_CELLS, rwkv_block="pre_ln"),
    VariantSpec("phase3-preln", "phase2-preln + pre-LN RWKV fusion of up-scaled contexts", _RWKV_CELLS, _RWKV_FUSION,
                rwkv_block="pre_ln"),
    VariantSpec("phase4-preln", "phase3-preln + two pre-LN RWKV blocks (hidden 2) inside the s3 spatial prior",
                _RWKV_CELLS, _RWKV_FUSION, prior_s3=PriorSpec(("dwconv", "dwconv", "dwconv"), ("rwkv", "rwkv")),
                rwkv_block="pre_ln"),
)

VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec("baseline", "official HPCM-Base: windowed cross-attention cells at every scale",
                    (CROSS_S1, CROSS_S2, CROSS_S3)),
        *_FORK, *_VRWKV, *_PRELN,
    )
}


def read_variant_file(path: Path) -> VariantSpec:
    """A spec from a ``--variant`` JSON file; every problem is reported against the file."""
    try:
        if path.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise VariantError(f"{path} is larger than {MAX_SPEC_FILE_BYTES:,} bytes: not a variant file")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VariantError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise VariantError(f"{path} cannot be read as a variant file ({exc})") from exc
    try:
        return VariantSpec.from_dict(raw)
    except VariantError as exc:
        raise VariantError(f"{path}: {exc}") from exc


# What a ``+FIELD=VALUE`` change of a variant expression may say.
EXPRESSION_HELP = ("s1|s2|s3=cross<window>|rwkv<hidden rate>, fusion=conv1x1|rwkv<hidden rate>[x<blocks>], "
                   "prior_s1_s2|prior_s3=<blocks>/<blocks> (blocks dwconv or rwkv joined by '-'), M=<int>, N=<int>, "
                   f"rwkv_block={'|'.join(RWKV_WIRINGS)}, wkv={'|'.join(WKV_MODES)}")
_SCALE_FIELDS = ("s1", "s2", "s3")


def _cell_value(field_name: str, value: str) -> CellSpec:
    for prefix, build in (("cross", CrossAttentionCellSpec), ("rwkv", RWKVCellSpec)):
        if value.startswith(prefix) and value[len(prefix):].isdigit():
            return build(int(value[len(prefix):]))
    raise VariantError(f"{field_name}={value}: a cell is cross<window> (e.g. cross8) or rwkv<hidden rate> "
                       "(e.g. rwkv3)")


def _fusion_value(value: str) -> FusionSpec:
    if value == "conv1x1":
        return FusionSpec()
    hidden, _, blocks = value.removeprefix("rwkv").partition("x")
    if value.startswith("rwkv") and hidden.isdigit() and (blocks.isdigit() or not blocks):
        return FusionSpec(kind="rwkv", num_blocks=int(blocks or 1), hidden_rate=int(hidden))
    raise VariantError(f"fusion={value}: use conv1x1 or rwkv<hidden rate>[x<blocks>] (e.g. rwkv4x1)")


def _prior_value(field_name: str, value: str, current: PriorSpec) -> PriorSpec:
    first, slash, second = value.partition("/")
    if not slash:
        raise VariantError(f"{field_name}={value}: give the blocks before and after the adaptive parameter, "
                           "e.g. dwconv-dwconv-dwconv/rwkv-rwkv")
    branches = tuple(tuple(b for b in branch.split("-") if b) for branch in (first, second))
    return PriorSpec(branches[0], branches[1], current.rwkv_hidden_rate)


def derive_variant(base: VariantSpec, changes: str) -> VariantSpec:
    """``base`` with the ``+``-separated ``FIELD=VALUE`` changes applied (``EXPRESSION_HELP``), named
    ``<base name>+<changes>`` (validated like every spec)."""
    spec = base
    for change in changes.split("+"):
        field_name, eq, value = change.partition("=")
        if not eq or not value:
            raise VariantError(f"variant change {change!r} is not FIELD=VALUE; fields: {EXPRESSION_HELP}")
        if field_name in _SCALE_FIELDS:
            cells = list(spec.cells)
            cells[_SCALE_FIELDS.index(field_name)] = _cell_value(field_name, value)
            spec = replace(spec, cells=tuple(cells))
        elif field_name == "fusion":
            spec = replace(spec, fusion=_fusion_value(value))
        elif field_name in ("prior_s1_s2", "prior_s3"):
            spec = replace(spec, **{field_name: _prior_value(field_name, value, getattr(spec, field_name))})
        elif field_name in ("M", "N") and value.isdigit():
            spec = replace(spec, **{field_name: int(value)})
        elif field_name in ("rwkv_block", "wkv"):
            spec = replace(spec, **{field_name: value})
        else:
            raise VariantError(f"cannot change {field_name!r} to {value!r}; fields: {EXPRESSION_HELP}")
    return replace(spec, name=f"{base.name}+{changes}",
                   description=f"{base.name} with {changes.replace('+', ', ')}")


def with_dimensions(spec: VariantSpec, M: int, N: int) -> VariantSpec:
    """``spec`` at latent sizes ``M`` and ``N``, named as the expression that builds it
    (``phase2+M=192+N=128``), so that its name is what ``--variant`` must say for it."""
    changes = [f"{name}={value}" for name, value, own in (("M", M, spec.M), ("N", N, spec.N)) if value != own]
    return derive_variant(spec, "+".join(changes)) if changes else spec


def get_variant(variant: Union[str, VariantSpec, Path]) -> VariantSpec:
    """A variant by name, by JSON file (``VariantSpec.to_dict`` layout), by expression
    (``baseline+s2=rwkv3``: ``derive_variant``), or as given."""
    if isinstance(variant, VariantSpec):
        return variant
    if str(variant) in VARIANTS:
        return VARIANTS[str(variant)]
    path = Path(variant)
    if path.suffix == ".json" and path.is_file():
        return read_variant_file(path)
    base, plus, changes = str(variant).partition("+")
    if plus and base:
        return derive_variant(get_variant(base), changes)
    raise VariantError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}, a variant .json file, or "
                       f"an expression such as baseline+s2=rwkv3 ({EXPRESSION_HELP})")
