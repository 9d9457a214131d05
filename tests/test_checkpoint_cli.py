import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hpcm.cli import main
from hpcm.codec.images import read_image
from hpcm.models import build_model
from hpcm.models.checkpoint import CheckpointError, convert_model, load_checkpoint, read_checkpoint, save_checkpoint
from hpcm.models.train import TrainConfig, parameter_groups, train


def test_save_load_round_trip(tmp_path):
    model = build_model("phase2", seed=3)
    path = save_checkpoint(model, tmp_path / "m.pth")
    loaded = load_checkpoint(path)
    assert loaded.spec == model.spec
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_official_raw_state_dict_loads_as_baseline(tmp_path):
    model = build_model("baseline", seed=1)
    path = tmp_path / "official.pth.tar"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    assert read_checkpoint(path)[0] is None
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.attn_s1.conv_q.weight, model.attn_s1.conv_q.weight)


def test_wrong_variant_and_bad_files_fail_clearly(tmp_path):
    path = save_checkpoint(build_model("phase1", seed=0), tmp_path / "p1.pth")
    with pytest.raises(CheckpointError, match="hpcm convert"):
        load_checkpoint(path, "phase2")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    raw = tmp_path / "raw.pth"
    torch.save(build_model("phase2", seed=0).state_dict(), raw)
    with pytest.raises(CheckpointError, match="fit phase2, phase2-vrwkv, phase2-preln; pass the variant.*--variant"):
        load_checkpoint(raw)
    with pytest.raises(CheckpointError, match="does not fit variant 'phase3'"):
        load_checkpoint(raw, "phase3")


def test_convert_phase1_to_phase2_carries_shared_tensors():
    phase1 = build_model("phase1", seed=5)
    phase2, report = convert_model(phase1, "phase2", seed=0)
    assert torch.equal(phase2.attn_s3.decay, phase1.attn_s3.decay)  # same RWKV cell at s3
    assert torch.equal(phase2.g_a.branch[0].weight, phase1.g_a.branch[0].weight)
    assert all(k.startswith(("attn_s1.", "attn_s2.")) for k in report.initialised)
    assert any(k.startswith("attn_s1.") for k in report.initialised)
    assert all(k.startswith(("attn_s1.", "attn_s2.")) for k in report.dropped)
    # round trip back: everything phase1 has is restored
    back, back_report = convert_model(phase2, "phase1", seed=9)
    carried_back = [k for k in back_report.carried if not k.startswith(("attn_s1.", "attn_s2."))]
    for key in carried_back:
        assert torch.equal(back.state_dict()[key], phase1.state_dict()[key]), key


def test_rwkv_parameters_get_lower_learning_rate():
    groups = parameter_groups(build_model("phase2", seed=0), lr=1e-4, rwkv_lr_ratio=0.1)
    rwkv = next(g for g in groups if g["name"] == "rwkv_decay_boost")
    assert rwkv["lr"] == pytest.approx(1e-5)
    assert len(rwkv["params"]) == 6  # decay and boost of three cells


@pytest.fixture()
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_trainer_runs_and_learns(image_folder):
    model = build_model("phase2", seed=0)
    before = model.attn_s1.decay.detach().clone()
    images = [read_image(path) for path in sorted(image_folder.iterdir())]
    losses = train(model, TrainConfig(steps=3, batch_size=1, crop=128, lr=1e-3), images, log=None)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not torch.equal(model.attn_s1.decay, before)


def test_cli_info_convert_train(tmp_path, image_folder):
    runner = CliRunner()
    result = runner.invoke(main, ["info", "--variant", "baseline"])
    assert result.exit_code == 0, result.output
    assert "68,505,299" in result.output
    result = runner.invoke(main, ["info", "--variant", "nope"])
    assert result.exit_code != 0 and "unknown variant" in result.output

    src = save_checkpoint(build_model("phase1", seed=0), tmp_path / "p1.pth")
    result = runner.invoke(main, ["convert", str(src), "--to", "phase2", "-o", str(tmp_path / "p2.pth")])
    assert result.exit_code == 0, result.output
    assert "phase1 -> phase2" in result.output and "attn_s1" in result.output
    assert load_checkpoint(tmp_path / "p2.pth").spec.name == "phase2"

    result = runner.invoke(main, ["train", str(image_folder), "--variant", "phase2", "--steps", "1",
                                  "--batch-size", "1", "--crop", "128", "-o", str(tmp_path / "t.pth")])
    assert result.exit_code == 0, result.output
    assert "step 1/1" in result.output and (tmp_path / "t.pth").is_file()
    result = runner.invoke(main, ["train", str(image_folder), "--crop", "512", "-o", str(tmp_path / "x.pth")])
    assert result.exit_code != 0 and "512" in result.output
