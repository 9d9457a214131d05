import numpy as np
import pytest
import torch

from hpcm.models.cdf_tables import default_scale_table, scale_indexes
from hpcm.errors import BitstreamError
from hpcm.codec.guard import GuardReader, GuardWriter


def _scales(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    table = default_scale_table()
    # log-uniform over the table, plus scales placed right on the boundaries
    s = torch.exp(torch.empty(n).uniform_(float(table[0].log()) - 0.5, float(table[-1].log()), generator=g))
    s[:200] = table[:-1].repeat(4)[:200] * (1 + 1e-7 * torch.randn(200, generator=g, dtype=torch.float64).float())
    return s.reshape(1, 4, n // 4 // 10, 10)


ON_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs a CUDA GPU")])


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
@pytest.mark.parametrize("noise", [1e-6, 5e-6])
def test_guard_makes_noisy_decoders_rebuild_every_bucket(noise, device):
    """A decoder on either device rebuilds the encoder's buckets (its step tensors live on that device)."""
    table = default_scale_table().to(device)
    writer = GuardWriter(1e-5)
    steps = [_scales(40_000, seed).to(device) for seed in range(3)]
    for scales in steps:
        writer.add_step(scales, table)
    reader = GuardReader(writer.flush())
    unguarded_flips = 0
    for seed, scales in enumerate(steps):
        g = torch.Generator().manual_seed(100 + seed)
        noisy = scales * (1 + noise * (2 * torch.rand(scales.shape, generator=g) - 1)).to(device)
        unguarded = scale_indexes(noisy, table)
        unguarded_flips += int((unguarded != scale_indexes(scales, table)).sum())
        guarded = reader.apply_step(unguarded, noisy, table)
        assert torch.equal(guarded, scale_indexes(scales, table))
    reader.finish()
    assert unguarded_flips > 0  # the noise does flip buckets without the guard
    assert 0 < writer.listed < 0.01 * sum(s.numel() for s in steps)


def test_guard_off_lists_nothing():
    table = default_scale_table()
    writer = GuardWriter(0.0)
    writer.add_step(_scales(4_000, 0), table)
    reader = GuardReader(writer.flush())
    idx = scale_indexes(_scales(4_000, 0), table)
    assert torch.equal(reader.apply_step(idx, _scales(4_000, 0), table), idx)


def test_corrupt_guard_streams_raise():
    table = default_scale_table()
    scales = _scales(4_000, 1)
    writer = GuardWriter(1e-5)
    writer.add_step(scales, table)
    data = writer.flush()
    idx = scale_indexes(scales, table)
    with pytest.raises(BitstreamError):
        GuardReader(data[:5])
    rng = np.random.default_rng(0)
    for _ in range(300):
        forged = bytearray(data)
        forged[rng.integers(len(forged))] ^= int(rng.integers(1, 256))
        try:
            reader = GuardReader(bytes(forged))
            out = reader.apply_step(idx, scales, table)
            reader.finish()
            assert out.shape == idx.shape
        except BitstreamError:
            pass
