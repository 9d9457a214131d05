"""Hostile models: variant specs (from a checkpoint, a manifest or a --variant JSON), damaged
checkpoints, wrong entropy tables, training settings that cannot work. Specs are validated before
anything is built, checkpoints carry a digest of their tensors, tables are validated when loaded,
and every fault is reported against the file that has it."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcm.codec import EntropyTables
from hpcm.errors import CheckpointError, EntropyTableError, VariantError
from hpcm.models import HPCM
from hpcm.models.cdf_tables import TABLE_NAMES
from hpcm.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from hpcm.models.variants import VariantSpec, get_variant

from .hostile import (TINY_VARIANT, assert_clean_error, cli, run_limited, snapshot, write_image, write_manifest,
                      write_variant)

HOSTILE_SPECS = [
    ({"M": 100000}, "M"),
    ({"N": 10 ** 9}, "N"),
    ({"M": -16}, "M"),
    ({"M": 24}, "M"),  # not a multiple of 16
    ({"M": "320"}, "M"),
    ({"M": 16.5}, "M"),
    ({"M": True}, "M"),
    ({"cells": [{"kind": "rwkv", "hidden_rate": 100000}] * 3}, "hidden_rate"),
    ({"cells": [{"kind": "cross_attention", "window": 3}] * 3}, "window"),
    ({"cells": [{"kind": "rwkv", "hidden_rate": 2}]}, "cells"),
    ({"cells": [{"kind": "lstm"}] * 3}, "lstm"),
    ({"cells": "rwkv"}, "cells"),
    ({"fusion": {"kind": "rwkv", "num_blocks": 10 ** 6, "hidden_rate": 4}}, "num_blocks"),
    ({"fusion": {"kind": "rwkv", "blocks": 2}}, "blocks"),
    ({"prior_s3": {"branch_1": ["dwconv"] * 10 ** 5, "branch_2": ["rwkv"]}}, "branch_1"),
    ({"prior_s3": {"branch_1": ["conv3d"], "branch_2": []}}, "conv3d"),
    ({"name": ""}, "name"),
    ({"name": "x" * 100}, "name"),
    ({"name": None}, "name"),
    ({"extra_field": 1}, "extra_field"),
]


@pytest.mark.parametrize("changes,field", HOSTILE_SPECS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(HOSTILE_SPECS)])
def test_hostile_specs_are_refused_before_anything_is_built(changes: dict, field: str) -> None:
    with pytest.raises(VariantError, match=field):
        VariantSpec.from_dict({**TINY_VARIANT, **changes})


def test_missing_fields_and_non_objects_are_refused() -> None:
    for raw in ({k: v for k, v in TINY_VARIANT.items() if k != "cells"}, {k: v for k, v in TINY_VARIANT.items()
                                                                          if k != "name"}, [], "phase2", None):
        with pytest.raises(VariantError):
            VariantSpec.from_dict(raw)
    with pytest.raises(VariantError, match="M"):
        HPCM("phase2", M=10 ** 6)


def test_hostile_spec_from_each_source_is_reported_against_its_file(tmp_path: Path) -> None:
    huge = write_variant(tmp_path, "huge.json", M=1 << 20)
    run = run_limited(["info", "--variant", huge])
    run.clean_error(r"huge\.json.*M")
    assert run.peak_mb < 1500
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "tiny", ')
    result = cli("info", "--variant", broken)
    assert_clean_error(result.output, result.exit_code, r"broken\.json.*JSON")
    # a checkpoint whose recorded spec was altered
    checkpoint = tmp_path / "huge.pth"
    torch.save({"format": "hpcm-rwkv-checkpoint", "format_version": 1, "variant": {**TINY_VARIANT, "N": 1 << 30},
                "state_dict": {}}, checkpoint)
    run = run_limited(["info", "-c", checkpoint])
    run.clean_error(r"huge\.pth.*N")
    assert run.peak_mb < 1500
    # an export manifest whose spec was altered (and its digest recomputed)
    from hpcm.export.artifact import FORMAT_VERSION

    export = tmp_path / "export"
    export.mkdir()
    write_manifest(export, {"format": "hpcm-rwkv-onnx-export", "format_version": FORMAT_VERSION,
                            "variant": {**TINY_VARIANT, "M": 1 << 20}})
    result = cli("encode", write_image(tmp_path / "a.png", 32, 32), "--export", export, "-o", tmp_path / "a.hpcm")
    assert_clean_error(result.output, result.exit_code, r"manifest\.json.*M")


def _largest_tensor_offset(path: Path, tensor: torch.Tensor) -> int:
    needle = tensor.detach().contiguous().numpy().tobytes()[:64]
    at = path.read_bytes().find(needle)
    assert at > 0
    return at


def test_flipped_checkpoint_bytes_are_detected(tmp_path: Path, tiny_model) -> None:
    path = save_checkpoint(tiny_model, tmp_path / "m.pth")
    pristine = path.read_bytes()
    weight = tiny_model.g_a.branch[0].weight
    at = _largest_tensor_offset(path, weight)
    damaged = bytearray(pristine)
    damaged[at + 17] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="damaged|altered"):
        load_checkpoint(path)
    # any byte of the file: either refused, or loaded with exactly the saved tensors (zip padding)
    rng = np.random.default_rng(3)
    for position in rng.integers(0, len(pristine), 40):
        damaged = bytearray(pristine)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as exc:
            assert "weights_only" not in str(exc) and "\n" not in str(exc)
            continue
        for key, value in tiny_model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (position, key)


def test_unreadable_checkpoints_give_safe_one_line_advice(tmp_path: Path, tiny_model) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    code = tmp_path / "code.pth"
    torch.save({"state_dict": {}, "hook": io.BytesIO}, code)  # needs unpickling a class: refused
    for path in (junk, code, Path("/dev/zero")):
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(path)
        message = str(caught.value)
        assert "weights_only" not in message and "\n" not in message and str(path) in message, message


def test_raw_state_dict_without_variant_suggests_variant(tmp_path: Path, tiny_model) -> None:
    raw = tmp_path / "raw.pth"
    torch.save(tiny_model.state_dict(), raw)
    with pytest.raises(CheckpointError, match="--variant"):
        load_checkpoint(raw)
    result = cli("info", "-c", raw)
    assert_clean_error(result.output, result.exit_code, r"raw\.pth.*--variant")


def _table_cases(model) -> dict[str, dict[str, torch.Tensor]]:
    tables = {n: getattr(model, n).clone() for n in TABLE_NAMES}
    nan = {**tables, "scale_table": tables["scale_table"].clone()}
    nan["scale_table"][5] = math.nan
    reversed_ = {**tables, "scale_table": tables["scale_table"].flip(0)}
    short = {**tables, "scale_table": tables["scale_table"][:-1]}
    cdf = {**tables, "quantized_cdf_y": tables["quantized_cdf_y"].clone()}
    cdf["quantized_cdf_y"][3, 2] = 70000
    offset = {**tables, "offset_z": tables["offset_z"][:-1]}
    return {"nan": nan, "reversed": reversed_, "short": short, "cdf": cdf, "offset": offset}


def test_wrong_tables_are_refused_when_loaded(tiny_model) -> None:
    for name, arrays in _table_cases(tiny_model).items():
        with pytest.raises(EntropyTableError):
            EntropyTables(arrays, source=name)


def test_table_faults_are_blamed_on_the_checkpoint_not_the_image(tmp_path: Path, tiny_model) -> None:
    image = write_image(tmp_path / "photo.png", 32, 32)
    for name, arrays in _table_cases(tiny_model).items():
        state = {**tiny_model.state_dict(), **arrays}
        path = tmp_path / f"{name}.pth"
        torch.save({"format": "hpcm-rwkv-checkpoint", "format_version": 1, "variant": TINY_VARIANT,
                    "state_dict": state}, path)
        result = cli("encode", image, "-c", path, "-o", tmp_path / "x.hpcm")
        message = assert_clean_error(result.output, result.exit_code, rf"{name}\.pth")
        assert "photo.png" not in message, message
    assert not (tmp_path / "x.hpcm").exists()


def test_corrupt_export_table_file_names_it_without_pickle_advice(tmp_path: Path, tiny_model) -> None:
    pytest.importorskip("onnx")
    from hpcm.errors import ArtifactError
    from hpcm.export.artifact import CODEC_FILE, MANIFEST_NAME, ExportDir, FileRecord
    from hpcm.export.onnx_export import export_model

    folder = tmp_path / "export"
    export_model(tiny_model, folder, size=(128, 128), graphs=["context_fusion_s2"], seed=0)
    (folder / CODEC_FILE).write_bytes(b"\x80\x04 pickled, not a zip archive")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["codec_file"] = FileRecord.of(folder / CODEC_FILE).__dict__  # re-hashed: only the content is wrong
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError) as caught:
        ExportDir.open(folder).codec_parameters
    message = str(caught.value)
    assert CODEC_FILE in message and "allow_pickle" not in message and "\n" not in message, message


def test_trained_checkpoints_carry_tables_and_a_digest(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", 128, 128)
    variant = write_variant(tmp_path)
    out = tmp_path / "t.pth"
    result = cli("train", folder, "--variant", variant, "--steps", "1", "--batch-size", "1", "--crop", "128",
                 "-o", out)
    assert result.exit_code == 0, result.output
    payload = torch.load(out, weights_only=True)
    assert all(payload["state_dict"][n].numel() > 0 for n in TABLE_NAMES)
    assert isinstance(payload.get("tensors_sha256"), str)
    trained = load_checkpoint(out)
    assert trained.has_entropy_tables
    z_tables = EntropyTables.from_model(trained).z
    assert z_tables.count == trained.N


def test_training_settings_that_cannot_work_are_refused_up_front(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", 128, 128)
    variant = write_variant(tmp_path)
    out = tmp_path / "t.pth"
    for option, value in (("--batch-size", "0"), ("--steps", "0"), ("--lr", "nan"), ("--lr", "-1"),
                          ("--lr", "inf"), ("--lmbda", "nan"), ("--crop", "0")):
        result = cli("train", folder, "--variant", variant, "--crop", "128", option, value, "-o", out)
        assert result.exit_code in (1, 2), (option, value, result.output)
        assert_clean_error(result.output, result.exit_code, option, usage=result.exit_code == 2)
        assert "step 1" not in result.output and not out.exists()


def test_non_finite_loss_stops_training_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", 128, 128)
    variant = write_variant(tmp_path)
    out = tmp_path / "t.pth"
    before = snapshot(tmp_path)
    result = cli("train", folder, "--variant", variant, "--steps", "3", "--batch-size", "1", "--crop", "128",
                 "--lr", "1e30", "-o", out)
    assert_clean_error(result.output, result.exit_code, r"non-finite.*--lr")
    assert snapshot(tmp_path) == before


def test_get_variant_refuses_an_oversized_file(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(" " * (2 << 20) + json.dumps(TINY_VARIANT))
    with pytest.raises(VariantError, match="big.json"):
        get_variant(big)


def test_a_spec_within_every_range_but_too_large_in_total_is_refused(tmp_path: Path) -> None:
    rwkv_prior = {"branch_1": ["rwkv"] * 4, "branch_2": ["rwkv"] * 4, "rwkv_hidden_rate": 8}
    largest = write_variant(tmp_path, "largest.json", M=640, N=640,
                            cells=[{"kind": "rwkv", "hidden_rate": 8}] * 3,
                            fusion={"kind": "rwkv", "num_blocks": 4, "hidden_rate": 8},
                            prior_s1_s2=rwkv_prior, prior_s3=rwkv_prior)
    run = run_limited(["info", "--variant", largest])
    run.clean_error(r"largest.* parameters, more than the 400,000,000")
    assert run.peak_mb < 1500, run.peak_mb
