"""HPCM's codec-facing API with every network computed by exported graphs on a graph backend.

``GraphModel(model, backend)`` behaves like ``model`` for the codec (``hpcm.runtime.codec``) and the
cross-backend tools: the eager model contributes only what is not a network (the static scale
layout, step masks, entropy tables, weights digest), while analysis, hyper synthesis, the ten step
networks, the two scale transitions and synthesis run as graphs on the backend (ONNX Runtime or
TensorRT). The step bookkeeping is HPCM's own code, borrowed unchanged, so encoder and decoder
follow exactly the same sequence on every backend.
"""

from __future__ import annotations

from typing import Protocol

import torch

from hpcm.models.hpcm import HPCM, ProgressiveState

TRANSITION_GRAPHS = ("transition_s1_s2", "transition_s2_s3")


class GraphBackend(Protocol):
    fingerprint: str

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class GraphModel:
    def __init__(self, model: HPCM, backend: GraphBackend) -> None:
        manifest = getattr(backend, "manifest", {})
        exported = manifest.get("weights_digest")
        if exported is not None:
            from .codec import weights_digest

            if exported != weights_digest(model).hex():
                raise ValueError(
                    "the export was made from other weights than this model's; pass the checkpoint it was "
                    "exported from (or export again)"
                )
        self.model = model
        self.backend = backend
        self.backend_fingerprint = backend.fingerprint

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _run(self, graph: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.backend.run(graph, inputs)
        return {k: v.to(self._device()) for k, v in outputs.items()}

    # Bookkeeping shared with the eager model.
    begin_progressive = HPCM.begin_progressive
    step_parameters = HPCM.step_parameters
    step_symbols = HPCM.step_symbols
    advance = HPCM.advance
    finish_progressive = HPCM.finish_progressive
    step_mask = HPCM.step_mask
    at_scale = HPCM.at_scale
    _to_s1 = HPCM._to_s1

    # Networks, as graphs.
    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._run("analysis", x=x)
        return out["y"], out["z"]

    def h_s(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self._run("hyper_synthesis", z_hat=z_hat)["params"]

    def g_s(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self._run("synthesis", y_hat=y_hat)["x_hat"]

    def step_context(self, step: int, context_next: torch.Tensor, y_hat: torch.Tensor):
        out = self._run(f"step{step:02d}", context_next=context_next, y_hat=y_hat)
        return out["scales"], out["means"], out["new_context_next"]

    def transition(self, scale: int, state: ProgressiveState) -> None:
        out = self._run(TRANSITION_GRAPHS[scale], context_next=state.context_next, y_hat=state.y_hat,
                        scales_hyper=state.scales_hyper, means_hyper=state.means_hyper)
        state.context_next = out["new_context_next"]
        state.y_hat = out["new_y_hat"]
        state.scale = scale + 1
