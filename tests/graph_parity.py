"""Graphs on a runner against the eager model's own graph modules, on seeded sample inputs."""

from __future__ import annotations

from typing import Iterator

import torch

from hpcm.export.tracing import graph_specs


def graph_outputs(runner, model, size: tuple[int, int], names: list[str], seed: int, batch: int = 1
                  ) -> Iterator[tuple[str, str, torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    """(graph, output, runner's value, eager value) for every output of every graph in ``names``."""
    for spec in graph_specs(model, size, batch=batch, names=names, seed=seed):
        with torch.no_grad():
            expected = spec.module(*spec.inputs.values())
        got = runner.run(spec.name, dict(spec.inputs))
        for name, e in zip(spec.outputs, expected):
            yield spec.name, name, got[name], e


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the expected output's largest magnitude."""
    return float((got.cpu() - expected).abs().max()) / (float(expected.abs().max()) or 1.0)
