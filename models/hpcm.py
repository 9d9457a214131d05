"""HPCM with a configurable hierarchical progressive context model.

Module names and shapes are those of the official ``HPCM`` (lyq133/LIC-HPCM, ``HPCM_Base.py``) so
that its checkpoints load; the cells, context fusion and priors come from a ``VariantSpec``.

Progressive coding runs in 11 steps (2 at s1 = y/4, 3 at s2 = y/2, 6 at s3 = y). The step API
(``begin_progressive`` / ``step_parameters`` / ``step_symbols`` / ``advance`` /
``finish_progressive``) is the single implementation behind the training forward, the codec's
encoder and decoder, and the exported per-step graphs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .cells import CrossAttentionCell, RWKVBlock, RWKVContextCell, RWKVFusionNet
from .entropy import GeneralizedGaussian
from .layers import DWConvRB, conv1x1
from .layout import Y_ALIGNMENT, ScaleLayout, StepMask
from .transforms import AnalysisTransform, HyperAnalysis, HyperSynthesis, SynthesisTransform
from .variants import CellSpec, CrossAttentionCellSpec, PriorSpec, VariantSpec, get_variant

ENTROPY_TABLE_BUFFERS = (
    "scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z", "quantized_cdf_y", "cdf_length_y", "offset_y",
)
SCALES = ("s1", "s2", "s3")


@dataclass(frozen=True)
class Step:
    """One progressive step: its scale, mask part, adaptor and adaptive-parameter index."""

    scale: int  # 0 = s1, 1 = s2, 2 = s3
    part: int
    adaptor: Optional[int]  # None: parameters straight from the hyper prior
    adaptive_param: Optional[int]
    last_of_scale: bool


def _steps() -> tuple[Step, ...]:
    # The official loops index adaptor lists with i - 1 from i = 0, so s2 and s3 start with their
    # last adaptor; trained weights depend on this order.
    steps = [Step(0, 0, None, None, False), Step(0, 1, 0, 0, True)]
    steps += [Step(1, i + 1, (i - 1) % 3, i + 1, i == 2) for i in range(3)]
    steps += [Step(2, i + 2, (i - 1) % 6, i + 4, i == 5) for i in range(6)]
    return tuple(steps)


STEPS = _steps()


class SpatialPrior(nn.Module):
    """``branch_2(branch_1(x) * adaptive_param)``; branch_2 ends in conv1x1(3M, 2M)."""

    def __init__(self, M: int, spec: PriorSpec) -> None:
        super().__init__()

        def block(kind: str) -> nn.Module:
            if kind == "dwconv":
                return DWConvRB(3 * M)
            if kind == "rwkv":
                return RWKVBlock(3 * M, spec.rwkv_hidden_rate)
            raise ValueError(f"unknown prior block kind {kind!r}")

        self.branch_1 = nn.Sequential(*(block(k) for k in spec.branch_1))
        self.branch_2 = nn.Sequential(*(block(k) for k in spec.branch_2), conv1x1(3 * M, 2 * M))

    def forward(self, x: torch.Tensor, adaptive_param: torch.Tensor) -> torch.Tensor:
        return self.branch_2(self.branch_1(x) * adaptive_param)


def _context_cell(spec: CellSpec, dim: int) -> nn.Module:
    if isinstance(spec, CrossAttentionCellSpec):
        return CrossAttentionCell(dim, dim, window_size=spec.window, kernel_size=1)
    return RWKVContextCell(dim, spec.hidden_rate)


@dataclass
class ProgressiveState:
    """What encoder and decoder both know between steps."""

    scales_hyper: torch.Tensor  # (B, M, H, W) scales from h_s
    means_hyper: torch.Tensor
    scale: int
    context_next: torch.Tensor  # (B, 2M, h, w) at the current scale
    y_hat: torch.Tensor  # (B, M, h, w) decoded so far at the current scale, zeros elsewhere
    pending_context: Optional[torch.Tensor] = None


class HPCM(nn.Module):
    """HPCM image codec network. ``HPCM("phase2")`` or ``HPCM(VariantSpec(...))``."""

    def __init__(self, variant: VariantSpec | str = "baseline", M: Optional[int] = None, N: Optional[int] = None) -> None:
        super().__init__()
        spec = get_variant(variant)
        if M is not None or N is not None:
            spec = VariantSpec(**{**spec.__dict__, "M": M or spec.M, "N": N or spec.N})
        self.spec = spec
        M, N = spec.M, spec.N
        self.M, self.N = M, N

        self.g_a = AnalysisTransform(M)
        self.g_s = SynthesisTransform(M)
        self.h_a = HyperAnalysis(M, N)
        self.h_s = HyperSynthesis(M, N)

        self.means_hyper = nn.Parameter(torch.zeros(1, N, 1, 1))
        self.scales_hyper = nn.Parameter(torch.ones(1, N, 1, 1))
        self.entropy_estimation = GeneralizedGaussian()
        for name in ENTROPY_TABLE_BUFFERS:
            self.register_buffer(name, torch.empty(0))

        self.y_spatial_prior_adaptor_list_s1 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(1))
        self.y_spatial_prior_adaptor_list_s2 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(3))
        self.y_spatial_prior_adaptor_list_s3 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(6))
        self.y_spatial_prior_s1_s2 = SpatialPrior(M, spec.prior_s1_s2)
        self.y_spatial_prior_s3 = SpatialPrior(M, spec.prior_s3)
        self.adaptive_params_list = nn.ParameterList(nn.Parameter(torch.ones(1, 3 * M, 1, 1)) for _ in range(10))

        self.attn_s1, self.attn_s2, self.attn_s3 = (_context_cell(c, 2 * M) for c in spec.cells)
        if spec.fusion.kind == "conv1x1":
            self.context_net = nn.ModuleList(conv1x1(2 * M, 2 * M) for _ in range(2))
        else:
            self.context_net = nn.ModuleList(
                RWKVFusionNet(2 * M, spec.fusion.num_blocks, spec.fusion.hidden_rate) for _ in range(2)
            )
        self.layout = ScaleLayout(M)

    # ------------------------------------------------------------------ geometry
    @property
    def alignment(self) -> int:
        """Image sides must be multiples of this (pixels): y tiling, and every attention window."""
        alignment = 16 * Y_ALIGNMENT
        for scale, cell in enumerate(self.spec.cells):
            if isinstance(cell, CrossAttentionCellSpec):
                alignment = math.lcm(alignment, 16 * 2 ** (2 - scale) * cell.window)
        return alignment

    @property
    def num_steps(self) -> int:
        return len(STEPS)

    def check_image_size(self, height: int, width: int) -> None:
        a = self.alignment
        if height % a or width % a or height <= 0 or width <= 0:
            raise ValueError(
                f"{self.spec.name}: image sides must be positive multiples of {a}; got {height}x{width} (pad first)"
            )

    # ------------------------------------------------------------------ progressive steps
    def _cell(self, scale: int) -> nn.Module:
        return (self.attn_s1, self.attn_s2, self.attn_s3)[scale]

    def _prior(self, scale: int) -> SpatialPrior:
        return self.y_spatial_prior_s3 if scale == 2 else self.y_spatial_prior_s1_s2

    def _adaptor(self, scale: int, index: int) -> nn.Module:
        lists = (self.y_spatial_prior_adaptor_list_s1, self.y_spatial_prior_adaptor_list_s2,
                 self.y_spatial_prior_adaptor_list_s3)
        return lists[scale][index]

    def step_mask(self, step: int) -> StepMask:
        s = STEPS[step]
        return (self.layout.s1_masks, self.layout.s2_masks, self.layout.s3_masks)[s.scale][s.part]

    def _to_s1(self, t: torch.Tensor) -> torch.Tensor:
        return self.layout.s2_to_s1.apply(self.layout.full_to_s2.apply(t))

    def at_scale(self, y: torch.Tensor, scale: int) -> torch.Tensor:
        """y (full resolution) re-arranged to scale 0 (s1), 1 (s2) or 2 (s3)."""
        if scale == 2:
            return y
        y_s2 = self.layout.full_to_s2.apply(y)
        return y_s2 if scale == 1 else self.layout.s2_to_s1.apply(y_s2)

    def lift(self, t: torch.Tensor, scale: int) -> torch.Tensor:
        """A tensor at scale 0/1 put back at its full-resolution positions (zeros elsewhere)."""
        if scale == 0:
            t = self.layout.s1_to_s2.apply(t)
        return t if scale == 2 else self.layout.s2_to_full.apply(t)

    def begin_progressive(self, params: torch.Tensor) -> ProgressiveState:
        """State before step 0 from the hyper synthesis output (B, 2M, H, W)."""
        scales, means = params.chunk(2, 1)
        context = torch.cat((self._to_s1(scales), self._to_s1(means)), dim=1)
        B, _, h, w = context.shape
        y_hat = torch.zeros((B, self.M, h, w), dtype=params.dtype, device=params.device)
        return ProgressiveState(scales, means, 0, context, y_hat)

    def step_context(self, step: int, context_next: torch.Tensor, y_hat: torch.Tensor):
        """Network part of a step >= 1: (scales, means, next context) at the step's scale, full maps."""
        s = STEPS[step]
        params = torch.cat((context_next, y_hat), dim=1)
        context = self._prior(s.scale)(self._adaptor(s.scale, s.adaptor)(params), self.adaptive_params_list[s.adaptive_param])
        new_context_next = self._cell(s.scale)(context, context_next)
        scales, means = context.chunk(2, 1)
        return scales, means, new_context_next

    def step_parameters(self, state: ProgressiveState, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and means of step ``step``'s symbols, as dense (B, M/groups, h, w) blocks."""
        s = STEPS[step]
        if s.scale != state.scale:
            raise RuntimeError(f"step {step} is at scale {SCALES[s.scale]}, state is at {SCALES[state.scale]}")
        if s.adaptor is None:
            scales, means = state.context_next.chunk(2, 1)
            state.pending_context = None
        else:
            scales, means, state.pending_context = self.step_context(step, state.context_next, state.y_hat)
        mask = self.step_mask(step)
        full = mask.full(scales)
        return mask.to_dense(scales * full), mask.to_dense(means * full)

    def step_symbols(self, y: torch.Tensor, step: int, y_at_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder side: the y values coded in step ``step``, as a dense block (``y_at_scale``: y
        already moved to the step's scale, to avoid moving it again for every step)."""
        mask = self.step_mask(step)
        y_scale = self.at_scale(y, STEPS[step].scale) if y_at_scale is None else y_at_scale
        return mask.to_dense(y_scale * mask.full(y_scale))

    def transition(self, scale: int, state: ProgressiveState) -> None:
        """Move the state from ``scale`` to the next: up-scale y_hat and context, fuse with hyper params."""
        up = self.layout.s1_to_s2 if scale == 0 else self.layout.s2_to_full
        if scale == 0:
            hyper_s, hyper_m = (self.layout.full_to_s2_hyper.apply(t) for t in (state.scales_hyper, state.means_hyper))
        else:
            hyper_s, hyper_m = (self.layout.s3_hyper(t) for t in (state.scales_hyper, state.means_hyper))
        c_scales, c_means = state.context_next.chunk(2, 1)
        context = torch.cat((up.apply(c_scales), up.apply(c_means)), dim=1)
        context = context + torch.cat((hyper_s, hyper_m), dim=1)
        state.context_next = self.context_net[scale](context)
        state.y_hat = up.apply(state.y_hat)
        state.scale = scale + 1

    def advance(self, state: ProgressiveState, step: int, y_hat_step: torch.Tensor) -> ProgressiveState:
        """Record step ``step``'s decoded values (dense block) and move to the next step."""
        s = STEPS[step]
        state.y_hat = state.y_hat + self.step_mask(step).from_dense(y_hat_step)
        if state.pending_context is not None:
            state.context_next = state.pending_context
            state.pending_context = None
        if s.last_of_scale and s.scale < 2:
            self.transition(s.scale, state)
        return state

    def finish_progressive(self, state: ProgressiveState) -> torch.Tensor:
        if state.scale != 2:
            raise RuntimeError("finish_progressive called before the last step")
        return state.y_hat

    # ------------------------------------------------------------------ forward
    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, z) of an image: g_a then h_a (one graph in exports)."""
        y = self.g_a(x)
        return y, self.h_a(y)

    @staticmethod
    def _ste_round(x: torch.Tensor) -> torch.Tensor:
        return (torch.round(x) - x).detach() + x

    @staticmethod
    def _add_noise(x: torch.Tensor) -> torch.Tensor:
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor, training: Optional[bool] = None) -> dict:
        """Returns ``{"x_hat", "likelihoods": {"y", "z"}}``; noise/STE when training, rounding otherwise."""
        if training is None:
            training = self.training
        self.check_image_size(x.shape[-2], x.shape[-1])
        y = self.g_a(x)
        z = self.h_a(y)
        z_res = z - self.means_hyper
        if training:
            z_hat = self._ste_round(z_res) + self.means_hyper
            z_likelihoods = self.entropy_estimation(self._add_noise(z_res), self.scales_hyper)
        else:
            z_q = torch.round(z_res)
            z_hat = z_q + self.means_hyper
            z_likelihoods = self.entropy_estimation(z_q, self.scales_hyper)

        state = self.begin_progressive(self.h_s(z_hat))
        # Likelihoods are gathered per scale and lifted to full resolution once per scale.
        per_scale: list[Optional[torch.Tensor]] = [None, None, None]
        y_s2 = self.layout.full_to_s2.apply(y)
        y_scales = (self.layout.s2_to_s1.apply(y_s2), y_s2, y)
        for step in range(self.num_steps):
            scales, means = self.step_parameters(state, step)
            residual = self.step_symbols(y, step, y_scales[STEPS[step].scale]) - means
            if training:
                y_q = self._ste_round(residual)
                likelihood = self.entropy_estimation(self._add_noise(residual), scales)
            else:
                y_q = torch.round(residual)
                likelihood = self.entropy_estimation(y_q, scales)
            scale = STEPS[step].scale
            placed = self.step_mask(step).from_dense(likelihood)
            per_scale[scale] = placed if per_scale[scale] is None else per_scale[scale] + placed
            self.advance(state, step, y_q + means)
        y_likelihoods = sum(self.lift(t, scale) for scale, t in enumerate(per_scale))
        x_hat = self.g_s(self.finish_progressive(state))
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # ------------------------------------------------------------------ entropy tables and checkpoints
    def update(self, scale_table: Optional[torch.Tensor] = None) -> None:
        """Compute the quantized CDF tables of y (per scale bucket) and z (per channel) once."""
        from .cdf_tables import default_scale_table, quantized_cdf_tables

        table = default_scale_table() if scale_table is None else scale_table
        beta, bound = self.entropy_estimation.beta_value, self.entropy_estimation.scale_bound
        cdf_z = quantized_cdf_tables(self.scales_hyper.detach().reshape(-1).cpu(), beta=beta, scale_bound=bound)
        cdf_y = quantized_cdf_tables(table.cpu(), beta=beta, scale_bound=bound)
        device = self.means_hyper.device
        values = {"scale_table": table, **dict(zip(("quantized_cdf_z", "cdf_length_z", "offset_z"), cdf_z)),
                  **dict(zip(("quantized_cdf_y", "cdf_length_y", "offset_y"), cdf_y))}
        for name, value in values.items():
            setattr(self, name, value.to(device))

    @property
    def has_entropy_tables(self) -> bool:
        return all(getattr(self, n).numel() > 0 for n in ENTROPY_TABLE_BUFFERS)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads official HPCM checkpoints too: resizes the entropy-table buffers to the checkpoint's
        (empty in checkpoints saved before ``update``), and accepts checkpoints from before the official
        ``adaptive_params_list`` (commit bfd3514b) with a warning, keeping those parameters at ones."""
        state_dict = dict(state_dict)
        for name in ENTROPY_TABLE_BUFFERS:
            if name in state_dict:
                saved = state_dict[name]
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=getattr(self, name).device))
        adaptive = [f"adaptive_params_list.{i}" for i in range(len(self.adaptive_params_list))]
        if strict and not any(k in state_dict for k in adaptive):
            warnings.warn(
                "checkpoint has no adaptive_params_list (saved before the official commit bfd3514b); "
                "keeping those 10 parameters at their initial ones",
                stacklevel=2,
            )
            for key, param in zip(adaptive, self.adaptive_params_list):
                state_dict[key] = param.detach().clone()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_model(variant: VariantSpec | str = "baseline", seed: Optional[int] = None) -> HPCM:
    """A model of ``variant``; with ``seed`` its random initialisation is reproducible."""
    if seed is None:
        return HPCM(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HPCM(variant)
