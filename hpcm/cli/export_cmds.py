"""Export command: ``hpcm export`` and the standalone ``hpcm-export``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.option("--variant", "-v", default=None,
              help="baseline, phase1, phase2, phase3, phase4, or a variant .json file "
                   "(default: the checkpoint's, else phase2)")
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), default=None,
              help="weights to export; without it a seeded, untrained model is exported")
@click.option("--output", "-o", "output", type=click.Path(path_type=Path), default=Path("onnx"), show_default=True,
              help="folder for the graphs and manifest.json")
@click.option("--wkv", type=click.Choice(["custom", "decomposed"]), default="custom", show_default=True,
              help="custom: one plugin node per Bi-WKV call (TensorRT); decomposed: standard ONNX ops only")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="compute dtype inside the graphs (inputs and outputs stay float32). fp16 keeps the WKV "
                   "accumulation, decay/boost and the likelihoods in float32; its scale indexes differ from "
                   "float32 ones, so streams decode only on an fp16 engine of the same export")
@click.option("--opt-size", nargs=2, type=int, default=(256, 256), show_default=True, metavar="H W",
              help="image size of the sample inputs (multiples of the variant's alignment); shapes stay dynamic")
@click.option("--min-size", nargs=2, type=int, metavar="H W",
              help="smallest image the deployment profile (TensorRT engines) must accept; default --opt-size")
@click.option("--max-size", nargs=2, type=int, metavar="H W",
              help="largest image the deployment profile must accept; default --opt-size")
@click.option("--opset", default=18, show_default=True)
@click.option("--graph", "graphs", multiple=True,
              help="export only these graphs (repeatable): analysis, hyper_synthesis, step01..step10, "
                   "transition_s1_s2, transition_s2_s3, synthesis, forward")
@click.option("--no-optimize", is_flag=True, help="skip the onnxscript optimizer (faster export, larger graphs)")
@click.option("--no-forward", is_flag=True,
              help="skip the whole-model forward graph (the codec does not need it; it takes ~10 min on 2 CPU cores)")
@click.option("--seed", default=0, show_default=True, help="seed of the untrained model (no --checkpoint)")
def export(variant, checkpoint, output, wkv, precision, opt_size, min_size, max_size, opset, graphs, no_optimize,
           no_forward, seed) -> None:
    """Export a model to ONNX graphs (analysis, hyper synthesis, steps, transitions, synthesis, forward)
    with dynamic batch/height/width, checked, hashed and described in manifest.json."""
    from hpcm.export.onnx_export import ExportError, export_model
    from hpcm.models import build_model
    from hpcm.models.checkpoint import CheckpointError, load_checkpoint

    try:
        if checkpoint is not None:
            model = load_checkpoint(checkpoint, variant)
            trained = True
        else:
            model = build_model(variant or "phase2", seed=seed)
            trained = False
            click.echo(f"NOTICE: no --checkpoint given: exporting a seeded (seed={seed}) {model.spec.name} model "
                       "with UNTRAINED weights; the graphs are for plumbing and shape tests only.", err=True)
    except (CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not model.has_entropy_tables:
        model.update()
    if no_forward:
        from hpcm.export.onnx_export import GRAPH_KINDS

        graphs = tuple(g for g in (graphs or GRAPH_KINDS) if g != "forward")

    try:
        manifest = export_model(
            model, output, wkv=wkv, opset=opset, sizes=tuple(opt_size), graphs=graphs or None,
            precision=precision, log=click.echo, checkpoint=str(checkpoint) if checkpoint else None,
            trained=trained, optimize=not no_optimize, seed=None if trained else seed,
            min_size=tuple(min_size) if min_size else None, max_size=tuple(max_size) if max_size else None,
        )
    except (ExportError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"manifest: {manifest}")


export_main = export
"""Entry point of the ``hpcm-export`` console script."""

commands = [export]
