"""hpcm bench, eval on a learned model, ablations: on a tiny configuration (M = N = 32) and small images.

No assertion on how long anything takes: the stages must add up to each call's own wall time, every
stage must be seen, and memory must grow with the image."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hpcm.cli import main
from hpcm.errors import VariantError
from hpcm.evaluation.ablation import ablation_variants
from hpcm.evaluation.bench import BenchConfig, markdown, run_configuration
from hpcm.evaluation.flops import WKV_MACS_PER_ELEMENT, _wkv_flops, module_costs
from hpcm.evaluation.timing import DECODE_STAGES, ENCODE_STAGES, OUTSIDE, StageTimeline
from hpcm.models import build_model, get_variant
from hpcm.models.checkpoint import save_checkpoint
from hpcm.models.variants import CrossAttentionCellSpec, RWKVCellSpec
from hpcm.plugins.biwkv.op import biwkv

TINY = "phase2+M=32+N=32"


def test_timeline_attributes_each_moment_to_the_innermost_section() -> None:
    timeline = StageTimeline("cpu")
    with timeline.section("ignored"):  # sections outside measure() record nothing
        pass
    with timeline.measure() as m:
        with timeline.section("outer"):
            with timeline.section("inner"):
                time.sleep(0.001)
            with timeline.section("inner"):
                pass
        with timeline.section("outer"):
            pass
    assert set(m.stages) == {"outer", "inner", OUTSIDE}
    assert sum(m.stages.values()) == pytest.approx(m.span) and 0 < m.span <= m.wall


@pytest.fixture(scope="module")
def bench_runs() -> dict:
    """The tiny configuration at two sizes, each in its fresh process (one timed run each).

    The parent holds 1 GiB while they run: a child's peak must be its own, not the parent's size at the
    fork (which ``ru_maxrss`` would report, masking the growth with the image)."""
    spec = get_variant(TINY).to_dict()
    ballast = bytearray(b"\x01") * 2**30
    runs = {side: run_configuration(BenchConfig(TINY, side, side, variant=spec, warmup=0, repeats=1))
            for side in (128, 256)}
    del ballast
    return runs


def test_bench_stages_add_up_to_each_call(bench_runs: dict) -> None:
    result = bench_runs[128]
    for direction, stages in (("encode", ENCODE_STAGES), ("decode", DECODE_STAGES)):
        assert set(result[direction]["stages"]) == set(stages)
        for run in result[direction]["runs"]:
            # every stage of the codec ran and was seen (other: glue between stages, may round to 0)
            assert all(run["stages"].get(s, 0) > 0 for s in stages if s != OUTSIDE), (direction, run["stages"])
            assert sum(run["stages"].values()) == pytest.approx(run["wall"], rel=0.03)
    assert result["encode"]["wall"]["n"] == 1 and result["bytes"] > 0


def test_bench_reports_the_coder_overlapped_and_its_throughput(bench_runs: dict) -> None:
    """The encoder's coding on the worker thread is reported beside the stages, not in them; the
    coder's throughput counts the symbols of z and y (M = N = 32 at 128x128: 32*8*8 + 32*2*2)."""
    result = bench_runs[128]
    assert result["symbols"] == 32 * 8 * 8 + 32 * 2 * 2 and result["weights"] == "seeded, untrained (seed 0)"
    for direction in ("encode", "decode"):
        run = result[direction]["runs"][0]
        assert set(run["overlapped"]) <= {"entropy_coding"}
        assert result[direction]["coder_symbols_per_second"]["median"] > 0
    assert result["encode"]["runs"][0]["overlapped"]["entropy_coding"] > 0
    assert result["decode"]["runs"][0]["overlapped"] == {}  # the decoder cannot run ahead of its networks


def test_bench_memory_is_positive_and_grows_with_the_image(bench_runs: dict) -> None:
    small, large = bench_runs[128]["memory"], bench_runs[256]["memory"]
    assert small["kind"] == "peak_rss" and 0 < small["loaded_bytes"] <= small["peak_bytes"]
    assert large["peak_bytes"] > small["peak_bytes"]


def test_bench_report_has_ratio_columns(bench_runs: dict) -> None:
    costs = {TINY: {"total_parameters": 1e6, "total_macs_per_pixel": 2e3}}
    table = markdown({"results": list(bench_runs.values()), "costs": costs}, compare=TINY)
    assert f"| encode / {TINY} |" in table and "| 1.00 | 1.00 | 1.00 | 1.00 |" in table
    assert "| seeded, untrained (seed 0) | 2,176 |" in table  # the coding table: weights and symbols


def test_bench_takes_a_checkpoint(tmp_path: Path) -> None:
    """``hpcm bench -c`` benches the checkpoint's model (its variant, its weights)."""
    model = build_model(TINY, seed=3).eval()
    model.update()
    checkpoint = save_checkpoint(model, tmp_path / "tiny.pth")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "-c", str(checkpoint), "--size", "128x128", "--repeats", "1",
                                       "--warmup", "0", "--no-macs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["results"]
    assert (row["variant"], row["weights"]) == (TINY, f"checkpoint {checkpoint}")
    refused = CliRunner().invoke(main, ["bench", "-c", str(checkpoint), "--ablate", "cells", "-o", str(out)])
    assert refused.exit_code != 0 and "--checkpoint" in refused.output


def test_wkv_flop_formula_is_used_by_the_counter() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    w, u = torch.rand(3), torch.rand(3)
    k, v = torch.rand(2, 3, 7), torch.rand(2, 3, 7)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.hpcm.biwkv: _wkv_flops})
    with counter:
        biwkv(w, u, k, v)
    assert counter.get_total_flops() == 2 * WKV_MACS_PER_ELEMENT * 2 * 3 * 7


def test_module_costs_add_up() -> None:
    model = build_model(TINY, seed=0)
    costs = module_costs(model)
    assert sum(costs["macs_per_pixel"].values()) == pytest.approx(costs["total_macs_per_pixel"])
    assert costs["total_parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(costs["parameters"].values()) == costs["total_parameters"]
    assert {"g_a", "g_s", "attn_s1", "attn_s2", "attn_s3", "context_net"} <= set(costs["macs_per_pixel"])


def test_variant_expressions_and_ablations() -> None:
    spec = get_variant("baseline+s2=rwkv3+fusion=rwkv4x2+M=64")
    assert spec.name == "baseline+s2=rwkv3+fusion=rwkv4x2+M=64" and spec.M == 64
    assert spec.cells[1] == RWKVCellSpec(3) and isinstance(spec.cells[0], CrossAttentionCellSpec)
    assert (spec.fusion.kind, spec.fusion.hidden_rate, spec.fusion.num_blocks) == ("rwkv", 4, 2)
    assert get_variant(spec.name) == spec  # the name rebuilds the variant
    with pytest.raises(VariantError, match="cross<window>"):
        get_variant("baseline+s2=lstm")
    cells = ablation_variants("baseline", "cells")
    assert [s.name for s in cells] == ["baseline+s1=rwkv2", "baseline+s2=rwkv3", "baseline+s3=rwkv4"]
    base = get_variant("baseline")
    assert all(sum(a != b for a, b in zip(s.cells, base.cells)) == 1 for s in cells)
    back = ablation_variants("phase2", "cells")
    assert [s.cells[i] for i, s in enumerate(back)] == list(base.cells)
    assert ablation_variants("phase4-preln", "prior")[0].prior_s3 == get_variant("phase3").prior_s3


def test_eval_of_the_untrained_model_checks_decoding_against_the_forward(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    coarse = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((184, 168), Image.BICUBIC).save(folder / "a.png")
    out = tmp_path / "tiny.json"
    result = CliRunner().invoke(main, ["eval", str(folder), "--variant", TINY, "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert "untrained" in document["name"] and "meaningless R-D" in document["description"]
    assert "equal the eval-mode forward's x_hat in 8-bit on all 1 coded images" in document["description"]
    assert len(document["results"]["bpp"]) == 1 and document["results"]["bpp"][0] > 0
    row = json.loads((tmp_path / "tiny.rows.jsonl").read_text().splitlines()[1])
    assert row["forward_max_diff"] == 0 and row["ms_ssim_rgb"] is not None


def test_bench_plan_refuses_what_cannot_run_before_measuring(tmp_path: Path) -> None:
    from hpcm.errors import ConfigError, RunnerError
    from hpcm.evaluation.bench import bench_plan

    plan = bench_plan(["baseline"], [], [(256, 256), (512, 256)], ablate="cells")
    names = ["baseline", "baseline+s1=rwkv2", "baseline+s2=rwkv3", "baseline+s3=rwkv4"]
    assert [c.name for c in plan.configurations] == names * 2 and plan.compare == "baseline"
    assert [spec.name for spec in plan.variants] == names and {c.size for c in plan.configurations} == {
        "256x256", "512x256"}
    with pytest.raises(ConfigError, match="--compare 'phase9'"):
        bench_plan([TINY], [], [(128, 128)], compare="phase9")
    with pytest.raises(ConfigError, match="--export excludes --variant"):
        bench_plan([TINY], [tmp_path], [(128, 128)])
    with pytest.raises(RunnerError, match="give --export DIR"):
        bench_plan([TINY], [], [(128, 128)], backend="onnxruntime")


def test_bench_command_writes_its_three_files(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "-v", TINY, "--size", "128x128", "--repeats", "1", "--warmup", "0",
                                       "--no-macs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["results"]] == [TINY] and report["costs"] == {}
    assert f"| {TINY} | 128x128 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
