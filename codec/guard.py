"""Boundary guard: scale buckets that survive small cross-backend differences.

A decoder rebuilds every symbol's scale bucket from its own float computation. Where the encoder's
scale lies within a relative distance ``epsilon`` of a bucket boundary, another backend (ONNX Runtime,
TensorRT, another GPU) can land on the other side and the rANS stream desynchronises (codec.md).
The encoder therefore lists those positions, per step, with the side of the boundary it used; the
decoder takes the listed buckets from the stream and computes all others itself. Any decoder whose
relative scale error stays below ``epsilon`` then rebuilds every bucket exactly (the idea of
"safeguarding", Pang et al., arXiv 2410.09872). The decoder never has to decide *whether* a position
is listed, which would itself depend on floats; the list is explicit.

Cost: about ``symbols * 2 * epsilon / 0.106`` listed positions (0.106 = log spacing of the 60-entry
table), each a varint gap plus one bit. ``epsilon = 0`` turns the guard off.

Stream layout: f32 epsilon | u32 length of the varint section | varints (per step: count, then the
gaps between listed positions) | one bit per listed position (1 = above the boundary), packed.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from hpcm.errors import BitstreamError
from .rans import decode_escapes, encode_escapes

DEFAULT_EPSILON = 1e-5


def nearest_boundary(scales: torch.Tensor, table: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest boundary of table[:-1], relative distance to it) for every scale (flat)."""
    bounds = table[:-1].detach().double().cpu().numpy()
    s = scales.detach().double().reshape(-1).cpu().numpy()
    upper = np.clip(np.searchsorted(bounds, s), 0, bounds.size - 1)
    lower = np.clip(upper - 1, 0, bounds.size - 1)
    d_upper = np.abs(s / bounds[upper] - 1.0)
    d_lower = np.abs(s / bounds[lower] - 1.0)
    nearest = np.where(d_lower < d_upper, lower, upper)
    distance = np.minimum(d_lower, d_upper)
    return nearest, np.nan_to_num(distance, nan=np.inf)


class GuardWriter:
    def __init__(self, epsilon: float = DEFAULT_EPSILON) -> None:
        if not 0.0 <= epsilon < 0.05:
            raise ValueError("guard epsilon must be in [0, 0.05) (the table's log spacing is 0.106)")
        self.epsilon = float(epsilon)
        self.varints: list[np.ndarray] = []
        self.bits: list[np.ndarray] = []
        self.listed = 0

    def add_step(self, scales: torch.Tensor, table: torch.Tensor) -> None:
        if self.epsilon == 0.0:
            self.varints.append(np.zeros(1, dtype=np.int64))
            return
        nearest, distance = nearest_boundary(scales, table)
        positions = np.flatnonzero(distance < self.epsilon)
        bounds = table[:-1].detach().double().cpu().numpy()
        s = scales.detach().double().reshape(-1).cpu().numpy()[positions]
        self.bits.append((s > bounds[nearest[positions]]).astype(np.uint8))
        gaps = np.diff(np.concatenate([[-1], positions])) - 1
        self.varints.append(np.concatenate([[positions.size], gaps]).astype(np.int64))
        self.listed += positions.size

    def flush(self) -> bytes:
        varints = encode_escapes(np.concatenate(self.varints).astype(np.int32)) if self.varints else b""
        bits = np.packbits(np.concatenate(self.bits)) if self.bits else np.zeros(0, np.uint8)
        return struct.pack("<fI", self.epsilon, len(varints)) + varints + bits.tobytes()


class GuardReader:
    def __init__(self, data: bytes) -> None:
        if len(data) < 8:
            raise BitstreamError("guard stream is truncated")
        self.epsilon, length = struct.unpack_from("<fI", data)
        if not 0.0 <= self.epsilon < 0.05 or length > len(data) - 8:
            raise BitstreamError("guard stream header is invalid")
        self.values = decode_escapes(data[8:8 + length]).astype(np.int64)
        self.bits = np.unpackbits(np.frombuffer(data[8 + length:], dtype=np.uint8))
        self.cursor = 0
        self.bit_cursor = 0

    def apply_step(self, indexes: torch.Tensor, scales: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """This step's buckets with the listed positions overridden from the stream."""
        if self.cursor >= self.values.size:
            raise BitstreamError("guard stream ends before the last step")
        count = int(self.values[self.cursor])
        self.cursor += 1
        if count < 0 or count > indexes.numel() or self.cursor + count > self.values.size:
            raise BitstreamError("guard stream lists more positions than the step has")
        if count == 0:
            return indexes
        gaps = self.values[self.cursor:self.cursor + count]
        self.cursor += count
        if (gaps < 0).any():
            raise BitstreamError("guard stream has a negative gap")
        positions = np.cumsum(gaps + 1) - 1
        if positions[-1] >= indexes.numel():
            raise BitstreamError("guard stream position out of range")
        if self.bit_cursor + count > self.bits.size:
            raise BitstreamError("guard stream has too few bits")
        above = self.bits[self.bit_cursor:self.bit_cursor + count].astype(np.int64)
        self.bit_cursor += count
        # the step's tensors live where the networks ran (a GPU too); the stream's lists on the host
        listed = torch.from_numpy(positions).to(indexes.device)
        nearest, _ = nearest_boundary(scales.reshape(-1)[listed.to(scales.device)], table)
        flat = indexes.reshape(-1).clone()
        flat[listed] = torch.from_numpy(nearest + above).to(device=flat.device, dtype=flat.dtype)
        return flat.reshape(indexes.shape)

    def finish(self) -> None:
        if self.cursor != self.values.size or self.bits.size - self.bit_cursor >= 8:
            raise BitstreamError("guard stream has trailing data")
