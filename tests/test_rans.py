"""rANS coder: exact round trips (escapes included), native and Python implementations agree
bit for bit, size close to the ideal, corrupt streams raise BitstreamError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcm.models.cdf_tables import default_scale_table, quantized_cdf_tables, scale_indexes
from hpcm.codec import rans
from hpcm.errors import BitstreamError
from hpcm.codec.rans import (
    MAX_ABS_VALUE,
    CdfTables,
    RansDecoder,
    RansEncoder,
    decode_escapes,
    encode_escapes,
    ideal_bits,
)


@pytest.fixture(scope="module")
def tables() -> CdfTables:
    return CdfTables(*quantized_cdf_tables(default_scale_table()))


def realistic(n: int, seed: int, outliers: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(np.log(0.6), 1.1, n)).clip(0.05, 80.0)
    magnitude = rng.gamma(1 / 1.5, 1.0, n) ** (1 / 1.5)
    values = np.round(np.where(rng.random(n) < 0.5, -1, 1) * magnitude * scales)
    wild = rng.random(n) < outliers
    values[wild] += rng.integers(-100000, 100000, wild.sum())
    idx = scale_indexes(torch.from_numpy(scales.astype(np.float32)), default_scale_table()).numpy()
    return values.astype(np.int32), idx


def roundtrip(tables: CdfTables, chunks: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    enc = RansEncoder(tables)
    for v, i in chunks:
        enc.encode(v, i)
    data = enc.flush()
    dec = RansDecoder(data, tables)
    for v, i in chunks:
        assert np.array_equal(dec.decode(i), v)
    dec.finish()
    return data


def test_native_coder_is_available() -> None:
    assert rans.native_library() is not None, "a C++ compiler is expected on the test machine"


def test_roundtrip_with_escapes_and_extremes(tables: CdfTables) -> None:
    v, i = realistic(50000, 1, outliers=0.01)
    v[:4] = [MAX_ABS_VALUE, -MAX_ABS_VALUE, 0, 1]
    i[:4] = [0, 0, 59, 59]
    chunks = [(v[:7], i[:7]), (v[7:20000], i[7:20000]), (v[20000:20000], i[20000:20000]), (v[20000:], i[20000:])]
    roundtrip(tables, chunks)


def test_empty_stream(tables: CdfTables) -> None:
    data = roundtrip(tables, [])
    assert len(data) == 1 + 2 * 2 * rans.LANES


def test_native_and_python_streams_are_identical(tables: CdfTables, monkeypatch: pytest.MonkeyPatch) -> None:
    v, i = realistic(3001, 2, outliers=0.01)
    native = roundtrip(tables, [(v[:1000], i[:1000]), (v[1000:], i[1000:])])
    monkeypatch.setenv("HPCM_PURE_PYTHON_RANS", "1")
    assert rans.native_library() is None
    python = roundtrip(tables, [(v[:1000], i[:1000]), (v[1000:], i[1000:])])
    assert native == python


def test_size_is_close_to_ideal(tables: CdfTables) -> None:
    v, i = realistic(491_520, 3, outliers=0.0)
    data = roundtrip(tables, [(v, i)])
    ideal = ideal_bits(v, i, tables)
    assert 8 * len(data) <= ideal * 1.005
    assert 8 * len(data) >= ideal - 64


def test_escape_varints() -> None:
    values = np.array([0, -1, 1, 63, -64, 64, 8191, -8192, 8192, MAX_ABS_VALUE, -MAX_ABS_VALUE,
                       2**31 - 1, -(2**31)], dtype=np.int64)
    ok = np.abs(values) <= MAX_ABS_VALUE
    data = encode_escapes(values.astype(np.int32))
    with pytest.raises(BitstreamError):
        decode_escapes(data)  # the last two exceed the coder's range
    data = encode_escapes(values[ok].astype(np.int32))
    assert np.array_equal(decode_escapes(data), values[ok])
    for bad in (b"\x80", b"\xff\xff\xff\xff\xff\x01"):
        with pytest.raises(BitstreamError):
            decode_escapes(bad)


def test_truncated_and_garbled_streams_raise(tables: CdfTables) -> None:
    v, i = realistic(20000, 4, outliers=0.001)
    data = roundtrip(tables, [(v, i)])
    rng = np.random.default_rng(0)
    for cut in (0, 1, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(BitstreamError):
            dec = RansDecoder(data[:cut], tables)
            dec.decode(i)
            dec.finish()
    detected = 0
    for _ in range(50):
        garbled = bytearray(data)
        garbled[rng.integers(0, len(data))] ^= int(rng.integers(1, 256))
        try:
            dec = RansDecoder(bytes(garbled), tables)
            dec.decode(i)
            dec.finish()
        except BitstreamError:
            detected += 1
    # rANS has no redundancy of its own; most (not all) garbles are caught by the end-state check,
    # the container's CRC catches the rest
    assert detected >= 25


def test_invalid_input_is_refused(tables: CdfTables) -> None:
    enc = RansEncoder(tables)
    with pytest.raises(ValueError):
        enc.encode(np.array([1], np.int32), np.array([60], np.int32))
    with pytest.raises(ValueError):
        enc.encode(np.array([MAX_ABS_VALUE + 1], np.int64), np.array([0], np.int32))
    cdf, length, offset = quantized_cdf_tables(default_scale_table()[:3])
    broken = cdf.clone()
    broken[1, 2] = broken[1, 1]
    with pytest.raises(ValueError):
        CdfTables(broken, length, offset)
    with pytest.raises(ValueError):
        CdfTables(cdf, length + 100, offset)
