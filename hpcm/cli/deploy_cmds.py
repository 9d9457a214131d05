"""Deployment commands: ``hpcm check`` (an export against eager PyTorch) and ``hpcm build`` (TensorRT engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from .options import checkpoint_option, device_option, image_folder, images_options, size_options


@click.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="the runner of the export's graphs to check")
@device_option
@checkpoint_option
@images_options
@click.option("--graph", "graphs", multiple=True, help="check only these graphs (default: all in the export)")
@click.option("--max-abs-error", default=1e-3, show_default=True,
              help="per-graph tolerance against float32 eager (forward is reported only); fp16 exports need ~5e-2")
@click.option("--max-index-mismatches", default=0, show_default=True,
              help="scale-index flips outside the boundary guard (those break streams)")
@click.option("--max-psnr-diff", default=0.01, show_default=True, help="dB, cross-backend decodes vs eager")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="write the JSON report here")
def check(export_dir: Path, backend: str, device: Optional[str], checkpoint: Optional[Path], images: Optional[Path],
          limit: int, crop: Optional[int], graphs: tuple[str, ...], max_abs_error: float, max_index_mismatches: int,
          max_psnr_diff: float, report_path: Optional[Path]) -> None:
    """Compare an export on a backend with eager PyTorch on the same weights (on the same device):
    every graph, the codec across backends, and scale-index mismatches per step. Exits non-zero when
    a tolerance is exceeded."""
    import json

    from hpcm.codec.images import load_folder
    from hpcm.files import atomic_output, check_output
    from hpcm.runtime.check import Tolerances, check_export
    from hpcm.runtime.session import CodecRequest, open_codec, resolve

    inputs = [export_dir, checkpoint, image_folder(images)]
    if report_path is not None:
        check_output(report_path, inputs, option="--report")
    source = resolve(CodecRequest(export=export_dir, checkpoint=checkpoint), need_model=True)
    click.echo(source.export.describe())
    pictures = load_folder(image_folder(images), limit, crop)
    on_backend = CodecRequest(export=source.export, backend=backend, device=device)
    with open_codec(on_backend) as tested:
        eager = CodecRequest(model=source.model, export=source.export, backend="eager", device=str(tested.codec.device))
        with open_codec(eager) as reference:
            report = check_export(reference.codec, tested.codec, pictures,
                                  Tolerances(max_abs_error, max_index_mismatches, max_psnr_diff),
                                  graphs=list(graphs) or None, precision=source.export.manifest.precision)
    for graph, runs in report["graphs"].items():
        worst = {k: max(r["outputs"][k]["max"] for r in runs) for k in runs[0]["outputs"]}
        click.echo(f"  {graph:<18} " + "  ".join(f"{k} max {v:.2e}" for k, v in worst.items()))
    for entry in report["codec"]:
        click.echo(f"  codec {entry['image']}: bpp eager {entry['bpp_eager']:.4f} backend {entry['bpp_backend']:.4f}; "
                   + ", ".join(f"{r} {'ok' if entry[r]['ok'] else 'FAILED'}"
                               for r in ("eager_to_backend", "backend_to_eager", "backend_to_backend")))
    if not report["cross_backend_decodes_judged"]:
        click.echo(f"  note: a {report['precision']} export's streams decode on its own engines only; the cross-backend "
                   "routes and index mismatches above are reported, not judged")
    totals = report["index_mismatches"]["totals"]["backend"]
    click.echo(f"  scale-index mismatches: {totals['mismatches']} of {totals['symbols']} symbols, "
               f"{totals['unguarded_mismatches']} outside the boundary guard")
    if report_path:
        with atomic_output(report_path, inputs, option="--report") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        click.echo(f"report: {report_path}")
    if not report["passed"]:
        raise click.ClickException("check failed: " + "; ".join(report["failures"]))
    click.echo("check passed")


@click.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="engine precision (default: the export's). fp16 engines do not reproduce float32 scale indexes: "
                   "encoder and decoder must share the engine")
@size_options("the engines (default: the export's profile)")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="engine cache (default $HPCM_ENGINE_CACHE, else ~/.cache/hpcm-rwkv/engines)")
@click.option("--plugin", type=click.Path(dir_okay=False, path_type=Path),
              help="libhpcm_biwkv_trt_plugin.so (default $HPCM_BIWKV_PLUGIN, else build/)")
@device_option
def build(export_dir: Path, precision: Optional[str], min_size, opt_size, max_size, cache_dir: Optional[Path],  # noqa: ANN001
          plugin: Optional[Path], device: Optional[str]) -> None:
    """Build (or find in the cache) a TensorRT engine for every graph of EXPORT_DIR.

    Engines are cached under a key of ONNX and weights hashes, TensorRT version, GPU name and compute
    capability, plugin library hash, profile and precision, so a change of any of them builds anew.
    """
    from hpcm.runtime.session import CodecRequest, open_runner, resolve

    export = resolve(CodecRequest(export=export_dir), need_model=False, tables=False).export
    profile = export.manifest.profile.with_sizes(min_size, opt_size, max_size)
    runner = open_runner("tensorrt", export=export, device=device, precision=precision, profile=profile,
                         cache_dir=cache_dir, plugin=plugin)
    for path in runner.build_all():
        click.echo(f"engine {path}")

