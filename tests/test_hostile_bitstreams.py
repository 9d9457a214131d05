"""Hostile bitstreams: endless devices, oversized files, crafted headers with valid CRCs that claim
huge images, and a random-mutation fuzz whose CRCs are recomputed after every mutation. Each ends in
a one-line error within bounded memory; none runs the networks at a size the pixel limit refuses."""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcm.codec import Codec, CodecParameters, bitstream
from hpcm.codec.bitstream import Header, pack, unpack
from hpcm.codec.entropy import StreamEncoder
from hpcm.errors import HPCMError
from hpcm.models.checkpoint import save_checkpoint
from hpcm.runtime.runners.eager import EagerRunner

from .hostile import assert_clean_error, cli, run_limited, write_image, write_variant

FUZZ_SECONDS = 20.0
FUZZ_MIN_CASES = 100  # run at least this many whatever the machine's speed, so the checks below are deterministic
FUZZ_MAX_PIXELS = 256 * 256  # mutated headers may claim any size; keep the networks small


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_model, one_thread) -> dict[str, Path]:
    """A tiny checkpoint, an image and its stream."""
    folder = tmp_path_factory.mktemp("streams")
    checkpoint = save_checkpoint(tiny_model, folder / "tiny.pth")
    image = write_image(folder / "image.png", 40, 56)
    stream = folder / "image.hpcm"
    result = cli("encode", image, "-c", checkpoint, "-o", stream)
    assert result.exit_code == 0, result.output
    return {"checkpoint": checkpoint, "image": image, "stream": stream}


def reseal(header: Header, streams: list[bytes]) -> bytes:
    """Pack with valid CRCs, as a forger (or a buggy encoder) would."""
    return pack(header, streams)


def recompute_crcs(data: bytes) -> bytes:
    """``data`` with every CRC the header still locates rewritten to match (a mutation then passes the CRCs)."""
    out = bytearray(data)
    if len(out) < 6:
        return bytes(out)
    pos = 6 + out[5] + 3 * bitstream.DIGEST_BYTES + 12
    if pos >= len(out):
        return bytes(out)
    count = out[pos]
    pos += 1
    table, payload = pos, pos + 8 * count + 4
    if count > bitstream.MAX_STREAMS or payload > len(out):
        return bytes(out)
    for i in range(count):
        length = struct.unpack_from("<I", out, table + 8 * i)[0]
        struct.pack_into("<I", out, table + 8 * i + 4, zlib.crc32(bytes(out[payload:payload + length])))
        payload += length
    struct.pack_into("<I", out, table + 8 * count, zlib.crc32(bytes(out[: table + 8 * count])))
    return bytes(out)


def test_endless_devices_end_promptly(files: dict[str, Path]) -> None:
    for device in ("/dev/zero", "/dev/urandom"):
        for args in (["inspect", device], ["decode", device, "-o", files["stream"].parent / "x.png"]):
            run = run_limited(args, timeout=60)
            run.clean_error(rf"{device}.*not an HPCM bitstream")
            assert run.peak_mb < 1500, (args, run.peak_mb)


def test_oversized_file_is_refused_without_reading_it(files: dict[str, Path], tmp_path: Path) -> None:
    big = tmp_path / "big.hpcm"
    big.write_bytes(files["stream"].read_bytes())
    os.truncate(big, 8 << 30)  # sparse: 8 GiB that a whole-file read would try to hold
    run = run_limited(["inspect", big], timeout=60)
    run.clean_error(r"big\.hpcm.*8589934592 bytes.*describes")
    assert run.peak_mb < 1500, run.peak_mb


def test_huge_claim_with_valid_crcs_is_refused_before_the_networks(files: dict[str, Path], tmp_path: Path) -> None:
    header, streams = unpack(files["stream"].read_bytes())
    forged = tmp_path / "huge.hpcm"
    forged.write_bytes(reseal(Header(**{**header.__dict__, "height": 60000, "width": 60000,
                                        "pad_bottom": 32, "pad_right": 32}), streams))
    run = run_limited(["decode", forged, "-c", files["checkpoint"], "-o", tmp_path / "huge.png"])
    run.clean_error(r"huge\.hpcm.*60000x60000.*--max-pixels")
    assert run.peak_mb < 1500, run.peak_mb
    assert not (tmp_path / "huge.png").exists()


def test_claim_at_the_limit_with_a_forged_valid_z_stream_stays_bounded(files: dict[str, Path], tiny_model,
                                                                      tmp_path: Path) -> None:
    """A forger codes an all-zero z for a 2048x2048 claim (the default limit): it passes every check that
    can run before the networks, whose memory the pixel limit bounds; the y stream then fails."""
    header, streams = unpack(files["stream"].read_bytes())
    z = StreamEncoder(CodecParameters.from_model(tiny_model).tables.z)
    channels, side = tiny_model.N, 2048 // 64
    z.add(torch.zeros(channels * side * side), indexes=torch.arange(channels).repeat_interleave(side * side))
    forged = tmp_path / "forged.hpcm"
    forged.write_bytes(reseal(Header(**{**header.__dict__, "height": 2048, "width": 2048, "pad_bottom": 0,
                                        "pad_right": 0}), [z.finish(), streams[1], streams[2]]))
    run = run_limited(["decode", forged, "-c", files["checkpoint"], "-o", tmp_path / "forged.png"],
                      env={"OMP_NUM_THREADS": "1"})
    run.clean_error(r"forged\.hpcm.*rANS")
    assert run.peak_mb < 2500, run.peak_mb
    over = run_limited(["decode", forged, "-c", files["checkpoint"], "-o", tmp_path / "forged.png",
                        "--max-pixels", str(2048 * 2047)])
    over.clean_error(r"2048x2048.*4,194,304 pixels.*4,192,256 pixels")
    assert not (tmp_path / "forged.png").exists()


def test_memory_exhaustion_within_the_limit_is_a_clean_error(tmp_path: Path) -> None:
    """An image within the pixel limit on a machine with less memory than its networks need (an
    address-space limit of 1.5 GiB for a 2048x1024 image): a one-line error, not the allocator's traceback."""
    from PIL import Image

    image = tmp_path / "flat.png"
    Image.new("RGB", (2048, 1024), (120, 130, 140)).save(image)
    run = run_limited(["encode", image, "--variant", write_variant(tmp_path), "-o", tmp_path / "flat.hpcm"],
                      env={"OMP_NUM_THREADS": "1"}, limit=3 << 29)
    run.clean_error(r"not enough memory .* 2048x1024.*--max-pixels")
    assert not (tmp_path / "flat.hpcm").exists()


def _mutate(data: bytes, rng: np.random.Generator, header_bytes: int) -> bytes:
    out = bytearray(data)
    kind = int(rng.integers(6))
    at = int(rng.integers(header_bytes)) if kind < 3 else int(rng.integers(header_bytes, len(out)))
    if kind in (0, 3):  # flip bits of one byte
        out[at] ^= int(rng.integers(1, 256))
    elif kind in (1, 4):  # overwrite a run with random bytes
        n = int(rng.integers(1, 9))
        out[at:at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:  # a header field set to an extreme value
        out[at:at + 4] = rng.choice([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\x00\x00"])
    else:  # cut or grow the payload
        if rng.random() < 0.5:
            del out[at:at + int(rng.integers(1, 64))]
        else:
            out[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return bytes(out)


@pytest.mark.filterwarnings("ignore::hpcm.codec.BackendMismatchWarning")  # mutated backend digests
def test_fuzz_mutated_streams_with_recomputed_crcs(files: dict[str, Path], tiny_model, one_thread) -> None:
    data = files["stream"].read_bytes()
    _, streams = unpack(data)
    header_bytes = len(data) - sum(map(len, streams))
    codec = Codec(EagerRunner(tiny_model).activate(), CodecParameters.from_model(tiny_model),
                  max_pixels=FUZZ_MAX_PIXELS)
    rng = np.random.default_rng(20240915)
    outcomes: Counter = Counter()
    start = time.perf_counter()
    cases = 0
    while cases < FUZZ_MIN_CASES or time.perf_counter() - start < FUZZ_SECONDS:
        mutated = recompute_crcs(_mutate(data, rng, header_bytes))
        cases += 1
        try:
            codec.decompress(mutated)
            outcomes["decoded"] += 1
        except HPCMError as exc:  # anything else is a bug and fails the test with its traceback
            assert "\n" not in str(exc), str(exc)
            outcomes[type(exc).__name__] += 1
    elapsed = time.perf_counter() - start
    print(f"\nfuzz: {cases} mutated streams with recomputed CRCs in {elapsed:.1f} s "
          f"({cases / elapsed:.0f}/s): {dict(outcomes)}")
    assert outcomes["BitstreamError"] > 0 and sum(outcomes.values()) == cases


def test_inspect_and_decode_report_truncation_in_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    data = files["stream"].read_bytes()
    for cut in (0, 3, 10, 40, len(data) - 1):
        path = tmp_path / f"cut{cut}.hpcm"
        path.write_bytes(data[:cut])
        result = cli("inspect", path)
        assert_clean_error(result.output, result.exit_code, rf"cut{cut}\.hpcm")
    result = cli("decode", tmp_path / "cut40.hpcm", "-c", files["checkpoint"], "-o", tmp_path / "out.png")
    assert_clean_error(result.output, result.exit_code, r"cut40\.hpcm.*truncated")
    assert not (tmp_path / "out.png").exists()
