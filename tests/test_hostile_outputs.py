"""Misused outputs: ``-o`` equal to an input, a device or a folder, a missing or unwritable folder,
an existing file's mode, temporary files a killed run left. Every command checks its output before
the work starts (``hpcm.files.check_output``) and writes it atomically (``atomic_output``)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcm.errors import OutputError
from hpcm.files import atomic_output, check_output
from hpcm.models import build_model
from hpcm.models.checkpoint import save_checkpoint
from hpcm.models.variants import VariantSpec

from .hostile import TINY_VARIANT, assert_clean_error, cli, leftovers, snapshot, write_image, write_variant


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(VariantSpec.from_dict(TINY_VARIANT), seed=0).eval()
    model.update()
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture()
def work(tmp_path: Path, tiny_checkpoint: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    images.mkdir()
    image = write_image(images / "a.png", 128, 128)
    checkpoint = tmp_path / "tiny.pth"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    return {"dir": tmp_path, "images": images, "image": image, "checkpoint": checkpoint,
            "variant": write_variant(tmp_path)}


def test_output_equal_to_an_input_is_refused_before_any_work(work: dict[str, Path]) -> None:
    before = snapshot(work["dir"])
    image, checkpoint = work["image"], work["checkpoint"]
    link = work["dir"] / "link.png"
    link.symlink_to(image)
    cases = [
        ("encode", image, "-c", checkpoint, "-o", image),
        ("encode", image, "-c", checkpoint, "-o", link),
        ("encode", image, "-c", checkpoint, "-o", checkpoint),
        ("convert", checkpoint, "--to", "phase2", "-o", checkpoint),
        ("train", work["images"], "-c", checkpoint, "--crop", "128", "-o", checkpoint),
        ("train", work["images"], "--variant", work["variant"], "--crop", "128", "-o", image),
    ]
    for args in cases:
        result = cli(*args)
        assert_clean_error(result.output, result.exit_code, r"also an input")
        assert "step 1" not in result.output, args
    link.unlink()
    assert snapshot(work["dir"]) == before and leftovers(work["dir"]) == []


def test_decode_over_its_bitstream_is_refused(work: dict[str, Path]) -> None:
    stream = work["dir"] / "a.hpcm"
    assert cli("encode", work["image"], "-c", work["checkpoint"], "-o", stream).exit_code == 0
    before = stream.read_bytes()
    result = cli("decode", stream, "-c", work["checkpoint"], "-o", stream)
    assert_clean_error(result.output, result.exit_code, r"also an input")
    assert stream.read_bytes() == before


def test_non_regular_targets_and_folders_are_refused(work: dict[str, Path]) -> None:
    fifo = work["dir"] / "pipe"
    os.mkfifo(fifo)
    for target, pattern in ((Path("/dev/null"), "not a regular file"), (fifo, "not a regular file"),
                            (work["images"], "is a (folder|directory)")):
        result = cli("encode", work["image"], "-c", work["checkpoint"], "-o", target)
        assert_clean_error(result.output, result.exit_code, pattern, usage=result.exit_code == 2)
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()


def test_train_checks_its_output_before_training(work: dict[str, Path]) -> None:
    for target, pattern in ((work["images"], "is a folder"), (work["dir"] / "missing" / "t.pth", "does not exist")):
        result = cli("train", work["images"], "--variant", work["variant"], "--steps", "1", "--batch-size", "1",
                     "--crop", "128", "-o", target)
        assert_clean_error(result.output, result.exit_code, pattern)
        assert "step 1" not in result.output


def test_existing_output_keeps_its_mode(work: dict[str, Path]) -> None:
    stream = work["dir"] / "a.hpcm"
    stream.write_bytes(b"old")
    stream.chmod(0o640)
    assert cli("encode", work["image"], "-c", work["checkpoint"], "-o", stream).exit_code == 0
    assert stream.stat().st_mode & 0o777 == 0o640 and stream.read_bytes() != b"old"


def test_stale_temporary_files_are_cleaned_but_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.bin.{int(dead.stdout)}.abc123.partial"
    live = tmp_path / f".out.bin.{os.getppid()}.def456.partial"
    stale.write_bytes(b"left by a killed run")
    live.write_bytes(b"another process is writing")
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and not stale.exists() and live.exists()


def test_unwritable_and_missing_folders_are_found_first(work: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        check_output(tmp_path / "missing" / "x.hpcm")
    report = cli("check", tmp_path / "no_export", "--report", tmp_path / "missing" / "r.json")
    assert_clean_error(report.output, report.exit_code, r"missing.*does not exist")
    read_only = Path("/proc/self")  # not writable even by root
    with pytest.raises(OutputError, match="cannot write into"):
        check_output(read_only / "x.hpcm")
    result = cli("encode", work["image"], "-c", work["checkpoint"], "-o", read_only / "x.hpcm")
    assert_clean_error(result.output, result.exit_code, r"cannot write into /proc/self")


def test_export_refuses_an_existing_file(work: dict[str, Path]) -> None:
    from click.testing import CliRunner

    from hpcm.cli.export_cmds import export_main

    target = work["dir"] / "file"
    target.write_text("keep me")
    result = CliRunner().invoke(export_main, ["--variant", str(work["variant"]), "-o", str(target)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert_clean_error(result.output, result.exit_code, "not a folder")
    assert target.read_text() == "keep me"


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.hpcm"
    target.write_bytes(b"previous result")
    with pytest.raises(OutputError, match=r"out\.hpcm: No space left on device"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"part")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_bytes() == b"previous result" and leftovers(tmp_path) == []
