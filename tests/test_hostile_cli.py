"""Misused options and missing inputs: refused up front, in one line, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from .hostile import assert_clean_error, cli


@pytest.mark.parametrize("args,option", [
    (["mismatch", "--limit", "0"], "--limit"),
    (["mismatch", "--limit", "-3"], "--limit"),
    (["mismatch", "--crop", "0"], "--crop"),
    (["mismatch", "--crop", "-64"], "--crop"),
    (["check", "EXPORT", "--limit", "0"], "--limit"),
    (["encode", "IMAGE", "-o", "x.hpcm", "--max-pixels", "-1"], "--max-pixels"),
])
def test_impossible_options_are_refused(args: list[str], option: str, tmp_path: Path) -> None:
    args = [str(tmp_path / a) if a in ("EXPORT", "IMAGE") else a for a in args]
    result = cli(*args)
    assert_clean_error(result.output, result.exit_code, option, usage=True)


def test_missing_export_folder_and_manifest(tmp_path: Path) -> None:
    for command in ("build", "check"):
        result = cli(command, tmp_path)
        assert_clean_error(result.output, result.exit_code, r"manifest\.json does not exist")
        result = cli(command, tmp_path / "absent")
        assert_clean_error(result.output, result.exit_code, r"absent")


def test_missing_inputs_name_themselves(tmp_path: Path) -> None:
    for args, pattern in ((["encode", tmp_path / "nope.png", "-o", tmp_path / "x.hpcm"], r"nope\.png"),
                          (["decode", tmp_path / "nope.hpcm", "-o", tmp_path / "x.png"], r"nope\.hpcm"),
                          (["info", "-c", tmp_path / "nope.pth"], r"nope\.pth does not exist"),
                          (["info", "-c", "/dev/null"], r"/dev/null is not a regular file")):
        result = cli(*args)
        assert_clean_error(result.output, result.exit_code, pattern)
