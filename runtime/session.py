"""Opening a codec: a runner for a PyTorch model or an export folder, and the parameters to go with it.

``open_runner`` is the one place that maps (backend, source, device) to a runner and refuses the
combinations that cannot work; ``codec_session`` wraps it with the runner's lifecycle::

    with codec_session("onnxruntime", export=ExportDir.open("out/phase2")) as codec:
        data = codec.compress(image).data
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from hpcm.codec import Codec, CodecParameters
from hpcm.codec.codec import weights_digest
from hpcm.errors import ArtifactError, RunnerError
from hpcm.export.artifact import ExportDir
from hpcm.models.hpcm import HPCM
from hpcm.models.progressive import NO_CLOCK, StageClock

from .runners import GRAPH_RUNNERS, RUNNERS, runner_class
from .runners.base import Runner


def open_runner(backend: str, model: Optional[HPCM] = None, export: Optional[ExportDir] = None,
                device: Optional[str] = None, **options: Any) -> Runner:
    """A (not yet active) runner: ``eager`` runs ``model``; ``onnxruntime``/``tensorrt`` run ``export``."""
    if backend not in RUNNERS:
        raise RunnerError(f"unknown backend {backend!r}; use one of {', '.join(RUNNERS)}")
    if backend == "eager":
        if model is None:
            raise RunnerError("the eager backend runs a PyTorch model: give --checkpoint (or no --export) "
                              "instead of an export folder")
        return runner_class(backend)(model, device=device, **options)
    if export is None:
        raise RunnerError(f"the {backend} backend runs an export folder's graphs: give --export DIR "
                          f"(made by hpcm-export); backends for a checkpoint: eager")
    return runner_class(backend)(export, device=device, **options)


def codec_parameters(model: Optional[HPCM], export: Optional[ExportDir]) -> CodecParameters:
    """The export's parameters when there is an export (checked against ``model`` if both are
    given), else the model's."""
    if export is None:
        if model is None:
            raise RunnerError("a codec needs a model or an export folder")
        return CodecParameters.from_model(model)
    parameters = export.codec_parameters
    if model is not None and weights_digest(model) != parameters.weights_digest:
        raise ArtifactError(f"{export.path} was exported from other weights than the given model's; pass the "
                            "checkpoint it was exported from (or export again)")
    return parameters


@contextlib.contextmanager
def codec_session(backend: str, model: Optional[HPCM] = None, export: Optional[ExportDir] = None,
                  device: Optional[str] = None, max_pixels: Optional[int] = None, clock: StageClock = NO_CLOCK,
                  **options: Any) -> Iterator[Codec]:
    """A codec on an active runner (deactivated when the block ends): ``eager`` codes with ``model``
    and its tables, the graph backends with ``export`` and the export's parameters. ``max_pixels``:
    the codec's pixel limit (default: the configured one); ``clock`` sees its stages (``Codec``)."""
    runner = open_runner(backend, model=model, export=export, device=device, **options)
    parameters = export.codec_parameters if backend in GRAPH_RUNNERS else CodecParameters.from_model(model)
    with runner:
        yield Codec(runner, parameters, max_pixels=max_pixels, clock=clock)


def eager_codec(model: HPCM, device: Optional[str] = None) -> Codec:
    """The codec of ``model`` on eager PyTorch, ready to use (an eager runner holds nothing that
    needs releasing, so no ``with`` block is needed)."""
    from .runners.eager import EagerRunner

    return Codec(EagerRunner(model, device=device).activate(), CodecParameters.from_model(model))
