"""Deployment commands: ``hpcm build`` (TensorRT engines from an export directory)."""

from __future__ import annotations

from pathlib import Path

import click


def _size(value: tuple[int, int] | None) -> tuple[int, int] | None:
    return tuple(value) if value else None


@click.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="engine precision (default: the export's). fp16 engines do not reproduce float32 scale indexes: "
                   "encoder and decoder must share the engine")
@click.option("--min-size", nargs=2, type=int, help="smallest image (H W) the engines accept; default: the export's")
@click.option("--opt-size", nargs=2, type=int, help="image size (H W) TensorRT tunes for; default: the export's")
@click.option("--max-size", nargs=2, type=int, help="largest image (H W) the engines accept; default: the export's")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="engine cache (default ~/.cache/hpcm-rwkv/engines)")
@click.option("--plugin", type=click.Path(path_type=Path), help="libhpcm_biwkv_trt_plugin.so (default: build/)")
def build(export_dir: Path, precision: str | None, min_size, opt_size, max_size, cache_dir: Path | None,
          plugin: Path | None) -> None:
    """Build (or find in the cache) a TensorRT engine for every graph of EXPORT_DIR.

    Engines are cached under a key of ONNX hash, TensorRT version, GPU name and compute capability,
    plugin library hash, profile and precision, so a change of any of them builds anew.
    """
    import json

    from hpcm.runtime.tensorrt_backend import Profile, TensorRTBackend, TensorRTError

    manifest = json.loads((export_dir / "manifest.json").read_text())
    exported = manifest.get("profile") or {k: manifest["sample_size"] for k in ("min", "opt", "max")}
    profile = Profile(_size(min_size) or tuple(exported["min"]), _size(opt_size) or tuple(exported["opt"]),
                      _size(max_size) or tuple(exported["max"]))
    try:
        backend = TensorRTBackend(export_dir, precision=precision, profile=profile, cache_dir=cache_dir,
                                  plugin=plugin, log=click.echo)
        for path in backend.build_all():
            click.echo(f"engine {path}")
    except (TensorRTError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider (TensorRT always runs on CUDA)")
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), help="weights the export was made from")
@click.option("--images", type=click.Path(path_type=Path), help="folder of images (default ../shared/data/kodak)")
@click.option("--limit", default=2, show_default=True, help="number of images")
@click.option("--crop", type=int, help="top-left crop side in pixels (faster checks)")
@click.option("--graph", "graphs", multiple=True, help="check only these graphs (default: all in the export)")
@click.option("--max-abs-error", default=1e-3, show_default=True,
              help="per-graph tolerance against float32 eager (forward is reported only); fp16 exports need ~5e-2")
@click.option("--max-index-mismatches", default=0, show_default=True,
              help="scale-index flips outside the boundary guard (those break streams)")
@click.option("--max-psnr-diff", default=0.01, show_default=True, help="dB, cross-backend decodes vs eager")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="write the JSON report here")
def check(export_dir: Path, backend: str, device: str, checkpoint: Path | None, images: Path | None, limit: int,
          crop: int | None, graphs: tuple[str, ...], max_abs_error: float, max_index_mismatches: int,
          max_psnr_diff: float, report_path: Path | None) -> None:
    """Compare an export on a backend with eager PyTorch: every graph, the codec across backends, and
    scale-index mismatches per step. Exits non-zero when a tolerance is exceeded."""
    import json

    from hpcm.runtime.check import Tolerances, check_export
    from hpcm.runtime.export_loading import open_export
    from hpcm.runtime.mismatch import load_images

    try:
        model, runner = open_export(export_dir, backend, device, checkpoint, log=click.echo)
        folder = images or Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kodak"
        if not folder.is_dir():
            click.echo(f"{folder} not found: using synthetic images", err=True)
        pictures = load_images(folder, limit, crop)
        report = check_export(model, runner, pictures, Tolerances(max_abs_error, max_index_mismatches, max_psnr_diff),
                              graphs=list(graphs) or None, log=click.echo)
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
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
        report_path.write_text(json.dumps(report, indent=2))
        click.echo(f"report: {report_path}")
    if not report["passed"]:
        raise click.ClickException("check failed: " + "; ".join(report["failures"]))
    click.echo("check passed")


commands = [build, check]
