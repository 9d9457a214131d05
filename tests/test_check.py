"""``check_export`` judges what a backend returns, including values no tolerance comparison catches."""

from __future__ import annotations

import pytest
import torch

from hpcm.export.onnx_export import GRAPH_KINDS, graph_specs
from hpcm.models import build_model
from hpcm.runtime.check import Tolerances, check_export


class EagerGraphs:
    """A graph backend made of the exporter's own graph modules, with one graph's output poisoned."""

    fingerprint = "eager-graph-modules"

    def __init__(self, model, poisoned: str, checked: list[str]) -> None:
        self.manifest = {"graphs": {g: {} for g in checked}, "precision": "fp32"}
        names = [g for g in GRAPH_KINDS if g != "forward"]
        self.specs = {s.name: s for s in graph_specs(model, (model.alignment, model.alignment), names=names)}
        self.poisoned = poisoned

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.specs[graph]
        with torch.no_grad():
            outputs = spec.module(*(inputs[n] for n in spec.inputs))
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        result = dict(zip(spec.outputs, outputs))
        if graph == self.poisoned:
            first = spec.outputs[0]
            result[first] = result[first].clone()
            result[first].view(-1)[0] = float("nan")
        return result


@pytest.fixture(scope="module")
def model():
    model = build_model("phase2", seed=0).eval()
    model.update()
    return model


def _image():
    return [("random", torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)))]


def test_nan_output_fails_the_check(model):
    report = check_export(model, EagerGraphs(model, poisoned="synthesis", checked=["synthesis"]), _image(),
                          Tolerances(), log=lambda _: None)
    assert not report["passed"]
    assert any("non-finite" in f and "synthesis" in f for f in report["failures"]), report["failures"]


def test_same_graphs_pass_the_check(model):
    report = check_export(model, EagerGraphs(model, poisoned="", checked=["synthesis", "step06"]), _image(),
                          Tolerances(), log=lambda _: None)
    assert report["passed"], report["failures"]
    assert report["graphs"]["step06"][0]["outputs"]["scales"]["max"] == 0.0
