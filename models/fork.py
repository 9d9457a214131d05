"""Checkpoints of the LIC-HPCM-LALIC fork: its state_dict layout mapped onto this project's, and its
variant recognised from the keys.

The fork's ``train.py`` saves ``{"epoch", "state_dict", "best_loss", "optimizer", "global_step"}``
(``epoch_best.pth.tar``, ``epoch_<N>.pth.tar``); under its ``CustomDataParallel`` (more than one GPU)
every state_dict key starts with ``module.``. Mapping a fork state_dict onto ours (``from_fork_layout``):

1. a leading ``module.`` is stripped from every key (DataParallel);
2. a context cell's block parts move under ``block.``:
   ``attn_sK.{ln1,ln2,gamma1,gamma2,spatial_mix,channel_mix}`` -> ``attn_sK.block.<same>``
   (fusion and prior blocks, ``context_net.I.blocks.J.*`` and ``y_spatial_prior_*.branch_B.J.*``,
   already have the fork's names);
3. ``.omni_shift.`` -> ``.shift.``;
4. ``...omni_shift.conv5x5_reparam.weight`` is dropped: the fork recomputes it from the training-time
   branches (alpha, conv1x1, conv3x3, conv5x5) on its first evaluation call, so those are
   authoritative and this project always applies them fused;
5. the ``nn.Linear`` weights of the mixes (``spatial_mix.{key,value,receptance,output}``,
   ``channel_mix.{key,value,receptance}``), shaped (out, in), become (out, in, 1, 1) 1x1 convolutions;
6. ``adaptive_params_list.0..9`` are added as ones (1, 3M, 1, 1): in the fork it is a plain Python
   list, so it is neither saved nor trained and stays at its initial ones.

``to_fork_layout`` is the inverse (without the derived ``conv5x5_reparam``, which ``fork_reparam``
computes as the fork does); tests build fork-layout state_dicts with it and the fixtures in
``tests/fixtures/fork_phase*_state_dict.json`` pin the fork's own tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F

DATA_PARALLEL_PREFIX = "module."
ADAPTIVE_PARAMS = 10
_CELL_BLOCK = re.compile(r"^(attn_s[123])\.((?:ln1|ln2|gamma1|gamma2|spatial_mix|channel_mix)(?:\.|$).*)")
_CELL_BLOCK_OURS = re.compile(r"^(attn_s[123])\.block\.(.*)")
_LINEAR = re.compile(r"\.(?:spatial_mix\.(?:key|value|receptance|output)|channel_mix\.(?:key|value|receptance))\.weight$")
_REPARAM = ".omni_shift.conv5x5_reparam.weight"


@dataclass
class ForkMapping:
    """What ``from_fork_layout`` did, for ``hpcm info`` and the load notices."""

    prefix_stripped: bool = False
    moved_under_block: int = 0
    shift_renamed: int = 0
    linear_reshaped: int = 0
    reparam_dropped: list[str] = field(default_factory=list)
    adaptive_params_added: int = 0

    def summary(self) -> str:
        parts = ["'module.' prefixes stripped"] if self.prefix_stripped else []
        parts += [f"{self.moved_under_block} cell keys moved under block.",
                  f"{self.shift_renamed} omni_shift keys renamed shift",
                  f"{self.linear_reshaped} Linear weights reshaped to 1x1 convolutions",
                  f"{len(self.reparam_dropped)} derived conv5x5_reparam weights dropped"]
        if self.adaptive_params_added:
            parts.append(f"{self.adaptive_params_added} adaptive_params_list entries set to ones")
        return "; ".join(parts)


ADAPTIVE_PARAMS_NOTICE = ("fork checkpoint: adaptive_params_list is a plain list in the fork (never saved, never "
                          "trained), so it is set to ones as the fork computes with")


def strip_data_parallel(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, bool]:
    """The state_dict without DataParallel's ``module.`` prefixes (only when every key has one)."""
    if state_dict and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
        return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}, True
    return dict(state_dict), False


def is_fork_layout(keys) -> bool:  # noqa: ANN001 - any iterable of keys
    """True for the fork's own module names (OmniShift as ``omni_shift``, cell blocks not under ``block.``)."""
    return any(".omni_shift." in k or _CELL_BLOCK.match(k) for k in keys)


def from_fork_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, ForkMapping]:
    """A fork state_dict (with or without ``module.``) in this project's layout, and what was mapped."""
    state, stripped = strip_data_parallel(state_dict)
    mapping = ForkMapping(prefix_stripped=stripped)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(_REPARAM):
            mapping.reparam_dropped.append(key)
            continue
        new = key
        cell = _CELL_BLOCK.match(new)
        if cell:
            new = f"{cell.group(1)}.block.{cell.group(2)}"
            mapping.moved_under_block += 1
        if ".omni_shift." in new:
            new = new.replace(".omni_shift.", ".shift.")
            mapping.shift_renamed += 1
        if _LINEAR.search(key) and value.dim() == 2:
            value = value[:, :, None, None]
            mapping.linear_reshaped += 1
        mapped[new] = value
    adaptor = mapped.get("y_spatial_prior_adaptor_list_s1.0.weight")
    if adaptor is not None:
        for i in range(ADAPTIVE_PARAMS):
            key = f"adaptive_params_list.{i}"
            if key not in mapped:
                mapped[key] = torch.ones(1, adaptor.shape[0], 1, 1, dtype=adaptor.dtype)
                mapping.adaptive_params_added += 1
    return mapped, mapping


def fork_reparam(alpha: torch.Tensor, conv1x1: torch.Tensor, conv3x3: torch.Tensor, conv5x5: torch.Tensor) -> torch.Tensor:
    """The fork's ``conv5x5_reparam`` weight from its training-time OmniShift branches."""
    identity = F.pad(torch.ones_like(conv1x1), (2, 2, 2, 2))
    return (alpha[0] * identity + alpha[1] * F.pad(conv1x1, (2, 2, 2, 2)) + alpha[2] * F.pad(conv3x3, (1, 1, 1, 1))
            + alpha[3] * conv5x5)


def to_fork_layout(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Our state_dict as the fork's classes name it (inverse of ``from_fork_layout``): cell blocks out of
    ``block.``, ``shift`` -> ``omni_shift``, 1x1 mix weights as Linear, the derived ``conv5x5_reparam``
    added, ``adaptive_params_list`` left out."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("adaptive_params_list."):
            continue
        new = key
        cell = _CELL_BLOCK_OURS.match(new)
        if cell:
            new = f"{cell.group(1)}.{cell.group(2)}"
        new = new.replace(".shift.", ".omni_shift.")
        if _LINEAR.search(new) and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[new] = value
        if new.endswith(".omni_shift.conv5x5.weight"):
            base = new[: -len("conv5x5.weight")]
            out[base + "conv5x5_reparam.weight"] = fork_reparam(
                out[base + "alpha"], out[base + "conv1x1.weight"], out[base + "conv3x3.weight"], value)
    return out
