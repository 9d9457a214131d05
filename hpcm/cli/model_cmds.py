"""Model commands: ``hpcm info``, ``hpcm convert``, ``hpcm train``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import variant_option


def _model(variant: str | None, checkpoint: Path | None):  # noqa: ANN202 - an HPCM
    """The checkpoint's model, or the seeded variant to start from; no entropy tables, no notice (these
    commands neither code nor judge rate-distortion)."""
    from hpcm.runtime.session import CodecRequest, resolve

    request = CodecRequest(checkpoint=checkpoint, variant=variant)
    return resolve(request, need_model=True, tables=False, announce=False).model


@click.command()
@click.argument("checkpoint_file", metavar="[CHECKPOINT]", required=False, type=click.Path(path_type=Path))
@variant_option()
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), help="read the variant and weights from here")
def info(checkpoint_file: Path | None, variant: str | None, checkpoint: Path | None) -> None:
    """Print what a checkpoint holds (who wrote it, how its keys were mapped, which variant it is) and
    the parameters of every module of its variant (or of --variant) and the total."""
    from hpcm.models.checkpoint import inspect_checkpoint, model_from_contents, parameter_table

    if checkpoint_file is not None and checkpoint is not None:
        raise click.UsageError("give the checkpoint once: as CHECKPOINT or with --checkpoint")
    checkpoint = checkpoint_file or checkpoint
    if checkpoint is not None:
        contents = inspect_checkpoint(checkpoint)
        click.echo(f"checkpoint {checkpoint}: {contents.source}")
        for line in contents.found:
            click.echo(f"  {line}")
        model = model_from_contents(contents, variant, checkpoint)
    else:
        model = _model(variant, None)
    spec = model.spec
    click.echo(f"variant {spec.name}: {spec.description}")
    rwkv = f", RWKV blocks {spec.rwkv_block}, Bi-WKV mode {spec.wkv}" if spec.has_rwkv else ""
    click.echo(f"M={spec.M} N={spec.N}{rwkv}, image sides must be multiples of {model.alignment} px")
    for name, count in parameter_table(model):
        click.echo(f"  {name:<40} {count:>12,}  ({count / 1e6:.2f} M)")


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--to", "target", required=True, help="target variant (name or .json)")
@click.option("--from", "source_variant", default=None, help="variant of SOURCE when it is an official/raw state_dict")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True)
@click.option("--seed", default=0, show_default=True, help="seed of the fresh initialisation of new modules")
def convert(source: Path, target: str, source_variant: str | None, output: Path, seed: int) -> None:
    """Migrate a checkpoint to another variant (e.g. phase1 -> phase2): every tensor with the same
    name and shape is carried, new modules are initialised, and both lists are reported."""
    from hpcm.files import check_output
    from hpcm.models.checkpoint import convert_model, save_checkpoint

    inputs = (source, source_variant, target)
    check_output(output, inputs)
    model = _model(source_variant, source)
    converted, report = convert_model(model, target, seed=seed)
    save_checkpoint(converted, output, inputs=inputs)
    click.echo(f"{model.spec.name} -> {converted.spec.name}: {report.summary()}")
    click.echo(f"wrote {output}")


@click.command()
@click.argument("images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@variant_option()
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path), help="start from these weights")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="checkpoint to write")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--crop", default=256, show_default=True, type=click.IntRange(min=1),
              help="square crop side (multiple of the alignment)")
@click.option("--lmbda", default=0.0067, show_default=True, help="rate-distortion trade-off")
@click.option("--lr", default=1e-4, show_default=True, help="learning rate (decay/boost get a tenth)")
@click.option("--device", default="cpu", show_default=True)
def train(images: Path, variant: str, checkpoint: Path | None, output: Path, steps: int, batch_size: int,
          crop: int, lmbda: float, lr: float, device: str) -> None:
    """Train on random crops of the images under IMAGES (loss lambda*255^2*MSE + bpp); a convenience.

    Unreadable images are skipped with a notice; the output is checked before training starts, and
    written only when training ends with finite weights, with entropy tables of the trained weights."""
    from hpcm.codec.images import image_files, iterate_images
    from hpcm.errors import ImageError
    from hpcm.files import check_output
    from hpcm.models.checkpoint import save_checkpoint
    from hpcm.models.train import TrainConfig, train as run

    config = TrainConfig(steps=steps, batch_size=batch_size, crop=crop, lmbda=lmbda, lr=lr, device=device)
    paths = image_files(images, recursive=True)
    inputs = (checkpoint, variant, *paths)
    check_output(output, inputs)
    model = _model(variant, checkpoint)
    pictures = [pixels for _, pixels in iterate_images(paths)]
    if not pictures:
        raise ImageError(f"no readable images under {images}")
    run(model, config, pictures, log=click.echo)
    save_checkpoint(model.cpu(), output, inputs=inputs)
    click.echo(f"wrote {output}")

