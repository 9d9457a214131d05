"""The Bi-WKV operator contract, read from ``contract.json`` beside this file.

Everything that names, exports, builds or loads the operator (the PyTorch op, the ONNX exporter,
the TensorRT plugin's CMake build, the runtimes and the tests) reads these values here, so that the
op_type the exporter writes is the one the plugin registers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONTRACT_PATH = Path(__file__).with_name("contract.json")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[str, ...]
    dtypes: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class WKVContract:
    op_type: str
    domain: str
    opset_version: int
    torch_op: str
    plugin_version: str
    plugin_namespace: str
    layout: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def onnx_attributes(self) -> dict[str, str]:
        """Attributes every exported node carries (what TensorRT's ONNX parser reads)."""
        return {"plugin_version": self.plugin_version, "plugin_namespace": self.plugin_namespace}


def load_contract(path: Path = CONTRACT_PATH) -> WKVContract:
    raw = json.loads(path.read_text())

    def specs(key: str) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(s["name"], tuple(s["shape"]), tuple(s["dtypes"]), s["doc"]) for s in raw[key]
        )

    return WKVContract(
        op_type=raw["op_type"],
        domain=raw["domain"],
        opset_version=int(raw["opset_version"]),
        torch_op=raw["torch_op"],
        plugin_version=str(raw["plugin_version"]),
        plugin_namespace=str(raw["plugin_namespace"]),
        layout=raw["layout"],
        inputs=specs("inputs"),
        outputs=specs("outputs"),
    )


CONTRACT = load_contract()
