import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hpcm.models import HPCM, STEPS, VARIANTS, build_model
from hpcm.models.cells import CrossAttentionCell, RWKVBlock, RWKVContextCell, RWKVFusionNet
from hpcm.models.variants import CROSS_S1, CROSS_S3, RWKVCellSpec

FIXTURE = Path(__file__).parent / "fixtures" / "hpcm_base_state_dict.json"


# One variant per structure (the -vrwkv variants share their structure with phaseN, the -preln
# ones of phase1..3 too), so the module-scope models stay within memory.
STRUCTURES = ("baseline", "phase1", "phase2", "phase3", "phase4", "phase4-preln")


@pytest.fixture(scope="module")
def models():
    return {name: build_model(name, seed=0).eval() for name in STRUCTURES}


def test_baseline_state_dict_equals_official_table(models):
    official = json.loads(FIXTURE.read_text())["entries"]
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in models["baseline"].state_dict().items()]
    assert len(ours) == 290
    assert sorted(map(tuple, map(lambda e: (e[0], tuple(e[1]), e[2]), ours))) == sorted(
        (e[0], tuple(e[1]), e[2]) for e in official
    )


def test_baseline_parameter_count(models):
    assert sum(p.numel() for p in models["baseline"].parameters()) == 68_505_299


def test_variant_totals(models):
    totals = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    assert totals == {
        "baseline": 68_505_299, "phase1": 73_469_147, "phase2": 80_939_243,
        "phase3": 91_688_699, "phase4": 158_543_163, "phase4-preln": 101_029_515,
    }


def test_variant_structure(models):
    assert isinstance(models["baseline"].attn_s1, CrossAttentionCell)
    assert isinstance(models["phase1"].attn_s2, CrossAttentionCell)
    assert isinstance(models["phase1"].attn_s3, RWKVContextCell)
    for name in ("phase2", "phase3", "phase4"):
        m = models[name]
        for cell in (m.attn_s1, m.attn_s2, m.attn_s3):
            assert isinstance(cell, RWKVContextCell)
            assert cell.decay.shape == (640,) and cell.boost.shape == (640,)
    assert isinstance(models["phase2"].context_net[0], torch.nn.Conv2d)
    assert isinstance(models["phase3"].context_net[1], RWKVFusionNet)
    # the fork's phase4: all-RWKV priors (2 + 1 and 3 + 2 blocks, hidden 4)
    for prior, blocks in ((models["phase4"].y_spatial_prior_s1_s2, (2, 2)), (models["phase4"].y_spatial_prior_s3, (3, 3))):
        assert [len(prior.branch_1), len(prior.branch_2)] == list(blocks)
        assert all(isinstance(b, RWKVBlock) for b in (*prior.branch_1, *prior.branch_2[:-1]))
        assert prior.branch_1[0].channel_mix.key.out_channels == 4 * 960
    assert models["phase4-preln"].y_spatial_prior_s3.branch_2[0].__class__.__name__ == "RWKVBlock"
    assert models["phase4-preln"].y_spatial_prior_s3.branch_1[0].__class__.__name__ == "DWConvRB"
    assert models["phase3"].y_spatial_prior_s3.branch_2[0].__class__.__name__ == "DWConvRB"
    assert models["phase2"].attn_s2.block.channel_mix.key.out_channels == 3 * 640


def test_wiring_and_wkv_mode_are_data():
    """phaseN, phaseN-vrwkv and phaseN-preln differ only in fields of their spec."""
    for n in range(1, 5):
        fork, vrwkv, preln = (VARIANTS[f"phase{n}{suffix}"] for suffix in ("", "-vrwkv", "-preln"))
        assert (fork.rwkv_block, fork.wkv) == ("post_ln", "exact")
        assert replace(vrwkv, name=fork.name, description=fork.description, wkv="exact") == fork
        assert preln.rwkv_block == "pre_ln" and preln.wkv == "exact"
    model = HPCM(replace(VARIANTS["phase2-vrwkv"], M=16, N=32))
    assert model.attn_s1.block.wiring == "post_ln" and model.attn_s1.block.spatial_mix.mode.name == "vrwkv"


@pytest.mark.parametrize("wiring", ["post_ln", "pre_ln"])
def test_rwkv_block_wiring(wiring):
    """post_ln: x + gamma*(LN(mix(x)) - x), the fork's; pre_ln: x + gamma*mix(LN(x))."""
    block = RWKVBlock(32, 2, wiring).eval()
    with torch.no_grad():
        block.gamma1.uniform_(0.5, 1.5)
        block.gamma2.uniform_(0.5, 1.5)
    x = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(0))
    g1, g2 = block.gamma1[:, None, None], block.gamma2[:, None, None]
    with torch.no_grad():
        if wiring == "post_ln":
            h = x + g1 * (block.ln1(block.spatial_mix(x)) - x)
            expected = h + g2 * (block.ln2(block.channel_mix(h)) - h)
        else:
            h = x + g1 * block.spatial_mix(block.ln1(x))
            expected = h + g2 * block.channel_mix(block.ln2(h))
        assert torch.equal(block(x), expected)


def test_spec_api():
    model = HPCM("phase2", M=320, N=256)
    assert isinstance(model.attn_s1, RWKVContextCell)
    assert model.attn_s1.decay is model.attn_s1.block.spatial_mix.decay
    out = model(torch.rand(1, 3, 128, 128), training=False)
    assert out["x_hat"].shape == (1, 3, 128, 128)


def test_forward_takes_given_rounding_decisions(models):
    """Evaluation returns its rounding decisions and takes another run's (how the fp16 export measures
    its forward with float32's decisions); a changed decision changes x_hat."""
    model = models["phase2"]
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        own = model(x, training=False)
        again = model(x, training=False, rounding=own["rounding"])
        changed = own["rounding"]._replace(y=(own["rounding"].y[0] + 1, *own["rounding"].y[1:]))
        moved = model(x, training=False, rounding=changed)
    assert own["rounding"].count() == 320 * 8 * 8 + 256 * 2 * 2  # y and z of a 128x128 image
    assert torch.equal(again["x_hat"], own["x_hat"]) and own["rounding"].differences(again["rounding"]) == 0
    assert own["rounding"].differences(moved["rounding"]) == own["rounding"].y[0].numel()
    assert not torch.allclose(moved["x_hat"], own["x_hat"])
    with pytest.raises(ValueError, match="evaluation"):
        model(x, training=True, rounding=own["rounding"])


def test_ablation_variant_is_data_not_a_class():
    from dataclasses import replace

    spec = replace(VARIANTS["baseline"], name="rwkv-s2", cells=(CROSS_S1, RWKVCellSpec(3), CROSS_S3))
    model = HPCM(spec)
    assert isinstance(model.attn_s2, RWKVContextCell) and isinstance(model.attn_s1, CrossAttentionCell)
    assert type(model) is HPCM


def test_step_table_keeps_official_indexing():
    assert [s.adaptor for s in STEPS] == [None, 0, 2, 0, 1, 5, 0, 1, 2, 3, 4]
    assert [s.adaptive_param for s in STEPS] == [None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [s.scale for s in STEPS] == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(("name", "size"), [(name, (256, 256)) for name in STRUCTURES]
                         + [(name, (512, 768)) for name in STRUCTURES if name != "phase4-preln"])
def test_forward_every_variant(models, name, size):
    model = models[name]
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x, training=False)
    assert out["x_hat"].shape == x.shape
    y_lik, z_lik = out["likelihoods"]["y"], out["likelihoods"]["z"]
    assert y_lik.shape == (1, 320, size[0] // 16, size[1] // 16)
    assert z_lik.shape == (1, 256, size[0] // 64, size[1] // 64)
    for lik in (y_lik, z_lik):
        assert torch.isfinite(lik).all() and (lik > 0).all() and (lik <= 1).all()


def test_alignment_is_stated_and_checked(models):
    assert models["baseline"].alignment == 256
    assert models["phase2"].alignment == 128
    with pytest.raises(ValueError, match="multiples of 256"):
        models["baseline"](torch.rand(1, 3, 128, 256))
    with torch.no_grad():
        models["phase2"](torch.rand(1, 3, 128, 384))


def test_forward_uses_no_boolean_selection(models, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("masked_select used")

    monkeypatch.setattr(torch.Tensor, "masked_select", forbidden)
    monkeypatch.setattr(torch, "masked_select", forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    with torch.no_grad():
        models["phase2"](torch.rand(1, 3, 128, 128))


def test_training_forward_backpropagates_to_decay():
    model = build_model("phase2", seed=0).train()
    out = model(torch.rand(1, 3, 128, 128), training=True)
    loss = out["x_hat"].square().mean() - sum(torch.log(l).mean() for l in out["likelihoods"].values())
    loss.backward()
    assert model.attn_s3.decay.grad is not None and torch.isfinite(model.attn_s3.decay.grad).all()
    assert model.attn_s3.decay.grad.abs().sum() > 0


def test_old_checkpoint_without_adaptive_params_loads_with_warning(models):
    state = {k: v for k, v in models["baseline"].state_dict().items() if not k.startswith("adaptive_params_list")}
    fresh = HPCM("baseline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.load_state_dict(state, strict=True)
    assert any("adaptive_params_list" in str(w.message) for w in caught)
    assert torch.equal(fresh.g_a.branch[0].weight, models["baseline"].g_a.branch[0].weight)


def test_filled_entropy_tables_load_into_fresh_model(models):
    state = dict(models["baseline"].state_dict())
    state["scale_table"] = torch.linspace(0.12, 64, 60)
    state["quantized_cdf_y"] = torch.zeros(60, 10, dtype=torch.int32)
    fresh = HPCM("baseline")
    fresh.load_state_dict(state, strict=True)
    assert fresh.quantized_cdf_y.shape == (60, 10) and fresh.quantized_cdf_y.dtype == torch.int32
