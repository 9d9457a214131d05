"""Deployment commands: ``hpcm build`` (TensorRT engines from an export directory)."""

from __future__ import annotations

from pathlib import Path

import click


def _size(value: tuple[int, int] | None) -> tuple[int, int] | None:
    return tuple(value) if value else None


@click.command()
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16 engines do not reproduce float32 scale indexes: encoder and decoder must share the engine")
@click.option("--min-size", nargs=2, type=int, help="smallest image (H W) the engines accept; default: export size")
@click.option("--opt-size", nargs=2, type=int, help="image size (H W) TensorRT tunes for; default: export size")
@click.option("--max-size", nargs=2, type=int, help="largest image (H W) the engines accept; default: export size")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="engine cache (default ~/.cache/hpcm-rwkv/engines)")
@click.option("--plugin", type=click.Path(path_type=Path), help="libhpcm_biwkv_trt_plugin.so (default: build/)")
def build(export_dir: Path, precision: str, min_size, opt_size, max_size, cache_dir: Path | None,
          plugin: Path | None) -> None:
    """Build (or find in the cache) a TensorRT engine for every graph of EXPORT_DIR.

    Engines are cached under a key of ONNX hash, TensorRT version, GPU name and compute capability,
    plugin library hash, profile and precision, so a change of any of them builds anew.
    """
    import json

    from hpcm.runtime.tensorrt_backend import Profile, TensorRTBackend, TensorRTError

    manifest = json.loads((export_dir / "manifest.json").read_text())
    sample = tuple(manifest["sample_size"])
    opt = _size(opt_size) or sample
    profile = Profile(_size(min_size) or opt, opt, _size(max_size) or opt)
    try:
        backend = TensorRTBackend(export_dir, precision=precision, profile=profile, cache_dir=cache_dir,
                                  plugin=plugin, log=click.echo)
        for path in backend.build_all():
            click.echo(f"engine {path}")
    except (TensorRTError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


commands = [build]
