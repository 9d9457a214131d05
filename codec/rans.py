"""Entropy coder of the codec: interleaved rANS driven by a table index per symbol.

``rans_core.cpp`` is the implementation used in practice; it is compiled with the system C++
compiler on first use and cached (``hpcm.config.cache_dir()``). Where it cannot be built (no
compiler, a failing one, an unusable cache folder) the pure-Python implementation below, which
produces the identical stream, is used with a notice saying why (about 100x slower). The stream
format is documented at the top of ``rans_core.cpp``.

A coded stream (the bytes returned by :meth:`RansEncoder.flush`) is
``varint(number of rANS words) | rANS words (uint16 LE) | escapes (zigzag varints, to the end)``.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hpcm import config
from hpcm.errors import BitstreamError, EntropyTableError, NativeBuildError
from hpcm.log import LOG
from hpcm.native import build_shared_library, library_path as library_file_path

LANES = 4
PROB_BITS = 16
STATE_LOW = 1 << 16
LUT_BITS = 12
# Residual symbols are int32 in the coder; the codec clamps values to this magnitude so that
# value - offset can never overflow.
MAX_ABS_VALUE = 1 << 30

SOURCE = Path(__file__).with_name("rans_core.cpp")

_i32p = ctypes.POINTER(ctypes.c_int32)
_u32p = ctypes.POINTER(ctypes.c_uint32)
_u16p = ctypes.POINTER(ctypes.c_uint16)
_i64p = ctypes.POINTER(ctypes.c_int64)


def library_path() -> Path:
    """Where the compiled coder is cached (``hpcm.native``)."""
    return library_file_path("hpcm_rans", [SOURCE])


@functools.lru_cache(maxsize=None)
def _load_library(cache_dir: str, compiler: Optional[str]) -> Optional[ctypes.CDLL]:
    """The compiled coder, built on first use; None (with a notice saying why) when it cannot be built.
    Cached per cache folder and compiler, so a changed configuration is tried afresh."""
    try:
        target = build_shared_library("hpcm_rans", [SOURCE])
    except NativeBuildError as exc:
        LOG.warning(f"the native rANS coder is unavailable: {exc}; using the pure-Python coder instead "
                    "(the same streams, about 100x slower)")
        return None
    lib = ctypes.CDLL(str(target))
    lib.hpcm_rans_encode.restype = ctypes.c_int64
    lib.hpcm_rans_encode.argtypes = [ctypes.c_int32, _i32p, _i32p, ctypes.c_int64, _i32p, ctypes.c_int64,
                                     _i32p, _i32p, ctypes.c_int64, _u16p, ctypes.c_int64, _i32p, _i64p]
    lib.hpcm_rans_build_lut.restype = None
    lib.hpcm_rans_build_lut.argtypes = [_i32p, ctypes.c_int64, _i32p, ctypes.c_int64, _u16p]
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
    if values.size == 0:
        return b""
    v = values.astype(np.int64)
    u = ((v << 1) ^ (v >> 63)).astype(np.uint64)
    nbytes = np.maximum(1, (np.floor(np.log2(np.maximum(u, 1).astype(np.float64))).astype(np.int64) // 7) + 1)
    # log2 in floats can be off by one at exact powers; fix with integer comparisons
    nbytes = np.where(u >= (np.uint64(1) << (7 * nbytes).astype(np.uint64)), nbytes + 1, nbytes)
    nbytes = np.where((nbytes > 1) & (u < (np.uint64(1) << (7 * (nbytes - 1)).astype(np.uint64))), nbytes - 1, nbytes)
    owner = np.repeat(np.arange(v.size), nbytes)
    starts = np.cumsum(nbytes) - nbytes
    k = np.arange(owner.size) - starts[owner]
    chunk = (u[owner] >> (7 * k).astype(np.uint64)) & np.uint64(0x7F)
    more = (k < nbytes[owner] - 1).astype(np.uint64) << np.uint64(7)
    return (chunk | more).astype(np.uint8).tobytes()


def decode_escapes(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_escapes`; raises BitstreamError on malformed input."""
    if not data:
        return np.zeros(0, dtype=np.int32)
    b = np.frombuffer(data, dtype=np.uint8)
    last = b < 0x80
    if not last[-1]:
        raise BitstreamError("escape list ends inside a value")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    if (ends - starts).max() > 4:
        raise BitstreamError("escape value longer than 32 bits")
    owner = np.repeat(np.arange(ends.size), ends - starts + 1)
    k = np.arange(b.size) - starts[owner]
    parts = (b & 0x7F).astype(np.uint64) << (7 * k).astype(np.uint64)
    u = np.zeros(ends.size, dtype=np.uint64)
    np.add.at(u, owner, parts)
    if (u >= np.uint64(1) << np.uint64(32)).any():
        raise BitstreamError("escape value out of range")
    u = u.astype(np.int64)
    v = (u >> 1) ^ -(u & 1)
    if (np.abs(v) > MAX_ABS_VALUE).any():
        raise BitstreamError("escape value out of range")
    return v.astype(np.int32)


def _python_encode(values: np.ndarray, indexes: np.ndarray, t: CdfTables) -> tuple[np.ndarray, np.ndarray]:
    states = [STATE_LOW] * LANES
    words: list[int] = []
    escapes: list[int] = []
    for i in range(values.size - 1, -1, -1):
        idx = int(indexes[i])
        tail = int(t.length[idx]) - 2
        s = int(values[i]) - int(t.offset[idx])
        if s < 0 or s >= tail:
            escapes.append(int(values[i]))
            s = tail
        start = int(t.cdf[idx, s])
        freq = int(t.cdf[idx, s + 1]) - start
        x = states[i % LANES]
        if x >= freq << 16:
            words.append(x & 0xFFFF)
            x >>= 16
        states[i % LANES] = ((x // freq) << PROB_BITS) + (x % freq) + start
    for lane in range(LANES - 1, -1, -1):
        words.append(states[lane] & 0xFFFF)
        words.append(states[lane] >> 16)
    words.reverse()
    escapes.reverse()
    return np.array(words, dtype=np.uint16), np.array(escapes, dtype=np.int32)


class RansEncoder:
    """Collects symbols (in coding order, possibly over several calls) and codes them at flush.

    rANS codes in reverse, so nothing is emitted before :meth:`flush`.
    """

    def __init__(self, tables: CdfTables) -> None:
        self.tables = tables
        self._values: list[np.ndarray] = []
        self._indexes: list[np.ndarray] = []

    def encode(self, values: torch.Tensor | np.ndarray, indexes: torch.Tensor | np.ndarray) -> None:
        """Queue integer residuals ``values`` coded with table rows ``indexes`` (same shape)."""
        v = _as_numpy(values, np.int32)
        i = _as_numpy(indexes, np.int32)
        if v.shape != i.shape:
            raise ValueError("values and indexes must have the same number of elements")
        if v.size and (v.min() < -MAX_ABS_VALUE or v.max() > MAX_ABS_VALUE):
            raise ValueError(f"symbol magnitude above {MAX_ABS_VALUE}")
        self.tables.check_indexes(i)
        self._values.append(v)
        self._indexes.append(i)

    def flush(self) -> bytes:
        values = np.concatenate(self._values) if self._values else np.zeros(0, np.int32)
        indexes = np.concatenate(self._indexes) if self._indexes else np.zeros(0, np.int32)
        self._values, self._indexes = [], []
        lib = native_library()
        t = self.tables
        if lib is None:
            words, escapes = _python_encode(values, indexes, t)
        else:
            cap = values.size + 2 * LANES + 1
            out = np.empty(cap, dtype=np.uint16)
            esc = np.empty(max(values.size, 1), dtype=np.int32)
            n_esc = ctypes.c_int64(0)
            used = lib.hpcm_rans_encode(LANES, _ptr(values, _i32p), _ptr(indexes, _i32p), values.size,
                                        _ptr(t.cdf, _i32p), t.stride, _ptr(t.length, _i32p),
                                        _ptr(t.offset, _i32p), t.count, _ptr(out, _u16p), cap,
                                        _ptr(esc, _i32p), ctypes.byref(n_esc))
            if used < 0:
                raise RuntimeError(f"rANS encoder failed with code {used}")
            words, escapes = out[:used], esc[: n_esc.value]
        return _write_varint(words.size) + words.astype("<u2").tobytes() + encode_escapes(escapes)


class RansDecoder:
    """Decodes a stream from :meth:`RansEncoder.flush` in the same chunks the encoder received.

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
        self._pos = ctypes.c_int64(2 * LANES)
        self._coded = ctypes.c_int64(0)
        self._esc = ctypes.c_int64(0)

    def decode(self, indexes: torch.Tensor | np.ndarray) -> np.ndarray:
        """Residuals (int32, flat) of the next ``indexes.size`` symbols."""
        idx = _as_numpy(indexes, np.int32)
        t = self.tables
        t.check_indexes(idx)
        out = np.empty(idx.size, dtype=np.int32)
        lib = native_library()
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
