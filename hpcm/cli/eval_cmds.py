"""Evaluation commands: ``hpcm eval`` (R-D on an image set), ``hpcm plot`` (R-D figure and BD table),
``hpcm bench`` (latency per stage, memory, MACs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from .options import (backend_option, checkpoint_option, device_option, max_pixels_option, split_list,
                      variant_option, workers_options)

CLASSICAL_NAMES = ("jpeg", "webp", "avif", "jxl", "heic")


@click.command(name="eval")
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--checkpoint", "-c", "checkpoints", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="a trained checkpoint: one rate point each (repeat the option)")
@click.option("--export", "exports", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="an hpcm-export folder: one rate point each (repeat the option)")
@variant_option("phase2; only without --checkpoint/--export: the seeded untrained model")
@click.option("--codec", "classical", type=click.Choice(CLASSICAL_NAMES), default=None,
              help="measure a classical codec through Pillow instead (jxl and heic need the [codecs] extra)")
@click.option("--quality", "qualities", multiple=True,
              help="quality settings of --codec (comma-separated or repeated; default: the codec's sweep)")
@backend_option
@device_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CompressAI result JSON to write; per-image rows go beside it (OUT.rows.jsonl, OUT.csv)")
@click.option("--name", default=None,
              help="the curve's name (default: the codec and its library, or the output file's stem)")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the first N images (sorted by name)")
@click.option("--forward-check/--no-forward-check", default=True, show_default=True,
              help="compare each decoded image with the eval-mode forward's x_hat (one more forward pass; eager, "
                   "or exports made with --forward)")
@click.option("--progress/--no-progress", default=True, show_default=True, help="show a progress bar")
@workers_options
def eval_cmd(images: Path, checkpoints: tuple[Path, ...], exports: tuple[Path, ...], variant: Optional[str],
             classical: Optional[str], qualities: tuple[str, ...], backend: Optional[str], device: Optional[str],
             output: Path, name: Optional[str], limit: Optional[int], forward_check: bool, progress: bool,
             workers: Optional[int], threads: Optional[int], ray_address: Optional[str]) -> None:
    """Encode and decode every image of IMAGES (a folder or one image) at each rate point and write
    CompressAI's R-D JSON: bpp of the bytes written (header included), PSNR and MS-SSIM on 8-bit RGB,
    encoding and decoding time, mean over the images per rate point.

    \b
    Rate points: one per --checkpoint or --export (a trained model per lambda), or the qualities of
    --codec; with none of these, the seeded untrained model of --variant, labelled untrained (its
    R-D is meaningless: R-D needs trained weights). Rows are saved as they complete: run the same
    command again to resume; unreadable images are skipped with a message.

    \b
    Locally one image at a time in this process (all of its threads); with --ray the (rate point,
    image) pairs go to Ray actors (--workers x --threads), the same result files.
    """
    from hpcm.evaluation.evaluate import (ResultFiles, classical_plan, evaluate_images, image_paths, learned_plan,
                                          summary_table)

    if (workers or threads) and ray_address is None:
        raise click.UsageError("--workers and --threads go with --ray (a local eval measures one image at a time)")
    paths = image_paths(images, limit)
    files = ResultFiles.checked(output, inputs=[*paths, *checkpoints, *exports, variant])
    if classical is not None:
        if checkpoints or exports or variant or backend:
            raise click.UsageError("--codec measures a classical codec: it excludes --checkpoint, --export, "
                                   "--variant and --backend")
        try:
            values = [int(q) for q in split_list(qualities)] or None
        except ValueError as exc:
            raise click.BadParameter(f"{exc}: qualities are integers", param_hint="--quality") from exc
        plan = classical_plan(classical, values)
    else:
        if qualities:
            raise click.UsageError("--quality goes with --codec")
        plan = learned_plan(checkpoints, exports, variant, backend, device, forward_check, trained_name=output.stem)
    outcome = evaluate_images(plan, images, paths, files, name=name, progress=progress, ray_address=ray_address,
                              workers=workers, threads=threads)
    click.echo(summary_table(outcome))
    click.echo(f"wrote {output}, {files.csv} ({outcome.rows} rows)")


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--anchors", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of published curves (CompressAI JSON; default ../shared/data/anchors/kodak, "
                   "skipped when absent)")
@click.option("--anchor", "anchor_names", multiple=True,
              help="draw only these anchors (file stems such as vtm, webp; comma-separated or repeated)")
@click.option("--reference", default=None,
              help="the curve BD values are computed against: an anchor's file stem or any curve's name "
                   "(default: vtm when the anchors hold it, else the first RESULTS file)")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="figure to write (.png, .svg or .pdf); without it only the BD table is printed")
@click.option("--table", "table_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the BD table here (Markdown)")
@click.option("--title", default="", help="figure title")
def plot(results: tuple[Path, ...], anchors: Optional[Path], anchor_names: tuple[str, ...], reference: Optional[str],
         output: Optional[Path], table_path: Optional[Path], title: str) -> None:
    """R-D figure (PSNR and MS-SSIM vs bpp) of RESULTS files (CompressAI JSON, e.g. from `hpcm eval`)
    over the published anchors, and a BD-rate / BD-PSNR table against --reference."""
    from hpcm.evaluation.plot import PlotFiles, compare_curves

    files = PlotFiles.checked(output, table_path, inputs=[*results, anchors])
    comparison = compare_curves(results, anchors, split_list(anchor_names), reference)
    click.echo(comparison.table)
    comparison.write(files, title)
    if output is not None:
        click.echo(f"wrote {output}")


def _parse_size(text: str) -> tuple[int, int]:
    width, x, height = text.lower().partition("x")
    if not x or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise click.BadParameter(f"{text!r}: give WIDTHxHEIGHT, e.g. 768x512", param_hint="--size")
    return int(width), int(height)


@click.command()
@click.option("--variant", "-v", "variants", multiple=True,
              help="variants to bench: names, .json spec files or expressions such as baseline+s2=rwkv3 "
                   "(comma-separated or repeated; default phase2 unless --export)")
@click.option("--export", "exports", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="bench export folders instead (for --backend onnxruntime/tensorrt; repeat the option)")
@checkpoint_option
@click.option("--size", "sizes", multiple=True, default=("768x512",), show_default=True,
              help="image sizes WIDTHxHEIGHT (comma-separated or repeated)")
@backend_option
@device_option
@max_pixels_option
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1),
              help="timed encode+decode runs per configuration")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0), help="untimed runs first")
@click.option("--compare", default=None,
              help="add ratio columns against this variant (one of the benched names, e.g. baseline; "
                   "with --ablate: the base variant)")
@click.option("--ablate", type=click.Choice(["cells", "fusion", "prior"]), default=None,
              help="also bench each one-part change of the (first) --variant: cells at s1/s2/s3, the fusion, "
                   "the s3 prior")
@click.option("--macs/--no-macs", default=True, show_default=True,
              help="count parameters and MACs per pixel per module (one counted forward per variant)")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON report; OUT.md (Markdown tables) and OUT.png (time per stage) are written beside it")
def bench(variants: tuple[str, ...], exports: tuple[Path, ...], checkpoint: Optional[Path], sizes: tuple[str, ...],
          backend: Optional[str], device: Optional[str], max_pixels: Optional[int], repeats: int, warmup: int,
          compare: Optional[str], ablate: Optional[str], macs: bool, output: Path) -> None:
    """Encoding and decoding latency per stage (analysis, hyper, s1/s2/s3 steps, transitions, entropy
    coding, synthesis), peak memory, parameters and MACs per pixel, for each variant (or export) x
    size, each in a fresh process.

    \b
    Seeded weights and a synthetic image unless --checkpoint or --export: latency and memory need no
    trained weights, R-D does (`hpcm eval -c`); entropy-coding time depends on the weights (seeded
    ones code almost every symbol as 0). CPU memory is the process's peak RSS (PyTorch included), GPU memory the
    CUDA allocator's peak; GPU times are CUDA events."""
    from hpcm.evaluation.bench import BenchFiles, bench_plan, run_bench

    files = BenchFiles.checked(output, inputs=[*exports, *split_list(variants), checkpoint])
    plan = bench_plan(split_list(variants), exports, [_parse_size(s) for s in split_list(sizes)], backend, device,
                      warmup=warmup, repeats=repeats, compare=compare, ablate=ablate, checkpoint=checkpoint,
                      max_pixels=max_pixels)
    click.echo(run_bench(plan, files, macs=macs))
    click.echo(f"wrote {files.json}, {files.markdown}, {files.figure}")

