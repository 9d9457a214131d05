"""Export folders on linked storage and concurrent exports: a folder whose files are hard links
(``cp -al``, ``rsync --link-dest``) or whose ``weights.bin`` is a symbolic link into a cache (DVC,
git-annex) runs on ONNX Runtime as the original does; a second export into a folder being written is
refused at once and leaves the first alone; a killed export's temporary folder is removed by the next."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from hpcm.errors import HPCMError  # noqa: E402
from hpcm.export.artifact import WEIGHTS_NAME, ExportDir, ExportWriter  # noqa: E402
from hpcm.export.onnx_export import export_model  # noqa: E402
from hpcm.export.tracing import graph_specs  # noqa: E402
from hpcm.files import exclusive  # noqa: E402
from hpcm.runtime.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402

from .hostile import leftovers, snapshot  # noqa: E402

GRAPHS = ["step01", "synthesis"]  # one with the custom Bi-WKV node, one without
SIZE = (128, 128)


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_model) -> Path:
    folder = tmp_path_factory.mktemp("linked") / "export"
    export_model(tiny_model, folder, size=SIZE, graphs=GRAPHS, seed=0)
    return folder


def _outputs(folder: Path, tiny_model) -> dict[str, torch.Tensor]:
    results = {}
    with OnnxRuntimeRunner(ExportDir.open(folder)) as runner:
        for spec in graph_specs(tiny_model, SIZE, names=GRAPHS):
            for name, value in runner.run(spec.name, spec.inputs).items():
                results[f"{spec.name}.{name}"] = value
    return results


def _hard_linked(export: Path, target: Path) -> Path:
    target.mkdir()
    for file in export.iterdir():
        os.link(file, target / file.name)
    return target


def _weights_in_a_cache(export: Path, target: Path) -> Path:
    shutil.copytree(export, target)
    cache = target.parent / "cache" / "ab"
    cache.mkdir(parents=True)
    shutil.move(target / WEIGHTS_NAME, cache / "0123abcd")
    (target / WEIGHTS_NAME).symlink_to(Path("..") / "cache" / "ab" / "0123abcd")
    return target


def _every_file_a_link(export: Path, target: Path) -> Path:  # git-annex: each file a link to its own object
    target.mkdir()
    for file in export.iterdir():
        objects = target.parent / "objects" / file.name
        objects.mkdir(parents=True)
        shutil.copy(file, objects / f"KEY-{file.name}")
        (target / file.name).symlink_to(objects / f"KEY-{file.name}")
    return target


@pytest.mark.parametrize("make", [_hard_linked, _weights_in_a_cache, _every_file_a_link])
def test_a_folder_of_links_runs_as_the_original(export, tiny_model, tmp_path, make) -> None:
    expected = _outputs(export, tiny_model)
    linked = make(export, tmp_path / "linked")
    got = _outputs(linked, tiny_model)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_a_second_export_into_a_folder_being_written_is_refused(export, tiny_model, tmp_path) -> None:
    target = tmp_path / "export"
    shutil.copytree(export, target)
    before = snapshot(tmp_path)
    with exclusive(target):  # as a first export holds it
        with pytest.raises(HPCMError, match="being written by another process"):
            export_model(tiny_model, target, size=SIZE, graphs=["synthesis"], seed=0)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_a_killed_exports_temporary_folder_is_removed_by_the_next(tmp_path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    stale = tmp_path / f".export.{gone.pid}.abcd1234.partial"
    stale.mkdir()
    (stale / WEIGHTS_NAME).write_bytes(b"\0" * 1024)
    with ExportWriter(tmp_path / "export") as writer:
        assert not stale.exists() and writer.folder.is_dir()
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == []
