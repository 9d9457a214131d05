"""hpcm compress / decompress of folder trees and hpcm eval --ray: on this machine and on a local Ray
(``ray.init`` with 2 CPUs), with a tiny phase2 (M = N = 16) checkpoint and small images.

The promises checked: the same relative tree out, streams byte-identical to ``hpcm encode`` and between
a local pool and Ray actors of the same threads, a corrupt image reported with its reason and skipped,
an interrupted run resumed (killed mid-run, then run again), and eval --ray writing the same result
files as a local eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcm.models import build_model
from hpcm.models.checkpoint import save_checkpoint
from hpcm.models.variants import VariantSpec

from .hostile import TINY_VARIANT, assert_clean_error, cli, leftovers, write_image

# name -> (height, width): sizes that pad differently; one in a subfolder two levels down
IMAGES = {"a.png": (64, 80), "sub/b.jpg": (96, 64), "sub/deeper/c.png": (48, 48), "sub/d.bmp": (130, 70)}
TIMING = ("encoding_time", "decoding_time")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small images in a tree, a corrupt one among them, and a tiny checkpoint beside the tree."""
    root = tmp_path_factory.mktemp("folders")
    source = root / "images"
    for seed, (name, (height, width)) in enumerate(IMAGES.items()):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(source / name, height, width, seed=seed)
    whole = write_image(source / "sub" / "corrupt.png", 64, 64, seed=9).read_bytes()
    (source / "sub" / "corrupt.png").write_bytes(whole[: len(whole) // 2])  # cut off mid-way
    model = build_model(VariantSpec.from_dict(TINY_VARIANT), seed=0).eval()
    model.update()
    save_checkpoint(model, root / "tiny.pth")
    return source


@pytest.fixture(scope="module")
def local_run(folder: Path, one_thread) -> dict[str, Path]:
    """The tree compressed and decompressed on this machine (one worker, in this process)."""
    root = folder.parent
    result = cli("compress", folder, "-o", root / "local", "-c", root / "tiny.pth", "--workers", "1",
                 "--report", root / "local.json", "--no-progress")
    assert result.exit_code == 0, result.output
    decoded = cli("decompress", root / "local", "-o", root / "local-png", "-c", root / "tiny.pth", "--workers", "1",
                  "--no-progress")
    assert decoded.exit_code == 0, decoded.output
    return {"streams": root / "local", "images": root / "local-png", "report": root / "local.json",
            "output": result.output, "decoded": decoded.output}


def test_compress_writes_the_same_tree_and_reports_a_corrupt_image(folder: Path, local_run: dict[str, Path]) -> None:
    streams = tree(local_run["streams"])
    assert sorted(streams) == sorted(str(Path(n).with_suffix(".hpcm")) for n in IMAGES)
    assert sorted(tree(local_run["images"])) == sorted(str(Path(n).with_suffix(".png")) for n in IMAGES)
    output = local_run["output"]
    assert "notice: skipping sub/corrupt.png:" in output and "Traceback" not in output
    assert "compressed 4 images (0 already done, 1 failed)" in output and "images/s" in output
    report = json.loads(local_run["report"].read_text())
    assert report["coded"] == 4 and [f["path"] for f in report["failures"]] == ["sub/corrupt.png"]
    assert "truncated" in report["failures"][0]["reason"]
    pixels = sum(h * w for h, w in IMAGES.values())
    assert report["pixels"] == pixels and report["bytes_out"] == sum(map(len, streams.values()))
    assert report["bpp"] == pytest.approx(8 * report["bytes_out"] / pixels)
    assert report["bytes_in"] == sum((folder / n).stat().st_size for n in IMAGES)


def test_streams_equal_hpcm_encode_and_decode(folder: Path, local_run: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = folder.parent / "tiny.pth"
    for name in ("a.png", "sub/d.bmp"):
        stream = tmp_path / "one.hpcm"
        assert cli("encode", folder / name, "-c", checkpoint, "-o", stream).exit_code == 0
        assert stream.read_bytes() == (local_run["streams"] / name).with_suffix(".hpcm").read_bytes()
        image = tmp_path / "one.png"
        assert cli("decode", stream, "-c", checkpoint, "-o", image).exit_code == 0
        assert image.read_bytes() == (local_run["images"] / name).with_suffix(".png").read_bytes()


def test_a_pool_of_processes_writes_the_same_bytes(folder: Path, local_run: dict[str, Path], tmp_path: Path) -> None:
    result = cli("compress", folder, "-o", tmp_path / "pool", "-c", folder.parent / "tiny.pth", "--workers", "2",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert "2 worker(s) x 1 thread(s)" in result.output and "skipping sub/corrupt.png:" in result.output
    assert tree(tmp_path / "pool") == tree(local_run["streams"])


def test_a_rerun_codes_only_what_is_missing_stale_or_damaged(folder: Path, local_run: dict[str, Path],
                                                              tmp_path: Path) -> None:
    root = folder.parent
    target = tmp_path / "again"
    expected = tree(local_run["streams"])
    for name, data in expected.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    (target / "a.hpcm").write_bytes(expected["a.hpcm"][:-3])  # damaged: CRC no longer holds
    os.utime(target / "sub/b.hpcm", ns=(1, 1))  # older than its image
    result = cli("compress", folder, "-o", target, "-c", root / "tiny.pth", "--workers", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "2 of the outputs" in result.output and "compressed 2 images (2 already done, 1 failed)" in result.output
    assert tree(target) == expected
    # a stream of another codec is not this codec's output: coded again
    other = build_model(VariantSpec.from_dict(TINY_VARIANT), seed=1).eval()
    other.update()
    save_checkpoint(other, tmp_path / "other.pth")
    result = cli("compress", folder, "-o", target, "-c", tmp_path / "other.pth", "--workers", "1", "--no-progress")
    assert "compressed 4 images (0 already done, 1 failed)" in result.output, result.output
    assert all(tree(target)[name] != data for name, data in expected.items())


def test_two_images_that_would_share_a_stream_both_fail_with_the_reason(tmp_path: Path) -> None:
    source = tmp_path / "clash"
    source.mkdir()
    write_image(source / "x.png", 32, 32)
    write_image(source / "x.jpg", 32, 32)
    variant = tmp_path / "tiny.json"
    variant.write_text(json.dumps(TINY_VARIANT))
    result = cli("compress", source, "-o", tmp_path / "out", "--variant", variant, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "x.jpg and x.png would both be written to x.hpcm: rename one" in result.output
    assert "compressed 0 images (0 already done, 2 failed)" in result.output
    assert not list((tmp_path / "out").iterdir())


def test_folder_commands_check_their_paths_before_any_work(folder: Path, tmp_path: Path) -> None:
    image = next(folder.glob("*.png"))
    (tmp_path / "file").write_text("x")
    for args, pattern in (((image, "-o", tmp_path / "o"), "is a file"), ((folder, "-o", tmp_path / "file"), "is a file"),
                          ((folder, "-o", tmp_path / "o", "--report", tmp_path), "is a directory")):
        result = cli("compress", *args)
        assert_clean_error(result.output, result.exit_code, pattern, usage=True)
    assert not (tmp_path / "o").exists()


def test_a_second_run_into_the_same_tree_is_refused(folder: Path, tmp_path: Path) -> None:
    """While one run writes an output tree, another into it is refused in one line and writes nothing."""
    from hpcm.files import exclusive

    target = tmp_path / "busy"
    target.mkdir()
    with exclusive(target):  # the first run, as its lock shows it
        result = cli("compress", folder, "-o", target, "-c", folder.parent / "tiny.pth", "--no-progress")
    assert_clean_error(result.output, result.exit_code, "being written by another process")
    assert list(target.iterdir()) == []


def test_ray_missing_is_one_line(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    result = cli("compress", folder, "-o", tmp_path / "o", "--ray", "auto", "-c", folder.parent / "tiny.pth")
    assert_clean_error(result.output, result.exit_code, r"--ray needs Ray, which is not installed here: pip install "
                                                        r"'hpcm-rwkv\[cluster\]'")
    result = cli("eval", folder, "--codec", "jpeg", "-o", tmp_path / "r.json", "--workers", "2")
    assert_clean_error(result.output, result.exit_code, "--workers and --threads go with --ray", usage=True)


def test_an_interrupted_run_resumes(folder: Path, local_run: dict[str, Path], tmp_path: Path) -> None:
    """Killed (SIGKILL) after its first stream is written, a run leaves complete streams only; the next
    run codes the rest, and the tree equals an uninterrupted run's."""
    root = folder.parent
    source = tmp_path / "many"
    source.mkdir()
    for i in range(12):
        write_image(source / f"img{i:02d}.png", 128, 128, seed=i)
    reference = tmp_path / "reference"
    assert cli("compress", source, "-o", reference, "-c", root / "tiny.pth", "--workers", "1",
               "--no-progress").exit_code == 0
    target = tmp_path / "interrupted"
    child = subprocess.Popen([sys.executable, "-c", "from hpcm.cli import main; main()", "compress", str(source), "-o",
                              str(target), "-c", str(root / "tiny.pth"), "--workers", "1", "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and not list(target.glob("*.hpcm")):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = len(list(target.glob("*.hpcm")))
    assert 1 <= written < 12, f"the run was not interrupted mid-way ({written} of 12 streams written)"
    result = cli("compress", source, "-o", target, "-c", root / "tiny.pth", "--workers", "1", "--no-progress")
    assert f"compressed {12 - written} images ({written} already done, 0 failed)" in result.output, result.output
    assert tree(target) == tree(reference) and not leftovers(target)


# ------------------------------------------------------------------------------------------ on a local Ray
@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs for this module (the commands' --ray auto finds this process connected)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hpcm-rwkv[cluster]')")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def test_ray_actors_write_the_local_runs_bytes(ray_cluster, folder: Path, local_run: dict[str, Path],
                                               tmp_path: Path) -> None:
    root = folder.parent
    result = cli("compress", folder, "-o", tmp_path / "ray", "-c", root / "tiny.pth", "--ray", "auto", "--workers",
                 "2", "--threads", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "2 Ray actor(s) x 1 thread(s)" in result.output and "skipping sub/corrupt.png:" in result.output
    assert tree(tmp_path / "ray") == tree(local_run["streams"])
    result = cli("decompress", tmp_path / "ray", "-o", tmp_path / "ray-png", "-c", root / "tiny.pth", "--ray", "auto",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "ray-png") == tree(local_run["images"])


@pytest.mark.parametrize("codec", ["jpeg", "learned"])
def test_eval_on_ray_writes_what_a_local_eval_writes(ray_cluster, one_thread, folder: Path, tmp_path: Path,
                                                     codec: str) -> None:
    what = (["--codec", "jpeg", "--quality", "30,80"] if codec == "jpeg"
            else ["-c", folder.parent / "tiny.pth", "--no-forward-check"])
    documents, journals = [], []
    for run, extra in (("local", []), ("ray", ["--ray", "auto", "--workers", "2"])):
        (tmp_path / run).mkdir()
        out = tmp_path / run / "result.json"  # a learned curve is named after the file
        result = cli("eval", folder / "sub", *what, "-o", out, "--no-progress", *extra)
        assert result.exit_code == 0, result.output
        assert "skipping" in result.output and "corrupt.png" in result.output
        document = json.loads(out.read_text())
        for metric in TIMING:
            assert all(t > 0 for t in document["results"].pop(metric))
        documents.append(document)
        lines = (tmp_path / run / "result.rows.jsonl").read_text().splitlines()
        journals.append([json.loads(lines[0])] + sorted(({k: v for k, v in json.loads(line).items() if k not in TIMING}
                                                          for line in lines[1:]), key=lambda r: (r["point"], r["image"])))
    assert documents[0] == documents[1] and journals[0] == journals[1]
    assert len(journals[0]) == 1 + 2 * (2 if codec == "jpeg" else 1)
