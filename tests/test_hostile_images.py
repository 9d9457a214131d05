"""Hostile images: bombs, degenerate shapes, truncated data, frames and orientation, bad files in a
folder. Every image reaches the codec through ``hpcm.codec.images``; each case ends in a one-line
error or a notice, within bounded memory, and writes nothing when it fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpcm.codec.images import load_folder, load_image
from hpcm.errors import ImageError

from .hostile import (assert_clean_error, cli, leftovers, png_bomb, png_with_short_data, run_limited, snapshot,
                      write_image, write_variant)


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return write_variant(tmp_path)


def test_decompression_bomb_is_refused_by_the_pixel_limit(tmp_path: Path, tiny: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png", 12000, 12000)  # 144 Mpx in a few hundred KB
    assert bomb.stat().st_size < 1 << 20
    run = run_limited(["encode", bomb, "-o", tmp_path / "bomb.hpcm", "--variant", tiny])
    message = run.clean_error(r"12000x12000.*--max-pixels")
    assert "bomb.png" in message
    assert run.peak_mb < 1500, run.peak_mb
    assert not (tmp_path / "bomb.hpcm").exists() and leftovers(tmp_path) == []


def test_pillows_own_bomb_error_is_one_line(tmp_path: Path, tiny: Path) -> None:
    bomb = png_bomb(tmp_path / "huge.png", 20000, 20000)  # beyond Pillow's own refusal threshold
    result = cli("encode", bomb, "-o", tmp_path / "huge.hpcm", "--variant", tiny)
    assert_clean_error(result.output, result.exit_code, r"huge\.png.*pixels")


def test_degenerate_shape_is_refused_with_its_padding_named(tmp_path: Path, tiny: Path) -> None:
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((2, 65536, 3), dtype=np.uint8)).save(strip)
    run = run_limited(["encode", strip, "-o", tmp_path / "strip.hpcm", "--variant", tiny, "--max-pixels", "1000000"])
    run.clean_error(r"65536x2.*padded to 65536x128.*--max-pixels")
    assert run.peak_mb < 1500, run.peak_mb


def test_pixel_limit_from_the_environment_names_both_settings(tmp_path: Path, tiny: Path) -> None:
    image = write_image(tmp_path / "small.png", 48, 64)
    run = run_limited(["encode", image, "-o", tmp_path / "small.hpcm", "--variant", tiny],
                      env={"HPCM_MAX_PIXELS": "10000"})  # the image fits, its padding to 128x128 does not
    run.clean_error(r"small\.png: 64x48, padded to 128x128.*16,384 pixels.*10,000 pixels"
                    r".*--max-pixels.*HPCM_MAX_PIXELS")
    bad = cli("encode", image, "-o", tmp_path / "small.hpcm", "--variant", tiny, "--max-pixels", "0")
    assert_clean_error(bad.output, bad.exit_code, "--max-pixels", usage=True)


def test_truncated_images_are_refused(tmp_path: Path) -> None:
    whole = write_image(tmp_path / "whole.png", 64, 48)
    data = whole.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    short = png_with_short_data(tmp_path / "short.png", 64, 48)
    ppm = write_image(tmp_path / "whole.ppm", 64, 48)
    cut_ppm = tmp_path / "cut.ppm"
    cut_ppm.write_bytes(ppm.read_bytes()[:-100])
    for path in (cut, short, cut_ppm):
        with pytest.raises(ImageError, match=r"truncated|cut short") as caught:
            load_image(path)
        assert path.name in str(caught.value) and "\n" not in str(caught.value)
    result = cli("encode", short, "-o", tmp_path / "short.hpcm")
    assert_clean_error(result.output, result.exit_code, r"short\.png.*(truncated|cut short)")
    assert not (tmp_path / "short.hpcm").exists()


def test_frames_and_orientation_are_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = [Image.fromarray(np.full((32, 40, 3), 60 * i, dtype=np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tiff", save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING", logger="hpcm"):
        for name in ("anim.gif", "pages.tiff"):
            caplog.clear()
            x = load_image(tmp_path / name)
            assert x.shape == (1, 3, 32, 40)
            assert re.search(rf"{name}.*3 frames.*first", caplog.text), caplog.text
        # EXIF orientation 6: the stored 32x40 pixels are shown rotated, as 40x32
        exif = Image.Exif()
        exif[0x0112] = 6
        write_image(tmp_path / "turned.jpg", 32, 40, exif=exif.tobytes())
        caplog.clear()
        x = load_image(tmp_path / "turned.jpg")
    assert x.shape == (1, 3, 40, 32)
    assert "EXIF orientation" in caplog.text


def test_one_bad_image_in_a_folder_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a_good.png", 64, 64)
    (folder / "b_text.png").write_text("not an image")
    png_with_short_data(folder / "c_short.png", 64, 64)
    png_bomb(folder / "d_bomb.png", 20000, 20000)
    write_image(folder / "e_good.png", 64, 64, seed=2)
    with caplog.at_level("WARNING", logger="hpcm"):
        images = load_folder(folder, limit=5, crop=32)
    assert [name for name, _ in images] == ["a_good.png", "e_good.png"]
    for bad in ("b_text.png", "c_short.png", "d_bomb.png"):
        assert f"skipping {folder / bad}" in caplog.text, caplog.text


def test_mismatch_skips_a_bad_image(tmp_path: Path, tiny: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bad.png").write_text("not an image")
    write_image(folder / "good.png", 48, 48)
    out = tmp_path / "report.json"
    result = cli("mismatch", "--variant", tiny, "--images", folder, "--limit", "2", "--crop", "32", "-o", out)
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and "bad.png" in result.output
    assert [entry["image"] for entry in json.loads(out.read_text())["images"]] == ["good.png"]


def test_train_skips_a_bad_image(tmp_path: Path, tiny: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bad.png").write_text("not an image")
    png_bomb(folder / "bomb.png", 20000, 20000)
    write_image(folder / "good.png", 128, 128)
    write_image(folder / "small.png", 64, 64)
    before = snapshot(folder)
    result = cli("train", folder, "--variant", tiny, "--steps", "1", "--batch-size", "1", "--crop", "128",
                 "-o", tmp_path / "t.pth")
    assert result.exit_code == 0, result.output
    assert "bad.png" in result.output and "bomb.png" in result.output
    assert "1 of 2 training images are smaller than 128x128 (--crop) and are left out" in result.output
    assert snapshot(folder) == before

