"""TensorRT as a runner: engines built from an export folder with the Bi-WKV plugin, cached, and run
with torch buffers on a dedicated CUDA stream.

``tensorrt`` is imported only inside the functions that need it: its bindings fail to import where
the TensorRT libraries are missing (they come only from NVIDIA's package index), and everything else
in hpcm-rwkv must keep working there.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from hpcm import config
from hpcm.digests import file_sha256
from hpcm.errors import RunnerError
from hpcm.export.artifact import PRECISIONS, ExportDir, Profile
from hpcm.log import LOG
from hpcm.plugins.biwkv.contract import CONTRACT
from hpcm.plugins.biwkv.trt import find_plugin_library

from .base import ExportRunner


def import_tensorrt():  # noqa: ANN201 - the tensorrt module
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise RunnerError(
            "TensorRT is not usable here: install the TensorRT libraries and Python bindings from NVIDIA's "
            "package index (pip install tensorrt --extra-index-url https://pypi.nvidia.com) on a machine with "
            f"a CUDA GPU; the ONNX Runtime backend needs neither ({exc})"
        ) from exc
    return tensorrt


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, capability: Sequence[int],
                     plugin_sha256: str, profile: Profile, precision: str, weights_sha256: str = "") -> str:
    """Engines are only valid for this exact combination; any change gives a new key.

    ``weights_sha256``: digest of the weights the graph references in the export's shared weights
    file (the .onnx file itself then holds only structure and offsets)."""
    fields = {
        "onnx": onnx_sha256, "weights": weights_sha256, "tensorrt": trt_version, "gpu": gpu_name,
        "compute_capability": list(capability),
        "plugin": plugin_sha256, "profile": [profile.min_size, profile.opt_size, profile.max_size, profile.max_batch],
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def engine_precision(exported: str, requested: Optional[str]) -> str:
    """The engine precision for an export computed in ``exported``: the export's unless asked otherwise.

    An fp32 export may become an fp16 engine (TensorRT 10's FP16 flag); an fp16 export holds
    float16 weights, so an fp32 engine of it would only pretend to be one.
    """
    if requested is None:
        return exported
    if requested not in PRECISIONS:
        raise RunnerError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    if exported == "fp16" and requested == "fp32":
        raise RunnerError("this export computes in float16 (hpcm-export --precision fp16): build it as fp16, "
                         "or re-export with --precision fp32 for float32 engines")
    return requested


class TensorRTRunner(ExportRunner):
    """Runs the graphs of an export folder as TensorRT engines (built on first use, then cached).

    ``profile``: image sizes the engines accept (default: the export's deployment profile);
    ``precision``: engine precision (default: the export's).
    """

    kind = "tensorrt"
    device_types = ("cuda",)

    def __init__(self, export: ExportDir, device: Optional[str] = None, precision: Optional[str] = None,
                 profile: Optional[Profile] = None, cache_dir: Optional[Path] = None,
                 plugin: Optional[Path] = None) -> None:
        super().__init__(export, device)
        manifest = export.manifest
        self.precision = engine_precision(manifest.precision, precision)
        self.trt = import_tensorrt()
        if manifest.wkv != "custom":
            LOG.warning("this export uses the decomposed WKV graph; the plugin is loaded but unused")
        self.profile = (profile or manifest.profile).validate(manifest.alignment)
        self.cache_dir = Path(cache_dir or config.engine_cache_dir())
        self.plugin_path = find_plugin_library(plugin)
        self.plugin_sha256 = file_sha256(self.plugin_path)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        props = torch.cuda.get_device_properties(self.device)
        self.gpu_name, self.capability = props.name, (props.major, props.minor)
        self._fingerprint = (f"tensorrt-{self.trt.__version__}:{self.gpu_name}:sm{props.major}{props.minor}:"
                             f"{self.precision}:plugin-{self.plugin_sha256[:12]}")
        self._plugin_loaded = False
        self._contexts: dict[str, tuple] = {}
        self.stream: Optional[torch.cuda.Stream] = None

    def _load_plugin(self) -> None:
        # Before any parse or deserialisation: engines reference the plugin's creator by name.
        if not self._plugin_loaded:
            self.trt.init_libnvinfer_plugins(self.logger, "")
            self.trt.get_plugin_registry().load_library(str(self.plugin_path))
            self._plugin_loaded = True

    # -------------------------------------------------------------- building
    def engine_path(self, graph: str) -> Path:
        record = self.export.graph(graph)
        key = engine_cache_key(record.file.sha256, self.trt.__version__, self.gpu_name, self.capability,
                               self.plugin_sha256, self.profile, self.precision, weights_sha256=record.weights_sha256)
        return self.cache_dir / f"{graph}-{key}.engine"

    def build(self, graph: str) -> Path:
        """The engine of ``graph`` (built now unless the cache has it)."""
        path = self.engine_path(graph)
        if path.is_file():
            return path
        self._load_plugin()
        trt = self.trt
        onnx_path = self.export.graph_path(graph)
        builder = trt.Builder(self.logger)
        flags = 0
        if self.export.manifest.precision == "fp16" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            # TensorRT 10: let the export's float16/float32 types decide (11 is always strongly typed).
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            hint = ""
            if CONTRACT.op_type in errors:
                hint = (f" (the {CONTRACT.op_type} plugin was not found: is {self.plugin_path} built from this "
                        f"checkout's contract, version {CONTRACT.plugin_version}, namespace {CONTRACT.plugin_namespace}?)")
            raise RunnerError(f"TensorRT could not parse {onnx_path}: {errors}{hint}")
        builder_config = builder.create_builder_config()
        # Entropy parameters must be reproducible by the decoder: no TF32 on the float32 path.
        builder_config.clear_flag(trt.BuilderFlag.TF32)
        if self.precision == "fp16" and self.export.manifest.precision != "fp16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise RunnerError("TensorRT 11 takes precision from the ONNX file: export with --precision fp16")
            builder_config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        channels = self.export.graph(graph).input_channels
        for name, (lo, opt, hi) in self.profile.input_shapes(graph, channels).items():
            profile.set_shape(name, lo, opt, hi)
        builder_config.add_optimization_profile(profile)
        LOG.info(f"building {graph} engine ({self.precision}, profile {self.profile.min_size}..{self.profile.max_size})")
        serialized = builder.build_serialized_network(network, builder_config)
        if serialized is None:
            raise RunnerError(f"TensorRT failed to build an engine for {graph}; see the log above")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, path)
        return path

    def build_all(self) -> list[Path]:
        return [self.build(graph) for graph in self.graphs]

    # -------------------------------------------------------------- running
    def _activate(self) -> None:
        self._load_plugin()
        self.stream = torch.cuda.Stream(device=self.device)

    def _deactivate(self) -> None:
        self._contexts = {}
        self.stream = None

    def _context(self, graph: str) -> tuple:
        if graph not in self._contexts:
            runtime = self.trt.Runtime(self.logger)
            engine = runtime.deserialize_cuda_engine(self.build(graph).read_bytes())
            if engine is None:
                raise RunnerError(f"could not deserialise the {graph} engine; delete {self.cache_dir} to rebuild")
            self._contexts[graph] = (engine, engine.create_execution_context())
        return self._contexts[graph]

    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trt = self.trt
        engine, context = self._context(graph)
        outputs: dict[str, torch.Tensor] = {}
        keep_alive = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            if name not in inputs:
                raise RunnerError(f"{graph} needs input {name!r}")
            lo, _, hi = engine.get_tensor_profile_shape(name, 0)
            shape = tuple(inputs[name].shape)
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                raise RunnerError(
                    f"{graph}: input {name} of shape {shape} is outside the engine's profile {tuple(lo)}..{tuple(hi)}; "
                    "rebuild with `hpcm build DIR --min-size/--max-size` covering this image size"
                )
            tensor = inputs[name].to(self.device, torch.float32).contiguous()
            keep_alive.append(tensor)
            context.set_input_shape(name, shape)
            context.set_tensor_address(name, tensor.data_ptr())
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                continue
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
            outputs[name] = out
            context.set_tensor_address(name, out.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RunnerError(f"TensorRT failed to run {graph}")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        for tensor in keep_alive + list(outputs.values()):
            tensor.record_stream(self.stream)
        return outputs
