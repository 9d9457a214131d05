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
    earlier_plugin_versions: tuple[str, ...]
    layout: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    formulas: dict[str, str]  # mode name -> formula, in the order of the kernel's HpcmBiwkvMode
    default_mode: str  # the mode of a node without the attribute (every node of version 1)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.formulas)

    def node_attributes(self, mode: str) -> dict[str, str]:
        """Attributes of an exported node computing ``mode``: the plugin's version and namespace (what
        TensorRT's ONNX parser picks the creator by) and the mode."""
        if mode not in self.formulas:
            raise ValueError(f"{self.op_type} has no mode {mode!r}; its modes: {', '.join(self.formulas)}")
        return {"plugin_version": self.plugin_version, "plugin_namespace": self.plugin_namespace, "mode": mode}

    def compile_definitions(self) -> list[str]:
        """The contract as the C++ sources read it: preprocessor definitions for the native ONNX Runtime op
        and the emulated plugin build (plugins/CMakeLists.txt defines the same for the TensorRT plugin)."""
        def literals(values: tuple[str, ...]) -> str:
            return ",".join(f'"{value}"' for value in values)

        return [f'-DHPCM_BIWKV_OP_TYPE="{self.op_type}"', f'-DHPCM_BIWKV_DOMAIN="{self.domain}"',
                f'-DHPCM_BIWKV_PLUGIN_VERSION="{self.plugin_version}"',
                f'-DHPCM_BIWKV_PLUGIN_NAMESPACE="{self.plugin_namespace}"',
                f"-DHPCM_BIWKV_EARLIER_PLUGIN_VERSIONS={literals(self.earlier_plugin_versions)}",
                f"-DHPCM_BIWKV_MODE_NAMES={literals(self.modes)}", f'-DHPCM_BIWKV_DEFAULT_MODE="{self.default_mode}"']


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
        earlier_plugin_versions=tuple(str(v) for v in raw["earlier_plugin_versions"]),
        layout=raw["layout"],
        inputs=specs("inputs"),
        outputs=specs("outputs"),
        formulas={mode["name"]: mode["formula"] for mode in raw["modes"]},
        default_mode=next(a["default"] for a in raw["attributes"] if a["name"] == "mode"),
    )


CONTRACT = load_contract()
