"""Entropy coder of the codec: interleaved rANS driven by a table index per symbol, in independent
substreams coded in parallel.

``rans_core.cpp`` is the implementation used in practice; it is compiled with the system C++
compiler on first use and cached (``hpcm.config.cache_dir()``). Where it cannot be built (no
compiler, a failing one, an unusable cache folder) the pure-Python implementation below, which
produces the identical words, is used with a notice saying why (about 100x slower). The word format
is documented at the top of ``rans_core.cpp``.

Bitstream format 3 (written): each step's symbols are cut into substreams (``substream_offsets``),
each coded on its own, so that a team of threads codes and decodes them in parallel and the encoder can
code a step while the next step's networks run. A coded stream (``pack_substreams``) is
``varint(number of substreams) | per substream: varint(words), varint(bytes of escaped values) |
the words of every substream (uint16 LE) | their escaped values (zigzag varints)``. The native
coder also finds each symbol's scale bucket (``ScaleBuckets``) and the boundary guard's candidates
on the way, so a step takes one pass over its symbols.

Format 2 (decoded only, ``RansDecoder``): one stream for all steps,
``varint(number of rANS words) | rANS words (uint16 LE) | escapes (zigzag varints, to the end)``.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np
import torch

from hpcm import config
from hpcm.errors import BitstreamError, EntropyTableError, NativeBuildError
from hpcm.log import LOG
from hpcm.models.cdf_tables import scale_indexes
from hpcm.native import build_shared_library, library_path as library_file_path

LANES = 4  # format 2: interleaved states in its one stream
PROB_BITS = 16
STATE_LOW = 1 << 16
LUT_BITS = 12
# Residual symbols are int32 in the coder; the codec clamps values to this magnitude so that
# value - offset can never overflow.
MAX_ABS_VALUE = 1 << 30
# Format 3: a step of n symbols is cut into STEP_SUBSTREAMS * max(1, n // SUBSTREAM_SYMBOLS)
# substreams of one rANS state each. Four per step let one thread interleave four independent states
# (the coder's speed on one thread) or several threads share a step; each costs its final state and
# two counts (about 7 bytes), so an image of 11 steps pays about 300 bytes at 768x512 and 1920x1080
# (where an s3 step of 345,600 symbols has eight).
STEP_SUBSTREAMS = 4
SUBSTREAM_SYMBOLS = 1 << 17
STATE_WORDS = 2  # a substream's final state, high word first

SOURCE = Path(__file__).with_name("rans_core.cpp")

_i32p = ctypes.POINTER(ctypes.c_int32)
_f32p = ctypes.POINTER(ctypes.c_float)
_u32p = ctypes.POINTER(ctypes.c_uint32)
_u16p = ctypes.POINTER(ctypes.c_uint16)
_i64p = ctypes.POINTER(ctypes.c_int64)
_vp = ctypes.c_void_p


# The coder's threads are an OpenMP team (rans_core.cpp: PyTorch's own runtime where PyTorch runs);
# a compiler without OpenMP builds it serial.
OPENMP_FLAGS = ("-fopenmp",)


# A step's empty guard listing: no positions, no bits.
NOTHING_LISTED = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8))


class SymbolRangeError(ValueError):
    """A value to code is not a number or lies beyond +-MAX_ABS_VALUE."""


def library_path() -> Path:
    """Where the compiled coder is cached (``hpcm.native``)."""
    return library_file_path("hpcm_rans", [SOURCE], flags=OPENMP_FLAGS)


def _build() -> Path:
    """The coder built with OpenMP, else (with a notice) without: then a step's substreams are coded on
    one thread, in the same words."""
    try:
        return build_shared_library("hpcm_rans", [SOURCE], flags=OPENMP_FLAGS)
    except NativeBuildError as exc:
        LOG.warning(f"the native rANS coder cannot be built with OpenMP ({exc}); building it to code on one thread")
        return build_shared_library("hpcm_rans", [SOURCE])


@functools.lru_cache(maxsize=None)
def _load_library(cache_dir: str, compiler: Optional[str]) -> Optional[ctypes.CDLL]:
    """The compiled coder, built on first use; None (with a notice saying why) when it cannot be built.
    Cached per cache folder and compiler, so a changed configuration is tried afresh."""
    try:
        target = _build()
    except NativeBuildError as exc:
        LOG.warning(f"the native rANS coder is unavailable: {exc}; using the pure-Python coder instead "
                    "(the same streams, about 100x slower)")
        return None
    lib = ctypes.CDLL(str(target))
    lib.hpcm_rans_build_lut.restype = None
    lib.hpcm_rans_build_lut.argtypes = [_i32p, ctypes.c_int64, _i32p, ctypes.c_int64, _u16p]
    # the per-step functions take array addresses (``_address``): ctypes' pointer objects cost more
    # to make than a small step takes to code
    lib.hpcm_bucket_lut.restype = None
    lib.hpcm_bucket_lut.argtypes = [_vp, ctypes.c_int32, _vp]
    lib.hpcm_bucket_indexes.restype = None
    lib.hpcm_bucket_indexes.argtypes = [_vp, ctypes.c_int64, _vp, ctypes.c_int32, _vp, _vp]
    lib.hpcm_encode_parts.restype = ctypes.c_int32
    lib.hpcm_encode_parts.argtypes = [ctypes.c_int32, ctypes.c_int64, _vp, _vp, _vp, _vp, _vp, ctypes.c_int32, _vp,
                                      _vp, _vp, ctypes.c_double, _vp, ctypes.c_int64, _vp, _vp, ctypes.c_int64, _vp,
                                      _vp, _vp, _vp, _vp, _vp, _vp, _vp]
    lib.hpcm_decode_parts.restype = ctypes.c_int32
    lib.hpcm_decode_parts.argtypes = [ctypes.c_int32, ctypes.c_int64, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp,
                                      ctypes.c_int32, _vp, _vp, _vp, _vp, ctypes.c_int64, _vp, ctypes.c_int64, _vp,
                                      _vp, ctypes.c_int64, _vp, _vp]
    lib.hpcm_rans_decode.restype = ctypes.c_int32
    lib.hpcm_rans_decode.argtypes = [ctypes.c_int32, _u16p, ctypes.c_int64, _i64p, _u32p, _i64p, _i32p,
                                     ctypes.c_int64, _i32p, ctypes.c_int64, _i32p, _i32p, ctypes.c_int64,
                                     _u16p, _i32p, ctypes.c_int64, _i64p, _i32p]
    return lib


def native_library() -> Optional[ctypes.CDLL]:
    """The compiled coder, or None when it cannot be built here (or HPCM_PURE_PYTHON_RANS=1)."""
    if config.pure_python_rans():
        return None
    return _load_library(str(config.cache_dir()), config.cxx_compiler())


def _ptr(a: np.ndarray, kind):  # noqa: ANN001 - ctypes pointer types have no useful annotation
    return a.ctypes.data_as(kind)


def _address(a: Optional[np.ndarray]) -> Optional[int]:
    """The address of a contiguous array's data (None for no array)."""
    return None if a is None else a.ctypes.data


def _as_numpy(a: torch.Tensor | np.ndarray, dtype) -> np.ndarray:  # noqa: ANN001
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


class CdfTables:
    """Validated quantized CDF tables in the layout of ``models/cdf_tables.py``.

    Validation runs once, so that the coder's inner loops can index the tables without bounds
    checks even when the tables come from an untrusted checkpoint.
    """

    def __init__(self, cdf: torch.Tensor | np.ndarray, length: torch.Tensor | np.ndarray,
                 offset: torch.Tensor | np.ndarray) -> None:
        cdf_np = cdf.detach().cpu().numpy() if isinstance(cdf, torch.Tensor) else np.asarray(cdf)
        if cdf_np.ndim != 2:
            raise EntropyTableError("cdf table must be 2-D")
        self.cdf = np.ascontiguousarray(cdf_np, dtype=np.int32)
        self.length = _as_numpy(length, np.int32)
        self.offset = _as_numpy(offset, np.int32)
        count, stride = self.cdf.shape
        if count == 0 or self.length.shape != (count,) or self.offset.shape != (count,):
            raise EntropyTableError("cdf, cdf_length and offset disagree in size")
        if (self.length < 3).any() or (self.length > stride).any():
            raise EntropyTableError("cdf_length out of range")
        if (np.abs(self.offset.astype(np.int64)) > MAX_ABS_VALUE).any():
            raise EntropyTableError("offset out of range")
        for i in range(count):
            row = self.cdf[i, : self.length[i]].astype(np.int64)
            if row[0] != 0 or row[-1] != 1 << PROB_BITS or (np.diff(row) <= 0).any():
                raise EntropyTableError(f"cdf row {i} is not a strictly increasing {PROB_BITS}-bit CDF")
        self.count = count
        self.stride = stride
        self._lut: np.ndarray | None = None

    def lut(self, lib: ctypes.CDLL) -> np.ndarray:
        if self._lut is None:
            lut = np.zeros((self.count, 1 << LUT_BITS), dtype=np.uint16)
            lib.hpcm_rans_build_lut(_ptr(self.cdf, _i32p), self.stride, _ptr(self.length, _i32p),
                                    self.count, _ptr(lut, _u16p))
            self._lut = lut
        return self._lut

    def check_indexes(self, indexes: np.ndarray) -> None:
        if indexes.size and (indexes.min() < 0 or indexes.max() >= self.count):
            raise ValueError(f"table index out of range [0, {self.count})")


def _write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int, limit_bits: int = 63) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise BitstreamError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= limit_bits:
            raise BitstreamError("varint too long")


def encode_escapes(values: np.ndarray) -> bytes:
    """Zigzag LEB128 of int32 values, vectorised (random-init models can escape often)."""
    return _zigzag_varints(values)[0]


def _zigzag_varints(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``encode_escapes`` and the number of bytes of each value."""
    v = values.astype(np.int64)
    return _varints(((v << 1) ^ (v >> 63)).astype(np.uint64))


def _varints(u: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Unsigned LEB128 of the uint64 values ``u``, vectorised, and the number of bytes of each."""
    if u.size == 0:
        return b"", np.zeros(0, dtype=np.int64)
    nbytes = np.maximum(1, (np.floor(np.log2(np.maximum(u, 1).astype(np.float64))).astype(np.int64) // 7) + 1)
    # log2 in floats can be off by one at exact powers; fix with integer comparisons
    nbytes = np.where(u >= (np.uint64(1) << (7 * nbytes).astype(np.uint64)), nbytes + 1, nbytes)
    nbytes = np.where((nbytes > 1) & (u < (np.uint64(1) << (7 * (nbytes - 1)).astype(np.uint64))), nbytes - 1, nbytes)
    if (nbytes == 1).all():  # the usual case: every value below 128
        return u.astype(np.uint8).tobytes(), nbytes
    owner = np.repeat(np.arange(u.size), nbytes)
    starts = np.cumsum(nbytes) - nbytes
    k = np.arange(owner.size) - starts[owner]
    chunk = (u[owner] >> (7 * k).astype(np.uint64)) & np.uint64(0x7F)
    more = (k < nbytes[owner] - 1).astype(np.uint64) << np.uint64(7)
    return (chunk | more).astype(np.uint8).tobytes(), nbytes


def _decode_varints(b: np.ndarray, what: str) -> np.ndarray:
    """Unsigned LEB128 values (below 2^32, int64) of the bytes ``b``, which end with a value."""
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = b < 0x80
    if not last[-1]:
        raise BitstreamError(f"{what} ends inside a value")
    if last.all():  # the usual case: every value below 128, one byte each
        return b.astype(np.int64)
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    if (ends - starts).max() > 4:
        raise BitstreamError(f"{what} has a value longer than 32 bits")
    owner = np.repeat(np.arange(ends.size), ends - starts + 1)
    k = np.arange(b.size) - starts[owner]
    parts = (b & 0x7F).astype(np.uint64) << (7 * k).astype(np.uint64)
    u = np.add.reduceat(parts, starts)  # a value's 7-bit groups do not overlap: their sum is the value
    if (u >= np.uint64(1) << np.uint64(32)).any():
        raise BitstreamError(f"{what} has a value out of range")
    return u.astype(np.int64)


def decode_escapes(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_escapes`; raises BitstreamError on malformed input."""
    u = _decode_varints(np.frombuffer(data, dtype=np.uint8), "escape list")
    v = (u >> 1) ^ -(u & 1)
    if (np.abs(v) > MAX_ABS_VALUE).any():
        raise BitstreamError("escape value out of range")
    return v.astype(np.int32)


@functools.lru_cache(maxsize=64)
def substream_offsets(count: int) -> np.ndarray:
    """Where a step of ``count`` symbols is cut into substreams (part j: symbols offsets[j] to
    offsets[j + 1]): ``STEP_SUBSTREAMS`` per ``SUBSTREAM_SYMBOLS`` symbols, at least that many. A
    function of the count alone, so the encoder and every decoder cut alike whatever their thread count
    (read-only: computed once per count)."""
    parts = STEP_SUBSTREAMS * max(1, count // SUBSTREAM_SYMBOLS)
    offsets = (np.arange(parts + 1, dtype=np.int64) * count) // parts
    offsets.setflags(write=False)
    return offsets


class ScaleBuckets:
    """The bucket search over a scale table in the native coder: the bounds (the table without its last
    entry) as float32, and a lookup table over float patterns built once (``rans_core.cpp``). It
    computes what ``hpcm.models.cdf_tables.scale_indexes`` computes, for CPU float32 scales."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.detach().cpu().float()
        self.count = self.table.numel() - 1  # bounds
        if self.count >= 1 << 16:
            raise EntropyTableError(f"the scale table has {self.table.numel()} entries; the coder takes at most 65536")
        # the bounds, then +inf, which ends the native search without a bounds check
        self.bounds = np.append(self.table[:-1].numpy(), np.float32(np.inf)).astype(np.float32)
        self._lut: np.ndarray | None = None

    def lut(self, lib: ctypes.CDLL) -> np.ndarray:
        if self._lut is None:
            lut = np.zeros(1 << 14, dtype=np.uint16)
            lib.hpcm_bucket_lut(_address(self.bounds), self.count, _address(lut))
            self._lut = lut
        return self._lut


def _python_encode_part(values: np.ndarray, indexes: np.ndarray, t: CdfTables) -> tuple[np.ndarray, np.ndarray]:
    """One substream's words and escaped values (the pure-Python form of ``encode_lanes``, rans_core.cpp)."""
    x = STATE_LOW
    backwards: list[int] = []  # words in reverse stream order
    escapes: list[int] = []
    for j in range(values.size - 1, -1, -1):
        idx = int(indexes[j])
        value = int(values[j])
        tail = int(t.length[idx]) - 2
        s = value - int(t.offset[idx])
        if s < 0 or s >= tail:
            escapes.append(value)
            s = tail
        start = int(t.cdf[idx, s])
        freq = int(t.cdf[idx, s + 1]) - start
        if x >= freq << 16:
            backwards.append(x & 0xFFFF)
            x >>= 16
        x = ((x // freq) << PROB_BITS) + (x % freq) + start
    backwards += [x & 0xFFFF, x >> 16]
    return np.array(backwards[::-1], dtype=np.uint16), np.array(escapes[::-1], dtype=np.int32)


def _python_decode_part(words: np.ndarray, escapes: np.ndarray, indexes: np.ndarray, t: CdfTables,
                        out: np.ndarray) -> None:
    """Decodes one substream into ``out`` (the pure-Python form of ``decode_lanes`` in rans_core.cpp)."""
    if words.size < STATE_WORDS:
        raise BitstreamError(_DECODE_ERRORS[-6])
    x = (int(words[0]) << 16) | int(words[1])
    if x < STATE_LOW:
        raise BitstreamError(_DECODE_ERRORS[-6])
    pos, esc = STATE_WORDS, 0
    for j in range(indexes.size):
        row = int(indexes[j])
        cdf = t.cdf[row]
        slot = x & 0xFFFF
        s = int(np.searchsorted(cdf[: t.length[row]], slot, side="right")) - 1
        start = int(cdf[s])
        x = (int(cdf[s + 1]) - start) * (x >> PROB_BITS) + slot - start
        if x < STATE_LOW:
            if pos >= words.size:
                raise BitstreamError(_DECODE_ERRORS[-1])
            x = (x << 16) | int(words[pos])
            pos += 1
        if s == int(t.length[row]) - 2:
            if esc >= escapes.size:
                raise BitstreamError(_DECODE_ERRORS[-3])
            out[j] = escapes[esc]
            esc += 1
        else:
            out[j] = s + int(t.offset[row])
    if pos != words.size or esc != escapes.size or x != STATE_LOW:
        raise BitstreamError(_DECODE_ERRORS[-5])


_DECODE_ERRORS = {
    -1: "rANS stream ended before all symbols were decoded",
    -2: "rANS stream selects a table that does not exist",
    -3: "rANS stream references more escapes than it carries",
    -5: "rANS stream is inconsistent (trailing words or escapes, or a final state mismatch)",
    -6: "rANS stream has an invalid initial state",
}


@dataclass
class CodedStep:
    """One step's substreams: words and escaped values of each, and (coding from scales with the
    guard's windows only) the positions the guard lists, with 1 where their scale lies above its bound."""

    words: list[np.ndarray]
    escapes: list[np.ndarray]
    listed: np.ndarray
    above: np.ndarray


class GuardScreen(Protocol):
    """What the coder's pass reads of the boundary guard's screen (``guard.ScreenWindows``, which owns
    it): per bucket, float32 limits near its two bounds, and the guard's relative distance."""

    near_low: np.ndarray
    near_high: np.ndarray
    epsilon: float


class Coder:
    """The rANS coder of one codec call: the native library (looked up once; None: the pure-Python
    coder) and the threads that code a step's substreams."""

    def __init__(self, threads: int = 1) -> None:
        self.lib = native_library()
        self.threads = threads

    @property
    def native(self) -> bool:
        return self.lib is not None

    def bucket_indexes(self, scales: torch.Tensor, buckets: ScaleBuckets) -> torch.Tensor:
        """Bucket index (int32) of every scale: natively for CPU float32 scales, else ``scale_indexes``."""
        if self.lib is None or scales.device.type != "cpu" or scales.dtype != torch.float32:
            return scale_indexes(scales, buckets.table.to(scales.device))
        flat = _as_numpy(scales, np.float32)
        out = np.empty(flat.size, dtype=np.int32)
        self.lib.hpcm_bucket_indexes(_address(flat), flat.size, _address(buckets.bounds), buckets.count,
                                     _address(buckets.lut(self.lib)), _address(out))
        return torch.from_numpy(out).reshape(scales.shape)

    def encode(self, values: np.ndarray, tables: CdfTables, offsets: np.ndarray, *,
               indexes: Optional[np.ndarray] = None, scales: Optional[np.ndarray] = None,
               buckets: Optional[ScaleBuckets] = None,
               windows: Optional[GuardScreen] = None) -> CodedStep:
        """The substreams of one step (symbols cut at ``offsets``) and, coding from ``scales``, the
        boundary guard's listing: the positions (increasing) that its screen ``windows`` flag and its
        float64 rule keeps, and their bits (``guard.GuardWriter.settle``, found in the coder's pass).

        ``values``: the step's symbols, float32 (rounded) within +-MAX_ABS_VALUE. Table rows:
        ``indexes`` (int32), or ``scales`` (float32, native coder only) bucketed over ``buckets`` on
        the way; ``windows``: the guard's screen (``guard.ScreenWindows``). The words
        do not depend on the thread count."""
        n, parts = values.size, offsets.size - 1
        if self.lib is None:
            if indexes is None:
                raise ValueError("the pure-Python coder codes from table indexes, not scales")
            tables.check_indexes(indexes)
            if n and not (np.abs(values) <= MAX_ABS_VALUE).all():
                raise SymbolRangeError(f"symbol magnitude above {MAX_ABS_VALUE} (or not a number)")
            coded = [_python_encode_part(values[a:b], indexes[a:b], tables) for a, b in zip(offsets[:-1], offsets[1:])]
            return CodedStep([w for w, _ in coded], [e for _, e in coded], *NOTHING_LISTED)
        region = np.concatenate([[0], np.cumsum(np.diff(offsets) + STATE_WORDS)]).astype(np.int64)
        out = np.empty(int(region[-1]), dtype=np.uint16)
        first = np.empty(parts, dtype=np.int64)
        esc = np.empty(n, dtype=np.int32)
        esc_count = np.zeros(parts, dtype=np.int64)
        screened = scales is not None and windows is not None
        cand = np.empty(n if screened else 0, dtype=np.int64)
        above = np.empty(n if screened else 0, dtype=np.uint8)
        cand_count = np.zeros(parts, dtype=np.int64)
        near_low, near_high, epsilon = (windows.near_low, windows.near_high, windows.epsilon) if screened \
            else (None, None, 0.0)
        with_buckets = buckets is not None and indexes is None
        rc = self.lib.hpcm_encode_parts(
            self.threads, parts, _address(offsets), _address(values), _address(indexes), _address(scales),
            _address(buckets.bounds) if with_buckets else None, buckets.count if with_buckets else 0,
            _address(buckets.lut(self.lib)) if with_buckets else None, _address(near_low), _address(near_high),
            epsilon, _address(tables.cdf), tables.stride, _address(tables.length), _address(tables.offset),
            tables.count, _address(out), _address(region), _address(first), _address(esc), _address(esc_count),
            _address(cand), _address(above), _address(cand_count))
        if rc == -2:
            raise ValueError(f"table index out of range [0, {tables.count})")
        if rc == -7:
            raise SymbolRangeError(f"symbol magnitude above {MAX_ABS_VALUE} (or not a number)")
        if rc != 0:
            raise RuntimeError(f"rANS encoder failed with code {rc}")
        starts = offsets[:-1]
        listed = NOTHING_LISTED
        if screened:
            listed = tuple(np.concatenate([a[starts[j]:starts[j] + cand_count[j]] for j in range(parts)])
                           for a in (cand, above))
        return CodedStep([out[first[j]:region[j + 1]] for j in range(parts)],
                         [esc[starts[j]:starts[j] + esc_count[j]] for j in range(parts)], *listed)

    def decode(self, reader: "SubstreamReader", parts: "SubstreamSpan", offsets: np.ndarray, tables: CdfTables, *,
               indexes: Optional[np.ndarray] = None, scales: Optional[np.ndarray] = None,
               buckets: Optional[ScaleBuckets] = None,
               listed: np.ndarray = np.zeros(0, np.int64), rows: Optional[np.ndarray] = None,
               above: Optional[np.ndarray] = None) -> np.ndarray:
        """The symbols (float32) of one step from the substreams ``parts`` of ``reader`` (symbols cut
        at ``offsets``). Table rows: ``indexes``, or ``scales`` bucketed over ``buckets`` (native
        coder only). The boundary guard's ``listed`` positions (strictly increasing, below the step's
        count) take its ``rows`` (int32) instead, or, decoding from ``scales``, the rows of its
        ``above`` bits (uint8: 1 where the encoder's scale lay above its bound) that
        ``guard.GuardReader.rows`` gives, found in the coder's pass. Raises BitstreamError on a
        corrupt substream."""
        n = int(offsets[-1])
        out = np.empty(n, dtype=np.float32)
        if self.lib is None:
            if indexes is None:
                raise ValueError("the pure-Python coder decodes with table indexes, not scales")
            indexes = indexes.copy()
            if listed.size:
                indexes[listed] = rows
            tables.check_indexes(indexes)
            for j in range(offsets.size - 1):
                a, b = offsets[j], offsets[j + 1]
                _python_decode_part(reader.words[parts.words[j]:parts.words[j + 1]],
                                    reader.escapes[parts.escapes[j]:parts.escapes[j + 1]], indexes[a:b], tables,
                                    out[a:b])
            return out
        with_buckets = buckets is not None and indexes is None
        rc = self.lib.hpcm_decode_parts(
            self.threads, offsets.size - 1, _address(offsets), _address(reader.words), _address(parts.words),
            _address(reader.escapes), _address(parts.escapes), _address(indexes), _address(scales),
            _address(buckets.bounds) if with_buckets else None, buckets.count if with_buckets else 0,
            _address(buckets.lut(self.lib)) if with_buckets else None, _address(listed), _address(rows),
            _address(above), listed.size, _address(tables.cdf), tables.stride, _address(tables.length),
            _address(tables.offset), tables.count, _address(tables.lut(self.lib)), _address(out))
        if rc != 0:
            raise BitstreamError(_DECODE_ERRORS.get(rc, f"rANS decoder failed with code {rc}"))
        return out


def pack_substreams(steps: Sequence[CodedStep]) -> bytes:
    """A coded stream: the number of substreams, each one's word count and escape bytes, then all
    their words, then all their escaped values (zigzag varints)."""
    words = [w for step in steps for w in step.words]
    escapes = [e for step in steps for e in step.escapes]
    # every substream's escaped values in one vectorised pass, then each one's share of the bytes
    escaped, value_bytes = _zigzag_varints(np.concatenate(escapes).astype(np.int32) if escapes else np.zeros(0))
    ends = np.concatenate([[0], np.cumsum(value_bytes)])[np.cumsum([0] + [e.size for e in escapes])]
    sizes = np.stack([[w.size for w in words], np.diff(ends)], axis=1).astype(np.uint64)
    directory = _write_varint(len(words)) + _varints(sizes.reshape(-1))[0]
    all_words = np.concatenate(words) if words else np.zeros(0, dtype=np.uint16)
    return directory + all_words.astype("<u2", copy=False).tobytes() + escaped


@dataclass(frozen=True)
class SubstreamSpan:
    """Where some consecutive substreams lie in a ``SubstreamReader``: offsets (count + 1) into its
    words and its escaped values."""

    words: np.ndarray
    escapes: np.ndarray


class SubstreamReader:
    """The substreams of a coded stream (``pack_substreams``), handed out in order, a step at a time."""

    def __init__(self, data: bytes) -> None:
        count, pos = _read_varint(data, 0)
        b = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(b[pos:pos + 10 * count] < 0x80)  # a directory varint is at most 5 bytes
        if ends.size < 2 * count:
            raise BitstreamError("rANS stream is truncated inside its directory")
        directory_end = pos + (int(ends[2 * count - 1]) + 1 if count else 0)
        sizes = _decode_varints(b[pos:directory_end], "rANS stream directory").reshape(count, 2)
        word_bytes = 2 * int(sizes[:, 0].sum())
        escape_ends = np.cumsum(sizes[:, 1])
        if directory_end + word_bytes + (int(escape_ends[-1]) if count else 0) != len(data):
            raise BitstreamError(f"rANS stream is truncated or extended: it holds {len(data) - directory_end} bytes "
                                 "after its directory, which describes another number")
        self.words = np.frombuffer(data, dtype="<u2", count=word_bytes // 2, offset=directory_end).astype(np.uint16)
        escape_bytes = b[directory_end + word_bytes:]
        value_ends = escape_bytes < 0x80
        if count and (sizes[:, 1] > 0).any() and not value_ends[escape_ends[sizes[:, 1] > 0] - 1].all():
            raise BitstreamError("rANS stream has a substream whose escaped values end inside a value")
        self.escapes = decode_escapes(escape_bytes.tobytes())
        # escaped values before each substream: values that end before its first byte
        ended = np.concatenate([[0], np.cumsum(value_ends)]).astype(np.int64)
        self._words = np.concatenate([[0], np.cumsum(sizes[:, 0])]).astype(np.int64)
        self._escapes = ended[np.concatenate([[0], escape_ends]).astype(np.int64)]
        self._next = 0

    @property
    def count(self) -> int:
        """How many substreams the stream holds."""
        return self._words.size - 1

    def take(self, count: int) -> SubstreamSpan:
        """The next ``count`` substreams."""
        if self._next + count > self.count:
            raise BitstreamError("rANS stream has fewer substreams than the image needs")
        span = SubstreamSpan(self._words[self._next:self._next + count + 1],
                             self._escapes[self._next:self._next + count + 1])
        self._next += count
        return span

    def finish(self) -> None:
        if self._next != self.count:
            raise BitstreamError("rANS stream has more substreams than the image needs")


class RansDecoder:
    """Decodes a format-2 stream (one stream for all steps) in the chunks its encoder received.

    Every failure on corrupt input raises BitstreamError; :meth:`finish` proves that the whole
    stream was consumed consistently (all words and escapes used, every lane back at its start).
    """

    def __init__(self, data: bytes, tables: CdfTables) -> None:
        self.tables = tables
        n_words, pos = _read_varint(data, 0)
        if n_words < 2 * LANES or pos + 2 * n_words > len(data):
            raise BitstreamError("rANS stream is truncated")
        self._words = np.frombuffer(data, dtype="<u2", count=n_words, offset=pos).astype(np.uint16)
        self._escapes = decode_escapes(data[pos + 2 * n_words:])
        w = self._words[: 2 * LANES].astype(np.uint32)
        self._states = np.ascontiguousarray((w[0::2] << 16) | w[1::2], dtype=np.uint32)
        if (self._states < STATE_LOW).any():
            raise BitstreamError("rANS stream has an invalid initial state")
        self._lib = native_library()
        self._pos = ctypes.c_int64(2 * LANES)
        self._coded = ctypes.c_int64(0)
        self._esc = ctypes.c_int64(0)

    def decode(self, indexes: torch.Tensor | np.ndarray) -> np.ndarray:
        """Residuals (int32, flat) of the next ``indexes.size`` symbols."""
        idx = _as_numpy(indexes, np.int32)
        t = self.tables
        t.check_indexes(idx)
        out = np.empty(idx.size, dtype=np.int32)
        lib = self._lib
        if lib is None:
            self._python_decode(idx, out)
            return out
        rc = lib.hpcm_rans_decode(LANES, _ptr(self._words, _u16p), self._words.size, ctypes.byref(self._pos),
                                  _ptr(self._states, _u32p), ctypes.byref(self._coded), _ptr(idx, _i32p),
                                  idx.size, _ptr(t.cdf, _i32p), t.stride, _ptr(t.length, _i32p),
                                  _ptr(t.offset, _i32p), t.count, _ptr(t.lut(lib), _u16p),
                                  _ptr(self._escapes, _i32p), self._escapes.size, ctypes.byref(self._esc),
                                  _ptr(out, _i32p))
        if rc == -1:
            raise BitstreamError("rANS stream ended before all symbols were decoded")
        if rc == -3:
            raise BitstreamError("rANS stream references more escapes than it carries")
        if rc != 0:
            raise BitstreamError(f"rANS decoder failed with code {rc}")
        return out

    def _python_decode(self, idx: np.ndarray, out: np.ndarray) -> None:
        t = self.tables
        pos, esc, base = self._pos.value, self._esc.value, self._coded.value
        words = self._words
        for i in range(idx.size):
            row = int(idx[i])
            lane = (base + i) % LANES
            x = int(self._states[lane])
            slot = x & 0xFFFF
            cdf = t.cdf[row]
            s = int(np.searchsorted(cdf[: t.length[row]], slot, side="right")) - 1
            start = int(cdf[s])
            freq = int(cdf[s + 1]) - start
            x = freq * (x >> PROB_BITS) + slot - start
            if x < STATE_LOW:
                if pos >= words.size:
                    raise BitstreamError("rANS stream ended before all symbols were decoded")
                x = (x << 16) | int(words[pos])
                pos += 1
            self._states[lane] = x
            if s == int(t.length[row]) - 2:
                if esc >= self._escapes.size:
                    raise BitstreamError("rANS stream references more escapes than it carries")
                out[i] = self._escapes[esc]
                esc += 1
            else:
                out[i] = s + int(t.offset[row])
        self._pos.value, self._esc.value, self._coded.value = pos, esc, base + idx.size

    def finish(self) -> None:
        """Raise BitstreamError unless the stream was consumed exactly."""
        if self._pos.value != self._words.size:
            raise BitstreamError("rANS stream has trailing words")
        if self._esc.value != self._escapes.size:
            raise BitstreamError("rANS stream has unused escapes")
        if (self._states != STATE_LOW).any():
            raise BitstreamError("rANS stream is inconsistent (final state mismatch)")


def ideal_bits(values: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> float:
    """-sum(log2 p) of the symbols under the quantized tables, escapes counted as the tail symbol."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    i = np.asarray(indexes, dtype=np.int64).reshape(-1)
    tail = tables.length[i].astype(np.int64) - 2
    s = v - tables.offset[i]
    s = np.where((s < 0) | (s >= tail), tail, s)
    freq = tables.cdf[i, s + 1].astype(np.int64) - tables.cdf[i, s]
    return float(-(np.log2(freq) - PROB_BITS).sum())
