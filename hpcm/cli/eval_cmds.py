"""Evaluation commands: ``hpcm eval`` (R-D on an image set), ``hpcm plot`` (R-D figure and BD table),
``hpcm bench`` (latency per stage, memory, MACs)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import click

from hpcm.log import LOG

from .options import backend_option, device_option, split_list, variant_option

CLASSICAL_NAMES = ("jpeg", "webp", "avif", "jxl", "heic")


def _image_paths(images: Path, limit: Optional[int]) -> list[Path]:
    from hpcm.codec.images import image_files
    from hpcm.errors import ImageError

    if images.is_dir():
        paths = image_files(images)
    elif images.is_file():
        paths = [images]
    else:
        raise ImageError(f"{images}: no such image or folder")
    if not paths:
        raise ImageError(f"{images}: no image files (png, jpg, bmp, ppm, tif, webp) in this folder")
    return paths[:limit] if limit else paths


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
def eval_cmd(images: Path, checkpoints: tuple[Path, ...], exports: tuple[Path, ...], variant: Optional[str],
             classical: Optional[str], qualities: tuple[str, ...], backend: Optional[str], device: Optional[str],
             output: Path, name: Optional[str], limit: Optional[int], forward_check: bool, progress: bool) -> None:
    """Encode and decode every image of IMAGES (a folder or one image) at each rate point and write
    CompressAI's R-D JSON: bpp of the bytes written (header included), PSNR and MS-SSIM on 8-bit RGB,
    encoding and decoding time, mean over the images per rate point.

    \b
    Rate points: one per --checkpoint or --export (a trained model per lambda), or the qualities of
    --codec; with none of these, the seeded untrained model of --variant, labelled untrained (its
    R-D is meaningless: R-D needs trained weights). Rows are saved as they complete: run the same
    command again to resume; unreadable images are skipped with a message.
    """
    from hpcm.evaluation import evaluate as ev
    from hpcm.evaluation.results import RowJournal, result_document, row_paths, write_csv, write_json
    from hpcm.files import check_output

    check_output(output)
    journal_path, csv_path = row_paths(output)
    check_output(journal_path)
    check_output(csv_path)
    paths = _image_paths(images, limit)
    if classical is not None:
        if checkpoints or exports or variant or backend:
            raise click.UsageError("--codec measures a classical codec: it excludes --checkpoint, --export, "
                                   "--variant and --backend")
        points, setup, curve_name, description = _classical(classical, qualities)
    else:
        if qualities:
            raise click.UsageError("--quality goes with --codec")
        points, setup, curve_name, description = _learned(checkpoints, exports, variant, backend, device,
                                                          forward_check, output)
    journal = RowJournal(journal_path, setup)
    ev.evaluate(points, paths, journal, progress=progress)
    names = {p.name for p in paths}
    rows = [r for r in journal.rows if r["image"] in names and r["point"] in {p.key for p in points}]
    if not rows:
        raise click.ClickException("no image could be coded; nothing to write")
    description = f"{description}; {len({r['image'] for r in rows})} images from {images}"
    if classical is None:
        description += f"; {ev.forward_check_summary(rows)}"
    document = result_document(name or curve_name, description, [p.key for p in points], rows, setup)
    write_json(output, document)
    write_csv(csv_path, [r for p in points for r in rows if r["point"] == p.key])
    _print_summary(document, {p.key: p.label for p in points})
    click.echo(f"wrote {output}, {csv_path} ({len(rows)} rows)")


def _classical(name: str, qualities: tuple[str, ...]):  # noqa: ANN202 - (points, setup, name, description)
    from hpcm.evaluation.classical import CLASSICAL_CODECS
    from hpcm.evaluation.evaluate import classical_points

    codec = CLASSICAL_CODECS[name]
    try:
        values = [int(q) for q in split_list(qualities)] or None
    except ValueError as exc:
        raise click.BadParameter(f"{exc}: qualities are integers", param_hint="--quality") from exc
    points = classical_points(codec, values)
    library = codec.library()
    return (points, {"codec": name, "library": library}, f"{codec.title} ({library.split(',')[0]})",
            f"{codec.title} through {library}, Pillow's defaults, quality {points[0].key.split('-q')[1]}.."
            f"{points[-1].key.split('-q')[1]}")


def _learned(checkpoints: tuple[Path, ...], exports: tuple[Path, ...], variant: Optional[str],
             backend: Optional[str], device: Optional[str], forward_check: bool, output: Path):  # noqa: ANN202
    from hpcm.evaluation.evaluate import file_digest, learned_point
    from hpcm.export.artifact import ExportDir
    from hpcm.runtime.session import CodecRequest, untrained

    if exports and (checkpoints or variant):
        raise click.UsageError("--export excludes --checkpoint and --variant: an export holds its weights and variant")
    backend = CodecRequest(export=exports[0] if exports else None, backend=backend).backend_name
    setup = {"backend": backend, "device": device or "default"}
    points = []
    for path in checkpoints:
        request = CodecRequest(checkpoint=path, variant=variant, backend=backend, device=device)
        points.append(learned_point(f"checkpoint-{file_digest(path)}", path.name, request, forward_check))
    for path in exports:
        export = ExportDir.open(path)
        request = CodecRequest(export=export, backend=backend, device=device)
        points.append(learned_point(f"export-{export.codec_parameters.weights_digest.hex()}", str(path), request,
                                    forward_check))
    what = f"{len(checkpoints)} checkpoint(s)" if checkpoints else f"{len(exports)} export(s)"
    name = output.stem
    if not points:
        request = CodecRequest(variant=variant, backend=backend, device=device)
        seeded = untrained(request)
        points.append(learned_point(f"untrained-{seeded.variant}-seed{seeded.seed}", f"{seeded.variant} (untrained)",
                                    request, forward_check))
        what = f"UNTRAINED seeded {seeded.variant} (seed {seeded.seed}: random weights, meaningless R-D)"
        name = f"{seeded.variant} (untrained, seed {seeded.seed})"
    return points, setup, name, f"hpcm-rwkv {what} on the {backend} backend ({device or 'default device'})"


def _print_summary(document: dict, labels: dict[str, str]) -> None:
    results = document["results"]
    ms_ssim = results.get("ms-ssim-rgb", [None] * len(results["bpp"]))
    click.echo(f"{document['name']}:")
    click.echo(f"  {'rate point':<28} {'bpp':>8} {'PSNR':>8} {'MS-SSIM':>8} {'enc s':>8} {'dec s':>8} images")
    for i, point in enumerate(document["points"]):
        m = f"{ms_ssim[i]:.4f}" if ms_ssim[i] is not None else "-"
        click.echo(f"  {labels.get(point['point'], point['point']):<28} {results['bpp'][i]:>8.4f} "
                   f"{results['psnr-rgb'][i]:>8.3f} {m:>8} {results['encoding_time'][i]:>8.3f} "
                   f"{results['decoding_time'][i]:>8.3f} {point['images']}")


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
    import dataclasses

    from hpcm import config
    from hpcm.evaluation.bd import anchor_curves, bd_table, markdown_table, read_curve
    from hpcm.files import atomic_output, check_output

    for path in (output, table_path):
        if path is not None:
            check_output(path, inputs=results)
    curves = [read_curve(p) for p in results]
    folder = anchors if anchors is not None else config.default_anchor_folder()
    published: dict = {}
    if folder.is_dir():  # marked as published: a measured JPEG and the published one must not share a name
        published = {stem: c if "published" in c.name.lower() else dataclasses.replace(c, name=f"{c.name} (published)")
                     for stem, c in anchor_curves(folder).items()}
    elif anchors is not None:
        raise click.BadParameter(f"{anchors} is not a folder", param_hint="--anchors")
    else:
        LOG.warning(f"no anchors at {folder}: plotting and comparing the given results only")
    wanted = [n.lower() for n in split_list(anchor_names)]
    unknown = [n for n in wanted if n not in published]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)} not among the anchors in {folder} "
                                 f"({', '.join(published) or 'none'})", param_hint="--anchor")
    drawn = [c for stem, c in published.items() if not wanted or stem in wanted]
    ref = _reference_curve(reference, curves, published)
    table = markdown_table(bd_table(curves + [c for c in drawn if c is not ref], ref), ref)
    click.echo(table)
    if table_path is not None:
        with atomic_output(table_path, inputs=results) as tmp:
            tmp.write_text(table + "\n")
    if output is not None:
        from hpcm.evaluation.plot import rd_figure

        rd_figure(curves, drawn, output, title=title, reference=ref)
        click.echo(f"wrote {output}")


def _reference_curve(reference: Optional[str], curves: list, published: dict):  # noqa: ANN202 - a Curve
    if reference is None:
        return published.get("vtm", curves[0])
    key = reference.lower()
    if key in published:
        return published[key]
    for curve in [*curves, *published.values()]:
        if curve.name.lower() == key:
            return curve
    names = sorted({*published, *(c.name for c in curves)})
    raise click.BadParameter(f"no curve {reference!r}; choose one of {', '.join(names)}", param_hint="--reference")


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
@click.option("--size", "sizes", multiple=True, default=("768x512",), show_default=True,
              help="image sizes WIDTHxHEIGHT (comma-separated or repeated)")
@backend_option
@device_option
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
def bench(variants: tuple[str, ...], exports: tuple[Path, ...], sizes: tuple[str, ...], backend: Optional[str],
          device: Optional[str], repeats: int, warmup: int, compare: Optional[str], ablate: Optional[str],
          macs: bool, output: Path) -> None:
    """Encoding and decoding latency per stage (analysis, hyper, s1/s2/s3 steps, transitions, entropy
    coding, synthesis), peak memory, parameters and MACs per pixel, for each variant (or export) x
    size, each in a fresh process.

    \b
    Seeded weights and a synthetic image unless --export: latency and memory need no trained weights,
    R-D does (`hpcm eval -c`). CPU memory is the process's peak RSS (PyTorch included), GPU memory the
    CUDA allocator's peak; GPU times are CUDA events."""
    import dataclasses
    import json

    from tqdm import tqdm

    from hpcm.config import DEFAULT_VARIANT
    from hpcm.evaluation.ablation import ablation_variants
    from hpcm.evaluation.bench import BenchConfig, markdown, run_configuration, stage_figure
    from hpcm.evaluation.flops import module_costs
    from hpcm.export.artifact import ExportDir
    from hpcm.files import atomic_output, check_output
    from hpcm.models import build_model, get_variant
    from hpcm.runtime.session import CodecRequest

    md_path, png_path = output.with_suffix(".md"), output.with_suffix(".png")
    for path in (output, md_path, png_path):
        check_output(path)
    backend = CodecRequest(export=exports[0] if exports else None, backend=backend).backend_name
    names = split_list(variants)
    if exports and (names or ablate):
        raise click.UsageError("--export excludes --variant and --ablate: an export fixes its variant")
    if not exports and backend != "eager":
        raise click.UsageError(f"--backend {backend} runs export folders: export each variant with hpcm-export "
                               "and pass --export DIR")
    specs = [get_variant(n) for n in (names or [DEFAULT_VARIANT])] if not exports else []
    if ablate:
        specs += [s for s in ablation_variants(names[0] if names else DEFAULT_VARIANT, ablate)
                  if s.name not in {t.name for t in specs}]
        compare = compare or specs[0].name  # ratios against the ablated base
    dims = [_parse_size(s) for s in split_list(sizes)]
    export_specs = {path: ExportDir.open(path).variant for path in exports}
    configs = []
    for width, height in dims:
        for spec in specs:
            configs.append(BenchConfig(spec.name, width, height, backend, device, variant=spec.to_dict(),
                                       warmup=warmup, repeats=repeats))
        for path, spec in export_specs.items():
            configs.append(BenchConfig(spec.name, width, height, backend, device, export=str(path), warmup=warmup,
                                       repeats=repeats))
    results = []
    for config in tqdm(configs, unit="configuration", disable=None, dynamic_ncols=True):
        results.append(run_configuration(config))
    costs = {}
    if macs:  # weights do not change the counts: an export's variant is counted on a seeded model
        for spec in specs + list(export_specs.values()):
            costs[spec.name] = module_costs(build_model(spec, seed=0))
    if compare is not None and compare not in {r["name"] for r in results}:
        raise click.BadParameter(f"{compare!r} is not among the benched variants "
                                 f"({', '.join(sorted({r['name'] for r in results}))})", param_hint="--compare")
    report = {"configurations": [dataclasses.asdict(c) for c in configs], "results": results, "costs": costs,
              "compare": compare}
    with atomic_output(output) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report, compare)
    with atomic_output(md_path) as tmp:
        tmp.write_text(table + "\n")
    stage_figure(report, png_path)
    click.echo(table)
    click.echo(f"wrote {output}, {md_path}, {png_path}")


commands = [eval_cmd, plot, bench]
