"""rANS coder: exact round trips of substreams (escapes included), native and Python implementations
and every thread count agree word for word, the native bucket search is ``scale_indexes`` and its
guard screen the vectorised one, size close to the ideal, corrupt streams raise BitstreamError;
streams of format 2 still decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcm.codec import rans
from hpcm.codec.guard import GuardWriter
from hpcm.codec.rans import (
    MAX_ABS_VALUE,
    STATE_WORDS,
    STEP_SUBSTREAMS,
    SUBSTREAM_SYMBOLS,
    CdfTables,
    Coder,
    RansDecoder,
    ScaleBuckets,
    SubstreamReader,
    decode_escapes,
    encode_escapes,
    ideal_bits,
    pack_substreams,
    substream_offsets,
)
from hpcm.errors import BitstreamError
from hpcm.models.cdf_tables import default_scale_table, quantized_cdf_tables, scale_indexes

from .format2 import format2_stream


@pytest.fixture(scope="module")
def tables() -> CdfTables:
    return CdfTables(*quantized_cdf_tables(default_scale_table()))


def realistic(n: int, seed: int, outliers: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values as float32, table indexes, scales) of n symbols with realistic scales."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(np.log(0.6), 1.1, n)).clip(0.05, 80.0).astype(np.float32)
    magnitude = rng.gamma(1 / 1.5, 1.0, n) ** (1 / 1.5)
    values = np.round(np.where(rng.random(n) < 0.5, -1, 1) * magnitude * scales)
    wild = rng.random(n) < outliers
    values[wild] += rng.integers(-100000, 100000, wild.sum())
    idx = scale_indexes(torch.from_numpy(scales), default_scale_table()).numpy()
    return values.astype(np.float32), idx, scales


def encode(tables: CdfTables, values: np.ndarray, offsets: np.ndarray | None = None, threads: int = 1, **kw) -> bytes:
    offsets = substream_offsets(values.size) if offsets is None else offsets
    return pack_substreams([Coder(threads).encode(values, tables, offsets, **kw)])


def decode(data: bytes, tables: CdfTables, offsets: np.ndarray, threads: int = 1, **kw) -> np.ndarray:
    reader = SubstreamReader(data)
    out = Coder(threads).decode(reader, reader.take(offsets.size - 1), offsets, tables, **kw)
    reader.finish()
    return out


def test_native_coder_is_available() -> None:
    assert rans.native_library() is not None, "a C++ compiler is expected on the test machine"


def test_substreams_cut_by_the_count_alone() -> None:
    assert substream_offsets(0).tolist() == [0] * (STEP_SUBSTREAMS + 1)
    assert substream_offsets(10).tolist() == [0, 2, 5, 7, 10]
    cut = substream_offsets(345_600)  # a 1920x1080 s3 step
    assert cut.size == 2 * STEP_SUBSTREAMS + 1 and cut[0] == 0 and cut[-1] == 345_600
    assert np.diff(cut).min() >= SUBSTREAM_SYMBOLS // STEP_SUBSTREAMS


def test_roundtrip_with_escapes_and_extremes(tables: CdfTables) -> None:
    values, idx, _ = realistic(2 * SUBSTREAM_SYMBOLS + 77, 1, outliers=0.01)
    offsets = substream_offsets(values.size)
    for end in offsets[1:]:  # extremes at the last symbols of each substream
        values[end - 4:end] = [MAX_ABS_VALUE, -MAX_ABS_VALUE, 0, 1]
        idx[end - 4:end] = [0, 59, 59, 0]
    data = encode(tables, values, indexes=idx)
    assert np.array_equal(decode(data, tables, offsets, indexes=idx), values)


def test_empty_step(tables: CdfTables) -> None:
    empty = np.zeros(0, np.float32)
    data = encode(tables, empty, indexes=np.zeros(0, np.int32))
    # count, and per substream its two counts and its initial state
    assert len(data) == 1 + STEP_SUBSTREAMS * (2 + 2 * STATE_WORDS)
    assert decode(data, tables, substream_offsets(0), indexes=np.zeros(0, np.int32)).size == 0


def test_thread_count_never_changes_the_words(tables: CdfTables) -> None:
    values, idx, scales = realistic(5 * SUBSTREAM_SYMBOLS + 3, 2, outliers=0.001)
    buckets = ScaleBuckets(default_scale_table())
    streams = {threads: encode(tables, values, indexes=idx, threads=threads) for threads in (1, 2, 7)}
    assert streams[1] == streams[2] == streams[7]
    offsets = substream_offsets(values.size)
    for threads in (1, 3):
        out = decode(streams[1], tables, offsets, scales=scales, buckets=buckets, threads=threads)
        assert np.array_equal(out, values)


def test_native_and_python_streams_are_identical(tables: CdfTables, monkeypatch: pytest.MonkeyPatch) -> None:
    values, idx, _ = realistic(3001, 3, outliers=0.01)
    offsets = np.array([0, 1000, 1001, 3001])  # substreams of other sizes than the codec cuts
    native = encode(tables, values, offsets, indexes=idx, threads=2)
    monkeypatch.setenv("HPCM_PURE_PYTHON_RANS", "1")
    assert rans.native_library() is None
    python = encode(tables, values, offsets, indexes=idx)
    assert native == python
    assert np.array_equal(decode(native, tables, offsets, indexes=idx), values)


def _hard_scales(table: torch.Tensor, seed: int) -> torch.Tensor:
    """Scales on, next to and between the bounds, outside the table, and not numbers."""
    bounds = table[:-1].float()
    g = torch.Generator().manual_seed(seed)
    near = torch.cat([bounds, torch.nextafter(bounds, torch.tensor(np.inf)), torch.nextafter(bounds, torch.tensor(0.0)),
                      bounds * (1 + 1e-5), bounds * (1 - 1e-5), bounds * (1 + 1.05e-5)])
    spread = torch.exp(torch.empty(200_000).uniform_(-30.0, 30.0, generator=g))
    special = torch.tensor([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, 1e-45, 3.4e38, -3e-38])
    return torch.cat([near, spread, -spread[:1000], special]).float()


@pytest.mark.parametrize("kind", ["codec", "irregular"])
def test_native_buckets_are_scale_indexes(kind: str) -> None:
    """Where floats tie a bound, at NaN, infinities, zeros, negatives and denormals; also for a table
    whose bounds crowd into one cell of the lookup table and span every exponent."""
    table = default_scale_table().float()
    if kind == "irregular":
        table = torch.cat([torch.tensor([1e-30, 1e-3, 0.5]), 1.0 + torch.arange(40) * 1e-6,
                           torch.tensor([1.01, 7.0, 3e4, 1e30])]).float()
    scales = _hard_scales(table, 0)
    native = Coder().bucket_indexes(scales, ScaleBuckets(table))
    assert torch.equal(native, scale_indexes(scales, table))


@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
def test_coding_from_scales_equals_coding_from_their_buckets(tables: CdfTables, epsilon: float) -> None:
    """The native pass that buckets, screens and settles scales itself writes the words of its bucket
    indexes, and lists exactly the positions and bits that the vectorised screen and guard.py's float64
    settling list (on, beside and between the bounds, at NaN, infinities, zeros and negatives)."""
    table = default_scale_table().float()
    scales = _hard_scales(table, 1)
    scales = scales[torch.randperm(scales.numel(), generator=torch.Generator().manual_seed(2))]
    values = np.random.default_rng(3).integers(-3, 4, scales.numel()).astype(np.float32)
    writer = GuardWriter(epsilon, table)
    idx = scale_indexes(scales, table)
    offsets = substream_offsets(values.size)
    given = Coder().encode(values, tables, offsets, indexes=idx.numpy())
    windows = writer.windows
    screened = Coder(threads=2).encode(values, tables, offsets, scales=scales.numpy(), buckets=ScaleBuckets(table),
                                       windows=windows)
    assert all(np.array_equal(a, b) for a, b in zip(given.words, screened.words))
    candidates = windows.candidates(scales, idx).numpy()
    positions, above = writer.settle(candidates, scales.numpy()[candidates])
    assert np.array_equal(screened.listed, positions)
    assert np.array_equal(screened.above, above)
    assert 0 < screened.listed.size < 0.01 * values.size and 0 < above.sum() < above.size


def test_size_is_close_to_ideal(tables: CdfTables) -> None:
    values, idx, _ = realistic(491_520, 4, outliers=0.0)
    data = encode(tables, values, indexes=idx)
    ideal = ideal_bits(values, idx, tables)
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
    # values of one byte each take a shorter path both ways: the same bytes as one at a time
    small = np.array([0, -1, 1, 63, -64, -5, 17], dtype=np.int32)
    data = encode_escapes(small)
    assert data == bytes(((2 * v) ^ (v >> 31)) & 0xFF for v in small.tolist())
    assert np.array_equal(decode_escapes(data), small)


def test_truncated_extended_and_garbled_streams_raise(tables: CdfTables) -> None:
    values, idx, _ = realistic(20000, 5, outliers=0.001)
    offsets = np.array([0, 7000, 20000])
    data = encode(tables, values, offsets, indexes=idx)
    for bad in (data[:0], data[:1], data[:5], data[: len(data) // 2], data[:-1], data + b"\x00", data + b"\x00\x00"):
        with pytest.raises(BitstreamError):
            decode(bad, tables, offsets, indexes=idx)
    with pytest.raises(BitstreamError, match="fewer substreams"):
        decode(data, tables, np.array([0, 100, 200, 20000]), indexes=idx)
    reader = SubstreamReader(data)
    reader.take(1)
    with pytest.raises(BitstreamError, match="more substreams"):
        reader.finish()
    rng = np.random.default_rng(0)
    detected = 0
    for _ in range(50):
        garbled = bytearray(data)
        garbled[rng.integers(0, len(data))] ^= int(rng.integers(1, 256))
        try:
            decode(bytes(garbled), tables, offsets, indexes=idx)
        except BitstreamError:
            detected += 1
    # rANS has no redundancy of its own; most (not all) garbles are caught by the end-state check,
    # the container's CRC catches the rest
    assert detected >= 25


def test_invalid_input_is_refused(tables: CdfTables, monkeypatch: pytest.MonkeyPatch) -> None:
    offsets = substream_offsets(1)
    for pure_python in ("0", "1"):
        monkeypatch.setenv("HPCM_PURE_PYTHON_RANS", pure_python)
        coder = Coder()
        with pytest.raises(ValueError, match="index"):
            coder.encode(np.array([1], np.float32), tables, offsets, indexes=np.array([60], np.int32))
        for value in (MAX_ABS_VALUE * 2.0, np.nan):
            with pytest.raises(ValueError, match="magnitude"):
                coder.encode(np.array([value], np.float32), tables, offsets, indexes=np.array([0], np.int32))
    cdf, length, offset = quantized_cdf_tables(default_scale_table()[:3])
    broken = cdf.clone()
    broken[1, 2] = broken[1, 1]
    with pytest.raises(ValueError):
        CdfTables(broken, length, offset)
    with pytest.raises(ValueError):
        CdfTables(cdf, length + 100, offset)


# ---------------------------------------------------------------------- format 2 (decoded only)
@pytest.mark.parametrize("pure_python", ["0", "1"])
def test_format2_streams_decode(tables: CdfTables, pure_python: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values, idx, _ = realistic(3000, 6, outliers=0.01)
    data = format2_stream(values, idx, tables)
    monkeypatch.setenv("HPCM_PURE_PYTHON_RANS", pure_python)
    decoder = RansDecoder(data, tables)
    assert np.array_equal(decoder.decode(idx[:1000]), values[:1000])
    assert np.array_equal(decoder.decode(idx[1000:]), values[1000:])
    decoder.finish()
    rng = np.random.default_rng(1)
    detected = 0
    for cut in (0, 1, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(BitstreamError):
            decoder = RansDecoder(data[:cut], tables)
            decoder.decode(idx)
            decoder.finish()
    for _ in range(30):
        garbled = bytearray(data)
        garbled[rng.integers(0, len(data))] ^= int(rng.integers(1, 256))
        try:
            decoder = RansDecoder(bytes(garbled), tables)
            decoder.decode(idx)
            decoder.finish()
        except BitstreamError:
            detected += 1
    assert detected >= 15
