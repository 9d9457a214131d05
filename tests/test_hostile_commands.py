"""Hostile use of the evaluation commands (``eval``, ``plot``, ``bench``, ``mismatch``): no command
writes over one of its inputs or over another of its own outputs (``hpcm.files.check_outputs``),
eval's row journal is keyed by image content and written by one process at a time, every option is
checked before any work, and work done in a child process fails in one line (``hpcm.child``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcm.child import ChildError, run_child
from hpcm.errors import ConfigError
from hpcm.evaluation.results import row_paths
from hpcm.files import exclusive
from hpcm.models import build_model
from hpcm.models.variants import VariantSpec

from .hostile import TINY_VARIANT, assert_clean_error, cli, leftovers, snapshot, write_image, write_variant

JPEG = ("--codec", "jpeg", "--quality", "50", "--no-progress")


def _result(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "in.png", 32, 48)
    return folder


def test_no_command_writes_over_an_input_or_its_own_other_output(tmp_path: Path, images: Path) -> None:
    curve = tmp_path / "curve.json"
    assert cli("eval", images, *JPEG, "-o", curve).exit_code == 0
    before = snapshot(tmp_path)
    cases = [
        (("eval", images / "in.png", *JPEG, "-o", images / "in.png"), r"also an input"),
        (("eval", images, *JPEG, "-o", tmp_path / "r.csv"), r"the result JSON .*r\.csv.*per-image CSV"),
        (("bench", "-o", tmp_path / "b.png"), r"the JSON report .*b\.png.*stage figure"),
        (("plot", curve, "--table", tmp_path / "t.png", "-o", tmp_path / "t.png"), r"would be the same file"),
        (("plot", curve, "-o", curve), r"also an input"),
        (("plot", curve, "--table", curve), r"also an input"),
    ]
    for args, pattern in cases:
        result = cli(*args)
        assert_clean_error(result.output, result.exit_code, pattern)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_journal_rows_belong_to_the_image_content_not_its_name(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "r.json"
    assert cli("eval", images, *JPEG, "-o", out).exit_code == 0
    first = _result(out)["results"]["psnr-rgb"][0]
    other = tmp_path / "other"
    other.mkdir()
    write_image(other / "in.png", 32, 48, seed=5)  # same name, other pixels
    assert cli("eval", other, *JPEG, "-o", out).exit_code == 0
    assert cli("eval", other, *JPEG, "-o", tmp_path / "fresh.json").exit_code == 0
    reused = _result(out)
    assert reused["results"]["psnr-rgb"][0] == _result(tmp_path / "fresh.json")["results"]["psnr-rgb"][0] != first
    again = cli("eval", other, *JPEG, "-o", out)  # a rerun measures nothing and counts the image once
    assert again.exit_code == 0 and "1 images" in _result(out)["description"]


def test_a_journal_that_is_not_one_is_refused_and_kept(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "r.json"
    journal, _ = row_paths(out)
    journal.write_text("garbage\n")
    for _ in range(2):  # never emptied: the second run says the same
        result = cli("eval", images, *JPEG, "-o", out)
        assert_clean_error(result.output, result.exit_code, r"rows\.jsonl is not a row journal")
    assert journal.read_text() == "garbage\n" and not out.exists()


def test_a_second_eval_on_one_output_is_refused_at_once(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "r.json"
    with exclusive(out):  # as a first eval holds it
        result = cli("eval", images, *JPEG, "-o", out)
    assert_clean_error(result.output, result.exit_code, r"being written by another process")
    assert not out.exists() and not row_paths(out)[0].exists()
    assert cli("eval", images, *JPEG, "-o", out).exit_code == 0  # released


def test_options_are_checked_before_any_work(tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b.json"
    cases = [
        (("bench", "--compare", "TYPO", "-o", out), r"--compare 'TYPO' is not among"),
        (("bench", "--size", "60000x60000", "-o", out), r"--size 60000x60000.*pixel"),
        (("mismatch", "--backends", "cpu-float32,cpu-float8_e4m3fn"), r"cpu-float8_e4m3fn.*float32"),
        (("eval", images, "--codec", "jpeg", "--quality", "1000,-5", "-o", out), r"--quality 1000.*0\.\.100"),
    ]
    for args, pattern in cases:
        result = cli(*args)
        assert_clean_error(result.output, result.exit_code, pattern)
    monkeypatch.setenv("HPCM_MAX_PIXELS", "abc")
    result = cli("bench", "-o", out)
    assert_clean_error(result.output, result.exit_code, r"HPCM_MAX_PIXELS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize("content, pattern", [
    ({"results": {"bpp": ["a"], "psnr-rgb": [30]}}, r"results\.bpp holds 'a'"),
    ({"results": {"bpp": [[1, 2]], "psnr-rgb": [30]}}, r"results\.bpp holds"),
    ({"results": {"bpp": [1e300], "psnr-rgb": [30]}}, r"within"),
    (b"\x89PNG\r\n\x1a\n\x00\xff", r"not a JSON result file"),
])
def test_plot_refuses_what_is_no_result_in_one_line(tmp_path: Path, content: object, pattern: str) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    result = cli("plot", path)
    assert_clean_error(result.output, result.exit_code, pattern)


def test_plot_refuses_a_figure_suffix_it_cannot_write(tmp_path: Path, images: Path) -> None:
    curve = tmp_path / "curve.json"
    assert cli("eval", images, *JPEG, "-o", curve).exit_code == 0
    result = cli("plot", curve, "-o", tmp_path / "x.txt")
    assert_clean_error(result.output, result.exit_code, r"x\.txt.*\.png")
    assert not (tmp_path / "x.txt").exists()


_CHILD_MODULE = """
import os, signal, sys
from hpcm.child import child_main
from hpcm.errors import ConfigError

def work(payload):
    if payload["do"] == "refuse":
        raise ConfigError("a bad setting\\nsecond line")
    if payload["do"] == "crash":
        raise KeyError("a bug")
    if payload["do"] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"twice": payload["value"] * 2}

child_main(work)
"""


def test_child_process_failures_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hostile_child.py").write_text(_CHILD_MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    assert run_child("hostile_child", {"do": "work", "value": 21}, "the work") == {"twice": 42}
    with pytest.raises(ChildError, match=r"^the work: a bad setting; second line$"):
        run_child("hostile_child", {"do": "refuse"}, "the work")
    with pytest.raises(ChildError, match=r"^the work failed: KeyError: 'a bug' \(its output: .*\.log\)$") as caught:
        run_child("hostile_child", {"do": "crash"}, "the work")
    log = Path(str(caught.value).rsplit("its output: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()
    log.unlink()
    with pytest.raises(ChildError, match=rf"killed by {signal.SIGKILL.name} \(out of memory\?\)"):
        run_child("hostile_child", {"do": "killed"}, "the work")


def test_raw_state_dict_of_other_sizes_is_suggested_as_the_expression_that_loads_it(tmp_path: Path) -> None:
    model = build_model(VariantSpec.from_dict(TINY_VARIANT), seed=0)
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    result = cli("info", "-c", raw)
    assert_clean_error(result.output, result.exit_code, r"phase2\+M=16\+N=16")
    assert cli("info", "-c", raw, "--variant", "phase2+M=16+N=16").exit_code == 0
    converted = cli("convert", raw, "--from", "phase2+M=16+N=16", "--to", "phase3", "-o", tmp_path / "c.pth")
    assert converted.exit_code == 0 and "-> phase3+M=16+N=16:" in converted.output, converted.output


def test_pickled_objects_are_called_unsafe_not_damaged(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": ConfigError("x")}, path)
    result = cli("info", "-c", path)
    message = assert_clean_error(result.output, result.exit_code, r"pickled Python objects.*ConfigError")
    assert "damaged" not in message


def test_the_bi_wkv_op_library_setting_is_never_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcm.plugins.biwkv.cpu import ort_op_library

    not_a_library = write_variant(tmp_path)  # a JSON file
    for setting, pattern in ((tmp_path / "missing.so", "does not exist"),
                             (not_a_library, "not a loadable shared library")):
        monkeypatch.setenv("HPCM_BIWKV_ORT_OP", str(setting))
        with pytest.raises(ConfigError, match=f"HPCM_BIWKV_ORT_OP.*{pattern}"):
            ort_op_library()


_TERMINATED_COMMAND = """
import os, signal, sys
import click
from hpcm.cli.framework import ProjectCommand
from hpcm.errors import ConfigError
from hpcm.files import atomic_output

@click.command(cls=ProjectCommand)
def command():
    with atomic_output(sys.argv[1]) as tmp:
        tmp.write_text("half")
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException as exc:  # as torch.onnx.export does: the signal's exception made its own error
            raise ConfigError("what a library made of it") from exc

command(sys.argv[2:])
"""


def test_a_terminated_command_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "-c", _TERMINATED_COMMAND, str(out)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: stopped by SIGTERM", result.stderr
    assert "what a library" not in result.stderr and list(tmp_path.iterdir()) == []
