"""The export folder as an artifact: checked on open, every file refused by name when missing or
altered, an unknown format version refused, and the CLI reporting each in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from hpcm.cli import main  # noqa: E402
from hpcm.errors import ArtifactError  # noqa: E402
from hpcm.export.artifact import CODEC_FILE, FORMAT_VERSION, MANIFEST_NAME, WEIGHTS_NAME, ExportDir  # noqa: E402
from hpcm.export.onnx_export import export_model  # noqa: E402

from .hostile import write_manifest  # noqa: E402

GRAPHS = ["context_fusion_s2", "synthesis"]


@pytest.fixture(scope="module")
def export(tmp_path_factory, phase2) -> Path:
    folder = tmp_path_factory.mktemp("artifact") / "phase2"
    export_model(phase2, folder, size=(128, 128), graphs=GRAPHS, seed=0)
    return folder


@pytest.fixture()
def copy(export, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(export, target)
    return target


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_complete_folder_opens_with_its_codec_parameters(export, phase2):
    opened = ExportDir.open(export)
    assert opened.graphs == tuple(GRAPHS)
    assert opened.variant == phase2.spec
    parameters = opened.codec_parameters
    assert parameters.variant == "phase2" and parameters.alignment == phase2.alignment
    assert parameters.tables.digest == parameters.tables.__class__.from_model(phase2).digest
    assert "untrained seeded weights (seed 0)" in opened.describe()


@pytest.mark.parametrize("name", [f"{GRAPHS[0]}.onnx", WEIGHTS_NAME, CODEC_FILE])
def test_altered_files_are_refused_by_name(copy, name):
    _flip_last_byte(copy / name)
    with pytest.raises(ArtifactError, match=f"{name}.*does not match its hash"):
        ExportDir.open(copy)


@pytest.mark.parametrize("name", [f"{GRAPHS[1]}.onnx", WEIGHTS_NAME, CODEC_FILE])
def test_missing_files_are_refused_by_name(copy, name):
    (copy / name).unlink()
    with pytest.raises(ArtifactError, match=f"{name}.*is missing"):
        ExportDir.open(copy)


def _edit_manifest(folder: Path, change) -> None:  # noqa: ANN001
    """Edit the manifest as a forger would, its own digest recomputed, so that what it says is checked."""
    raw = json.loads((folder / MANIFEST_NAME).read_text())
    change(raw)
    write_manifest(folder, raw)


def test_manifest_problems_are_refused(copy, tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json does not exist"):
        ExportDir.open(tmp_path)
    raw = json.loads((copy / MANIFEST_NAME).read_text())
    (copy / MANIFEST_NAME).write_text(json.dumps({**raw, "variant": {**raw["variant"], "name": "phase3"}}))
    with pytest.raises(ArtifactError, match="manifest.json was edited or damaged"):
        ExportDir.open(copy)
    _edit_manifest(copy, lambda raw: raw.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="unknown export format version.*newer"):
        ExportDir.open(copy)
    _edit_manifest(copy, lambda raw: raw.update(format_version=1))
    with pytest.raises(ArtifactError, match="re-export"):
        ExportDir.open(copy)
    _edit_manifest(copy, lambda raw: raw.update(format_version=FORMAT_VERSION, schedule=raw["schedule"][:-1]))
    with pytest.raises(ArtifactError, match="another progressive schedule"):
        ExportDir.open(copy)
    _edit_manifest(copy, lambda raw: raw.pop("weights_digest"))
    with pytest.raises(ArtifactError, match="manifest.json is malformed"):
        ExportDir.open(copy)
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is not readable JSON"):
        ExportDir.open(copy)


def test_the_cli_names_the_altered_file(copy, tmp_path):
    _flip_last_byte(copy / WEIGHTS_NAME)
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (90, 120, 30)).save(image)
    result = CliRunner().invoke(main, ["encode", str(image), "--export", str(copy), "-o", str(tmp_path / "x.hpcm")])
    assert result.exit_code == 1
    assert f"{WEIGHTS_NAME} (shared weights) does not match its hash" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.hpcm").exists()


def test_writing_refuses_targets_that_are_not_export_folders(phase2, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("keep me")
    with pytest.raises(ArtifactError, match="not a folder"):
        export_model(phase2, afile, size=(128, 128), graphs=["synthesis"])
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an hpcm-export folder"):
        export_model(phase2, folder, size=(128, 128), graphs=["synthesis"])
    assert afile.read_text() == "keep me" and (folder / "notes.txt").read_text() == "keep me"
