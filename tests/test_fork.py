"""LIC-HPCM-LALIC fork compatibility: its state_dict tables, the key mapping, its training files through
every command that takes a checkpoint, and the report's API (``HPCM_Phase2(M=320, N=256)``).

Full-size checks run on the meta device (shapes only); everything that computes uses M=16, N=32
variants of the same structure, which the loaders recognise from the keys as they do M=320.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hpcm.cli import main
from hpcm.errors import CheckpointError
from hpcm.models import HPCM, VARIANTS, build_model
from hpcm.models.checkpoint import (describe_payload, inspect_checkpoint, load_checkpoint, read_checkpoint,
                                    save_checkpoint)
from hpcm.models.fork import ADAPTIVE_PARAMS_NOTICE, from_fork_layout, to_fork_layout
from hpcm.models.recognise import recognise_architecture
from hpcm.models.train import parameter_groups
from hpcm.models.variants import with_dimensions

FIXTURES = Path(__file__).parent / "fixtures"
PHASES = (1, 2, 3, 4)
M, N = 16, 32


def fork_table(phase: int) -> dict:
    return json.loads((FIXTURES / f"fork_phase{phase}_state_dict.json").read_text())


def tiny(name: str):
    return replace(VARIANTS[name], M=M, N=N)


def recognised(name: str):
    """``tiny(name)`` as a recognised file names it: the expression that builds it (``phase2+M=16+N=32``)."""
    return with_dimensions(VARIANTS[name], M, N)


def fork_training_file(model: HPCM, path: Path, prefix: str = "module.") -> Path:
    """``model``'s weights as the fork's train.py saves them (its layout, DataParallel prefixes)."""
    state = {prefix + k: v for k, v in to_fork_layout(model.state_dict()).items()}
    torch.save({"epoch": 3, "state_dict": state, "best_loss": 1.25, "optimizer": {"state": {}, "param_groups": []},
                "global_step": 300}, path)
    return path


@pytest.mark.parametrize("phase", PHASES)
def test_variant_has_the_forks_state_dict_table(phase):
    """phaseN in the fork's layout has exactly the fork's keys, shapes and dtypes (fixture read off its code)."""
    table = fork_table(phase)
    with torch.device("meta"):
        model = HPCM(f"phase{phase}")
    ours = sorted((k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
                  for k, v in to_fork_layout(model.state_dict()).items())
    assert ours == sorted((k, tuple(shape), dtype) for k, shape, dtype in table["entries"])
    # the fork's adaptive_params_list is not registered: 10 x (1, 3M, 1, 1) parameters more here
    assert sum(p.numel() for p in model.parameters()) == table["parameters_without_conv5x5_reparam"] + 10 * 960
    assert recognise_architecture(k for k, _, _ in table["entries"]) == f"phase{phase}"


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("phase", PHASES)
def test_fork_training_file_maps_onto_its_variant_strictly(phase, prefix):
    """A train.py payload built from the fixture's table: recognised, mapped, and every key and shape of
    the variant's state_dict present (what a strict load checks), with the adaptive-params notice."""
    state = {prefix + k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
             for k, shape, dtype in fork_table(phase)["entries"]}
    payload = {"epoch": 7, "state_dict": state, "best_loss": 0.5, "optimizer": {}, "global_step": 700}
    contents = describe_payload(payload, "epoch_best.pth.tar")
    assert contents.variant == VARIANTS[f"phase{phase}-vrwkv"]
    assert contents.notices == [ADAPTIVE_PARAMS_NOTICE]
    assert "epoch 7" in contents.source and any("conv5x5_reparam" in line for line in contents.found)
    assert any("'module.'" in line for line in contents.found) == bool(prefix)
    with torch.device("meta"):
        model = HPCM(contents.variant)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in contents.state_dict.items()} == expected


@pytest.mark.parametrize("phase", PHASES)
def test_fork_file_loads_with_the_same_weights_and_outputs(tmp_path, phase, caplog):
    """Values land where they belong: a tiny model saved in the fork's layout loads back equal, computes
    the same, and the stored conv5x5_reparam (derived) is ignored."""
    original = build_model(tiny(f"phase{phase}-vrwkv"), seed=phase).eval()
    state = to_fork_layout(original.state_dict())
    for key in [k for k in state if k.endswith("conv5x5_reparam.weight")]:
        state[key] = torch.full_like(state[key], 123.0)
    path = tmp_path / "epoch_best.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    with caplog.at_level(logging.WARNING, logger="hpcm"):
        loaded = load_checkpoint(path).eval()
    assert ADAPTIVE_PARAMS_NOTICE in caplog.text
    assert loaded.spec == recognised(f"phase{phase}-vrwkv")
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, loaded.alignment, loaded.alignment, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x, training=False)["likelihoods"]["y"], original(x, training=False)["likelihoods"]["y"])


def test_fork_mapping_is_the_inverse_of_our_layout():
    model = build_model(tiny("phase4"), seed=0)
    mapped, report = from_fork_layout(to_fork_layout(model.state_dict()))
    assert mapped.keys() == model.state_dict().keys()
    assert all(torch.equal(mapped[k], v) for k, v in model.state_dict().items())
    assert report.linear_reshaped > 0 and report.moved_under_block > 0 and len(report.reparam_dropped) > 0


def test_project_layout_state_dict_needs_the_variant_named(tmp_path):
    """Our own raw state_dicts do not show the RWKV wiring: the loader lists the candidates."""
    raw = tmp_path / "raw.pth"
    model = build_model(tiny("phase3-preln"), seed=0)
    torch.save(model.state_dict(), raw)
    contents = inspect_checkpoint(raw)
    names = tuple(recognised(n).name for n in ("phase3", "phase3-vrwkv", "phase3-preln"))
    assert contents.variant is None and contents.candidates == names
    with pytest.raises(CheckpointError, match=rf"fit {re.escape(', '.join(names))}; pass the variant.*--variant"):
        load_checkpoint(raw)
    assert load_checkpoint(raw, tiny("phase3-preln")).spec.rwkv_block == "pre_ln"


def test_checkpoint_of_the_pre_ln_era_loads_as_preln(tmp_path):
    """hpcm-rwkv checkpoints written when "phase2" meant pre-LN blocks (format 1, no rwkv_block field)
    load as phase2-preln."""
    model = build_model(tiny("phase2-preln"), seed=0)
    path = save_checkpoint(model, tmp_path / "old.pth")
    payload = torch.load(path, weights_only=True)
    for field in ("rwkv_block", "wkv"):
        del payload["variant"][field]
    payload["variant"]["name"] = "phase2"
    payload["format_version"] = 1
    del payload["tensors_sha256"]
    torch.save(payload, path)
    assert read_checkpoint(path)[0] == tiny("phase2-preln")


def test_seed_api_lines():
    from hpcm.models import HPCM_Baseline, HPCM_Phase1, HPCM_Phase2, HPCM_Phase3, HPCM_Phase4, RWKVContextCell

    model = HPCM_Phase2(M=320, N=256)
    assert isinstance(model.attn_s1, RWKVContextCell) and model.spec == VARIANTS["phase2"]
    assert isinstance(model.attn_s1.decay, torch.nn.Parameter) and isinstance(model.attn_s1.boost, torch.nn.Parameter)
    images = torch.rand(1, 3, 128, 128)
    out = model(images, training=False)
    assert out["x_hat"].shape == images.shape and set(out["likelihoods"]) == {"y", "z"}
    for constructor, name in ((HPCM_Baseline, "baseline"), (HPCM_Phase1, "phase1"), (HPCM_Phase3, "phase3"),
                              (HPCM_Phase4, "phase4")):
        small = constructor(M=M, N=N)
        assert type(small) is HPCM and small.spec == tiny(name)


@pytest.mark.parametrize("name", ["phase3", "phase4"])
def test_every_decay_and_boost_is_reachable_and_in_the_rwkv_group(name):
    model = HPCM(tiny(name))
    blocks = [model.attn_s1, model.attn_s2, model.attn_s3, *(b for net in model.context_net for b in net.blocks)]
    blocks += [b for prior in (model.y_spatial_prior_s1_s2, model.y_spatial_prior_s3)
               for b in (*prior.branch_1, *prior.branch_2) if hasattr(b, "decay")]
    reachable = {id(p) for b in blocks for p in (b.decay, b.boost)}
    named = {id(p) for n, p in model.named_parameters() if n.endswith((".decay", ".boost"))}
    assert reachable == named and len(named) == 2 * (3 + 2 + (8 if name == "phase4" else 0))
    group = next(g for g in parameter_groups(model, lr=1e-4, rwkv_lr_ratio=0.1) if g["name"] == "rwkv_decay_boost")
    assert {id(p) for p in group["params"]} == named


# ----------------------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def fork_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fork")
    return {phase: fork_training_file(build_model(tiny(f"phase{phase}-vrwkv"), seed=phase),
                                      folder / f"phase{phase}_epoch_best.pth.tar") for phase in (2, 3)}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_info_says_what_a_fork_checkpoint_is(fork_files):
    result = CliRunner().invoke(main, ["info", str(fork_files[2])])
    assert result.exit_code == 0, result.output
    for expected in ("LIC-HPCM-LALIC fork state_dict (epoch 3, global_step 300, best_loss 1.25)", "'module.'",
                     "conv5x5_reparam", "recognised phase2", "variant phase2-vrwkv", "Bi-WKV mode vrwkv", "total"):
        assert expected in result.output, expected


def test_convert_encode_decode_train_accept_fork_checkpoints(tmp_path, fork_files, images):
    runner = CliRunner()
    converted = tmp_path / "phase2.pt"
    result = runner.invoke(main, ["convert", str(fork_files[2]), "--to", "phase2", "-o", str(converted)])
    assert result.exit_code == 0, result.output
    assert "phase2-vrwkv+M=16+N=32 -> phase2+M=16+N=32" in result.output and "initialised 0 " in result.output
    assert load_checkpoint(converted).spec == recognised("phase2")

    stream, decoded = tmp_path / "x.hpcm", tmp_path / "x.png"
    result = runner.invoke(main, ["encode", str(images / "0.png"), "-o", str(stream), "--checkpoint", str(fork_files[2])])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["decode", str(stream), "-o", str(decoded), "--checkpoint", str(fork_files[2])])
    assert result.exit_code == 0, result.output
    assert Image.open(decoded).size == (160, 128)

    # hpcm train -c: the variant recorded in (or recognised from) the checkpoint, not a default
    ours = save_checkpoint(build_model(tiny("phase3"), seed=0), tmp_path / "p3.pt")
    for source, expected in ((fork_files[3], recognised("phase3-vrwkv")), (ours, tiny("phase3"))):
        out = tmp_path / f"trained-{expected.name}.pt"
        result = runner.invoke(main, ["train", str(images), "-c", str(source), "--steps", "1", "--batch-size", "1",
                                      "--crop", "128", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert load_checkpoint(out).spec == expected


def test_export_of_a_fork_checkpoint(tmp_path, fork_files):
    """The fork's phase2 exports with one custom WKV node per call, each carrying its vrwkv mode (custom is
    every mode's default), and matches eager; asked for, the decomposed route still exports it too."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from hpcm.cli.export_cmds import export_main
    from hpcm.export.artifact import ExportDir
    from hpcm.plugins.biwkv import CONTRACT
    from hpcm.runtime.runners.onnxruntime import OnnxRuntimeRunner

    from .graph_parity import graph_outputs, relative_error

    runner = CliRunner()
    model = load_checkpoint(fork_files[2]).eval()
    model.update()
    for route, extra in (("custom", []), ("decomposed", ["--wkv", "decomposed"])):
        out = tmp_path / route
        result = runner.invoke(export_main, ["--checkpoint", str(fork_files[2]), "-o", str(out), "--graph", "step05",
                                             "--opt-size", "128", "128", *extra])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["wkv"] == route and manifest["variant"]["name"] == recognised("phase2-vrwkv").name
        nodes = [n for n in onnx.load(str(out / "step05.onnx")).graph.node if n.op_type == CONTRACT.op_type]
        assert len(nodes) == manifest["graphs"]["step05"]["wkv_nodes"] == (1 if route == "custom" else 0)
        for node in nodes:
            attributes = {a.name: onnx.helper.get_attribute_value(a).decode() for a in node.attribute}
            assert attributes == CONTRACT.node_attributes("vrwkv")
        with OnnxRuntimeRunner(ExportDir.open(out)) as ort_runner:
            for graph, name, got, expected in graph_outputs(ort_runner, model, (128, 256), ["step05"], seed=1):
                assert relative_error(got, expected) <= 1e-5, (route, graph, name)


@pytest.mark.slow
@pytest.mark.parametrize("phase", [2, 4])
def test_fork_checkpoint_deploys_with_the_custom_node(tmp_path, phase, images):
    """A fork checkpoint as its train.py saves it: every graph of the default export holds custom WKV
    nodes only (mode vrwkv), ``hpcm check`` passes on ONNX Runtime, and streams cross between the export
    and eager phaseN-vrwkv both ways."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_extensions")
    onnx = pytest.importorskip("onnx")
    from hpcm.plugins.biwkv import CONTRACT

    checkpoint = fork_training_file(build_model(tiny(f"phase{phase}-vrwkv"), seed=phase),
                                    tmp_path / f"phase{phase}_epoch_best.pth.tar")
    runner = CliRunner()
    out = tmp_path / "export"
    result = runner.invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(out),
                                  "--opt-size", "128", "128"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["wkv"] == "custom" and manifest["variant"]["name"] == recognised(f"phase{phase}-vrwkv").name
    modes = set()
    for name, record in manifest["graphs"].items():
        graph = onnx.load(str(out / record["file"]["file"]), load_external_data=False)
        wkv = [n for n in graph.graph.node if n.op_type == CONTRACT.op_type]
        assert len(wkv) == record["wkv_nodes"], name
        assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node if n not in wkv), name
        modes |= {onnx.helper.get_attribute_value(a).decode() for n in wkv for a in n.attribute if a.name == "mode"}
    assert modes == {"vrwkv"} and sum(r["wkv_nodes"] for r in manifest["graphs"].values()) > 0

    report = tmp_path / "check.json"
    result = runner.invoke(main, ["check", str(out), "-c", str(checkpoint), "--images", str(images), "--limit", "1",
                                  "--report", str(report)])
    assert result.exit_code == 0, result.output

    image = images / "0.png"
    for encoder, decoder in ((["--export", str(out)], ["--checkpoint", str(checkpoint)]),
                             (["--checkpoint", str(checkpoint)], ["--export", str(out)])):
        stream, decoded = tmp_path / "x.hpcm", tmp_path / "x.png"
        result = runner.invoke(main, ["encode", str(image), "-o", str(stream), *encoder])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["decode", str(stream), "-o", str(decoded), "--reference", str(image), *decoder])
        assert result.exit_code == 0, result.output
        assert Image.open(decoded).size == Image.open(image).size
