"""``hpcm eval``: real encoding and decoding of every image at every rate point, measured.

A rate point is one way of coding the images (a checkpoint or an export on a backend, or a classical
codec at one quality); its ``ImageCoder`` encodes to the bytes that would be written and decodes them
back. Per image: bpp (all bytes written, header included, over the original H*W), PSNR and MS-SSIM
on 8-bit RGB (``metrics``), encoding and decoding time (waiting for the GPU), and for the learned
codec the largest difference between the decoded image and the model's eval-mode forward x_hat, on
the runners that have the whole-model ``forward`` graph (eager always; an export made with --forward).
Rows go to a ``RowJournal`` as they complete, keyed by rate point and image content, so a rerun
skips what is done.

The work is (rate point, image) tasks for an ``EvalWorker``: in this process, one image at a time on
all of PyTorch's threads (the timings of a local run), or with ``--ray`` on Ray actors
(``hpcm.runtime.workers``: each opens one rate point's coder at a time, and the learned points' files
travel with them). Either way this process writes the same journal and result files.

The command's orchestration is here too: ``learned_plan``/``classical_plan`` turn what was asked for
into rate points, ``evaluate_images`` measures them on a folder and writes the result files
(``ResultFiles``, checked before any work: writable, none an input, no two the same); the CLI parses
options and prints ``summary_table``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ContextManager, Iterator, Optional, Protocol, Sequence, Union

import torch

from hpcm.codec import Codec, pad_image
from hpcm.codec.codec import deterministic_precision
from hpcm.codec.images import image_files, psnr_rgb8, read_image, synthetic_images, to_8bit, to_tensor, to_uint8
from hpcm.config import DEFAULT_VARIANT
from hpcm.digests import document_digest, file_sha256
from hpcm.errors import ConfigError, HPCMError, ImageError, one_line
from hpcm.files import Output, check_outputs, exclusive
from hpcm.log import LOG, OnceEach, collect_notices
from hpcm.models.variants import get_variant
from hpcm.runtime.session import CodecRequest, check_backend, resolve, untrained
from hpcm.runtime.workers import CodecSource, Placement, open_pool, place, ship, stream

from .classical import CLASSICAL_CODECS, ClassicalCodec, from_uint8_image
from .metrics import ms_ssim_rgb8
from .results import RowJournal, RowKey, result_document, row_key, row_paths, write_csv, write_json
from .timing import stopwatch


class ImageCoder(Protocol):
    device: torch.device

    def encode(self, x: torch.Tensor) -> bytes: ...

    def decode(self, data: bytes) -> torch.Tensor: ...

    def forward_x_hat(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """What the decoded image should equal (the model's eval forward), or None when not compared."""


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


@dataclass(frozen=True)
class LearnedCoderSource:
    """Opens the ``LearnedCoder`` of a codec source (a checkpoint or an export on a runner)."""

    source: CodecSource
    compare_forward: bool = True

    @contextlib.contextmanager
    def open(self, device: Optional[str] = None) -> Iterator[ImageCoder]:
        with self.source.open(device) as session:
            yield LearnedCoder(session.codec, self.compare_forward)

    def shipped(self) -> "LearnedCoderSource":
        """The same, openable on any node of the connected Ray cluster."""
        return replace(self, source=ship(self.source.request))


class ClassicalCoder:
    """A Pillow codec at one quality."""

    device = torch.device("cpu")

    def __init__(self, codec: ClassicalCodec, quality: int) -> None:
        self.codec = codec
        self.quality = quality

    def open(self, device: Optional[str] = None) -> ContextManager[ImageCoder]:
        return contextlib.nullcontext(self)

    def shipped(self) -> "ClassicalCoder":
        return self

    def encode(self, x: torch.Tensor) -> bytes:
        return self.codec.encode(to_uint8(x), self.quality)

    def decode(self, data: bytes) -> torch.Tensor:
        return from_uint8_image(self.codec.decode(data))

    def forward_x_hat(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        return None


@dataclass(frozen=True)
class RatePoint:
    key: str  # identifies the point in the journal (content digest or codec and quality)
    label: str  # for people: checkpoint name, export folder, quality
    coder: Union[LearnedCoderSource, ClassicalCoder]  # opened where the point is measured

    def open(self, device: Optional[str] = None) -> ContextManager[ImageCoder]:
        return self.coder.open(device)


def classical_points(codec: ClassicalCodec, qualities: Optional[Sequence[int]] = None) -> list[RatePoint]:
    """One point per quality (the codec's default sweep when none are given)."""
    codec.check_available()
    return [RatePoint(f"{codec.name}-q{q}", f"{codec.name} q{q}", ClassicalCoder(codec, q))
            for q in (qualities or codec.qualities)]


def learned_point(key: str, label: str, request: CodecRequest, compare_forward: bool = True) -> RatePoint:
    """A point whose coder is the codec ``request`` describes (a checkpoint or an export on a runner),
    opened when the point is measured."""
    return RatePoint(key, label, LearnedCoderSource(CodecSource(request), compare_forward))


def measure_image(coder: ImageCoder, point: str, image: str, x: torch.Tensor, image_sha256: str) -> dict:
    """The row of one image (named ``image``, its file's SHA-256 ``image_sha256``) at one rate point."""
    with stopwatch(coder.device) as encoding:
        data = coder.encode(x)
    with stopwatch(coder.device) as decoding:
        x_hat = coder.decode(data)
    reference = coder.forward_x_hat(x)
    height, width = x.shape[-2:]
    return {
        "point": point, "image": image, "image_sha256": image_sha256, "width": int(width), "height": int(height),
        "bytes": len(data),
        "bpp": 8.0 * len(data) / (height * width),
        "psnr_rgb": psnr_rgb8(x, x_hat), "ms_ssim_rgb": ms_ssim_rgb8(x, x_hat),
        "encoding_time": encoding[0], "decoding_time": decoding[0],
        "forward_max_diff": None if reference is None else float((to_8bit(reference) - to_8bit(x_hat)).abs().max()),
    }


def image_digests(images: Sequence[Path]) -> dict[Path, str]:
    """The SHA-256 of every image file that can be read (one that cannot is skipped with a notice)."""
    digests = {}
    for path in images:
        try:
            digests[path] = file_sha256(path)
        except OSError as exc:
            LOG.warning(f"skipping {path}: {exc.strerror or exc}")
    return digests


def _warm_up(coder: ImageCoder) -> None:
    """Code a small image untimed first, so that one-time costs (native libraries, first allocations,
    lazy initialisation) do not land in the first image's times."""
    coder.decode(coder.encode(synthetic_images(1, 128)[0][1]))


@dataclass(frozen=True)
class EvalTask:
    point: str  # RatePoint.key
    path: str  # the image, as it names it in messages; its name and digest are its journal key
    digest: str  # the file's SHA-256 (image_digests)
    data: bytes


@dataclass(frozen=True)
class EvalResult:
    """A task's row, or why it has none (``unreadable``: the image cannot be read at any point)."""

    task: EvalTask
    row: Optional[dict]
    failure: Optional[str]
    unreadable: bool
    notices: tuple[str, ...]


class EvalWorker:
    """Measures tasks with one rate point's coder open at a time (warmed up when opened)."""

    def __init__(self, points: dict[str, RatePoint], device: Optional[str]) -> None:
        self.points = points
        self.device = device
        self.key: Optional[str] = None
        self.coder: Optional[ImageCoder] = None
        self.stack = contextlib.ExitStack()

    def _coder(self, key: str) -> ImageCoder:
        if key != self.key:
            self.stack.close()
            self.key, self.coder = None, None
            self.coder = self.stack.enter_context(self.points[key].open(self.device))
            self.key = key
            _warm_up(self.coder)
        return self.coder

    def run(self, task: EvalTask) -> EvalResult:
        row, failure, unreadable = None, None, False
        with collect_notices() as notices:
            coder = self._coder(task.point)
            try:
                x = to_tensor(read_image(Path(task.path), data=task.data))
            except ImageError as exc:
                failure, unreadable = one_line(str(exc)), True
            else:
                try:
                    row = measure_image(coder, task.point, Path(task.path).name, x, task.digest)
                except HPCMError as exc:
                    failure = one_line(str(exc))
        return EvalResult(task, row, failure, unreadable, tuple(notices))

    def close(self) -> None:
        self.stack.close()


@dataclass(frozen=True)
class EvalWorkerFactory:
    points: dict[str, RatePoint]

    def __call__(self, device: Optional[str]) -> EvalWorker:
        return EvalWorker(self.points, device)


def local_placement() -> Placement:
    """A local run measures in this process, one image at a time, on all of PyTorch's threads."""
    return Placement(1, torch.get_num_threads(), (None,))


def evaluate(points: Sequence[RatePoint], images: Sequence[Path], journal: RowJournal, progress: bool = True,
             placement: Optional[Placement] = None, digests: Optional[dict[Path, str]] = None) -> None:
    """Measure every image at every point that the journal does not hold yet, appending each row as it
    arrives (``placement``: on Ray actors, default ``local_placement()``; ``digests``: the images'
    ``image_digests``, computed when not given)."""
    from tqdm import tqdm

    placement = placement or local_placement()
    digests = image_digests(images) if digests is None else digests
    readable = [p for p in images if p in digests]
    done = journal.done()
    todo = [(point, path) for point in points for path in readable if (point.key, digests[path], path.name) not in done]
    if len(todo) < len(points) * len(readable):
        LOG.info(f"{journal.path} already holds {len(points) * len(readable) - len(todo)} of the rows; "
                 f"measuring the other {len(todo)}")
    if not todo:
        return
    if placement.ray:
        points = [replace(p, coder=p.coder.shipped()) for p in points]
    labels = {point.key: point.label for point in points}
    unreadable: set[str] = set()
    notices = OnceEach()
    with tqdm(total=len(todo), unit="image", disable=None if progress else True, dynamic_ncols=True) as bar:

        def tasks() -> Iterator[EvalTask]:
            for point, path in todo:
                if str(path) in unreadable:
                    bar.update()
                    continue
                try:
                    yield EvalTask(point.key, str(path), digests[path], path.read_bytes())
                except OSError as exc:
                    unreadable.add(str(path))
                    LOG.warning(f"skipping {path}: cannot read it ({exc.strerror or exc})")
                    bar.update()

        with open_pool(EvalWorkerFactory({p.key: p for p in points}), placement) as pool:
            for result in stream(pool, tasks()):
                task = result.task
                notices.say(result.notices)
                bar.set_description(f"{labels[task.point]}: {Path(task.path).name}")
                if result.row is not None:
                    journal.append(result.row)
                elif not result.unreadable:
                    LOG.warning(f"skipping {Path(task.path).name} at {labels[task.point]}: {result.failure}")
                elif task.path not in unreadable:
                    unreadable.add(task.path)
                    LOG.warning(f"skipping {result.failure}")
                bar.update()


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
    is refused), the curve's default name and its description, and the backend and device its coders
    compute on (where Ray actors go)."""

    points: list[RatePoint]
    setup: dict
    name: str
    description: str
    learned: bool
    backend: str = "eager"
    device: Optional[str] = None


def classical_plan(name: str, qualities: Optional[Sequence[int]] = None) -> Plan:
    """A classical codec (``CLASSICAL_CODECS``) at ``qualities`` (default: its sweep; each checked
    against the codec's range before any work)."""
    codec = CLASSICAL_CODECS[name]
    values = [codec.check_quality(q) for q in qualities or codec.qualities]
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
    check_backend(backend, has_export=bool(exports), device=device)
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
        # the spec's digest: two variant files of one name are two networks
        spec = document_digest(get_variant(variant or DEFAULT_VARIANT).to_dict()).hexdigest()[:16]
        points.append(learned_point(f"untrained-{seeded.variant}-{spec}-seed{seeded.seed}",
                                    f"{seeded.variant} (untrained)", request, forward_check))
        what = f"UNTRAINED seeded {seeded.variant} (seed {seeded.seed}: random weights, meaningless R-D)"
        name = f"{seeded.variant} (untrained, seed {seeded.seed})"
    return Plan(points, {"backend": backend, "device": device or "default"}, name,
                f"hpcm-rwkv {what} on the {backend} backend ({device or 'default device'})", True, backend, device)


@dataclass(frozen=True)
class ResultFiles:
    """Where a run writes: the CompressAI JSON, its row journal and CSV (``results.row_paths``)."""

    json: Path
    journal: Path
    csv: Path

    @classmethod
    def checked(cls, output: Path, inputs: Sequence[Path] = ()) -> "ResultFiles":
        """The files of result file ``output``, checked before any work starts
        (``hpcm.files.check_outputs``: writable, none of ``inputs``, no two the same)."""
        journal, table = row_paths(output)
        return cls(*check_outputs([Output(output, role="the result JSON"),
                                   Output(journal, role="the row journal beside -o"),
                                   Output(table, role="the per-image CSV beside -o")], inputs))


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
                    progress: bool = True, ray_address: Optional[str] = None, workers: Optional[int] = None,
                    threads: Optional[int] = None) -> Outcome:
    """Measure ``plan`` on the images ``paths`` of ``images`` (``image_paths``), resuming from the
    journal, and write the result files; with ``ray_address``, on Ray actors (``runtime.workers.place``).
    One process at a time writes an output (a second is refused at once)."""
    with exclusive(files.json):
        journal = RowJournal(files.journal, plan.setup)
        placement = None
        if ray_address is not None:
            placement = place(plan.device, plan.backend, workers, threads, ray_address)
        digests = image_digests(paths)
        evaluate(plan.points, paths, journal, progress=progress, placement=placement, digests=digests)
        keys = [p.key for p in plan.points]
        wanted: set[RowKey] = {(key, digests[p], p.name) for key in keys for p in paths if p in digests}
        rows = [r for r in journal.rows if row_key(r) in wanted]
        if not rows:
            raise ImageError(f"no image of {images} could be coded; nothing written")
        measured = len({(r["image_sha256"], r["image"]) for r in rows})
        description = f"{plan.description}; {measured} images from {images}"
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
