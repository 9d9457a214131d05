"""ONNX export of an HPCM model: one graph per network the codec calls, into an export folder.

The graphs are those of ``hpcm.models.graphs`` (analysis, hyper synthesis, step01..step10, the two
context fusions of the scale transitions, synthesis; the whole-model ``forward`` on request). The
folder they go into is the deployment artifact of ``artifact.py``: graphs, one shared ``weights.bin``,
``codec.npz`` and a manifest, written transactionally.

``export_model`` checks what it is asked (``graph_checks``: the Bi-WKV route, the decomposed route's
range), then exports each graph with ``_export_one``: traced (``tracing``; a step graph cloned from its
scale's traced template), its weights moved into the shared file, checked (``graph_checks``), and for
``precision="fp16"`` measured against float32 (``precision``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch

from hpcm.codec import CodecParameters
from hpcm.errors import ArtifactError, ExportError
from hpcm.log import LOG
from hpcm.models.graphs import CODEC_GRAPHS
from hpcm.models.hpcm import HPCM
from hpcm.plugins.biwkv.contract import CONTRACT, CONTRACT_PATH

from .artifact import PRECISIONS, WEIGHTS_NAME, WKV_ROUTES, ExportWriter, FileRecord, GraphRecord, Manifest, Profile, \
    schedule_record
from .graph_checks import check_decomposed_range, check_graph, max_abs_decay, wkv_route
from .precision import COMPUTE_DTYPES, ReducedPrecisionGraph, reduced_precision_error, reduced_precision_forward_error
from .shared_weights import SharedWeights
from .tracing import GraphSpec, StepTemplate, export_graph, graph_specs, step_template_key, trace_failure, \
    traced_copy, traced_wkv_calls

DEFAULT_SIZE = (256, 256)


@dataclass
class _Export:
    """One export's graphs and what they share: the traced copy (in the compute precision), the float32
    copy a reduced precision is measured against, and the traced template of each scale's steps."""

    wkv: str
    precision: str
    opset: int
    optimize: bool
    traced: HPCM
    specs: list[GraphSpec]
    reference: Optional[HPCM] = None
    reference_specs: dict[str, GraphSpec] = field(default_factory=dict)
    templates: dict[int, StepTemplate] = field(default_factory=dict)


def _prepare(model: HPCM, wkv: str, precision: str, size: tuple[int, int], names: tuple[str, ...], batch: int,
             opset: int, optimize: bool) -> _Export:
    """The traced copies and sample inputs of ``names``; for a reduced precision, the float32 reference."""
    dtype = COMPUTE_DTYPES[precision]
    traced = traced_copy(model, wkv, dtype)
    job = _Export(wkv, precision, opset, optimize, traced, graph_specs(traced, size, batch=batch, names=names))
    if dtype != torch.float32:
        job.reference = traced_copy(model, wkv)
        job.reference_specs = {s.name: s for s in graph_specs(job.reference, size, batch=batch, names=names)}
        for spec in job.specs:
            spec.module = ReducedPrecisionGraph(spec.module, dtype)
    return job


def _trace(job: _Export, spec: GraphSpec, path: Path) -> Optional[int]:
    """Write ``spec``'s graph to ``path``: traced, or cloned from its scale's template; returns the WKV
    nodes it must hold (None where the route has no custom node to count)."""
    key = step_template_key(spec.name)
    template = job.templates.get(key)
    if template is not None:
        return template.clone(spec.name, job.traced, path)
    if spec.name == "forward":
        LOG.info("  forward: tracing the whole model takes several minutes ...")
    try:
        program = export_graph(spec, path, opset=job.opset, optimize=job.optimize)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types; keep its cause line
        raise ExportError(f"{spec.name}: torch.onnx.export failed: {trace_failure(exc)}") from exc
    expected = traced_wkv_calls(program) if job.wkv == "custom" else None
    if key is not None:
        job.templates[key] = StepTemplate(spec.name, path, expected)
    return expected


def _precision_errors(job: _Export, spec: GraphSpec) -> tuple[Optional[dict], Optional[dict]]:
    """(error_vs_float32, rounding_vs_float32) of a reduced-precision graph; (None, None) in float32."""
    if job.reference is None:
        return None, None
    reference = job.reference_specs[spec.name]
    if spec.name == "forward":
        return reduced_precision_forward_error(job.reference, job.traced, reference.inputs["x"],
                                               COMPUTE_DTYPES[job.precision])
    return reduced_precision_error(reference, spec), None


def _export_one(job: _Export, spec: GraphSpec, path: Path, shared: SharedWeights) -> GraphRecord:
    """Trace (or clone), externalise the weights of, check and measure one graph; its manifest record."""
    start = time.perf_counter()
    expected = _trace(job, spec, path)
    weights_sha256 = shared.externalize(path)
    summary = check_graph(path, job.wkv, expected, job.traced.spec.wkv)
    error, rounding = _precision_errors(job, spec)
    return GraphRecord(
        file=FileRecord.of(path), weights_sha256=weights_sha256, inputs=summary["inputs"],
        outputs=summary["outputs"], input_channels={n: int(t.shape[1]) for n, t in spec.inputs.items()},
        nodes=summary["nodes"], wkv_nodes=summary["wkv_nodes"], export_seconds=round(time.perf_counter() - start, 2),
        error_vs_float32=error, rounding_vs_float32=rounding)


def _describe(name: str, record: GraphRecord, precision: str) -> str:
    note = ""
    if record.error_vs_float32:
        worst = max(e["relative"] for e in record.error_vs_float32.values())
        note = f", {precision} vs float32 eager: max relative error {worst:.1e}"
    if record.rounding_vs_float32:
        rounding = record.rounding_vs_float32
        note += f" with float32's rounding; {rounding['differing']} of {rounding['decisions']} decisions differ"
    return f"{name}: {record.nodes} nodes, {record.wkv_nodes} {CONTRACT.op_type}, {record.export_seconds:.1f} s{note}"


def _progress(index: int, total: int, elapsed: list[float]) -> str:
    """``i/n`` and, from the graphs done so far, about how long the rest will take."""
    left = total - index
    if not left:
        return f"{index}/{total}"
    return f"{index}/{total}, about {sum(elapsed) / len(elapsed) * left:.0f} s left"


def _checked_profile(model: HPCM, wkv: str, precision: str, names: tuple[str, ...], size: tuple[int, int],
                     min_size: Optional[tuple[int, int]], max_size: Optional[tuple[int, int]]) -> Profile:
    """Everything about the request that can be refused before tracing; returns the deployment profile."""
    if wkv not in WKV_ROUTES:
        raise ExportError(f"unknown --wkv {wkv!r}; use one of {', '.join(WKV_ROUTES)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    try:
        model.check_image_size(*size)
        profile = Profile(tuple(min_size or size), size, tuple(max_size or size)).validate(model.alignment)
    except (ArtifactError, ValueError) as exc:
        raise ExportError(str(exc)) from exc
    if "forward" in names and min(size) < 2 * model.alignment:
        # With one alignment tile per side torch.export specialises the image size inside the
        # progressive loop (found after minutes of tracing): refuse up front.
        raise ExportError(
            f"the forward graph needs a sample size of at least {2 * model.alignment}x{2 * model.alignment} "
            f"(two alignment tiles per side) to keep height/width dynamic; got {size[0]}x{size[1]}"
        )
    return profile


def export_model(
    model: HPCM,
    out_dir,
    wkv: Optional[str] = None,
    opset: int = 18,
    size: tuple[int, int] = DEFAULT_SIZE,
    graphs: Optional[Iterable[str]] = None,
    precision: str = "fp32",
    batch: int = 1,
    trained: bool = False,
    seed: Optional[int] = None,
    source: Optional[str] = None,
    min_size: Optional[tuple[int, int]] = None,
    max_size: Optional[tuple[int, int]] = None,
    optimize: bool = False,
) -> Path:
    """Export ``model``'s graphs into the export folder ``out_dir``; returns the manifest's path.

    ``wkv``: ``custom`` or ``decomposed`` (default: ``graph_checks.wkv_route``). ``size``: image size
    (H, W) of the sample inputs (the optimisation size; multiples of ``model.alignment``); every graph
    still takes dynamic batch, height and width. ``graphs``: names from ``hpcm.models.graphs.GRAPHS``
    (default: the codec's, without the whole-model forward). ``optimize``: run the onnxscript
    optimizer (constant folding, rewrites); it triples the export time and ONNX Runtime and TensorRT
    optimise the graphs themselves. ``trained``/``seed``/``source``: where the weights came from,
    recorded in the manifest.
    """
    import onnx

    wkv = wkv_route(model, wkv)
    names = tuple(CODEC_GRAPHS if graphs is None else graphs)
    size = (int(size[0]), int(size[1]))
    profile = _checked_profile(model, wkv, precision, names, size, min_size, max_size)
    decay = check_decomposed_range(model) if wkv == "decomposed" else max_abs_decay(model)
    parameters = CodecParameters.from_model(model)  # refuses a model without entropy tables
    records: dict[str, GraphRecord] = {}
    with ExportWriter(out_dir) as writer:  # -o checked and locked before the work
        job = _prepare(model.eval(), wkv, precision, size, names, batch, opset, optimize)
        start = time.perf_counter()
        shared = SharedWeights(writer.path(WEIGHTS_NAME))
        LOG.info(f"exporting {len(job.specs)} graphs of {model.spec.name} ({precision}, wkv {wkv}) at "
                 f"{size[0]}x{size[1]} into {writer.target}")
        for index, spec in enumerate(job.specs, 1):
            record = records[spec.name] = _export_one(job, spec, writer.path(f"{spec.name}.onnx"), shared)
            progress = _progress(index, len(job.specs), [r.export_seconds for r in records.values()])
            LOG.info(f"  [{progress}] {_describe(spec.name, record, precision)}")
        LOG.info(f"  {WEIGHTS_NAME}: {shared.size / 1e6:.1f} MB holds the {shared.graph_bytes / 1e6:.1f} MB of "
                 "weights the graphs reference")
        manifest = Manifest(
            variant=model.spec, alignment=model.alignment, weights_digest=parameters.weights_digest.hex(),
            wkv=wkv, precision=precision, opset=opset, sample_size=size, profile=profile, graphs=records,
            weights_file=FileRecord.of(shared.path), codec_file=writer.write_codec_parameters(parameters),
            trained_weights=trained, seed=seed, source=source, schedule=schedule_record(),
            wkv_contract=json.loads(CONTRACT_PATH.read_text()), max_abs_decay=decay, onnxscript_optimized=optimize,
            versions={"torch": torch.__version__, "onnx": onnx.__version__, **_optional_versions()},
            total_export_seconds=round(time.perf_counter() - start, 2),
        )
        manifest_path = writer.commit(manifest)
    LOG.info(f"wrote {len(records)} graphs and {manifest_path} in {time.perf_counter() - start:.0f} s")
    return manifest_path


def _optional_versions() -> dict:
    versions = {}
    for name in ("onnxscript", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed: not part of the export
            pass
    return versions
