"""HPCM's progressive schedule: 11 steps over three scales, driven in one place.

y is coded in 2 steps at s1 (y at 1/4 resolution), 3 at s2 (1/2) and 6 at s3 (full). Before each step
the context networks turn what is known so far into the step's scales and means; after it the step's
decoded values join y_hat; after the last step of s1 and of s2, context and y_hat move to the next
scale (static layout moves, here) and a fusion network mixes the up-scaled context with the hyper
prior's parameters there.

``ProgressiveSchedule.run`` is the only loop over the steps. The training/eval forward, the codec's
encoder and decoder, the cross-backend mismatch count and ``hpcm check`` all drive it, and differ only
in the ``code_step`` callback that turns a step's (scales, means) into its quantised residual. The
networks behind the schedule are anything with ``step_context`` and ``fuse_context`` (``ContextNetworks``):
the eager model itself, or a graph runner running the exported step and fusion graphs. The schedule
and the layout moves are not networks: they are the same code whatever runs the networks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Protocol

import torch

from .layout import ScaleLayout, StepMask

SCALES = ("s1", "s2", "s3")


@dataclass(frozen=True)
class Step:
    """One progressive step: its scale, mask part, adaptor and adaptive-parameter index."""

    scale: int  # 0 = s1, 1 = s2, 2 = s3
    part: int
    adaptor: Optional[int]  # None: parameters straight from the hyper prior (step 0)
    adaptive_param: Optional[int]
    last_of_scale: bool

    @property
    def has_network(self) -> bool:
        return self.adaptor is not None


def _steps() -> tuple[Step, ...]:
    # The official loops index adaptor lists with i - 1 from i = 0, so s2 and s3 start with their
    # last adaptor; trained weights depend on this order.
    steps = [Step(0, 0, None, None, False), Step(0, 1, 0, 0, True)]
    steps += [Step(1, i + 1, (i - 1) % 3, i + 1, i == 2) for i in range(3)]
    steps += [Step(2, i + 2, (i - 1) % 6, i + 4, i == 5) for i in range(6)]
    return tuple(steps)


STEPS = _steps()


class ContextNetworks(Protocol):
    """The networks a schedule calls between steps (all maps at the step's scale)."""

    def step_context(self, step: int, context_next: torch.Tensor, y_hat: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scales, means, new context_next) of step ``step`` >= 1, as full maps."""

    def fuse_context(self, scale: int, context: torch.Tensor) -> torch.Tensor:
        """The next scale's context_next from the up-scaled context plus hyper parameters there
        (``scale``: 1 = s2, 2 = s3)."""


@dataclass
class ProgressiveState:
    """What encoder and decoder both know between steps."""

    scales_hyper: torch.Tensor  # (B, M, H, W) scales from h_s
    means_hyper: torch.Tensor
    scale: int
    context_next: torch.Tensor  # (B, 2M, h, w) at the current scale
    y_hat: torch.Tensor  # (B, M, h, w) decoded so far at the current scale, zeros elsewhere
    pending_context: Optional[torch.Tensor] = None


class StageClock(Protocol):
    """Where time goes: the schedule and the codec open a named section around each stage of their
    work (``s1``..``s3`` around a scale's steps, ``transition_s2``/``transition_s3`` around the moves
    between scales; the codec adds its own). Sections nest; a clock attributes each moment to the
    innermost open one. Work of a stage that runs on another thread, beside the sections of the
    calling one (the codec's overlapped entropy coding), is timed by ``overlapped`` and kept apart.
    ``hpcm.evaluation.timing.StageTimeline`` records both for ``hpcm bench``."""

    def section(self, stage: str) -> ContextManager[None]: ...

    def overlapped(self, stage: str) -> ContextManager[None]: ...


class _NoClock:
    """The clock of an unmeasured run: its sections cost a ``nullcontext``."""

    def section(self, stage: str) -> ContextManager[None]:
        return contextlib.nullcontext()

    def overlapped(self, stage: str) -> ContextManager[None]:
        return contextlib.nullcontext()


NO_CLOCK: StageClock = _NoClock()


# (step, scales, means) -> the step's quantised residual (dense block, as scales); the schedule adds
# the means back to get the step's y_hat.
CodeStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class ProgressiveSchedule:
    """The 11 steps of HPCM over a ``ScaleLayout`` and a set of ``ContextNetworks``."""

    steps = STEPS

    def __init__(self, layout: ScaleLayout, networks: ContextNetworks, clock: StageClock = NO_CLOCK) -> None:
        self.layout = layout
        self.networks = networks
        self.clock = clock
        # (y's shape and device, where each step's symbols lie in y): the last image size's, see symbol_blocks
        self._symbol_order: Optional[tuple[tuple, torch.Tensor, list[torch.Size]]] = None

    # ------------------------------------------------------------------ geometry
    def step_mask(self, step: int) -> StepMask:
        s = STEPS[step]
        return (self.layout.s1_masks, self.layout.s2_masks, self.layout.s3_masks)[s.scale][s.part]

    def all_scales(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """y at s1, s2 and s3, moving it once."""
        y_s2 = self.layout.full_to_s2.apply(y)
        return self.layout.s2_to_s1.apply(y_s2), y_s2, y

    def lift(self, t: torch.Tensor, scale: int) -> torch.Tensor:
        """A tensor at scale 0/1 put back at its full-resolution positions (zeros elsewhere)."""
        if scale == 0:
            t = self.layout.s1_to_s2.apply(t)
        return t if scale == 2 else self.layout.s2_to_full.apply(t)

    def symbols(self, y_scales: tuple[torch.Tensor, ...], step: int) -> torch.Tensor:
        """The y values coded in step ``step`` as a dense block (``y_scales`` from ``all_scales``)."""
        return self.step_mask(step).select(y_scales[STEPS[step].scale])

    def symbol_blocks(self, y: torch.Tensor) -> list[torch.Tensor]:
        """y's values of every step as dense blocks in step order (what ``symbols`` gives), taken in
        one gather: the codec's encoder takes them while y is still in the caches, so that each step
        is left a subtraction of its means."""
        index, shapes = self.symbol_order(y)
        flat = y.reshape(-1).index_select(0, index)
        return [block.view(shape) for block, shape in zip(flat.split([s.numel() for s in shapes]), shapes)]

    def symbol_order(self, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
        """Where in y (flat) each step's symbols lie, all steps in order, and the steps' block shapes.
        Found by moving y's own flat positions through ``all_scales`` and the steps' masks (the moves
        are exact on integers), so it is the layout's code, not a second description of it; kept for
        the last size seen (int32 up to 2^31 positions: as many bytes as y)."""
        key = (tuple(y.shape), y.device)
        if self._symbol_order is None or self._symbol_order[0] != key:
            # int32 where it holds every position: half the memory traffic of int64 for this per-size
            # cost (index_select takes either)
            dtype = torch.int32 if y.numel() < 2**31 else torch.int64
            positions = torch.arange(1, y.numel() + 1, dtype=dtype, device=y.device).view(y.shape)
            scales = tuple(t.contiguous() for t in self.all_scales(positions))
            blocks = [self.step_mask(k).select_by_phase(scales[s.scale]) for k, s in enumerate(STEPS)]
            index = torch.cat([b.reshape(-1) for b in blocks]) - 1
            # that each position is taken once is the layout's tested property (tests/test_layout.py);
            # checking it here too would double this per-size cost
            if index.numel() != y.numel() or bool((index < 0).any()):
                raise RuntimeError("the steps' masks do not take every position of y")
            self._symbol_order = (key, index, [b.shape for b in blocks])
        return self._symbol_order[1], self._symbol_order[2]

    # ------------------------------------------------------------------ the steps
    def begin(self, params: torch.Tensor) -> ProgressiveState:
        """State before step 0 from the hyper synthesis output (B, 2M, H, W)."""
        scales, means = params.chunk(2, 1)
        to_s1 = self.layout.s2_to_s1.apply
        context = torch.cat((to_s1(self.layout.full_to_s2.apply(scales)),
                             to_s1(self.layout.full_to_s2.apply(means))), dim=1)
        B, _, h, w = context.shape
        y_hat = torch.zeros((B, context.shape[1] // 2, h, w), dtype=params.dtype, device=params.device)
        return ProgressiveState(scales, means, 0, context, y_hat)

    def parameters(self, state: ProgressiveState, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and means of step ``step``'s symbols, as dense (B, M/groups, h, w) blocks."""
        s = STEPS[step]
        if s.scale != state.scale:
            raise RuntimeError(f"step {step} is at scale {SCALES[s.scale]}, state is at {SCALES[state.scale]}")
        if s.has_network:
            scales, means, state.pending_context = self.networks.step_context(step, state.context_next, state.y_hat)
        else:
            scales, means = state.context_next.chunk(2, 1)
            state.pending_context = None
        mask = self.step_mask(step)
        return mask.select(scales), mask.select(means)

    def advance(self, state: ProgressiveState, step: int, y_hat_step: torch.Tensor) -> None:
        """Record step ``step``'s decoded values (dense block) and move on (through a transition
        after the last step of s1 and of s2)."""
        s = STEPS[step]
        state.y_hat = state.y_hat + self.step_mask(step).from_dense(y_hat_step)
        if state.pending_context is not None:
            state.context_next = state.pending_context
            state.pending_context = None
        if s.last_of_scale and s.scale < 2:
            self.transition(state)

    def transition(self, state: ProgressiveState) -> None:
        """Move context and y_hat from the state's scale to the next; fuse the context with the hyper
        parameters at the positions the new scale still has to code."""
        layout, scale = self.layout, state.scale
        with self.clock.section(f"transition_{SCALES[scale + 1]}"):
            up = layout.s1_to_s2 if scale == 0 else layout.s2_to_full
            hyper = layout.full_to_s2_hyper.apply if scale == 0 else layout.s3_hyper
            c_scales, c_means = state.context_next.chunk(2, 1)
            context = torch.cat((up.apply(c_scales), up.apply(c_means)), dim=1)
            context = context + torch.cat((hyper(state.scales_hyper), hyper(state.means_hyper)), dim=1)
            state.context_next = self.networks.fuse_context(scale + 1, context)
            state.y_hat = up.apply(state.y_hat)
            state.scale = scale + 1

    def run(self, params: torch.Tensor, code_step: CodeStep) -> torch.Tensor:
        """Every step in order from the hyper synthesis output ``params``; returns y_hat (full)."""
        with self.clock.section(SCALES[0]):
            state = self.begin(params)
        for step in range(len(STEPS)):
            # code_step (entropy coding, in the codec) runs outside the scale's section
            with self.clock.section(SCALES[STEPS[step].scale]):
                scales, means = self.parameters(state, step)
            residual = code_step(step, scales, means)
            with self.clock.section(SCALES[STEPS[step].scale]):
                self.advance(state, step, residual + means)
        if state.scale != 2:
            raise RuntimeError("the schedule ended before reaching s3")
        return state.y_hat
