import numpy as np
import pytest
import torch

from hpcm.codec.entropy import StreamDecoder, StreamEncoder
from hpcm.codec.guard import GuardReader, GuardWriter, ScreenWindows, nearest_boundary
from hpcm.codec.rans import CdfTables, ScaleBuckets, native_library
from hpcm.errors import BitstreamError
from hpcm.models.cdf_tables import default_scale_table, quantized_cdf_tables, scale_indexes


def _scales(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    table = default_scale_table()
    # log-uniform over the table, plus scales placed right on the boundaries
    s = torch.exp(torch.empty(n).uniform_(float(table[0].log()) - 0.5, float(table[-1].log()), generator=g))
    s[:200] = table[:-1].repeat(4)[:200] * (1 + 1e-7 * torch.randn(200, generator=g, dtype=torch.float64).float())
    return s.reshape(1, 4, n // 4 // 10, 10)


ON_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs a CUDA GPU")])


def _listed(writer: GuardWriter, scales: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A step's listing the way the codec's vectorised path makes it: screen, then settle."""
    table = writer.table.to(scales.device)
    candidates = writer.windows.candidates(scales, scale_indexes(scales, table)).cpu().numpy()
    return writer.settle(candidates, scales.reshape(-1).cpu().numpy()[candidates])


@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
def test_screen_keeps_every_scale_the_float64_rule_lists(epsilon: float):
    """Settling the screen's candidates lists what the float64 rule lists over every scale."""
    table = default_scale_table().float()
    g = torch.Generator().manual_seed(0)
    bounds = table[:-1]
    offsets = torch.tensor([0.0, 1e-7, 0.5, 0.99, 0.999999, 1.0, 1.000001, 1.01]) * epsilon
    s = torch.cat([(bounds[:, None] * (1 + offsets)).reshape(-1), (bounds[:, None] * (1 - offsets)).reshape(-1),
                   torch.exp(torch.empty(100_000).uniform_(-3.0, 4.5, generator=g))]).float()
    writer = GuardWriter(epsilon, table)
    nearest, distance = nearest_boundary(s, table)
    everywhere = np.flatnonzero(distance < epsilon)
    positions, above = _listed(writer, s)
    assert np.array_equal(positions, everywhere)
    assert np.array_equal(above, (s.double().numpy()[everywhere] > bounds.double().numpy()[nearest[everywhere]]))
    assert positions.size > 0


def test_screen_windows_hold_their_boundaries():
    table = default_scale_table().float()
    windows = ScreenWindows(table, 1e-5)
    bounds = table[:-1].numpy()
    assert (windows.near_low[:-1] < bounds).all() and (windows.near_high[1:] > bounds).all()
    assert windows.near_low[-1] == np.inf and windows.near_high[0] == -np.inf


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
@pytest.mark.parametrize("noise", [1e-6, 5e-6])
def test_guard_makes_noisy_decoders_rebuild_every_bucket(noise, device):
    """A decoder on either device rebuilds the encoder's buckets (its step tensors live on that device)."""
    table = default_scale_table().float()
    writer = GuardWriter(1e-5, table)
    steps = [_scales(40_000, seed).to(device) for seed in range(3)]
    for scales in steps:
        writer.add_step(*_listed(writer, scales))
    reader = GuardReader(writer.flush(), table)
    unguarded_flips = 0
    for seed, scales in enumerate(steps):
        g = torch.Generator().manual_seed(100 + seed)
        noisy = scales * (1 + noise * (2 * torch.rand(scales.shape, generator=g) - 1)).to(device)
        unguarded = scale_indexes(noisy, table.to(device))
        unguarded_flips += int((unguarded != scale_indexes(scales, table.to(device))).sum())
        guarded = reader.apply_step(unguarded, noisy)
        assert torch.equal(guarded, scale_indexes(scales, table.to(device)))
    reader.finish()
    assert unguarded_flips > 0  # the noise does flip buckets without the guard
    assert 0 < writer.listed < 0.01 * sum(s.numel() for s in steps)


def test_guard_off_lists_nothing():
    table = default_scale_table().float()
    writer = GuardWriter(0.0, table)
    assert writer.windows is None
    positions, above = writer.settle(np.arange(10), np.ones(10, np.float32))
    writer.add_step(positions, above)
    reader = GuardReader(writer.flush(), table)
    idx = scale_indexes(_scales(4_000, 0), table)
    assert torch.equal(reader.apply_step(idx, _scales(4_000, 0)), idx)


def test_corrupt_guard_streams_raise():
    table = default_scale_table().float()
    scales = _scales(4_000, 1)
    writer = GuardWriter(1e-5, table)
    writer.add_step(*_listed(writer, scales))
    data = writer.flush()
    idx = scale_indexes(scales, table)
    with pytest.raises(BitstreamError):
        GuardReader(data[:5], table)
    rng = np.random.default_rng(0)
    for _ in range(300):
        forged = bytearray(data)
        forged[rng.integers(len(forged))] ^= int(rng.integers(1, 256))
        try:
            reader = GuardReader(bytes(forged), table)
            out = reader.apply_step(idx, scales)
            reader.finish()
            assert out.shape == idx.shape
        except BitstreamError:
            pass


@pytest.mark.parametrize("noise", [1e-6, 5e-6])
def test_native_decoder_finds_the_guards_rows_from_noisy_scales(noise: float):
    """The native decoder's own copy of the guard's row rule (``guard_rows`` in rans_core.cpp): a step
    coded with the encoder's scales decodes with scales moved by up to ``noise`` (which flips buckets
    near the boundaries, scales right on them included), through the rows it finds, on 1 and 3 threads."""
    assert native_library() is not None, "a C++ compiler is expected on the test machine"
    table = default_scale_table().float()
    tables, buckets = CdfTables(*quantized_cdf_tables(table)), ScaleBuckets(table)
    scales = _scales(40_000, 4)
    g = torch.Generator().manual_seed(5)
    values = torch.round(scales * torch.randn(scales.shape, generator=g))
    noisy = scales * (1 + noise * (2 * torch.rand(scales.shape, generator=g) - 1))
    assert (scale_indexes(noisy, table) != scale_indexes(scales, table)).any()  # the noise does flip buckets
    with StreamEncoder(tables, buckets, GuardWriter(1e-5, table), threads=2) as encoder:
        encoder.add(values, scales=scales)
        data, guard = encoder.finish(), encoder.guard.flush()
    for threads in (1, 3):
        decoder = StreamDecoder(data, tables, buckets, GuardReader(guard, table, steps=1), threads=threads)
        assert torch.equal(decoder.decode(scales.shape, scales=noisy), values)
        decoder.finish()
