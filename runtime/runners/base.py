"""The runner interface: one lifecycle for eager PyTorch, ONNX Runtime and TensorRT.

As in Polygraphy, constructing a runner is cheap and checks what it can (the device, the artifact);
``activate()`` acquires what running needs (the model on its device, sessions, engines) and
``deactivate()`` releases it; ``run(graph, inputs)`` runs one graph of ``hpcm.models.graphs`` by
name on torch tensors on ``device`` and returns its outputs by name on ``device``. ``fingerprint``
says what computes (library, version, device, precision): the codec records it in each bitstream.

Use a runner as a context manager::

    export = ExportDir.open("out/phase2")
    with OnnxRuntimeRunner(export) as runner:
        data = Codec(runner, export.codec_parameters).compress(image).data
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Optional

import torch

from hpcm.errors import RunnerError
from hpcm.export.artifact import ExportDir


class Runner(ABC):
    """Runs named graphs; subclasses implement ``_activate``, ``_deactivate`` and ``_run``."""

    kind: ClassVar[str]  # "eager", "onnxruntime", "tensorrt"
    # Device types this runner can compute on; the first is the default.
    device_types: ClassVar[tuple[str, ...]]

    def __init__(self, device: Optional[str] = None) -> None:
        self.device = self.resolve_device(device)
        self._active = False

    @classmethod
    def check_options(cls, device: Optional[str] = None, **options: Any) -> None:
        """Refuse, before anything is built, a device or an option of this runner it cannot use here
        (the constructor applies the same checks)."""
        cls.resolve_device(device)

    @classmethod
    def resolve_device(cls, device: Optional[str]) -> torch.device:
        """``device`` (None: the default) as a torch device, or a RunnerError when this runner
        cannot compute there."""
        try:
            resolved = torch.device(device or cls.device_types[0])
        except (RuntimeError, TypeError) as exc:
            raise RunnerError(f"--device {device!r} is not a device (use cpu, cuda or cuda:N)") from exc
        if resolved.type not in cls.device_types:
            raise RunnerError(f"the {cls.kind} runner computes on {' or '.join(cls.device_types)} only, "
                              f"not on --device {device}")
        if resolved.type == "cuda":
            if not torch.cuda.is_available():
                raise RunnerError(f"--device {device or resolved}: no CUDA device is visible to PyTorch here")
            if resolved.index is None:
                resolved = torch.device("cuda", torch.cuda.current_device())
        return resolved

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> "Runner":
        if not self._active:
            self._activate()
            self._active = True
        return self

    def deactivate(self) -> None:
        if self._active:
            self._deactivate()
            self._active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self.deactivate()

    # ------------------------------------------------------------------ running
    @property
    @abstractmethod
    def graphs(self) -> tuple[str, ...]:
        """The graphs this runner can run."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """What computes: library and version, device, precision (recorded in bitstreams)."""

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self._active:
            raise RunnerError(f"the {self.kind} runner is not active: use it as `with runner:` or call activate()")
        if graph not in self.graphs:
            raise RunnerError(f"the {self.kind} runner has no graph {graph!r} (it has {', '.join(self.graphs)})")
        return self._run(graph, inputs)

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class ExportRunner(Runner):
    """A runner of an export folder's graphs; subclasses set ``_fingerprint`` in their constructor."""

    def __init__(self, export: ExportDir, device: Optional[str] = None) -> None:
        super().__init__(device)
        self.export = export
        self._fingerprint = ""

    @property
    def graphs(self) -> tuple[str, ...]:
        return self.export.graphs

    @property
    def fingerprint(self) -> str:
        return self._fingerprint
