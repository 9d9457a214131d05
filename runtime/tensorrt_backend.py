"""TensorRT backend: engines built from an export directory with the Bi-WKV plugin, cached, and run
with torch buffers on a dedicated CUDA stream.

``tensorrt`` is imported only inside the functions that need it: its bindings fail to import where
the TensorRT libraries are missing (they come only from NVIDIA's package index), and everything else
in hpcm-rwkv must keep working there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from hpcm.export.onnx_export import file_sha256
from hpcm.plugins.biwkv.contract import CONTRACT

PLUGIN_LIBRARY_NAME = "libhpcm_biwkv_trt_plugin.so"
PLUGIN_ENV = "HPCM_BIWKV_PLUGIN"
PRECISIONS = ("fp32", "fp16")


class TensorRTError(RuntimeError):
    """A TensorRT problem with a message that says what to do."""


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise TensorRTError(
            "TensorRT is not usable here: install the TensorRT libraries and Python bindings from NVIDIA's "
            "package index (pip install tensorrt --extra-index-url https://pypi.nvidia.com) on a machine with "
            f"a CUDA GPU; the ONNX Runtime backend needs neither ({exc})"
        ) from exc
    return tensorrt


def find_plugin_library(explicit: Optional[Path] = None) -> Path:
    """The plugin library: explicit path, else $HPCM_BIWKV_PLUGIN, else build/ of the source tree."""
    candidates = [explicit] if explicit else []
    if os.environ.get(PLUGIN_ENV):
        candidates.append(Path(os.environ[PLUGIN_ENV]))
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo / "build" / PLUGIN_LIBRARY_NAME, repo / "build" / "plugins" / PLUGIN_LIBRARY_NAME]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates if p is not None)
    raise TensorRTError(
        f"the {CONTRACT.op_type} TensorRT plugin library was not found (tried {tried}). Build it with "
        "`cmake -S plugins -B build -DTENSORRT_ROOT=<TensorRT with include/> && cmake --build build` "
        f"or point ${PLUGIN_ENV} at {PLUGIN_LIBRARY_NAME}"
    )


@dataclass(frozen=True)
class Profile:
    """Image sizes (pixels, multiples of the export's alignment) an engine accepts: min, opt, max."""

    min_size: tuple[int, int]
    opt_size: tuple[int, int]
    max_size: tuple[int, int]
    max_batch: int = 1

    def check(self, alignment: int) -> None:
        for label, (h, w) in (("min", self.min_size), ("opt", self.opt_size), ("max", self.max_size)):
            if h <= 0 or w <= 0 or h % alignment or w % alignment:
                raise ValueError(f"{label} size {h}x{w} must be positive multiples of {alignment}")
        if not all(a <= b <= c for a, b, c in zip(self.min_size, self.opt_size, self.max_size)):
            raise ValueError("profile sizes must satisfy min <= opt <= max in both dimensions")

    def input_shapes(self, graph: dict, alignment: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """(min, opt, max) shape of every input of a manifest graph entry."""
        shapes = {}
        for name, sample in graph["sample_input_shapes"].items():
            unit = graph["spatial_unit"][name]
            channels = sample[1]

            def shape(size: tuple[int, int], batch: int) -> tuple[int, ...]:
                return (batch, channels, size[0] // alignment * unit, size[1] // alignment * unit)

            shapes[name] = (shape(self.min_size, 1), shape(self.opt_size, 1), shape(self.max_size, self.max_batch))
        return shapes


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
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    if exported == "fp16" and requested == "fp32":
        raise ValueError("this export computes in float16 (hpcm-export --precision fp16): build it as fp16, "
                         "or re-export with --precision fp32 for float32 engines")
    return requested


def default_cache_dir() -> Path:
    return Path(os.environ.get("HPCM_ENGINE_CACHE", Path.home() / ".cache" / "hpcm-rwkv" / "engines"))


class TensorRTBackend:
    """Runs the graphs of an export directory as TensorRT engines (built on first use, then cached)."""

    def __init__(self, export_dir: Path, precision: Optional[str] = None, profile: Optional[Profile] = None,
                 cache_dir: Optional[Path] = None, plugin: Optional[Path] = None, log=print) -> None:
        self.export_dir = Path(export_dir)
        self.manifest = json.loads((self.export_dir / "manifest.json").read_text())
        precision = engine_precision(self.manifest.get("precision", "fp32"), precision)
        if not torch.cuda.is_available():
            raise TensorRTError("the TensorRT backend needs a CUDA GPU visible to PyTorch")
        self.trt = import_tensorrt()
        if self.manifest.get("wkv") != "custom":
            log("note: this export uses the decomposed WKV graph; the plugin is loaded but unused")
        self.alignment = int(self.manifest["alignment"])
        opt = self.manifest["sample_size"]
        exported = self.manifest.get("profile") or {"min": opt, "opt": opt, "max": opt}
        self.profile = profile or Profile(tuple(exported["min"]), tuple(exported["opt"]), tuple(exported["max"]))
        self.profile.check(self.alignment)
        self.precision = precision
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.plugin_path = find_plugin_library(plugin)
        self.plugin_sha256 = file_sha256(self.plugin_path)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        # Load the plugin before any parse or deserialisation: engines reference its creator by name.
        self.trt.init_libnvinfer_plugins(self.logger, "")
        self.trt.get_plugin_registry().load_library(str(self.plugin_path))
        self.device = torch.device("cuda")
        self.stream = torch.cuda.Stream()
        props = torch.cuda.get_device_properties(self.device)
        self.gpu_name, self.capability = props.name, (props.major, props.minor)
        self.log = log
        self._contexts: dict[str, object] = {}
        self._weights_checked = False
        self.fingerprint = (f"tensorrt-{self.trt.__version__}:{self.gpu_name}:sm{props.major}{props.minor}:"
                            f"{precision}:plugin-{self.plugin_sha256[:12]}")

    # -------------------------------------------------------------- building
    def engine_path(self, graph: str) -> Path:
        entry = self.manifest["graphs"][graph]
        key = engine_cache_key(entry["sha256"], self.trt.__version__, self.gpu_name, self.capability,
                               self.plugin_sha256, self.profile, self.precision,
                               weights_sha256=entry.get("weights_sha256", ""))
        return self.cache_dir / f"{graph}-{key}.engine"

    def build(self, graph: str) -> Path:
        path = self.engine_path(graph)
        if path.is_file():
            return path
        trt = self.trt
        entry = self.manifest["graphs"][graph]
        onnx_path = self.export_dir / entry["file"]
        if file_sha256(onnx_path) != entry["sha256"]:
            raise TensorRTError(f"{onnx_path} does not match the manifest's hash: re-export the directory")
        self._check_weights_file()
        builder = trt.Builder(self.logger)
        flags = 0
        if self.manifest.get("precision") == "fp16" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
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
            raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors}{hint}")
        config = builder.create_builder_config()
        # Entropy parameters must be reproducible by the decoder: no TF32 on the float32 path.
        config.clear_flag(trt.BuilderFlag.TF32)
        if self.precision == "fp16" and self.manifest.get("precision") != "fp16":
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise TensorRTError("TensorRT 11 takes precision from the ONNX file: export with --precision fp16")
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in self.profile.input_shapes(entry, self.alignment).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        self.log(f"building {graph} engine ({self.precision}, profile {self.profile.min_size}..{self.profile.max_size})")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TensorRTError(f"TensorRT failed to build an engine for {graph}; see the log above")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, path)
        return path

    def _check_weights_file(self) -> None:
        """The shared weights file the graphs point into must be the one the export wrote (once)."""
        weights = self.manifest.get("weights_file")
        if weights is None or self._weights_checked:
            return
        path = self.export_dir / weights["file"]
        if not path.is_file() or file_sha256(path) != weights["sha256"]:
            raise TensorRTError(f"{path} is missing or does not match the manifest's hash: re-export the directory")
        self._weights_checked = True

    def build_all(self) -> list[Path]:
        return [self.build(graph) for graph in self.manifest["graphs"]]

    # -------------------------------------------------------------- running
    def _context(self, graph: str):
        if graph not in self._contexts:
            runtime = self.trt.Runtime(self.logger)
            engine = runtime.deserialize_cuda_engine(self.build(graph).read_bytes())
            if engine is None:
                raise TensorRTError(f"could not deserialise the {graph} engine; delete {self.cache_dir} to rebuild")
            self._contexts[graph] = (engine, engine.create_execution_context())
        return self._contexts[graph]

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trt = self.trt
        engine, context = self._context(graph)
        outputs: dict[str, torch.Tensor] = {}
        keep_alive = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            if name not in inputs:
                raise TensorRTError(f"{graph} needs input {name!r}")
            lo, _, hi = engine.get_tensor_profile_shape(name, 0)
            shape = tuple(inputs[name].shape)
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                raise TensorRTError(
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
        self.stream.wait_stream(torch.cuda.current_stream())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise TensorRTError(f"TensorRT failed to run {graph}")
        torch.cuda.current_stream().wait_stream(self.stream)
        for tensor in keep_alive + list(outputs.values()):
            tensor.record_stream(self.stream)
        return outputs
