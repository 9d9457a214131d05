"""``hpcm eval``: real encoding and decoding of every image at every rate point, measured.

A rate point is one way of coding the images (a checkpoint or an export on a backend, or a classical
codec at one quality); its ``ImageCoder`` encodes to the bytes that would be written and decodes them
back. Per image: bpp (all bytes written, header included, over the original H*W), PSNR and MS-SSIM
on 8-bit RGB (``metrics``), encoding and decoding time (waiting for the GPU), and for the learned
codec the largest difference between the decoded image and the model's eval-mode forward x_hat, on
the runners that have the whole-model ``forward`` graph (eager always; an export made with --forward).
Rows go to a ``RowJournal`` as they complete, so a rerun skips what is done.

The command's orchestration is here too: ``learned_plan``/``classical_plan`` turn what was asked for
into rate points, ``evaluate_images`` measures them on a folder and writes the result files
(``ResultFiles``, checked before any work); the CLI parses options and prints ``summary_table``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Optional, Protocol, Sequence

import torch

from hpcm.codec import Codec, pad_image
from hpcm.codec.codec import deterministic_precision
from hpcm.codec.images import image_files, load_image, psnr_rgb8, synthetic_images, to_8bit, to_uint8
from hpcm.digests import file_sha256
from hpcm.errors import ConfigError, HPCMError, ImageError
from hpcm.files import check_output
from hpcm.log import LOG
from hpcm.runtime.session import CodecRequest, check_backend, open_codec, resolve, untrained

from .classical import CLASSICAL_CODECS, ClassicalCodec, from_uint8_image
from .metrics import ms_ssim_rgb8
from .results import RowJournal, result_document, row_paths, write_csv, write_json
from .timing import stopwatch


class ImageCoder(Protocol):
    device: torch.device

    def encode(self, x: torch.Tensor) -> bytes: ...

    def decode(self, data: bytes) -> torch.Tensor: ...

    def forward_x_hat(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """What the decoded image should equal (the model's eval forward), or None when not compared."""


@dataclass(frozen=True)
class RatePoint:
    key: str  # identifies the point in the journal (content digest or codec and quality)
    label: str  # for people: checkpoint name, export folder, quality
    open: Callable[[], ContextManager[ImageCoder]]


class LearnedCoder:
    """The codec of a checkpoint or an export on its runner."""

    def __init__(self, codec: Codec, compare_forward: bool = True) -> None:
        self.codec = codec
        self.device = codec.device
        self.compare_forward = compare_forward and "forward" in getattr(codec.runner, "graphs", ())

    def encode(self, x: torch.Tensor) -> bytes:
        return self.codec.compress(x).data

    def decode(self, data: bytes) -> torch.Tensor:
        return self.codec.decompress(data).x_hat

    def forward_x_hat(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.compare_forward:
            return None
        padded, _, _ = pad_image(x.to(device=self.device, dtype=torch.float32), self.codec.alignment)
        with torch.no_grad(), deterministic_precision(self.device):
            x_hat = self.codec.runner.run("forward", {"x": padded})["x_hat"]
        return x_hat.clamp(0.0, 1.0)[..., : x.shape[-2], : x.shape[-1]]


class ClassicalCoder:
    """A Pillow codec at one quality."""

    device = torch.device("cpu")

    def __init__(self, codec: ClassicalCodec, quality: int) -> None:
        self.codec = codec
        self.quality = quality

    def encode(self, x: torch.Tensor) -> bytes:
        return self.codec.encode(to_uint8(x), self.quality)

    def decode(self, data: bytes) -> torch.Tensor:
        return from_uint8_image(self.codec.decode(data))

    def forward_x_hat(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        return None


def classical_points(codec: ClassicalCodec, qualities: Optional[Sequence[int]] = None) -> list[RatePoint]:
    """One point per quality (the codec's default sweep when none are given)."""
    codec.check_available()

    def opener(quality: int) -> Callable[[], ContextManager[ImageCoder]]:
        return lambda: contextlib.nullcontext(ClassicalCoder(codec, quality))

    return [RatePoint(f"{codec.name}-q{q}", f"{codec.name} q{q}", opener(q)) for q in (qualities or codec.qualities)]


def learned_point(key: str, label: str, request: CodecRequest, compare_forward: bool = True) -> RatePoint:
    """A point whose coder is the codec ``request`` describes (a checkpoint or an export on a runner),
    opened when the point is measured."""

    @contextlib.contextmanager
    def opener() -> Iterator[ImageCoder]:
        with open_codec(request) as session:
            yield LearnedCoder(session.codec, compare_forward)

    return RatePoint(key, label, opener)


def measure_image(coder: ImageCoder, point: str, image: str, x: torch.Tensor) -> dict:
    """The row of one image at one rate point."""
    with stopwatch(coder.device) as encoding:
        data = coder.encode(x)
    with stopwatch(coder.device) as decoding:
        x_hat = coder.decode(data)
    reference = coder.forward_x_hat(x)
    height, width = x.shape[-2:]
    return {
        "point": point, "image": image, "width": int(width), "height": int(height), "bytes": len(data),
        "bpp": 8.0 * len(data) / (height * width),
        "psnr_rgb": psnr_rgb8(x, x_hat), "ms_ssim_rgb": ms_ssim_rgb8(x, x_hat),
        "encoding_time": encoding[0], "decoding_time": decoding[0],
        "forward_max_diff": None if reference is None else float((to_8bit(reference) - to_8bit(x_hat)).abs().max()),
    }


def evaluate(points: Sequence[RatePoint], images: Sequence[Path], journal: RowJournal, progress: bool = True) -> None:
    """Measure every image at every point that the journal does not hold yet, appending each row."""
    from tqdm import tqdm

    done = journal.done()
    todo = [(point, [p for p in images if (point.key, p.name) not in done]) for point in points]
    remaining = sum(len(paths) for _, paths in todo)
    if remaining < len(points) * len(images):
        LOG.info(f"{journal.path} already holds {len(points) * len(images) - remaining} of the rows; "
                 f"measuring the other {remaining}")
    unreadable: set[Path] = set()
    with tqdm(total=remaining, unit="image", disable=None if progress else True, dynamic_ncols=True) as bar:
        for point, paths in todo:
            if not paths:
                continue
            with point.open() as coder:
                _warm_up(coder)
                for path in paths:
                    bar.set_description(f"{point.label}: {path.name}")
                    if path not in unreadable:
                        _measure_one(coder, point, path, journal, unreadable)
                    bar.update()


def _warm_up(coder: ImageCoder) -> None:
    """Code a small image untimed first, so that one-time costs (native libraries, first allocations,
    lazy initialisation) do not land in the first image's times."""
    coder.decode(coder.encode(synthetic_images(1, 128)[0][1]))


def _measure_one(coder: ImageCoder, point: RatePoint, path: Path, journal: RowJournal, unreadable: set[Path]) -> None:
    try:
        x = load_image(path)
    except ImageError as exc:
        unreadable.add(path)
        LOG.warning(f"skipping {exc}")
        return
    try:
        journal.append(measure_image(coder, point.key, path.name, x))
    except HPCMError as exc:
        LOG.warning(f"skipping {path.name} at {point.label}: {exc}")


def forward_check_summary(rows: Sequence[dict]) -> str:
    """One sentence on the decoded images against the eval-mode forward, for the result's description."""
    diffs = [r["forward_max_diff"] for r in rows if r.get("forward_max_diff") is not None]
    if not diffs:
        return "decoded images not compared with a forward pass (classical codec, or an export without --forward)"
    differing = sum(d > 0 for d in diffs)
    if not differing:
        return f"decoded images equal the eval-mode forward's x_hat in 8-bit on all {len(diffs)} coded images"
    return (f"decoded images differ from the eval-mode forward's x_hat on {differing} of {len(diffs)} coded images "
            f"(at most {max(diffs):.0f} levels of 255)")


# ------------------------------------------------------------------------------------ the command
@dataclass(frozen=True)
class Plan:
    """The rate points of one run, the setup their rows are measured with (a journal of another setup
    is refused), the curve's default name and its description."""

    points: list[RatePoint]
    setup: dict
    name: str
    description: str
    learned: bool


def classical_plan(name: str, qualities: Optional[Sequence[int]] = None) -> Plan:
    """A classical codec (``CLASSICAL_CODECS``) at ``qualities`` (default: its sweep)."""
    codec = CLASSICAL_CODECS[name]
    values = list(qualities or codec.qualities)
    library = codec.library()
    return Plan(classical_points(codec, values), {"codec": name, "library": library},
                f"{codec.title} ({library.split(',')[0]})",
                f"{codec.title} through {library}, Pillow's defaults, quality {min(values)}..{max(values)}", False)


def learned_plan(checkpoints: Sequence[Path], exports: Sequence[Path], variant: Optional[str], backend: Optional[str],
                 device: Optional[str], forward_check: bool, trained_name: str) -> Plan:
    """One point per checkpoint or export folder (named ``trained_name``), else the seeded untrained
    model of ``variant``, named and described as such."""
    if exports and (checkpoints or variant):
        raise ConfigError("--export excludes --checkpoint and --variant: an export holds its weights and variant")
    backend = CodecRequest(export=exports[0] if exports else None, backend=backend).backend_name
    check_backend(backend, has_export=bool(exports))
    points = []
    for path in checkpoints:
        request = CodecRequest(checkpoint=path, variant=variant, backend=backend, device=device)
        points.append(learned_point(f"checkpoint-{file_sha256(path)[:16]}", path.name, request, forward_check))
    for path in exports:
        export = resolve(CodecRequest(export=path), need_model=False)
        request = CodecRequest(export=export.export, backend=backend, device=device)
        points.append(learned_point(f"export-{export.parameters.weights_digest.hex()}", str(path), request,
                                    forward_check))
    what = f"{len(checkpoints)} checkpoint(s)" if checkpoints else f"{len(exports)} export(s)"
    name = trained_name
    if not points:
        request = CodecRequest(variant=variant, backend=backend, device=device)
        seeded = untrained(request)
        points.append(learned_point(f"untrained-{seeded.variant}-seed{seeded.seed}", f"{seeded.variant} (untrained)",
                                    request, forward_check))
        what = f"UNTRAINED seeded {seeded.variant} (seed {seeded.seed}: random weights, meaningless R-D)"
        name = f"{seeded.variant} (untrained, seed {seeded.seed})"
    return Plan(points, {"backend": backend, "device": device or "default"}, name,
                f"hpcm-rwkv {what} on the {backend} backend ({device or 'default device'})", True)


@dataclass(frozen=True)
class ResultFiles:
    """Where a run writes: the CompressAI JSON, its row journal and CSV (``results.row_paths``)."""

    json: Path
    journal: Path
    csv: Path

    @classmethod
    def checked(cls, output: Path) -> "ResultFiles":
        """The files of result file ``output``, each checked writable before any work starts."""
        journal, table = row_paths(output)
        return cls(*(check_output(path) for path in (output, journal, table)))


def image_paths(images: Path, limit: Optional[int] = None) -> list[Path]:
    """The images of a folder (sorted by name; the first ``limit``), or one image file."""
    if images.is_dir():
        paths = image_files(images)
    elif images.is_file():
        paths = [images]
    else:
        raise ImageError(f"{images}: no such image or folder")
    if not paths:
        raise ImageError(f"{images}: no image files (png, jpg, bmp, ppm, tif, webp) in this folder")
    return paths[:limit] if limit else paths


@dataclass(frozen=True)
class Outcome:
    """What a run wrote: the result document, the label of each point, and how many rows it holds."""

    document: dict
    labels: dict[str, str]
    rows: int


def evaluate_images(plan: Plan, images: Path, paths: Sequence[Path], files: ResultFiles, name: Optional[str] = None,
                    progress: bool = True) -> Outcome:
    """Measure ``plan`` on the images ``paths`` of ``images`` (``image_paths``), resuming from the
    journal, and write the result files."""
    journal = RowJournal(files.journal, plan.setup)
    evaluate(plan.points, paths, journal, progress=progress)
    names, keys = {p.name for p in paths}, [p.key for p in plan.points]
    rows = [r for r in journal.rows if r["image"] in names and r["point"] in set(keys)]
    if not rows:
        raise ImageError(f"no image of {images} could be coded; nothing written")
    description = f"{plan.description}; {len({r['image'] for r in rows})} images from {images}"
    if plan.learned:
        description += f"; {forward_check_summary(rows)}"
    document = result_document(name or plan.name, description, keys, rows, plan.setup)
    write_json(files.json, document)
    write_csv(files.csv, [r for key in keys for r in rows if r["point"] == key])
    return Outcome(document, {p.key: p.label for p in plan.points}, len(rows))


def summary_table(outcome: Outcome) -> str:
    """The means of every rate point, one line each."""
    document = outcome.document
    results = document["results"]
    ms_ssim = results.get("ms-ssim-rgb", [None] * len(results["bpp"]))
    lines = [f"{document['name']}:",
             f"  {'rate point':<28} {'bpp':>8} {'PSNR':>8} {'MS-SSIM':>8} {'enc s':>8} {'dec s':>8} images"]
    for i, point in enumerate(document["points"]):
        m = f"{ms_ssim[i]:.4f}" if ms_ssim[i] is not None else "-"
        lines.append(f"  {outcome.labels.get(point['point'], point['point']):<28} {results['bpp'][i]:>8.4f} "
                     f"{results['psnr-rgb'][i]:>8.3f} {m:>8} {results['encoding_time'][i]:>8.3f} "
                     f"{results['decoding_time'][i]:>8.3f} {point['images']}")
    return "\n".join(lines)
