"""HPCM with a configurable hierarchical progressive context model.

Module names and shapes are those of the official ``HPCM`` (lyq133/LIC-HPCM, ``HPCM_Base.py``) so
that its checkpoints load; the cells, context fusion and priors come from a ``VariantSpec``.

Progressive coding runs in 11 steps (2 at s1 = y/4, 3 at s2 = y/2, 6 at s3 = y), driven by
``progressive.ProgressiveSchedule``; the model provides the networks it calls between steps
(``step_context``, ``fuse_context``), which are also the exported step and fusion graphs.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import nn

from hpcm.config import DEFAULT_VARIANT
from hpcm.errors import ImageError, VariantError

from .cdf_tables import TABLE_NAMES
from .cells import CrossAttentionCell, RWKVBlock, RWKVContextCell, RWKVFusionNet
from .entropy import GeneralizedGaussian
from .layers import DWConvRB, conv1x1
from .layout import ScaleLayout
from .progressive import STEPS, ProgressiveSchedule
from .seeding import portable_convolutions_
from .transforms import AnalysisTransform, HyperAnalysis, HyperSynthesis, SynthesisTransform
from .variants import VARIANTS, CellSpec, CrossAttentionCellSpec, PriorSpec, VariantSpec, get_variant

# The most parameters a model built from a spec of unknown origin (a --variant file, a checkpoint) may
# have: about 2.5 times phase4's 158.5 M, 1.6 GB of float32 weights. The spec's ranges alone
# (variants.LIMITS) would allow 1.7 G.
MAX_PARAMETERS = 400_000_000


class Rounding(NamedTuple):
    """The rounding decisions of an evaluation forward: round(z - means_hyper), and round(y - means) of
    every progressive step in order (the integers a codec would code)."""

    z: torch.Tensor
    y: tuple[torch.Tensor, ...]

    def differences(self, other: "Rounding") -> int:
        """How many decisions ``other`` makes otherwise (same image and sizes)."""
        return sum(int((a != b.to(a.dtype)).sum()) for a, b in zip((self.z, *self.y), (other.z, *other.y)))

    def count(self) -> int:
        """How many decisions there are."""
        return sum(t.numel() for t in (self.z, *self.y))


class SpatialPrior(nn.Module):
    """``branch_2(branch_1(x) * adaptive_param)``; branch_2 ends in conv1x1(3M, 2M)."""

    def __init__(self, M: int, spec: PriorSpec, rwkv_block: str, wkv: str) -> None:
        super().__init__()

        def block(kind: str) -> nn.Module:
            if kind == "dwconv":
                return DWConvRB(3 * M)
            if kind == "rwkv":
                return RWKVBlock(3 * M, spec.rwkv_hidden_rate, rwkv_block, wkv)
            raise VariantError(f"unknown prior block kind {kind!r}")

        self.branch_1 = nn.Sequential(*(block(k) for k in spec.branch_1))
        self.branch_2 = nn.Sequential(*(block(k) for k in spec.branch_2), conv1x1(3 * M, 2 * M))

    def forward(self, x: torch.Tensor, adaptive_param: torch.Tensor) -> torch.Tensor:
        return self.branch_2(self.branch_1(x) * adaptive_param)


def _context_cell(spec: CellSpec, dim: int, variant: VariantSpec) -> nn.Module:
    if isinstance(spec, CrossAttentionCellSpec):
        return CrossAttentionCell(dim, dim, window_size=spec.window, kernel_size=1)
    return RWKVContextCell(dim, spec.hidden_rate, variant.rwkv_block, variant.wkv)


class HPCM(nn.Module):
    """HPCM image codec network. ``HPCM("phase2")`` or ``HPCM(VariantSpec(...))``; a bare ``HPCM()``
    is ``hpcm.config.DEFAULT_VARIANT`` (``HPCM_Baseline()`` is the official HPCM-Base)."""

    def __init__(self, variant: VariantSpec | str = DEFAULT_VARIANT, M: Optional[int] = None,
                 N: Optional[int] = None) -> None:
        super().__init__()
        spec = get_variant(variant)
        if M is not None or N is not None:
            spec = replace(spec, M=M or spec.M, N=N or spec.N)
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
        for name in TABLE_NAMES:
            self.register_buffer(name, torch.empty(0))

        self.y_spatial_prior_adaptor_list_s1 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(1))
        self.y_spatial_prior_adaptor_list_s2 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(3))
        self.y_spatial_prior_adaptor_list_s3 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(6))
        self.y_spatial_prior_s1_s2 = SpatialPrior(M, spec.prior_s1_s2, spec.rwkv_block, spec.wkv)
        self.y_spatial_prior_s3 = SpatialPrior(M, spec.prior_s3, spec.rwkv_block, spec.wkv)
        self.adaptive_params_list = nn.ParameterList(nn.Parameter(torch.ones(1, 3 * M, 1, 1)) for _ in range(10))

        self.attn_s1, self.attn_s2, self.attn_s3 = (_context_cell(c, 2 * M, spec) for c in spec.cells)
        if spec.fusion.kind == "conv1x1":
            self.context_net = nn.ModuleList(conv1x1(2 * M, 2 * M) for _ in range(2))
        else:
            self.context_net = nn.ModuleList(
                RWKVFusionNet(2 * M, spec.fusion.num_blocks, spec.fusion.hidden_rate, spec.rwkv_block, spec.wkv)
                for _ in range(2)
            )
        self.layout = ScaleLayout(M)

    # ------------------------------------------------------------------ geometry
    @property
    def alignment(self) -> int:
        """Image sides must be multiples of this (pixels): ``VariantSpec.alignment``."""
        return self.spec.alignment

    def check_image_size(self, height: int, width: int) -> None:
        a = self.alignment
        if height % a or width % a or height <= 0 or width <= 0:
            raise ImageError(
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

    @property
    def schedule(self) -> ProgressiveSchedule:
        """The progressive steps over this model's own networks."""
        return ProgressiveSchedule(self.layout, self)

    def step_context(self, step: int, context_next: torch.Tensor, y_hat: torch.Tensor):
        """Network part of a step >= 1: (scales, means, next context) at the step's scale, full maps."""
        s = STEPS[step]
        params = torch.cat((context_next, y_hat), dim=1)
        context = self._prior(s.scale)(self._adaptor(s.scale, s.adaptor)(params), self.adaptive_params_list[s.adaptive_param])
        new_context_next = self._cell(s.scale)(context, context_next)
        scales, means = context.chunk(2, 1)
        return scales, means, new_context_next

    def fuse_context(self, scale: int, context: torch.Tensor) -> torch.Tensor:
        """``context_net`` of the transition into ``scale`` (1 = s2, 2 = s3), on the up-scaled context."""
        return self.context_net[scale - 1](context)

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

    def forward(self, x: torch.Tensor, training: Optional[bool] = None, rounding: Optional[Rounding] = None) -> dict:
        """Returns ``{"x_hat", "likelihoods": {"y", "z"}}``; noise/STE when training, rounding otherwise,
        and then also ``"rounding"``, the decisions taken (``Rounding``).

        ``rounding`` (evaluation only): take these decisions instead of rounding here, e.g. those of a
        float32 run when measuring a float16 copy: near a .5 boundary the two may round a residual
        differently, and that moves x_hat by a whole quantisation step whatever the precision.
        """
        if training is None:
            training = self.training
        if training and rounding is not None:
            raise ValueError("rounding decisions apply to evaluation; training adds noise instead")
        self.check_image_size(x.shape[-2], x.shape[-1])
        y = self.g_a(x)
        z = self.h_a(y)
        z_res = z - self.means_hyper
        if training:
            z_hat = self._ste_round(z_res) + self.means_hyper
            z_likelihoods = self.entropy_estimation(self._add_noise(z_res), self.scales_hyper)
        else:
            z_q = torch.round(z_res) if rounding is None else rounding.z.to(z_res.dtype)
            z_hat = z_q + self.means_hyper
            z_likelihoods = self.entropy_estimation(z_q, self.scales_hyper)

        schedule = self.schedule
        y_scales = schedule.all_scales(y)
        # Likelihoods are gathered per scale and lifted to full resolution once per scale.
        per_scale: list[Optional[torch.Tensor]] = [None, None, None]
        decisions: list[torch.Tensor] = []

        def code_step(step: int, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
            residual = schedule.symbols(y_scales, step) - means
            if training:
                y_q = self._ste_round(residual)
                likelihood = self.entropy_estimation(self._add_noise(residual), scales)
            else:
                y_q = torch.round(residual) if rounding is None else rounding.y[step].to(residual.dtype)
                decisions.append(y_q)
                likelihood = self.entropy_estimation(y_q, scales)
            scale = STEPS[step].scale
            placed = schedule.step_mask(step).from_dense(likelihood)
            per_scale[scale] = placed if per_scale[scale] is None else per_scale[scale] + placed
            return y_q

        y_hat = schedule.run(self.h_s(z_hat), code_step)
        y_likelihoods = sum(schedule.lift(t, scale) for scale, t in enumerate(per_scale))
        x_hat = self.g_s(y_hat)
        out = {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}
        if not training:
            out["rounding"] = Rounding(z_q, tuple(decisions))
        return out

    # ------------------------------------------------------------------ entropy tables and checkpoints
    def update(self, scale_table: Optional[torch.Tensor] = None) -> None:
        """Compute the quantized CDF tables of y (per scale bucket) and z (per channel) once."""
        from .cdf_tables import GGMQuantization, default_scale_table, default_y_tables, quantized_cdf_tables

        quantization = GGMQuantization(self.entropy_estimation.beta_value, self.entropy_estimation.scale_bound)
        cdf_z = quantized_cdf_tables(self.scales_hyper.detach().reshape(-1).cpu(), quantization)
        if scale_table is None:
            table, cdf_y = default_scale_table(), default_y_tables(quantization)
        else:
            table = scale_table
            cdf_y = quantized_cdf_tables(table.cpu(), quantization)
        device = self.means_hyper.device
        values = {"scale_table": table, **dict(zip(("quantized_cdf_z", "cdf_length_z", "offset_z"), cdf_z)),
                  **dict(zip(("quantized_cdf_y", "cdf_length_y", "offset_y"), cdf_y))}
        for name, value in values.items():
            setattr(self, name, value.to(device))

    @property
    def has_entropy_tables(self) -> bool:
        return all(getattr(self, n).numel() > 0 for n in TABLE_NAMES)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads official HPCM checkpoints too: resizes the entropy-table buffers to the checkpoint's
        (empty in checkpoints saved before ``update``), and accepts checkpoints from before the official
        ``adaptive_params_list`` (commit bfd3514b) with a warning, keeping those parameters at ones."""
        state_dict = dict(state_dict)
        for name in TABLE_NAMES:
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


def check_model_size(spec: VariantSpec) -> None:
    """Refuse a spec whose model would have more than ``MAX_PARAMETERS``, counted on the meta device
    (module structure only, no memory) before anything is allocated. Built-in variants pass unchecked."""
    if spec in VARIANTS.values():
        return
    with torch.device("meta"):
        count = sum(p.numel() for p in HPCM(spec).parameters())
    if count > MAX_PARAMETERS:
        raise VariantError(f"variant {spec.name!r} would have {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                           "a model may have here (about 2.5 times phase4)")


def build_model(variant: VariantSpec | str = DEFAULT_VARIANT, seed: Optional[int] = None) -> HPCM:
    """A model of ``variant`` (its size checked first); with ``seed`` its random initialisation is reproducible."""
    spec = get_variant(variant)
    try:
        check_model_size(spec)
    except VariantError as exc:
        raise VariantError(f"{variant}: {exc}" if isinstance(variant, (str, Path)) else str(exc)) from exc
    if seed is None:
        return HPCM(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HPCM(spec)
        # the convolutions' default initialisation differs in its last bits between CPU builds
        portable_convolutions_(model)
    return model


# The report's API, the names of the fork's classes: thin constructors over the variant table.
def HPCM_Baseline(M: int = 320, N: int = 256) -> HPCM:  # noqa: N802 - the published name
    """``HPCM("baseline", M, N)``: the official HPCM-Base."""
    return HPCM("baseline", M=M, N=N)


def HPCM_Phase1(M: int = 320, N: int = 256) -> HPCM:  # noqa: N802 - the published name
    """``HPCM("phase1", M, N)``: the fork's ``HPCM_Phase1``."""
    return HPCM("phase1", M=M, N=N)


def HPCM_Phase2(M: int = 320, N: int = 256) -> HPCM:  # noqa: N802 - the published name
    """``HPCM("phase2", M, N)``: the fork's ``HPCM_Phase2``."""
    return HPCM("phase2", M=M, N=N)


def HPCM_Phase3(M: int = 320, N: int = 256) -> HPCM:  # noqa: N802 - the published name
    """``HPCM("phase3", M, N)``: the fork's ``HPCM_Phase3``."""
    return HPCM("phase3", M=M, N=N)


def HPCM_Phase4(M: int = 320, N: int = 256) -> HPCM:  # noqa: N802 - the published name
    """``HPCM("phase4", M, N)``: the fork's ``HPCM_Phase4``."""
    return HPCM("phase4", M=M, N=N)
