"""Static split and merge of HPCM's three scales and its per-step masks.

The official code moves latents between scales with boolean masks (``masked_select`` and boolean
index assignment), which exports to ONNX as data-dependent NonZero/ScatterND. Every mask it uses is
periodic (period 4 at full resolution, 2 at half and quarter) and selects, per channel group, a fixed
set of positions per tile.

``RasterMap`` reproduces the official semantics (raster-order read, raster-order write) with slices,
stacks and reshapes only, including the official code's quirks on which trained weights depend:
its s2 hyper-parameter gather leaves out, in half of the channel groups, a different full-resolution
phase than the one the s1 lattice occupies, so values re-flow across rows there.

Sides of y must be multiples of 8 (the official 8x8 mask tiling; s1 is then even).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

Y_ALIGNMENT = 8

Pos = tuple[int, int]

# One-channel patterns of the official masks, as positions inside one period.
# Full resolution (period 4): eight 2-position patterns, the parts of the 8-part s3 split.
_S3_PATTERNS: tuple[tuple[Pos, ...], ...] = (
    ((0, 0), (2, 2)), ((0, 2), (2, 0)), ((1, 1), (3, 3)), ((1, 3), (3, 1)),
    ((0, 1), (2, 3)), ((0, 3), (2, 1)), ((1, 0), (3, 2)), ((1, 2), (3, 0)),
)
# Pattern of s3 part i for channel group j (8 groups).
_S3_PART_PATTERN = (
    (0, 2, 4, 6, 1, 3, 5, 7), (1, 3, 5, 7, 0, 2, 4, 6), (2, 4, 6, 0, 3, 5, 7, 1), (3, 5, 7, 1, 2, 4, 6, 0),
    (4, 6, 0, 2, 5, 7, 1, 3), (5, 7, 1, 3, 4, 6, 0, 2), (6, 0, 2, 4, 7, 1, 3, 5), (7, 1, 3, 5, 6, 0, 2, 4),
)
# The s2 lattice of group j (8 groups) at full resolution: union of two s3 patterns.
_S2_LATTICE_PATTERNS = ((0, 1), (2, 3), (4, 5), (6, 7), (1, 0), (3, 2), (5, 4), (7, 6))
# The positions the official s2 hyper gather leaves out, per group j (8 groups), at full resolution.
_S1_EXCLUDED_FULL: tuple[Pos, ...] = ((0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (1, 3), (0, 3), (1, 2))
# Half resolution (period 2): phases of the four quarter-channel groups; part i of the 4-part s2 split.
_HALF_PHASES: tuple[Pos, ...] = ((0, 0), (0, 1), (1, 0), (1, 1))
_S2_PART_PHASE = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))
# Quarter resolution (period 2): checkerboard halves; part i of the 2-part s1 split.
_CHECKERBOARD: tuple[tuple[Pos, ...], ...] = (((0, 0), (1, 1)), ((0, 1), (1, 0)))
_S1_PART_PATTERN = ((0, 1), (1, 0))


def _tiles(groups: int, period: int, group_positions) -> tuple[np.ndarray, ...]:
    tiles = []
    for g in range(groups):
        tile = np.zeros((period, period), dtype=bool)
        for r, c in group_positions[g]:
            tile[r, c] = True
        tiles.append(tile)
    return tuple(tiles)


def _dense(groups: int, period: int) -> tuple[np.ndarray, ...]:
    return tuple(np.ones((period, period), dtype=bool) for _ in range(groups))


@dataclass(frozen=True)
class RasterMap:
    """The official boolean-mask move between two periodic masks, as static slices.

    Per channel, the official code reads the positions of ``in_tiles`` in raster order and writes
    them, in raster order, to the positions of ``out_tiles`` (a dense output for ``masked_select``,
    zeros elsewhere for boolean assignment). Both masks are periodic, so one tile row of the input
    (``in_period`` rows) fills exactly one tile row of the output (``out_period`` rows); inside that
    band the values form one sequence: input rows one after the other, each row the selected phases
    interleaved tile by tile. Where a row of the input holds a different number of positions per
    tile than the row of the output it feeds, the sequence re-flows across rows at a fraction of the
    width; slicing the sequence at multiples of the tile count reproduces that exactly.
    """

    in_period: int
    out_period: int
    in_tiles: tuple[np.ndarray, ...]  # per channel group, (in_period, in_period) bool
    out_tiles: tuple[np.ndarray, ...]  # per channel group, (out_period, out_period) bool

    @cached_property
    def _tile_local_phases(self) -> Optional[list[list[int]]]:
        """Per group, the input phase feeding each output phase (-1: zero), when every tile is moved
        on its own: that holds when the non-empty rows of both tiles carry the same counts in the
        same order, so the raster sequence never re-flows across a row. None otherwise."""
        phases = []
        for tile_in, tile_out in zip(self.in_tiles, self.out_tiles):
            rows_in = [(r, np.flatnonzero(row)) for r, row in enumerate(tile_in) if row.any()]
            rows_out = [(a, np.flatnonzero(row)) for a, row in enumerate(tile_out) if row.any()]
            if [len(c) for _, c in rows_in] != [len(c) for _, c in rows_out]:
                return None
            table = [-1] * (self.out_period**2)
            for (r, cols_in), (a, cols_out) in zip(rows_in, rows_out):
                for s, t in zip(cols_in, cols_out):
                    table[a * self.out_period + int(t)] = r * self.in_period + int(s)
            phases.append(table)
        return phases

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        groups = len(self.in_tiles)
        B, C, H, W = x.shape
        if C % groups:
            raise ValueError(f"layout map with {groups} channel groups applied to {C} channels")
        phases = self._tile_local_phases
        # pixel_shuffle by 4 makes torch.export (2.13) specialise the batch dimension of the s2->s3
        # transition; the slice path exports that move with a dynamic batch.
        if phases is not None and self.out_period <= 2:
            return self._apply_tile_local(x, phases)
        return self._apply_reflow(x)

    def _apply_tile_local(self, x: torch.Tensor, phases: list[list[int]]) -> torch.Tensor:
        """unshuffle by the input period, one constant channel gather, shuffle by the output period."""
        groups = len(phases)
        C = x.shape[1]
        P, Q = self.in_period, self.out_period
        per_channel = np.repeat(np.asarray(phases, dtype=np.int64), C // groups, axis=0)  # (C, Q*Q)
        index = (np.arange(C)[:, None] * P * P + np.maximum(per_channel, 0)).reshape(-1)
        if P > 1:
            x = F.pixel_unshuffle(x, P)
        x = x.index_select(1, torch.as_tensor(index, device=x.device))
        if (per_channel < 0).any():
            keep = torch.as_tensor((per_channel >= 0).reshape(1, -1, 1, 1), dtype=x.dtype, device=x.device)
            x = x * keep
        return F.pixel_shuffle(x, Q) if Q > 1 else x

    def _apply_reflow(self, x: torch.Tensor) -> torch.Tensor:
        groups = len(self.in_tiles)
        B, C, H, W = x.shape
        Cg = C // groups
        P, Q = self.in_period, self.out_period
        outputs = []
        for g in range(groups):
            xg = x[:, g * Cg:(g + 1) * Cg]
            segments = []
            for r in range(P):
                planes = [xg[:, :, r::P, s::P] for s in np.flatnonzero(self.in_tiles[g][r])]
                if planes:
                    segments.append(torch.stack(planes, dim=-1).flatten(-2))
            sequence = torch.cat(segments, dim=-1) if len(segments) > 1 else segments[0]
            tiles_w = W // P
            zero = torch.zeros_like(sequence[..., :tiles_w])
            phases = [zero] * (Q * Q)
            offset = 0
            for a in range(Q):
                columns = np.flatnonzero(self.out_tiles[g][a])
                n = len(columns)
                if not n:
                    continue
                band = sequence[..., offset * tiles_w:(offset + n) * tiles_w]
                band = band.reshape(B, Cg, H // P, tiles_w, n)
                for j, s in enumerate(columns):
                    phases[a * Q + int(s)] = band[..., j]
                offset += n
            if Q == 1:
                outputs.append(phases[0])
            else:
                stacked = torch.stack(phases, dim=2).reshape(B, Cg * Q * Q, H // P, tiles_w)
                outputs.append(F.pixel_shuffle(stacked, Q))
        return torch.cat(outputs, dim=1)


@dataclass(frozen=True)
class StepMask:
    """Mask of one coding step at its scale: ``period``-periodic, ``groups`` channel groups. Each
    position of the step's dense block comes from exactly one group, which depends on the position's
    phase only (all channels of a group share one tile)."""

    groups: int
    tile: np.ndarray  # (C, period, period) float32
    # per dense channel and phase, the channel of the full map it comes from (C/groups, period, period)
    source: torch.Tensor = field(init=False, repr=False, compare=False)
    # per phase, the group its positions come from (period, period)
    phase_group: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        channels, period, _ = self.tile.shape
        per_group = self.tile.reshape(self.groups, channels // self.groups, period, period)
        if not (per_group.sum(0) == 1).all():
            raise ValueError("a step mask must take each position of its dense block from exactly one group")
        if not (per_group == per_group[:, :1]).all():
            raise ValueError("a step mask must give all channels of a group the same tile")
        phase_group = per_group[:, 0].argmax(0)
        source = phase_group * (channels // self.groups) + np.arange(channels // self.groups)[:, None, None]
        object.__setattr__(self, "source", torch.from_numpy(source.astype(np.int64)))
        object.__setattr__(self, "phase_group", phase_group)

    def full(self, like: torch.Tensor) -> torch.Tensor:
        period = self.tile.shape[-1]
        tile = torch.as_tensor(self.tile, dtype=like.dtype, device=like.device)[None]
        return tile.repeat(1, 1, like.shape[-2] // period, like.shape[-1] // period)

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """This step's values of a (B, C, h, w) map as its (B, C/groups, h, w) block (gathered: for a
        finite map the sum over the groups of ``t * full(t)``, without that masked copy of the map)."""
        B, C, h, w = t.shape
        period, dense = self.tile.shape[-1], C // self.groups
        # Gathered from ``t`` as it is, never reshaped: ``t`` may be a non-contiguous chunk of the
        # context, and a reshape of it would make torch.export fix the batch to the traced one.
        index = self.source.to(t.device).repeat(1, h // period, w // period)
        return torch.gather(t, 1, index[None].expand(B, dense, h, w))

    def select_by_phase(self, t: torch.Tensor) -> torch.Tensor:
        """What ``select`` gives, copied one phase at a time from strided views of ``t`` (contiguous):
        in eager mode about twice as fast as the gather, which the graphs keep (it traces with any
        batch)."""
        B, C, h, w = t.shape
        period, dense = self.tile.shape[-1], C // self.groups
        out = torch.empty((B, dense, h, w), dtype=t.dtype, device=t.device)
        phases_out = out.view(B, dense, h // period, period, w // period, period)
        phases_in = t.view(B, self.groups, dense, h // period, period, w // period, period)
        for a in range(period):
            for b in range(period):
                phases_out[:, :, :, a, :, b] = phases_in[:, int(self.phase_group[a, b]), :, :, a, :, b]
        return out

    def from_dense(self, dense: torch.Tensor) -> torch.Tensor:
        """The map of a block (inverse of ``select``): repeat it over the groups and keep this step's positions."""
        return dense.repeat(1, self.groups, 1, 1) * self.full(dense)


class ScaleLayout:
    """All static maps of HPCM's progressive split for y with ``channels`` channels (multiple of 8)."""

    def __init__(self, channels: int) -> None:
        if channels % 8:
            raise ValueError("HPCM's progressive split needs a multiple of 8 latent channels")
        C = channels
        s2_lattice = _tiles(8, 4, [_S3_PATTERNS[a] + _S3_PATTERNS[b] for a, b in _S2_LATTICE_PATTERNS])
        s1_in_half = _tiles(4, 2, [(p,) for p in _HALF_PHASES])
        s1_not_in_half = tuple(~t for t in s1_in_half)
        s2_hyper_source = tuple(
            lattice & ~excluded
            for lattice, excluded in zip(s2_lattice, _tiles(8, 4, [(p,) for p in _S1_EXCLUDED_FULL]))
        )

        self.full_to_s2 = RasterMap(4, 2, s2_lattice, _dense(8, 2))
        self.s2_to_s1 = RasterMap(2, 1, s1_in_half, _dense(4, 1))
        self.s1_to_s2 = RasterMap(1, 2, _dense(4, 1), s1_in_half)
        self.s2_to_full = RasterMap(2, 4, _dense(8, 2), s2_lattice)
        # The official gather runs over all channels at once with per-group masks of 8 groups on the
        # input side and 4 groups on the output side; refine both to 8 groups of C/8.
        self.full_to_s2_hyper = RasterMap(
            4, 2, s2_hyper_source, tuple(s1_not_in_half[g // 2] for g in range(8))
        )
        self.s3_hyper_keep = np.repeat(~np.stack(s2_lattice), C // 8, axis=0).astype(np.float32)

        def masks(groups: int, period: int, phases_of_part) -> list[StepMask]:
            return [
                StepMask(groups, np.repeat(np.stack(_tiles(groups, period, part)), C // groups, 0).astype(np.float32))
                for part in phases_of_part
            ]

        self.s1_masks = masks(2, 2, [[_CHECKERBOARD[g] for g in part] for part in _S1_PART_PATTERN])
        self.s2_masks = masks(4, 2, [[(_HALF_PHASES[g],) for g in part] for part in _S2_PART_PHASE])
        self.s3_masks = masks(8, 4, [[_S3_PATTERNS[g] for g in part] for part in _S3_PART_PATTERN])

    def s3_hyper(self, params: torch.Tensor) -> torch.Tensor:
        """Hyper parameters at the positions s3 still has to code (s2 lattice zeroed)."""
        keep = torch.as_tensor(self.s3_hyper_keep, dtype=params.dtype, device=params.device)[None]
        return params * keep.repeat(1, 1, params.shape[-2] // 4, params.shape[-1] // 4)
