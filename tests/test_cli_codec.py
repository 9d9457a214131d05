"""``hpcm encode`` / ``decode`` / ``inspect`` / ``mismatch`` on Kodak crops: input policy, atomic
outputs, errors without tracebacks."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hpcm.cli import main
from hpcm.codec.bitstream import FORMAT_VERSION
from hpcm.config import default_image_folder

KODAK = default_image_folder()


@pytest.fixture(scope="module")
def kodak_crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = KODAK / "kodim23.png"
    if not source.is_file():
        pytest.skip(f"Kodak images not found at {KODAK}")
    out = tmp_path_factory.mktemp("kodak") / "kodim23_crop.png"
    with Image.open(source) as im:
        # an odd-sized crop keeps the CPU test short and exercises padding
        im.crop((300, 200, 500, 336)).save(out)
    return out


def run(*args: str):  # noqa: ANN201
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


def write_png16(path: Path, h: int, w: int) -> None:
    arr = np.random.default_rng(0).integers(0, 65535, (h, w, 3))
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_encode_decode_roundtrip(kodak_crop: Path, tmp_path: Path) -> None:
    stream, png = tmp_path / "a.hpcm", tmp_path / "a.png"
    enc = run("encode", kodak_crop, "-o", stream)
    assert enc.exit_code == 0, enc.output
    assert "bpp" in enc.output and "untrained weights give meaningless rate-distortion" in enc.output
    dec = run("decode", stream, "-o", png, "--reference", kodak_crop)
    assert dec.exit_code == 0, dec.output
    with Image.open(png) as im, Image.open(kodak_crop) as ref:
        assert im.size == ref.size and im.mode == "RGB"
        mse = np.mean((np.asarray(im, dtype=np.float64) - np.asarray(ref, dtype=np.float64)) ** 2)
    # the encoder's own reconstruction is the decoder's image: both print its PSNR against the original
    psnr = re.compile(r"PSNR (\d+\.\d+) dB")
    assert psnr.search(enc.output).group(1) == psnr.search(dec.output).group(1) == f"{10 * np.log10(255**2 / mse):.2f}"
    info = json.loads(run("inspect", stream).output)
    assert (info["width"], info["height"]) == (200, 136) and info["variant"] == "phase2"
    assert info["format_version"] == FORMAT_VERSION
    assert leftovers(tmp_path) == []


def test_input_policy(kodak_crop: Path, tmp_path: Path) -> None:
    with Image.open(kodak_crop) as im:
        small = im.crop((0, 0, 40, 24))
        small.convert("L").save(tmp_path / "gray.png")
        rgba = small.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(tmp_path / "rgba.png")
    gray = run("encode", tmp_path / "gray.png", "-o", tmp_path / "gray.hpcm")
    assert gray.exit_code == 0 and "grayscale" in gray.output
    alpha = run("encode", tmp_path / "rgba.png", "-o", tmp_path / "rgba.hpcm")
    assert alpha.exit_code == 0 and "alpha channel" in alpha.output
    write_png16(tmp_path / "deep.png", 8, 8)
    deep = run("encode", tmp_path / "deep.png", "-o", tmp_path / "deep.hpcm")
    assert deep.exit_code == 1 and "8 bits" in deep.output and not (tmp_path / "deep.hpcm").exists()


def test_errors_are_messages_and_leave_nothing_behind(kodak_crop: Path, tmp_path: Path) -> None:
    missing = run("encode", tmp_path / "nope.png", "-o", tmp_path / "x.hpcm")
    assert missing.exit_code == 1 and "no such file" in missing.output
    (tmp_path / "text.png").write_text("not an image")
    junk = run("encode", tmp_path / "text.png", "-o", tmp_path / "x.hpcm")
    assert junk.exit_code == 1 and "not a readable image" in junk.output
    (tmp_path / "bad.hpcm").write_bytes(b"HPCM\x01garbage")
    bad = run("decode", tmp_path / "bad.hpcm", "-o", tmp_path / "bad.png")
    assert bad.exit_code == 1 and "Error" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "x.hpcm").exists()
    assert leftovers(tmp_path) == []


def test_mismatch_reports_json(tmp_path: Path) -> None:
    out = tmp_path / "mismatch.json"
    result = run("mismatch", "--limit", "1", "--crop", "64", "--images", tmp_path / "absent", "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["reference"] == "cpu-float32"
    steps = report["images"][0]["steps"]["cpu-float64"]
    assert len(steps) == 11 and all(s["mismatches"] >= 0 for s in steps)
    assert report["totals"]["cpu-float64"]["symbols"] == sum(s["symbols"] for s in steps)
