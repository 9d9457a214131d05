"""Boundary guard: scale buckets that survive small cross-backend differences.

A decoder rebuilds every symbol's scale bucket from its own float computation. Where the encoder's
scale lies within a relative distance ``epsilon`` of a bucket boundary, another backend (ONNX Runtime,
TensorRT, another GPU) can land on the other side and the rANS stream desynchronises (codec.md).
The encoder therefore lists those positions, per step, with the side of the boundary it used; the
decoder takes the listed buckets from the stream and computes all others itself. Any decoder whose
relative scale error stays below ``epsilon`` then rebuilds every bucket exactly (the idea of
"safeguarding", Pang et al., arXiv 2410.09872). The decoder never has to decide *whether* a position
is listed, which would itself depend on floats; the list is explicit.

The rule (``nearest_boundary``, ``GuardWriter.settle``) is decided in float64, but only for a few
candidates: a float32 screen (``ScreenWindows``: a window of ``epsilon`` plus a margin around each
boundary) flags every scale that could be listed, in the same pass that finds the buckets, on the
step's device or in the native coder, and only the flagged scales are settled.

Cost: about ``symbols * 2 * epsilon / 0.106`` listed positions (0.106 = log spacing of the 60-entry
table), each a varint gap plus one bit. ``epsilon = 0`` turns the guard off.

Stream layout: f32 epsilon | u32 length of the varint section | varints (per step: count, then the
gaps between listed positions) | one bit per listed position (1 = above the boundary), packed.
"""

from __future__ import annotations

import struct
from typing import Optional, Union

import numpy as np
import torch

from hpcm.errors import BitstreamError
from .rans import decode_escapes, encode_escapes

DEFAULT_EPSILON = 1e-5
# The screen's windows reach this much (relative) beyond epsilon: far more than float32 rounding can
# move a scale's ratio to a boundary (2^-23), so no scale the float64 rule lists falls outside.
SCREEN_MARGIN = 1e-6

ArrayLike = Union[np.ndarray, torch.Tensor]


def _float64(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def nearest_boundary(scales: ArrayLike, table: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest boundary of table[:-1], relative distance to it) for every scale (flat), in float64."""
    return _nearest(_float64(scales), _float64(table[:-1]))


def _nearest(s: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_boundary`` of float64 scales over float64 bounds."""
    upper = np.clip(np.searchsorted(bounds, s), 0, bounds.size - 1)
    lower = np.clip(upper - 1, 0, bounds.size - 1)
    d_upper = np.abs(s / bounds[upper] - 1.0)
    d_lower = np.abs(s / bounds[lower] - 1.0)
    nearest = np.where(d_lower < d_upper, lower, upper)
    distance = np.minimum(d_lower, d_upper)
    return nearest, np.nan_to_num(distance, nan=np.inf)


class ScreenWindows:
    """Per bucket i, float32 limits around the two boundaries that enclose it: a scale in bucket i at
    or above ``near_low[i]`` lies near boundary i, one at or below ``near_high[i]`` near boundary i - 1
    (+inf and -inf where there is none). Every scale the float64 rule can list is flagged; a few more
    are, and the rule settles them."""

    def __init__(self, table: torch.Tensor, epsilon: float) -> None:
        self.epsilon = epsilon
        bounds = _float64(table[:-1].float())
        reach = epsilon + SCREEN_MARGIN
        low = bounds * (1.0 - reach)
        high = bounds * (1.0 + reach)
        low32, high32 = low.astype(np.float32), high.astype(np.float32)
        # round outwards, so that the float32 windows hold the float64 ones
        low32 = np.where(low32 > low, np.nextafter(low32, np.float32(-np.inf)), low32)
        high32 = np.where(high32 < high, np.nextafter(high32, np.float32(np.inf)), high32)
        self.near_low = np.append(low32, np.float32(np.inf)).astype(np.float32)
        self.near_high = np.insert(high32, 0, np.float32(-np.inf)).astype(np.float32)

    def candidates(self, scales: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        """Flat positions (int64, on the scales' device) of the scales near a boundary of their bucket."""
        s = scales.reshape(-1).float()
        i = indexes.reshape(-1).long()
        low = torch.from_numpy(self.near_low).to(s.device)
        high = torch.from_numpy(self.near_high).to(s.device)
        return torch.nonzero((s >= low[i]) | (s <= high[i])).reshape(-1)


class GuardWriter:
    """The guard stream of one image: ``settle`` decides a step's listed positions from its
    candidates (any thread, any order), ``add_step`` records them in step order."""

    def __init__(self, epsilon: float, table: torch.Tensor) -> None:
        if not 0.0 <= epsilon < 0.05:
            raise ValueError("guard epsilon must be in [0, 0.05) (the table's log spacing is 0.106)")
        self.epsilon = float(epsilon)
        self.table = table.detach().cpu().float()
        self.bounds = _float64(self.table[:-1])
        self.windows: Optional[ScreenWindows] = ScreenWindows(self.table, self.epsilon) if epsilon > 0 else None
        self.varints: list[np.ndarray] = []
        self.bits: list[np.ndarray] = []
        self.listed = 0

    def settle(self, candidates: np.ndarray, scales: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(listed positions, 1 where the scale lies above its boundary) among ``candidates`` (increasing
        flat positions) whose ``scales`` lie within epsilon of a boundary, in float64."""
        if self.windows is None or candidates.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)
        s = _float64(scales)
        nearest, distance = _nearest(s, self.bounds)
        keep = distance < self.epsilon
        above = s[keep] > self.bounds[nearest[keep]]
        return np.asarray(candidates, dtype=np.int64)[keep], above.astype(np.uint8)

    def add_step(self, positions: np.ndarray, above: np.ndarray) -> None:
        gaps = np.diff(np.concatenate([[-1], positions])) - 1
        self.varints.append(np.concatenate([[positions.size], gaps]).astype(np.int64))
        self.bits.append(above)
        self.listed += positions.size

    def flush(self) -> bytes:
        varints = encode_escapes(np.concatenate(self.varints).astype(np.int32)) if self.varints else b""
        bits = np.packbits(np.concatenate(self.bits)) if self.bits else np.zeros(0, np.uint8)
        return struct.pack("<fI", self.epsilon, len(varints)) + varints + bits.tobytes()


class GuardReader:
    """The guard stream of one image, parsed at once; ``steps``: how many steps the decoder takes (a
    stream that lists more is refused before any is parsed past them; None: any number)."""

    def __init__(self, data: bytes, table: torch.Tensor, steps: Optional[int] = None) -> None:
        if len(data) < 8:
            raise BitstreamError("guard stream is truncated")
        self.epsilon, length = struct.unpack_from("<fI", data)
        if not 0.0 <= self.epsilon < 0.05 or length > len(data) - 8:
            raise BitstreamError("guard stream header is invalid")
        self.bounds = _float64(table[:-1])
        values = decode_escapes(data[8:8 + length]).astype(np.int64)
        bits = np.unpackbits(np.frombuffer(data[8 + length:], dtype=np.uint8))
        # every step's list, parsed once: a step's decoding then only takes its own
        if (values < 0).any():
            raise BitstreamError("guard stream has a negative count or gap")
        self.steps: list[tuple[np.ndarray, np.ndarray]] = []
        cursor = listed_bits = 0
        counts = values.tolist()  # per step: a count, then that many gaps (Python ints: walked cheaply)
        while cursor < len(counts):
            if len(self.steps) == steps:
                raise BitstreamError("guard stream has trailing data")
            listed = counts[cursor]
            if cursor + 1 + listed > len(counts):
                raise BitstreamError("guard stream lists more positions than it holds")
            if listed_bits + listed > bits.size:
                raise BitstreamError("guard stream has too few bits")
            gaps = values[cursor + 1:cursor + 1 + listed]
            self.steps.append((np.cumsum(gaps + 1) - 1, bits[listed_bits:listed_bits + listed]))
            cursor += 1 + listed
            listed_bits += listed
        if bits.size - listed_bits >= 8:
            raise BitstreamError("guard stream has trailing data")
        self._next = 0

    def next_step(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next step's listed positions (strictly increasing, below ``count``) and their bits."""
        if self._next >= len(self.steps):
            raise BitstreamError("guard stream ends before the last step")
        positions, above = self.steps[self._next]
        self._next += 1
        if positions.size > count:
            raise BitstreamError("guard stream lists more positions than the step has")
        if positions.size and positions[-1] >= count:
            raise BitstreamError("guard stream position out of range")
        return positions, above

    def rows(self, scales: ArrayLike, above: np.ndarray) -> np.ndarray:
        """The buckets (int32) of listed positions with these (the decoder's own) ``scales``: the
        boundary nearest to each, moved up where the encoder's scale lay above it."""
        nearest, _ = _nearest(_float64(scales), self.bounds)
        return (nearest + above).astype(np.int32)

    def apply_step(self, indexes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """This step's buckets with the listed positions overridden from the stream (on the step's device)."""
        positions, above = self.next_step(indexes.numel())
        if positions.size == 0:
            return indexes
        # the step's tensors live where the networks ran (a GPU too); the stream's lists on the host
        listed = torch.from_numpy(positions).to(indexes.device)
        rows = self.rows(scales.reshape(-1)[listed.to(scales.device)], above)
        flat = indexes.reshape(-1).clone()
        flat[listed] = torch.from_numpy(rows).to(device=flat.device, dtype=flat.dtype)
        return flat.reshape(indexes.shape)

    def finish(self) -> None:
        if self._next != len(self.steps):
            raise BitstreamError("guard stream has trailing data")
