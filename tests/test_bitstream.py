"""Container parsing: every corruption is a BitstreamError, found before any network runs."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
import torch

from hpcm.codec import BackendMismatchWarning, Codec, bitstream
from hpcm.codec.bitstream import Header, pack, unpack
from hpcm.errors import BitstreamError
from hpcm.models import build_model
from hpcm.runtime.session import eager_codec


@pytest.fixture(scope="module")
def codec() -> Codec:
    m = build_model("phase2", seed=0).eval()
    m.update()
    return eager_codec(m)


@pytest.fixture(scope="module")
def encoded(codec: Codec) -> bytes:
    gen = torch.Generator().manual_seed(0)
    return codec.compress(torch.rand(1, 3, 40, 56, generator=gen)).data


def header(**changes) -> Header:
    fields = dict(variant="phase2", weights_digest=b"w" * 8, tables_digest=b"t" * 8, backend_digest=b"b" * 8,
                  height=20, width=30, pad_bottom=108, pad_right=98)
    fields.update(changes)
    return Header(**fields)


def reseal(data: bytes, hdr: Header) -> bytes:
    """Re-pack with valid CRCs, as a forger (or a buggy encoder) would."""
    return pack(hdr, unpack(data)[1])


def test_pack_unpack_roundtrip() -> None:
    streams = [b"abc", b"", b"\x00" * 100]
    h = header()
    assert unpack(pack(h, streams)) == (h, streams)


def test_pack_refuses_invalid_headers() -> None:
    for bad in (header(height=0), header(width=bitstream.MAX_SIDE + 1), header(weights_digest=b"x"),
                header(variant="x" * 100)):
        with pytest.raises(ValueError):
            pack(bad, [b""])
    with pytest.raises(ValueError):
        pack(header(), [])


def test_clear_messages(encoded: bytes) -> None:
    with pytest.raises(BitstreamError, match="magic"):
        unpack(b"JUNK" + encoded[4:])
    with pytest.raises(BitstreamError, match="version"):
        unpack(encoded[:4] + b"\x63" + encoded[5:])
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(encoded[:-1])
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(encoded[:10])
    with pytest.raises(BitstreamError):
        unpack(encoded + b"\x00")
    with pytest.raises(BitstreamError):
        unpack("not bytes")  # type: ignore[arg-type]


def test_random_mutations_are_rejected_quickly(codec: Codec, encoded: bytes) -> None:
    rng = np.random.default_rng(1234)
    decoded = rejected = 0
    start = time.perf_counter()
    for case in range(1200):
        data = bytearray(encoded)
        kind = case % 4
        if kind == 0:  # flip bits in one byte
            data[rng.integers(len(data))] ^= int(rng.integers(1, 256))
        elif kind == 1:  # truncate
            data = data[: rng.integers(0, len(data))]
        elif kind == 2:  # overwrite a run with random bytes
            at = int(rng.integers(len(data)))
            n = int(rng.integers(1, 9))
            run = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            data[at:at + n] = run
            if bytes(data) == encoded:
                continue
        else:  # insert or delete bytes
            at = int(rng.integers(len(data)))
            if rng.random() < 0.5:
                data[at:at] = rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8).tobytes()
            else:
                del data[at:at + int(rng.integers(1, 5))]
        t0 = time.perf_counter()
        try:
            codec.decompress(bytes(data))
            decoded += 1
        except BitstreamError:
            rejected += 1
        assert time.perf_counter() - t0 < 5.0
    assert rejected >= 1000
    assert time.perf_counter() - start < 60.0


def test_forged_payloads_decode_or_raise(codec: Codec, encoded: bytes) -> None:
    """Valid CRCs around a garbled y or guard stream: the rANS end-state checks catch it with a one-line
    BitstreamError, or what decodes is an image of the header's size in [0, 1]; any other exception fails."""
    hdr, streams = unpack(encoded)
    rng = np.random.default_rng(7)
    for stream in (1, 2):
        refused = 0
        for _ in range(3):
            forged = [bytearray(s) for s in streams]
            forged[stream][rng.integers(len(forged[stream]))] ^= int(rng.integers(1, 256))
            try:
                x_hat = codec.decompress(pack(hdr, [bytes(s) for s in forged])).x_hat
            except BitstreamError as exc:
                assert "\n" not in str(exc)
                refused += 1
            else:
                assert x_hat.shape == (1, 3, hdr.height, hdr.width) and 0 <= x_hat.min() <= x_hat.max() <= 1
        # a changed rANS word or guard entry desynchronises the y decoder, whose end state then differs
        assert refused >= 2, f"only {refused} of 3 garbled copies of stream {stream} were refused"


def test_oversized_claims_are_rejected_before_networks(codec: Codec, encoded: bytes) -> None:
    hdr, _ = unpack(encoded)
    forged = reseal(encoded, Header(**{**hdr.__dict__, "height": 60000 - hdr.pad_bottom,
                                       "width": 60000 - hdr.pad_right}))
    t0 = time.perf_counter()
    with pytest.raises(BitstreamError, match="too short|alignment"):
        codec.decompress(forged)
    assert time.perf_counter() - t0 < 1.0
    bad_pad = reseal(encoded, Header(**{**hdr.__dict__, "pad_bottom": hdr.pad_bottom + 1}))
    with pytest.raises(BitstreamError, match="padding"):
        codec.decompress(bad_pad)


def test_other_weights_fail_clearly(encoded: bytes) -> None:
    other = build_model("phase2", seed=1).eval()
    other.update()
    with pytest.raises(BitstreamError, match="different model weights"):
        eager_codec(other).decompress(encoded)
    baseline = build_model("baseline", seed=0).eval()
    baseline.update()
    with pytest.raises(BitstreamError, match="variant"):
        eager_codec(baseline).decompress(encoded)


def test_other_backend_warns(codec: Codec, encoded: bytes) -> None:
    hdr, _ = unpack(encoded)
    forged = reseal(encoded, Header(**{**hdr.__dict__, "backend_digest": b"\x00" * 8}))
    with pytest.warns(BackendMismatchWarning):
        x_hat = codec.decompress(forged).x_hat
    assert x_hat.shape == (1, 3, hdr.height, hdr.width)


def test_header_crc_covers_every_header_byte(encoded: bytes) -> None:
    _, streams = unpack(encoded)
    head_len = len(encoded) - sum(len(s) for s in streams)
    (crc,) = struct.unpack("<I", encoded[head_len - 4: head_len])
    assert zlib.crc32(encoded[: head_len - 4]) == crc


def test_format_versions(encoded: bytes) -> None:
    """Streams are written in the current format; a header of every readable format parses as that
    format (the codec picks the decoder by it), others are refused naming the readable ones."""
    hdr, streams = unpack(encoded)
    assert hdr.version == bitstream.FORMAT_VERSION
    with pytest.raises(ValueError, match="format"):
        pack(Header(**{**hdr.__dict__, "version": 2}), streams)
    head_len = len(encoded) - sum(len(s) for s in streams)
    for version in (*bitstream.READABLE_VERSIONS, 1, bitstream.FORMAT_VERSION + 1):
        head = bytearray(encoded[:head_len - 4])
        head[4] = version
        data = bytes(head) + struct.pack("<I", zlib.crc32(bytes(head))) + encoded[head_len:]
        if version in bitstream.READABLE_VERSIONS:
            assert unpack(data)[0].version == version
        else:
            with pytest.raises(BitstreamError, match="version .*reads 2, 3"):
                unpack(data)
