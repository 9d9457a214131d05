"""ONNX Runtime as a runner: the graphs of an export folder as inference sessions.

The sessions run on ONNX Runtime's CPU provider, or its CUDA provider with ``onnxruntime-gpu``
(``device="cuda"``); tensors come and go as torch tensors on the runner's device.

Decomposed graphs (``--wkv decomposed``) need nothing beyond ``onnxruntime``. Graphs with the
contract's custom node take one of two routes (``wkv_op_route()``):

* ``native``: the compiled custom-op library of ``hpcm.plugins.biwkv.cpu`` (C++ scan, float32 or
  float16 k/v), registered with the session; the graph runs as exported. Used whenever the library
  can be had (``ONNXRUNTIME_INCLUDE_DIR`` or ``HPCM_BIWKV_ORT_OP``).
* ``python``: ``onnxruntime-extensions`` with the op in Python (the guarded evaluation of the node's
  mode, ``hpcm.plugins.biwkv.op.eager_form``). Its custom ops resolve only the domain
  ``ai.onnx.contrib``, so a copy of the model gets its WKV nodes' domain rewritten. Correct, but every
  call copies its tensors through Python (~0.1 s per 6 MB tensor).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from hpcm import config
from hpcm.errors import ArtifactError, NativeBuildError, RunnerError, one_line
from hpcm.export.artifact import WEIGHTS_NAME, ExportDir
from hpcm.log import LOG
from hpcm.plugins.biwkv.contract import CONTRACT

from .base import ExportRunner

CONTRIB_DOMAIN = "ai.onnx.contrib"
_registered = False


def _register_python_op() -> None:
    global _registered
    if _registered:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError as exc:  # optional dependency
        raise RunnerError(
            "graphs with the custom Bi-WKV node need `pip install onnxruntime-extensions` on CPU "
            "(or export with --wkv decomposed)"
        ) from exc
    import numpy as np

    from hpcm.plugins.biwkv.op import eager_form

    @onnx_op(op_type=CONTRACT.op_type, domain=CONTRIB_DOMAIN,
             inputs=[PyCustomOpDef.dt_float] * 4, outputs=[PyCustomOpDef.dt_float],
             attrs={name: PyCustomOpDef.dt_string for name in CONTRACT.node_attributes(CONTRACT.default_mode)})
    def _biwkv(w, u, k, v, mode: str = CONTRACT.default_mode, **_attrs):
        with torch.no_grad():
            y = eager_form(mode)(*(torch.from_numpy(np.ascontiguousarray(t)) for t in (w, u, k, v)))
        return y.numpy()

    _registered = True


def _float16_values(model) -> set[str]:
    """Names of the values shape inference types as float16 (the k/v of fp16 exports)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}


def to_contrib_domain(model):
    """A copy of ``model`` whose Bi-WKV nodes live in ``ai.onnx.contrib`` (what ORT-extensions resolves).

    The Python op is registered for float32 only; WKV nodes of fp16 exports get float32 casts around
    them, which is also what the op does inside (float32 accumulation). Nodes without a mode (every
    node of contract version 1) get the contract's default one: ORT-extensions requires each attribute
    its op declares.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    def is_wkv(node) -> bool:
        return node.op_type == CONTRACT.op_type and node.domain == CONTRACT.domain

    changed = any(is_wkv(n) for n in copy.graph.node)
    # Shape inference only for fp16 exports: it costs seconds on the forward graph.
    has_float16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in copy.graph.initializer)
    half = _float16_values(copy) if changed and has_float16 else set()
    nodes = []
    for node in copy.graph.node:
        if not is_wkv(node):
            nodes.append(node)
            continue
        node.domain = CONTRIB_DOMAIN
        if not any(attribute.name == "mode" for attribute in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("mode", CONTRACT.default_mode))
        if node.input[2] not in half:
            nodes.append(node)
            continue
        for index in (2, 3):  # k, v
            widened = f"{node.input[index]}__float32"
            nodes.append(onnx.helper.make_node("Cast", [node.input[index]], [widened], to=onnx.TensorProto.FLOAT))
            node.input[index] = widened
        narrow_output = node.output[0]
        node.output[0] = f"{narrow_output}__float32"
        nodes.append(node)
        nodes.append(onnx.helper.make_node("Cast", [node.output[0]], [narrow_output], to=onnx.TensorProto.FLOAT16))
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    if changed:
        imports = [o for o in copy.opset_import if o.domain not in (CONTRACT.domain, CONTRIB_DOMAIN)]
        del copy.opset_import[:]
        copy.opset_import.extend(imports)
        copy.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return copy, changed


# Bumped when to_contrib_domain or with_weights_file changes what it writes (cached rewrites of the
# old form are then unused).
_CONTRIB_REWRITE_VERSION = 2


def _cached_rewrite(path: Path, kind: str, rewrite: Callable) -> Optional[bytes]:  # noqa: ANN401 - ModelProto
    """``rewrite(model)`` of the graph at ``path`` serialised (external data left external), or None
    where it returns None (nothing to change). Rewrites are cached by the graph's SHA-256 and ``kind``
    in ``<cache>/onnxruntime``, each entry led by the SHA-256 of what follows (a damaged entry is
    rewritten): a cold CLI call then neither imports onnx nor parses the graphs (0.6 to 1.4 s of each
    `hpcm encode --export` here). An unusable cache only costs the rewrite."""
    graph = path.read_bytes()
    cached = (config.cache_dir() / "onnxruntime" /
              f"{hashlib.sha256(graph).hexdigest()}.v{_CONTRIB_REWRITE_VERSION}.{kind}")
    with contextlib.suppress(OSError):
        stored = cached.read_bytes()
        if hashlib.sha256(stored[32:]).digest() == stored[:32]:
            # the rewritten graph, or nothing for a graph the rewrite leaves as it is
            return stored[32:] or None
    import onnx

    model = rewrite(onnx.load_model_from_string(graph))
    rewritten = model.SerializeToString() if model is not None else b""
    tmp = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, prefix=f".{cached.name}.", delete=False) as tmp:
            tmp.write(hashlib.sha256(rewritten).digest() + rewritten)
        os.replace(tmp.name, cached)  # concurrent writers write the same bytes; readers see whole files
    except OSError as exc:
        LOG.debug(f"not caching the ONNX Runtime rewrite of {path}: {exc}")
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)
    return rewritten or None


def contrib_graph(path: Path) -> Optional[bytes]:
    """The graph at ``path`` rewritten for ONNX Runtime extensions (``to_contrib_domain``), or None
    when it has no custom node (cached: ``_cached_rewrite``)."""

    def rewrite(model):  # noqa: ANN001, ANN202 - onnx.ModelProto
        copy, has_custom = to_contrib_domain(model)
        return copy if has_custom else None

    return _cached_rewrite(path, "contrib", rewrite)


def with_weights_file(model, name: str):  # noqa: ANN001, ANN201 - onnx.ModelProto
    """``model`` with its external data read from the file ``name`` (instead of ``weights.bin``)."""
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = name
    return model


def linked_weights(path: Path) -> Optional[Path]:
    """The file the weights of the graph at ``path`` are read from when it lies outside the graph's
    folder (``weights.bin`` a symbolic link into a cache such as DVC's or git-annex's), else None.

    ONNX Runtime refuses external data outside the graph's folder (a guard against graphs that read
    arbitrary files); the export's ``weights.bin`` was verified by its hash when the folder was
    opened, so its sessions are given the real file's folder and name instead."""
    real = (path.parent / WEIGHTS_NAME).resolve()
    return real if real.parent != path.parent.resolve() else None


def session_graph(path: Path, contrib: bool) -> tuple[Optional[bytes], Path]:
    """What an ONNX Runtime session loads for the graph at ``path``: its bytes, or None to load the
    file as it is (with ``contrib``: rewritten for the extensions' Python op, ``contrib_graph``; with
    weights outside its folder: reading them there, ``linked_weights``), and the folder its external
    data is read from."""
    linked = linked_weights(path)
    if linked is None:
        return (contrib_graph(path) if contrib else None), path.resolve().parent

    def rewrite(model):  # noqa: ANN001, ANN202 - onnx.ModelProto
        return with_weights_file(to_contrib_domain(model)[0] if contrib else model, linked.name)

    kind = f"{'contrib' if contrib else 'graph'}.{hashlib.sha256(linked.name.encode()).hexdigest()[:16]}"
    return _cached_rewrite(path, kind, rewrite), linked.parent


@functools.lru_cache(maxsize=None)
def _route_for(prebuilt: Optional[Path], include_dir: Optional[Path], cache_dir: Path, compiler: Optional[str]) -> str:
    """The route under one configuration (the arguments are the settings it depends on: a changed
    one is tried afresh)."""
    from hpcm.plugins.biwkv.cpu import OrtOpUnavailable, ort_op_library

    try:
        ort_op_library()
    except OrtOpUnavailable:
        return "python"
    except NativeBuildError as exc:
        LOG.warning(f"the native ONNX Runtime op could not be built: {exc}; running the {CONTRACT.op_type} nodes "
                    "as a Python op instead (correct, slower)")
        return "python"
    return "native"


def wkv_op_route() -> str:
    """``native`` when the compiled custom-op library is available here, else ``python``."""
    return _route_for(config.onnxruntime_op_library(), config.onnxruntime_include_dir(), config.cache_dir(),
                      config.cxx_compiler())


def cpu_session(path: Union[str, Path], route: Optional[str] = None):
    """An ``onnxruntime.InferenceSession`` on CPU for an exported graph (custom or decomposed WKV).

    ``route``: how custom Bi-WKV nodes run, ``native`` or ``python`` (default ``wkv_op_route()``).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX graph {path} does not exist")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As many threads as PyTorch's: the process's one setting (a worker of hpcm compress sets it),
    # so that several workers on one machine do not each take every core.
    options.intra_op_num_threads = torch.get_num_threads()
    python_op = False
    if (route or wkv_op_route()) == "native":
        from hpcm.plugins.biwkv.cpu import ort_op_library

        library = ort_op_library()
        try:
            options.register_custom_ops_library(str(library))
        except RuntimeError as exc:  # onnxruntime's Fail: a library built for another ONNX Runtime
            raise RunnerError(f"ONNX Runtime cannot load the Bi-WKV op library {library} "
                              f"({one_line(str(exc))}): rebuild it for this ONNX Runtime") from exc
    else:
        python_op = contrib_graph(path) is not None
    graph, weights_folder = session_graph(path, contrib=python_op)
    if python_op:
        _register_python_op()
        from onnxruntime_extensions import get_library_path

        # The Python op computes with PyTorch's own threads; ORT's pool threads spinning for work next to
        # them would take the same cores (phase4 forward at 768x512 on 2 cores: 7.8 s -> see README).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.register_custom_ops_library(get_library_path())
    if graph is None:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # a rewritten graph comes as bytes; its weights stay in the folder's weights.bin (or where it links to)
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights_folder))
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner(ExportRunner):
    """The graphs of an export folder as ONNX Runtime sessions (each created on its first run).

    On ``device="cuda"`` (``onnxruntime-gpu``) the custom Bi-WKV node still runs on the CPU through
    the native or Python op; decomposed exports run wholly on the GPU.
    """

    kind = "onnxruntime"
    device_types = ("cpu", "cuda")

    def __init__(self, export: ExportDir, device: Optional[str] = None) -> None:
        super().__init__(export, device)
        import onnxruntime as ort

        if self.device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RunnerError("ONNX Runtime has no CUDA execution provider here: pip install onnxruntime-gpu, "
                              "or run with --device cpu")
        self.providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device.type == "cuda"
                          else ["CPUExecutionProvider"])
        wkv = export.manifest.wkv
        # The two custom-node routes compute the WKV differently (float64 state vs PyTorch's
        # closed form), so the route is part of what computed a stream's entropy parameters.
        route = f"-{wkv_op_route()}" if wkv == "custom" else ""
        self._fingerprint = (f"onnxruntime-{ort.__version__}/{self.providers[0]}/wkv-{wkv}{route}/"
                             f"{export.manifest.precision}")
        self._sessions: dict = {}

    def _activate(self) -> None:
        self._sessions = {}

    def _deactivate(self) -> None:
        self._sessions = {}

    def session(self, graph: str):  # noqa: ANN201 - an onnxruntime.InferenceSession
        if graph not in self._sessions:
            session = cpu_session(self.export.graph_path(graph))
            if self.providers[0] != "CPUExecutionProvider":
                session.set_providers(self.providers)
            self._sessions[graph] = session
        return self._sessions[graph]

    def _run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        session = self.session(graph)
        feed = {i.name: inputs[i.name].detach().to("cpu", torch.float32).contiguous().numpy()
                for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        return {n: torch.from_numpy(v).to(self.device) for n, v in zip(names, session.run(names, feed))}
