"""``check_export`` judges what a runner returns, including values no tolerance comparison catches."""

from __future__ import annotations

import pytest
import torch

from hpcm.codec import Codec, CodecParameters
from hpcm.models import build_model
from hpcm.runtime.check import Tolerances, check_export
from hpcm.runtime.runners.eager import EagerRunner


class PoisonedRunner(EagerRunner):
    """The eager runner offering only ``checked`` graphs (besides what the codec needs), with the first
    output of one graph turned to NaN in its first element."""

    def __init__(self, model, poisoned: str, checked: list[str]) -> None:
        super().__init__(model)
        self.poisoned = poisoned
        self.checked = checked

    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        result = super()._run(graph, inputs)
        if graph == self.poisoned:
            first = next(iter(result))
            result[first] = result[first].clone()
            result[first].view(-1)[0] = float("nan")
        return result


@pytest.fixture(scope="module")
def model():
    model = build_model("phase2", seed=0).eval()
    model.update()
    return model


def _check(model, runner: PoisonedRunner) -> dict:
    parameters = CodecParameters.from_model(model)
    image = [("random", torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)))]
    with runner, EagerRunner(model) as eager:
        return check_export(Codec(eager, parameters), Codec(runner, parameters), image, Tolerances(),
                            graphs=runner.checked)


def test_nan_output_fails_the_check(model):
    report = _check(model, PoisonedRunner(model, poisoned="synthesis", checked=["synthesis"]))
    assert not report["passed"]
    assert any("non-finite" in f and "synthesis" in f for f in report["failures"]), report["failures"]


def test_same_graphs_pass_the_check(model):
    report = _check(model, PoisonedRunner(model, poisoned="", checked=["synthesis", "step06"]))
    assert report["passed"], report["failures"]
    assert set(report["graphs"]) == {"synthesis", "step06"}
    assert report["graphs"]["step06"][0]["outputs"]["scales"]["max"] == 0.0
