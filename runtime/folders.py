"""``hpcm compress`` / ``hpcm decompress``: a folder tree of images to the same tree of ``.hpcm`` streams,
and streams back to PNGs, on a pool of workers (``runtime.workers``: local processes, or Ray actors).

The driver (the process that runs the command) plans and writes; workers only code:

* plan: every image the loader accepts (compress) or every ``.hpcm`` file (decompress) under SRC,
  recursively, sorted, maps to the same relative path under DST with the suffix ``.hpcm`` or ``.png``.
  Two sources that map to one output (``a.png`` and ``a.jpg``) both fail, with that reason;
* resume: an output that is complete, valid and newer than its source is skipped. A stream is valid
  when its CRCs check and its header names this codec (variant, weights and tables digests); a PNG
  when it decodes whole at the size its stream's header gives;
* each task carries the source file's bytes and each result the output's bytes, so workers need no
  shared file system; the driver writes every output atomically (``hpcm.files``) as it arrives, so an
  interrupted run leaves only complete outputs and a rerun goes on where it stopped;
* a failure of one image (unreadable, truncated, too large, a stream of another codec) is recorded
  with its one-line reason and the run goes on; the summary counts images, bytes in and out, bpp,
  failures and images per second, and ``--report`` writes it as JSON with every file and failure.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional

from hpcm.codec import bitstream
from hpcm.codec.codec import padded_size
from hpcm.codec.images import IMAGE_SUFFIXES, check_pixel_count, png_bytes, read_image, to_tensor
from hpcm.errors import HPCMError, ImageError, OutputError, one_line
from hpcm.files import atomic_output, check_output, exclusive
from hpcm.log import LOG, OnceEach, collect_notices

from .session import UNTRAINED_NOTICE, CodecRequest, resolve, untrained
from .workers import CodecSource, open_pool, place, ship, stream

STREAM_SUFFIX = ".hpcm"
IMAGE_SUFFIX = ".png"
MODES = ("compress", "decompress")


def _reason(exc: BaseException, *names: object) -> str:
    """``exc`` in one line without a leading file name (the summary and the report name the file)."""
    reason = one_line(str(exc)) or type(exc).__name__
    for name in names:
        reason = reason.removeprefix(f"{name}: ")
    return reason


# --------------------------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class Task:
    """One file to code: its path relative to SRC (names it in messages) and its bytes."""

    relative: str
    data: bytes


@dataclass(frozen=True)
class Result:
    """What a worker made of a ``Task``: the output's bytes, or the one-line reason it failed."""

    relative: str
    output: Optional[bytes]
    failure: Optional[str]
    input_bytes: int
    pixels: int
    seconds: float
    notices: tuple[str, ...]
    fingerprint: str


class FolderWorker:
    """One codec, opened once, that compresses images or decompresses streams task after task."""

    def __init__(self, mode: str, source: CodecSource, device: Optional[str]) -> None:
        self.mode = mode
        with collect_notices() as notices:  # said with the first result (once by the driver)
            self.session = source.open(device)
        self.pending_notices = notices
        self.max_pixels = source.request.max_pixels

    def run(self, task: Task) -> Result:
        start = time.perf_counter()
        output, failure, pixels = None, None, 0
        with collect_notices() as notices:
            try:
                output, pixels = self._compress(task) if self.mode == "compress" else self._decompress(task)
            except (HPCMError, MemoryError) as exc:
                failure = _reason(exc, task.relative)
        notices, self.pending_notices = tuple(self.pending_notices + notices), []
        return Result(task.relative, output, failure, len(task.data), pixels, time.perf_counter() - start, notices,
                      self.session.codec.fingerprint)

    def _compress(self, task: Task) -> tuple[bytes, int]:
        codec = self.session.codec
        x = to_tensor(read_image(Path(task.relative), self.max_pixels, data=task.data))
        height, width = x.shape[-2:]
        check_pixel_count(task.relative, height, width, self.max_pixels, padded_size(height, width, codec.alignment))
        return codec.compress(x).data, height * width

    def _decompress(self, task: Task) -> tuple[bytes, int]:
        stream = bitstream.parse(task.data)
        x_hat = self.session.codec.decompress(stream).x_hat
        return png_bytes(x_hat), stream.header.height * stream.header.width

    def close(self) -> None:
        self.session.close()


@dataclass(frozen=True)
class FolderWorkerFactory:
    """Makes a ``FolderWorker`` in each process or actor (picklable)."""

    mode: str
    source: CodecSource

    def __call__(self, device: Optional[str]) -> FolderWorker:
        return FolderWorker(self.mode, self.source, device)


# --------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Item:
    source: Path
    target: Path
    relative: str


@dataclass
class Plan:
    """The files of one run: ``todo`` to code, ``skipped`` already complete, ``failures`` known before
    any coding (name clashes, unreadable streams)."""

    todo: list[Item] = field(default_factory=list)
    skipped: list[Item] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def _sources(mode: str, folder: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES if mode == "compress" else (STREAM_SUFFIX,)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def check_folders(source: Path, target: Path, report: Optional[Path]) -> None:
    """Before any work: SRC is a folder, DST is (or can be made) a writable folder, the report can be written."""
    if not source.is_dir():
        raise ImageError(f"{source}: not a folder (hpcm encode/decode code one file)")
    if target.exists() and not target.is_dir():
        raise OutputError(f"-o {target} exists and is not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder -o {target}: {exc.strerror or exc}") from exc
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into -o {target} (permission denied or read-only)")
    if report is not None:
        check_output(report, option="--report")


def plan_folder(mode: str, source: Path, target: Path, request: CodecRequest) -> tuple[Plan, CodecRequest]:
    """The plan of coding ``source`` into ``target``, and the request the workers open: for
    decompression without weights, the seeded model the first readable stream names."""
    plan = Plan()
    by_target: dict[Path, list[Item]] = {}
    suffix = STREAM_SUFFIX if mode == "compress" else IMAGE_SUFFIX
    for path in _sources(mode, source):
        relative = path.relative_to(source)
        item = Item(path, (target / relative).with_suffix(suffix), relative.as_posix())
        by_target.setdefault(item.target, []).append(item)
    headers: dict[str, bitstream.Header] = {}
    for output, items in by_target.items():
        if len(items) > 1:
            names = " and ".join(i.relative for i in items)
            for item in items:
                plan.failures[item.relative] = f"{names} would both be written to {output.relative_to(target)}: " \
                                               "rename one"
            continue
        item = items[0]
        if mode == "decompress":
            try:
                headers[item.relative] = bitstream.read_file(item.source).header
            except HPCMError as exc:
                plan.failures[item.relative] = _reason(exc, item.source)
                continue
        plan.todo.append(item)
    if mode == "decompress" and request.checkpoint is None and request.export is None and headers:
        request = replace(request, header=next(iter(headers.values())))
    done = [i for i in plan.todo if i.target.is_file() and i.target.stat().st_mtime_ns >= i.source.stat().st_mtime_ns]
    if done:
        complete = _complete_streams(done, request) if mode == "compress" else _complete_images(done, headers)
        plan.skipped = [i for i in done if i.relative in complete]
        plan.todo = [i for i in plan.todo if i.relative not in complete]
    return plan, request


def _complete_streams(items: list[Item], request: CodecRequest) -> set[str]:
    """The items whose stream is whole (CRCs) and from this codec (variant, weights, tables)."""
    with collect_notices():  # the workers say what opening this codec has to say
        parameters = resolve(request, need_model=False, announce=False).parameters
    complete = set()
    for item in items:
        try:
            header = bitstream.read_file(item.target).header
        except HPCMError:
            continue
        if (header.variant, header.weights_digest, header.tables_digest) == (
                parameters.variant, parameters.weights_digest, parameters.tables.digest):
            complete.add(item.relative)
    return complete


def _complete_images(items: list[Item], headers: dict[str, bitstream.Header]) -> set[str]:
    """The items whose PNG decodes whole at the size of its stream."""
    complete = set()
    for item in items:
        header = headers[item.relative]
        try:
            with collect_notices():
                pixels = read_image(item.target)
        except HPCMError:
            continue
        if pixels.shape[:2] == (header.height, header.width):
            complete.add(item.relative)
    return complete


# --------------------------------------------------------------------------------------------- the run
@dataclass
class Summary:
    """What a run did (``report`` gives it as JSON)."""

    mode: str
    source: str
    target: str
    placement: str
    coded: int = 0
    skipped: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    pixels: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)
    fingerprints: list[str] = field(default_factory=list)

    @property
    def stream_bytes(self) -> int:
        return self.bytes_out if self.mode == "compress" else self.bytes_in

    @property
    def bpp(self) -> Optional[float]:
        return 8.0 * self.stream_bytes / self.pixels if self.pixels else None

    @property
    def images_per_second(self) -> Optional[float]:
        return self.coded / self.seconds if self.coded and self.seconds > 0 else None

    def line(self) -> str:
        """The summary in one line, as the command prints it."""
        bpp = f"{self.bpp:.4f} bpp" if self.bpp is not None else "- bpp"
        rate = f"{self.images_per_second:.2f} images/s" if self.images_per_second is not None else "- images/s"
        return (f"{self.mode}ed {self.coded} images ({self.skipped} already done, {len(self.failures)} failed): "
                f"{self.bytes_in:,} bytes in, {self.bytes_out:,} bytes out, {bpp}; {self.seconds:.1f} s, {rate} "
                f"({self.placement})")

    def report(self) -> dict:
        document = asdict(self)
        document.update(bpp=self.bpp, images_per_second=self.images_per_second,
                        failures=[{"path": p, "reason": r} for p, r in sorted(self.failures.items())],
                        files=[{"path": p, **v} for p, v in sorted(self.files.items())])
        return document


def code_folder(mode: str, source: Path, target: Path, request: CodecRequest, workers: Optional[int] = None,
                threads: Optional[int] = None, ray_address: Optional[str] = None, report: Optional[Path] = None,
                progress: bool = True) -> Summary:
    """Code the folder tree ``source`` into ``target`` (see the module notes) on workers placed by
    ``runtime.workers.place`` (on the Ray cluster at ``ray_address`` where given); returns the summary,
    also written to ``report`` as JSON where given."""
    from tqdm import tqdm

    check_folders(source, target, report)
    # One run at a time per output tree: a second would code the same images again and race the
    # first over which bytes each file ends with.
    with exclusive(target):
        start = time.perf_counter()
        plan, request = plan_folder(mode, source, target, request)
        placement = place(request.device, request.backend_name, workers, threads, ray_address).at_most(len(plan.todo))
        summary = Summary(mode, str(source), str(target), placement.describe(), skipped=len(plan.skipped),
                          failures=dict(plan.failures))
        for relative, reason in plan.failures.items():
            LOG.warning(f"skipping {relative}: {reason}")
        if plan.skipped:
            LOG.info(f"{len(plan.skipped)} of the outputs in {target} are complete already; coding the other "
                     f"{len(plan.todo)}")
        if plan.todo:
            seeded = untrained(request)
            if seeded is not None:
                LOG.warning(UNTRAINED_NOTICE.format(variant=seeded.variant, seed=seeded.seed))
            codec = ship(request) if placement.ray else CodecSource(request)
            notices = OnceEach()
            with open_pool(FolderWorkerFactory(mode, codec), placement) as pool, \
                    tqdm(total=len(plan.todo), unit="image", disable=None if progress else True,
                         dynamic_ncols=True) as bar:

                def tasks() -> Iterator[Task]:  # each file read when a worker is ready for it
                    for item in plan.todo:
                        try:
                            yield Task(item.relative, item.source.read_bytes())
                        except OSError as exc:
                            summary.failures[item.relative] = f"cannot read it: {exc.strerror or exc}"
                            LOG.warning(f"skipping {item.relative}: {summary.failures[item.relative]}")
                            bar.update()

                items = {item.relative: item for item in plan.todo}
                for result in stream(pool, tasks()):
                    notices.say(result.notices)
                    _record(summary, items[result.relative], result)
                    bar.update()
        summary.seconds = time.perf_counter() - start
        if report is not None:
            with atomic_output(report, option="--report") as tmp:
                tmp.write_text(json.dumps(summary.report(), indent=2) + "\n")
        return summary


def _record(summary: Summary, item: Item, result: Result) -> None:
    """Write ``result``'s output for ``item`` (atomically) and count it, or record its failure."""
    if result.output is not None:
        try:
            item.target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(item.target, [item.source]) as tmp:
                tmp.write_bytes(result.output)
        except (OSError, OutputError) as exc:
            summary.failures[item.relative] = _reason(exc)
        else:
            summary.coded += 1
            summary.bytes_in += result.input_bytes
            summary.bytes_out += len(result.output)
            summary.pixels += result.pixels
            summary.files[item.relative] = {"bytes_in": result.input_bytes, "bytes_out": len(result.output),
                                            "pixels": result.pixels, "seconds": round(result.seconds, 4)}
            if result.fingerprint not in summary.fingerprints:
                summary.fingerprints.append(result.fingerprint)
            return
    if result.failure is not None:
        summary.failures[item.relative] = result.failure
    LOG.warning(f"skipping {item.relative}: {summary.failures[item.relative]}")
