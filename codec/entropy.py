"""Entropy coding of the codec's streams, step by step: scale buckets, the boundary guard and rANS
substreams, off the critical path where it can be.

The encoder knows every y from the start, so ``StreamEncoder`` codes step k (buckets, guard
candidates, substreams) on a worker thread while the networks of step k + 1 run; whatever is left
when the image is done runs on the calling thread beside it. The decoder cannot run ahead (step
k + 1's networks need step k's values): ``StreamDecoder`` decodes each step in one pass, its
substreams in parallel. Either way a step is one native pass over its symbols whose substreams run on
the coder's OpenMP team (``rans_core.cpp``), and the thread count never changes a byte.

Where a step's tensors live decides how its buckets are found:

* CPU float32 with the native coder: the coder's pass takes the scales and finds buckets and guard
  candidates itself, and settles the candidates by the guard's float64 rule (the decoder's pass finds
  the listed positions' rows the same way);
* otherwise (a GPU, or the pure-Python coder): buckets (``scale_indexes``) and candidates
  (``ScreenWindows.candidates``) are computed vectorised on the step's device, the coder takes the
  bucket indexes, and ``GuardWriter.settle`` settles the candidates.

Only the candidates are settled in float64 (``guard.py`` owns the rule; ``rans_core.cpp``'s
``nearest_bound`` is held to it by tests); both ways give the same streams.
``LegacyStreamDecoder`` decodes streams of format 2 (one rANS stream for all steps).
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
import torch

from hpcm.models.cdf_tables import scale_indexes
from hpcm.models.progressive import NO_CLOCK, StageClock

from .guard import GuardReader, GuardWriter
from .rans import (NOTHING_LISTED, CdfTables, Coder, CodedStep, RansDecoder, ScaleBuckets, SubstreamReader,
                   pack_substreams, substream_offsets)

# What a step's coding job returns: its substreams, its listed guard positions and their bits.
StepCode = tuple[CodedStep, np.ndarray, np.ndarray]


def _native_scales(coder: Coder, scales: Optional[torch.Tensor]) -> bool:
    """Whether ``coder`` can bucket these scales itself (native, CPU float32)."""
    return coder.native and scales is not None and scales.device.type == "cpu" and scales.dtype == torch.float32


def _host(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``t`` flat on the host as a contiguous numpy array of ``dtype`` (no copy when it already is one)."""
    if t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() and not t.requires_grad:
        return t.numpy().reshape(-1)  # the codec's usual case, in as few calls as a step can take
    return t.detach().reshape(-1).to(device="cpu", dtype=dtype).contiguous().numpy()


class StreamEncoder:
    """Codes the steps of one stream (z: one step; y: the progressive steps, with the guard) into
    substreams. ``add`` takes a step and returns at once when ``overlap`` is on (a worker codes it);
    ``finish`` codes what the worker has not started and returns the stream. Use as a context
    manager, so that an encoder that fails midway drops its queued steps."""

    def __init__(self, tables: CdfTables, buckets: Optional[ScaleBuckets] = None, guard: Optional[GuardWriter] = None,
                 *, threads: int = 1, overlap: bool = False, clock: StageClock = NO_CLOCK) -> None:
        self.tables = tables
        self.buckets = buckets
        self.guard = guard
        self.coder = Coder(threads)
        self.clock = clock
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="hpcm-coder") if overlap else None
        self._steps: list[tuple[Optional[Future], Callable[[], StepCode]]] = []

    def __enter__(self) -> "StreamEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._worker is not None:
            # a job in progress holds its own arrays; it finishes in the background
            self._worker.shutdown(wait=False, cancel_futures=True)

    def add(self, values: torch.Tensor, scales: Optional[torch.Tensor] = None,
            indexes: Optional[torch.Tensor] = None, *, last: bool = False) -> None:
        """Queue one step: ``values`` (rounded symbols) coded with the table rows ``indexes`` or, with
        ``scales``, the scales' buckets (and the guard's listing of those near a boundary). The
        ``last`` step has no network left to overlap with: ``finish`` codes it on the calling thread,
        whose OpenMP team has just run the networks, instead of handing it to the worker."""
        job = self._job(values, scales, indexes)
        if self._worker is None or last:
            self._steps.append((None, job))
        else:
            self._steps.append((self._worker.submit(self._overlapped, job), job))

    def _overlapped(self, job: Callable[[], StepCode]) -> StepCode:
        with self.clock.overlapped("entropy_coding"):
            return job()

    def _job(self, values: torch.Tensor, scales: Optional[torch.Tensor],
             indexes: Optional[torch.Tensor]) -> Callable[[], StepCode]:
        """The step's host work as a callable; device work (buckets, the screen) is done here."""
        v = _host(values, torch.float32)
        offsets = substream_offsets(v.size)
        windows = self.guard.windows if self.guard is not None else None
        if _native_scales(self.coder, scales):
            s = _host(scales, torch.float32)

            def native() -> StepCode:
                # the coder's pass lists the guard's positions itself (GuardWriter.settle's rule)
                coded = self.coder.encode(v, self.tables, offsets, scales=s, buckets=self.buckets, windows=windows)
                return coded, coded.listed, coded.above

            return native
        candidate_scales = None
        if scales is not None:
            indexes = scale_indexes(scales, self.buckets.table.to(scales.device))
            if windows is not None:
                where = windows.candidates(scales, indexes)
                candidate_scales = (_host(where, torch.int64), _host(scales.reshape(-1)[where], torch.float32))
        if indexes is None:
            raise ValueError("a step needs its table indexes or its scales")
        i = _host(indexes, torch.int32)

        def given_indexes() -> StepCode:
            coded = self.coder.encode(v, self.tables, offsets, indexes=i)
            return (coded, *(self._settle(*candidate_scales) if candidate_scales else NOTHING_LISTED))

        return given_indexes

    def _settle(self, candidates: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.guard.settle(candidates, scales) if self.guard is not None else NOTHING_LISTED

    def finish(self) -> bytes:
        """The stream of every step added (the guard's listings recorded in step order)."""
        # the steps the worker has not started (and the last one) run here first, beside the one it is
        # coding; then every result is taken in step order
        done = {i: job() for i, (future, job) in enumerate(self._steps) if future is None or future.cancel()}
        steps: list[CodedStep] = []
        for i, (future, _) in enumerate(self._steps):
            coded, listed, above = done[i] if i in done else future.result()
            steps.append(coded)
            if self.guard is not None:
                self.guard.add_step(listed, above)
        self._steps = []
        return pack_substreams(steps)


class StreamDecoder:
    """Decodes the steps of one stream of format 3, in order (``decode``), then ``finish`` checks
    that nothing is left."""

    def __init__(self, data: bytes, tables: CdfTables, buckets: Optional[ScaleBuckets] = None,
                 guard: Optional[GuardReader] = None, *, threads: int = 1) -> None:
        self.reader = SubstreamReader(data)
        self.tables = tables
        self.buckets = buckets
        self.guard = guard
        self.coder = Coder(threads)

    def decode(self, shape: torch.Size, scales: Optional[torch.Tensor] = None,
               indexes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The next step's symbols (float32, of ``shape``, on the device of ``scales``, else the CPU),
        decoded with the table rows ``indexes`` or the buckets of ``scales`` (and the guard's)."""
        count = math.prod(shape)
        offsets = substream_offsets(count)
        span = self.reader.take(offsets.size - 1)
        positions, above = self.guard.next_step(count) if self.guard is not None else NOTHING_LISTED
        if _native_scales(self.coder, scales):
            # the guard's rows are found in the coder's pass, from the positions and their bits
            out = self.coder.decode(self.reader, span, offsets, self.tables, scales=_host(scales, torch.float32),
                                    buckets=self.buckets, listed=positions, above=above)
        else:
            rows = None
            if scales is not None:
                indexes = scale_indexes(scales, self.buckets.table.to(scales.device))
                if positions.size:
                    listed = torch.from_numpy(positions).to(scales.device)
                    rows = self.guard.rows(scales.reshape(-1)[listed], above)
            out = self.coder.decode(self.reader, span, offsets, self.tables, indexes=_host(indexes, torch.int32),
                                    listed=positions, rows=rows)
        device = scales.device if scales is not None else torch.device("cpu")
        return torch.from_numpy(out).reshape(shape).to(device)

    def finish(self) -> None:
        self.reader.finish()
        if self.guard is not None:
            self.guard.finish()


class LegacyStreamDecoder:
    """``StreamDecoder``'s interface over a stream of format 2 (``RansDecoder``, ``GuardReader.apply_step``)."""

    def __init__(self, data: bytes, tables: CdfTables, buckets: Optional[ScaleBuckets] = None,
                 guard: Optional[GuardReader] = None) -> None:
        self.decoder = RansDecoder(data, tables)
        self.buckets = buckets
        self.guard = guard
        self.coder = Coder()

    def decode(self, shape: torch.Size, scales: Optional[torch.Tensor] = None,
               indexes: Optional[torch.Tensor] = None) -> torch.Tensor:
        if scales is not None:
            indexes = self.coder.bucket_indexes(scales, self.buckets)
            if self.guard is not None:
                indexes = self.guard.apply_step(indexes, scales)
        values = torch.from_numpy(self.decoder.decode(indexes)).reshape(shape)
        device = scales.device if scales is not None else torch.device("cpu")
        return values.to(device=device, dtype=torch.float32)

    def finish(self) -> None:
        self.decoder.finish()
        if self.guard is not None:
            self.guard.finish()
