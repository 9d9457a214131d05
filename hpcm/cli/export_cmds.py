"""Export command: ``hpcm export`` and the standalone ``hpcm-export``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from hpcm.config import DEFAULT_SEED

from .framework import ProjectCommand
from .options import checkpoint_option, size_options, variant_option


@click.command("export", cls=ProjectCommand, context_settings={"help_option_names": ["-h", "--help"]})
@variant_option()
@checkpoint_option
@click.option("--output", "-o", "output", type=click.Path(path_type=Path), default=Path("onnx"), show_default=True,
              help="export folder to write (replaced whole if it is an earlier export; written transactionally)")
@click.option("--wkv", type=click.Choice(["custom", "decomposed"]), default=None,
              help="custom: one plugin node per Bi-WKV call, carrying the model's Bi-WKV mode (TensorRT, native "
                   "ORT op); decomposed: standard ONNX ops only (default: custom, for every mode)")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="compute dtype inside the graphs (inputs and outputs stay float32). fp16 keeps the WKV "
                   "accumulation, decay/boost and the likelihoods in float32; its scale indexes differ from "
                   "float32 ones, so streams decode only on an fp16 engine of the same export")
@click.option("--opt-size", nargs=2, type=click.IntRange(min=1), default=(256, 256), show_default=True,
              metavar="H W", help="image size of the sample inputs (multiples of the variant's alignment); "
                                  "shapes stay dynamic")
@size_options("the deployment profile (TensorRT engines; default --opt-size)", with_opt=False)
@click.option("--opset", default=18, show_default=True)
@click.option("--graph", "graphs", multiple=True,
              help="export only these graphs (repeatable): analysis, hyper_synthesis, step01..step10, "
                   "context_fusion_s2, context_fusion_s3, synthesis, forward")
@click.option("--forward", "with_forward", is_flag=True,
              help="also export the whole-model forward graph (parity checks and benchmarks only; the codec does "
                   "not need it, and it takes about 7 minutes on 2 CPU cores)")
@click.option("--optimize/--no-optimize", default=False, show_default=True,
              help="run the onnxscript optimizer on each graph (about 3x the export time; ONNX Runtime and "
                   "TensorRT optimise the graphs themselves)")
@click.option("--seed", default=DEFAULT_SEED, show_default=True, help="seed of the untrained model (no --checkpoint)")
def export(variant: Optional[str], checkpoint: Optional[Path], output: Path, wkv: Optional[str], precision: str,
           opt_size: tuple[int, int], min_size, max_size, opset: int, graphs: tuple[str, ...],  # noqa: ANN001
           with_forward: bool, optimize: bool, seed: int) -> None:
    """Export a model to an export folder: the codec's ONNX graphs (analysis, hyper synthesis, the ten
    steps, the two context fusions, synthesis) with dynamic batch/height/width, their shared weights, the
    codec's tables, and manifest.json. The folder alone is enough to encode and decode."""
    from hpcm.export.artifact import ExportWriter
    from hpcm.export.onnx_export import export_model
    from hpcm.models.graphs import CODEC_GRAPHS
    from hpcm.runtime.session import CodecRequest, resolve

    ExportWriter.check_target(output)  # before the model is built
    source = resolve(CodecRequest(checkpoint=checkpoint, variant=variant, seed=seed), need_model=True)
    model, provenance = source.model, source.provenance
    names = list(graphs or CODEC_GRAPHS)
    if with_forward and "forward" not in names:
        names.append("forward")
    manifest = export_model(
        model, output, wkv=wkv, opset=opset, size=tuple(opt_size), graphs=names, precision=precision,
        trained=provenance.trained, seed=provenance.seed,
        source=checkpoint.name if checkpoint is not None else None, optimize=optimize,
        min_size=tuple(min_size) if min_size else None, max_size=tuple(max_size) if max_size else None,
    )
    click.echo(f"manifest: {manifest}")


export_main = export
"""Entry point of the ``hpcm-export`` console script."""
