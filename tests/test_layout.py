import pytest
import torch

from hpcm.models.layout import ScaleLayout
from hpcm.models.progressive import ProgressiveSchedule

from . import official_masks as om

C = 16


@pytest.fixture(scope="module")
def layout():
    return ScaleLayout(C)


@pytest.mark.parametrize("H,W", [(8, 8), (16, 24), (24, 16), (32, 40)])
def test_static_moves_equal_official_boolean_masks(layout, H, W):
    torch.manual_seed(0)
    y = torch.randn(2, C, H, W)
    y_s2 = om.select(y, om.mask_s2(C, H, W), H // 2, W // 2)
    y_s1 = om.select(y_s2, om.mask_rec_s2(C, H // 2, W // 2), H // 4, W // 4)
    assert torch.equal(layout.full_to_s2.apply(y), y_s2)
    assert torch.equal(layout.s2_to_s1.apply(y_s2), y_s1)
    assert torch.equal(layout.s1_to_s2.apply(y_s1), om.scatter(y_s1, om.mask_rec_s2(C, H // 2, W // 2), H // 2, W // 2))
    assert torch.equal(layout.s2_to_full.apply(y_s2), om.scatter(y_s2, om.mask_s2(C, H, W), H, W))
    assert torch.equal(layout.full_to_s2_hyper.apply(y), om.s2_hyper(y, C, H, W))
    assert torch.equal(layout.s3_hyper(y), om.s3_hyper(y, C, H, W))


@pytest.mark.parametrize("H,W", [(8, 8), (16, 24)])
def test_step_masks_equal_official(layout, H, W):
    like_s1 = torch.zeros(1, C, H // 4, W // 4)
    like_s2 = torch.zeros(1, C, H // 2, W // 2)
    like_s3 = torch.zeros(1, C, H, W)
    for ours, theirs in zip(layout.s1_masks, om.step_masks_s1(C, H // 4, W // 4)):
        assert torch.equal(ours.full(like_s1), theirs)
    for ours, theirs in zip(layout.s2_masks, om.step_masks_s2(C, H // 2, W // 2)):
        assert torch.equal(ours.full(like_s2), theirs)
    for ours, theirs in zip(layout.s3_masks, om.step_masks_s3(C, H, W)):
        assert torch.equal(ours.full(like_s3), theirs)


def test_dense_blocks_round_trip(layout):
    y = torch.randn(2, C, 16, 24)
    for mask in layout.s1_masks + layout.s2_masks + layout.s3_masks:
        masked = y * mask.full(y)
        dense = mask.select(y)
        assert dense.shape == (2, C // mask.groups, 16, 24)
        assert torch.equal(dense, masked.reshape(2, mask.groups, C // mask.groups, 16, 24).sum(1))
        assert torch.equal(mask.from_dense(dense), masked)


def test_select_by_phase_equals_the_gather(layout):
    """The encoder's strided copy takes exactly the gather's values, NaN and infinities included."""
    y = torch.randn(2, C, 16, 24)
    y[0, 3, 5, 7], y[1, 9, 2, 2], y[1, 0, 15, 23] = float("nan"), float("inf"), -float("inf")
    for mask in layout.s1_masks + layout.s2_masks + layout.s3_masks:
        assert torch.equal(mask.select_by_phase(y).nan_to_num(0.5), mask.select(y).nan_to_num(0.5))
        assert torch.equal(mask.select_by_phase(y).isnan(), mask.select(y).isnan())


def test_symbol_blocks_are_every_steps_symbols(layout):
    """The encoder's one gather of all steps' symbols gives what each step's mask selects, for sizes
    and batches that change between calls (its order is kept for the last size only)."""
    schedule = ProgressiveSchedule(layout, networks=None)
    torch.manual_seed(0)
    for B, H, W in [(1, 16, 24), (2, 32, 16), (1, 16, 24)]:
        y = torch.randn(B, C, H, W)
        y[0, 3, 5, 7] = float("nan")
        y_scales = schedule.all_scales(y)
        blocks = schedule.symbol_blocks(y)
        assert len(blocks) == len(schedule.steps)
        for step, block in enumerate(blocks):
            expected = schedule.symbols(y_scales, step)
            assert block.shape == expected.shape
            assert torch.equal(block.nan_to_num(0.5), expected.nan_to_num(0.5))
        assert sum(int(b.isnan().sum()) for b in blocks) == 1


def test_step_masks_partition_every_position(layout):
    like = torch.zeros(1, C, 8, 8)
    assert torch.equal(sum(m.full(like) for m in layout.s3_masks), torch.ones_like(like))
