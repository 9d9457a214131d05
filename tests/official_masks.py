"""The official HPCM mask construction, re-stated from its 4x4 micro-mask definitions with boolean ops.

Test oracle for ``hpcm.models.layout``: it shares no code with it and uses exactly the boolean
``masked_select`` / index-assignment semantics that the static layout replaces.
"""

from __future__ import annotations

import torch

# 4x4 micro masks of the official code, eight 2-position patterns (s2/s3) and eight 1-position ones (s1).
EIGHT = [
    [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], [[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]],
    [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], [[0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
]
EIGHT_S1 = [
    [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
]
CAT_LIST = [
    [0, 2, 4, 6, 1, 3, 5, 7], [1, 3, 5, 7, 0, 2, 4, 6], [2, 4, 6, 0, 3, 5, 7, 1], [3, 5, 7, 1, 2, 4, 6, 0],
    [4, 6, 0, 2, 5, 7, 1, 3], [5, 7, 1, 3, 4, 6, 0, 2], [6, 0, 2, 4, 7, 1, 3, 5], [7, 1, 3, 5, 6, 0, 2, 4],
]


def _tile(micro, h, w):
    m = torch.tensor(micro, dtype=torch.float32)
    return m.repeat(h // m.shape[0], w // m.shape[1])


def _per_group(tiles, C, h, w):
    return torch.cat([t.expand(C // len(tiles), h, w) for t in tiles], dim=0)[None]


def four_phase(h, w):
    return [_tile(m, h, w) for m in ([[1, 0], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [1, 0]], [[0, 0], [0, 1]])]


def mask_s2(C, H, W):  # 8 per-group masks at full res, each (1, C/8, H, W)
    a, b = [0, 2, 4, 6, 1, 3, 5, 7], [1, 3, 5, 7, 0, 2, 4, 6]
    return [(_tile(EIGHT[a[i]], H, W) + _tile(EIGHT[b[i]], H, W)).expand(1, C // 8, H, W) for i in range(8)]


def mask_s1_full(C, H, W):
    idx = [0, 2, 4, 6, 1, 3, 5, 7]
    return [_tile(EIGHT_S1[i], H, W).expand(1, C // 8, H, W) for i in idx]


def mask_rec_s2(C, h, w):
    return [m.expand(1, C // 4, h, w) for m in four_phase(h, w)]


def select(y, masks, h, w):
    groups, out = len(masks), []
    Cg = y.shape[1] // groups
    for i, m in enumerate(masks):
        out.append(y[:, i * Cg:(i + 1) * Cg].masked_select(m.bool()).view(y.shape[0], Cg, h, w))
    return torch.cat(out, 1)


def scatter(y, masks, H, W):
    out = torch.zeros(y.shape[0], y.shape[1], H, W)
    out[torch.cat(masks, 1).expand_as(out).bool()] = y.reshape(-1)
    return out


def s2_hyper(p, C, H, W):
    out = torch.zeros(p.shape[0], C, H // 2, W // 2)
    src = torch.cat([a - b for a, b in zip(mask_s2(C, H, W), mask_s1_full(C, H, W))], 1).expand_as(p).bool()
    dst = torch.cat(mask_rec_s2(C, H // 2, W // 2), 1).expand_as(out).bool()
    out[~dst] = p[src]
    return out


def s3_hyper(p, C, H, W):
    keep = ~torch.cat(mask_s2(C, H, W), 1).expand_as(p).bool()
    out = torch.zeros_like(p)
    out[keep] = p[keep]
    return out


def step_masks_s1(C, h, w):
    m0 = _tile([[1, 0], [0, 1]], h, w)
    m1 = 1 - m0
    half = lambda t: t.expand(1, C // 2, h, w)
    return [torch.cat((half(m0), half(m1)), 1), torch.cat((half(m1), half(m0)), 1)]


def step_masks_s2(C, h, w):
    m = [t.expand(1, C // 4, h, w) for t in four_phase(h, w)]
    order = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1], [1, 0, 3, 2]]
    return [torch.cat([m[j] for j in o], 1) for o in order]


def step_masks_s3(C, H, W):
    tiles = [_tile(EIGHT[i], H, W) for i in range(8)]
    return [torch.cat([tiles[CAT_LIST[i][j]].expand(1, C // 8, H, W) for j in range(8)], 1) for i in range(8)]
