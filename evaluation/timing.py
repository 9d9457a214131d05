"""Time measurement: a stopwatch that waits for the GPU, and the stage clock of ``hpcm bench``.

``StageTimeline`` is a ``StageClock`` (``hpcm.models.progressive``): the codec and the progressive
schedule open named sections around their stages, and the timeline records a mark at every section
boundary. Each interval between two consecutive marks belongs to the innermost section open during
it (``other`` when none is: Python glue between stages), so the stages of one call add up to the
call's time by construction. Marks are ``time.perf_counter`` readings on CPU and CUDA events on the
device's current stream on a GPU (read after one synchronisation at the end, so timing does not
serialise the stream).

Work that the codec runs on another thread, overlapped with the calling thread's stages (entropy
coding beside the next step's networks), is not in any stage: ``overlapped`` times it (host
``perf_counter``) into ``Measurement.overlapped``, reported beside the stages, never added to them.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence, Union

import torch

OUTSIDE = "other"
# The stages of a codec call in the order they run, as the codec (``Codec``) and the schedule
# (``ProgressiveSchedule``) name their sections; ``other`` is the time outside every section.
STAGES = ("analysis", "hyper", "s1", "transition_s2", "s2", "transition_s3", "s3", "entropy_coding", "synthesis",
          OUTSIDE)
ENCODE_STAGES = tuple(s for s in STAGES if s != "synthesis")
DECODE_STAGES = tuple(s for s in STAGES if s != "analysis")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stopwatch(device: torch.device) -> Iterator[list[float]]:
    """Seconds of wall time of the block, the GPU's queued work included: ``with stopwatch(d) as t: ...; t[0]``."""
    result: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    yield result
    synchronize(device)
    result.append(time.perf_counter() - start)


@dataclass
class Measurement:
    """One measured call: seconds per stage (every stage the call entered), their span, and the wall time."""

    stages: dict[str, float] = field(default_factory=dict)
    span: float = 0.0  # first to last mark: the sum of ``stages``
    wall: float = 0.0  # perf_counter around the call, after synchronising the device
    overlapped: dict[str, float] = field(default_factory=dict)  # per stage: seconds on other threads


Mark = Union[float, "torch.cuda.Event"]


class StageTimeline:
    """A ``StageClock`` that measures the stages of the calls made inside ``measure()``."""

    def __init__(self, device: Union[str, torch.device]) -> None:
        self.device = torch.device(device)
        self._stack: list[str] = []
        self._marks: list[tuple[Mark, str]] = []  # (when, stage that runs from then on)
        self._overlapped: list[tuple[str, float]] = []  # (stage, seconds) of work on other threads
        self._recording = False

    def _mark(self) -> None:
        if not self._recording:
            return
        stage = self._stack[-1] if self._stack else OUTSIDE
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            self._marks.append((event, stage))
        else:
            self._marks.append((time.perf_counter(), stage))

    @contextlib.contextmanager
    def section(self, stage: str) -> Iterator[None]:
        self._stack.append(stage)
        self._mark()
        try:
            yield
        finally:
            self._stack.pop()
            self._mark()

    @contextlib.contextmanager
    def overlapped(self, stage: str) -> Iterator[None]:
        """Time work of ``stage`` that runs on another thread than the sections' (thread-safe)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._recording:
                self._overlapped.append((stage, time.perf_counter() - start))

    def _elapsed(self, start: Mark, end: Mark) -> float:
        if isinstance(start, float):
            return end - start
        return start.elapsed_time(end) / 1000.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Measure the calls of the block; the ``Measurement`` is filled when the block ends."""
        result = Measurement()
        self._marks, self._overlapped, self._recording = [], [], True
        try:
            with stopwatch(self.device) as wall:
                self._mark()
                yield result
                self._mark()
        finally:
            self._recording = False
        result.wall = wall[0]
        for (start, stage), (end, _) in zip(self._marks, self._marks[1:]):
            result.stages[stage] = result.stages.get(stage, 0.0) + self._elapsed(start, end)
        result.span = sum(result.stages.values())
        for stage, seconds in self._overlapped:
            result.overlapped[stage] = result.overlapped.get(stage, 0.0) + seconds
        self._marks, self._overlapped = [], []


def summary(samples: Sequence[float]) -> dict:
    """median, p90 (nearest rank) and count of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return {"median": None, "p90": None, "n": 0}
    rank = max(0, -(-9 * len(ordered) // 10) - 1)  # ceil(0.9 n) - 1
    return {"median": statistics.median(ordered), "p90": ordered[rank], "n": len(ordered)}
