"""Eager PyTorch as a runner: the model's own modules behind the graph names."""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

from hpcm.errors import RunnerError
from hpcm.log import LOG
from hpcm.models.graphs import GRAPHS, GraphModule
from hpcm.models.hpcm import HPCM

from .base import Runner


def torch_fingerprint(device: torch.device, dtype: torch.dtype = torch.float32, wkv: str = "") -> str:
    """What eager PyTorch computes with: versions, device model and precision (TF32 is always off),
    and on a GPU which Bi-WKV implementation runs (``wkv``: the CUDA kernel or the vectorised form)."""
    precision = str(dtype).replace("torch.", "")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index).replace(" ", "_")
        return (f"torch-{torch.__version__}/cuda-{torch.version.cuda}/cudnn-{torch.backends.cudnn.version()}/"
                f"{name}/{precision}/tf32-off" + (f"/wkv-{wkv}" if wkv else ""))
    return f"torch-{torch.__version__}/{device.type}/{precision}"


def cuda_wkv_implementation() -> str:
    """Registers the Bi-WKV CUDA kernel for ``hpcm::biwkv`` on CUDA (a JIT build the first time, cached
    by PyTorch) and returns ``"kernel"``; where it cannot be built (no nvcc or ninja) the op keeps its
    vectorised form, said once as a notice, and this returns ``"vectorised"``."""
    from hpcm.plugins.biwkv.cuda import load_cuda_kernel

    try:
        load_cuda_kernel()
    except (RuntimeError, OSError, ImportError) as exc:
        LOG.warning("the Bi-WKV CUDA kernel could not be built (%s); the GPU runs its vectorised PyTorch "
                    "form, which is slower", str(exc).strip().splitlines()[-1] if str(exc).strip() else exc)
        return "vectorised"
    return "kernel"


class EagerRunner(Runner):
    """Runs ``model``'s graphs eagerly on ``device`` in ``dtype``.

    The given model is switched to eval mode and otherwise never changed: where it already lives on ``device`` in ``dtype`` the runner
    uses it as it is, otherwise a private copy moved there (made when activated).
    """

    kind = "eager"
    device_types = ("cpu", "cuda")
    # What the networks compute in (bfloat16 and float8 lack kernels the model needs: the Bi-WKV op, conv_transpose).
    dtypes = (torch.float32, torch.float64, torch.float16)

    def __init__(self, model: HPCM, device: Optional[str] = None, dtype: torch.dtype = torch.float32) -> None:
        self.check_options(device, dtype=dtype)
        super().__init__(device)
        self.model = model
        self.dtype = dtype
        self._modules: dict[str, GraphModule] = {}
        self._wkv = ""  # on a GPU: the Bi-WKV implementation chosen when activated

    @classmethod
    def check_options(cls, device: Optional[str] = None, dtype: torch.dtype = torch.float32, **options: Any) -> None:
        super().check_options(device, **options)
        if dtype not in cls.dtypes:
            names = ", ".join(str(t).replace("torch.", "") for t in cls.dtypes)
            raise RunnerError(f"the eager runner computes in {names}, not {str(dtype).replace('torch.', '')}")

    @property
    def graphs(self) -> tuple[str, ...]:
        return tuple(GRAPHS)

    @property
    def fingerprint(self) -> str:
        return torch_fingerprint(self.device, self.dtype, self._wkv)

    def _activate(self) -> None:
        if self.device.type == "cuda" and not self._wkv:
            self._wkv = cuda_wkv_implementation()
        reference = next(self.model.parameters())
        model = self.model
        if reference.device != self.device or reference.dtype != self.dtype:
            model = copy.deepcopy(self.model).to(device=self.device, dtype=self.dtype)
        self._modules = {name: GraphModule(model.eval(), name) for name in GRAPHS}

    def _deactivate(self) -> None:
        self._modules = {}

    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        module = self._modules[graph]
        args = [inputs[name].to(device=self.device, dtype=self.dtype) for name in module.graph.input_names]
        with torch.no_grad():
            outputs = module(*args)
        return dict(zip(module.graph.output_names, outputs))
