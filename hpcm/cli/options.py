"""Option groups shared by the commands: one definition of each option and its default.

The options mirror the API: ``--variant``/``--checkpoint``/``--export``/``--backend``/``--device``
fill a ``hpcm.runtime.session.CodecRequest``, and ``open_codec`` (or ``resolve``) decides what they
mean together: which model, which tables, which runner (``--device``: where it computes, the same for
every runner; a runner that cannot compute there refuses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import click

from hpcm import config
from hpcm.config import DEFAULT_VARIANT
from hpcm.runtime.runners import RUNNERS

Decorator = Callable[[Callable], Callable]


def combine(*decorators: Decorator) -> Decorator:
    """Apply several click options as one decorator (in the order listed in --help)."""

    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def variant_option(help_default: str = f"the checkpoint's, else {DEFAULT_VARIANT}") -> Decorator:
    return click.option("--variant", "-v", default=None,
                        help=f"baseline, phase1..phase4 (the LIC-HPCM-LALIC fork's), phase1-vrwkv..phase4-vrwkv "
                             f"(the same with its CUDA kernel's Bi-WKV), phase1-preln..phase4-preln, a variant "
                             f".json file or an expression such as phase2+wkv=vrwkv (default: {help_default})")


checkpoint_option = click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None,
                                 help="model weights (hpcm-rwkv, official HPCM or fork checkpoint); without it a "
                                      "seeded untrained model")
export_option = click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                             help="run the networks as the graphs of this hpcm-export folder (its variant, "
                                  "weights and tables; no checkpoint needed)")
backend_option = click.option("--backend", type=click.Choice(list(RUNNERS)), default=None,
                              help="what runs the networks (default: eager, or onnxruntime with --export)")
device_option = click.option("--device", default=None,
                             help="where the networks compute: cpu, cuda or cuda:N (default: the backend's, "
                                  "cpu for eager/onnxruntime, cuda for tensorrt)")
max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=None,
    help=f"largest image in pixels, counted after padding to the model's alignment (default: HPCM_MAX_PIXELS, else "
         f"{config.DEFAULT_MAX_PIXELS:,} = 2048x2048); refused above it, before any network runs. Eager phase2 "
         "on CPU needs about 0.9 GB per megapixel")
# What computes a codec and on what: every command that encodes or decodes images takes these, so
# each means the same there (runtime/session.CodecRequest decides from them). A decoder takes no
# --variant: the stream's header names it.
decoder_options = combine(checkpoint_option, export_option, backend_option, device_option, max_pixels_option)
codec_options = combine(variant_option(), decoder_options)
workers_options = combine(
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="workers, each with its own codec (default: one per GPU with --device cuda, else one per "
                      "--threads cores; with --ray, of the cluster's)"),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help=f"threads per worker (default {config.DEFAULT_CPU_THREADS} on a CPU, "
                      f"{config.DEFAULT_GPU_THREADS} beside a GPU); streams are the same bytes for the same "
                      "codec, backend, device and threads"),
    click.option("--ray", "ray_address", default=None, metavar="auto|ADDRESS",
                 help="run the workers as actors of a Ray cluster: auto (the cluster this machine belongs to, "
                      "else a local one) or its address; needs the [cluster] extra"),
)
images_options = combine(
    click.option("--images", type=click.Path(path_type=Path), default=None,
                 help="folder of images (default ../shared/data/kodak; synthetic images when absent)"),
    click.option("--limit", default=2, show_default=True, type=click.IntRange(min=1), help="number of images"),
    click.option("--crop", default=None, type=click.IntRange(min=16),
                 help="top-left square crop side in pixels (faster checks)"),
)


def size_options(what: str, with_opt: bool = True) -> Decorator:
    """--min-size/--opt-size/--max-size H W of ``what`` (the export profile or the engines)."""
    options = [click.option("--min-size", nargs=2, type=click.IntRange(min=1), metavar="H W",
                            help=f"smallest image {what} must accept")]
    if with_opt:
        options.append(click.option("--opt-size", nargs=2, type=click.IntRange(min=1), metavar="H W",
                                    help=f"image size {what} is tuned for"))
    options.append(click.option("--max-size", nargs=2, type=click.IntRange(min=1), metavar="H W",
                                help=f"largest image {what} must accept"))
    return combine(*options)


def image_folder(images: Optional[Path]) -> Path:
    return images if images is not None else config.default_image_folder()


def split_list(values: tuple[str, ...]) -> list[str]:
    """Values of a repeatable option, each of which may also be a comma-separated list."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
