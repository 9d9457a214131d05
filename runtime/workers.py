"""Workers that code many images, each holding one codec: this process, local processes, or Ray actors.

``hpcm compress``/``decompress`` and ``hpcm eval`` hand their tasks to a pool of workers. A worker is
made once per process or actor by a picklable ``factory`` and then runs task after task; tasks carry
a file's bytes and results carry the bytes to write, so workers need no shared file system and the
process that started the pool (the driver) is the only writer. The pools:

* ``InProcessPool``: the calling process itself (``hpcm eval`` without ``--ray``);
* ``ProcessPool``: worker processes on this machine (``concurrent.futures``; spawned, since a fork of a
  process whose OpenMP threads already ran can hang), one per GPU, else one per ``threads`` cores;
* ``RayPool``: Ray actors in an ``ActorPool`` (``--ray auto|ADDRESS``), each reserving its threads as
  CPUs and, on CUDA, one GPU. What a worker opens travels with it (``CodecSource``): a checkpoint file
  or an export folder goes through Ray's object store once and is written to each node's cache.

``stream(pool, tasks)`` keeps a bounded number of tasks in flight and yields results as they complete,
so neither images nor results pile up in memory. ``Placement`` decides how many workers, how many
threads each, and which device each computes on.

Same bytes everywhere: a worker sets its thread count before opening its codec, because CPU float
sums depend on it (kodim01, seeded phase2, eager: 9,330 bytes on one thread, 9,331 on two; both decode
anywhere thanks to the boundary guard). A stream from a worker therefore equals the local command's
for the same image, codec, backend, device and thread count.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

from hpcm import __version__, config
from hpcm.config import DEFAULT_CPU_THREADS, DEFAULT_GPU_THREADS
from hpcm.errors import ClusterError, ConfigError, HPCMError
from hpcm.export.artifact import MANIFEST_NAME, ExportDir

from .session import CodecRequest, CodecSession, open_codec

RAY_INSTALL = "pip install 'hpcm-rwkv[cluster]'"


class Worker(Protocol):
    def run(self, task: Any) -> Any:
        """The result of one task; a per-task failure is a result, a raised error stops the run."""

    def close(self) -> None:
        """Release the codec."""


# ``factory(device)`` makes a worker computing on ``device`` (None: the one its codec request names);
# picklable, since it is sent to each process or actor.
WorkerFactory = Callable[[Optional[str]], Worker]


def usable_cpus() -> int:
    """The cores this process may run on (its affinity, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0))


def set_threads(threads: int) -> int:
    """Set PyTorch's threads in this process (ONNX Runtime's Python op computes with them too); returns
    the number there were."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


# --------------------------------------------------------------------------------------------- placement
@dataclass(frozen=True)
class Placement:
    """How many workers, with how many threads each, computing where. ``devices``: one per worker of a
    local pool (a Ray actor computes on the GPU Ray gives it); ``ray``: the workers are Ray actors (of
    the cluster this process is connected to), each reserving ``threads`` CPUs and ``gpus`` GPUs."""

    workers: int
    threads: int
    devices: tuple[Optional[str], ...]
    ray: bool = False
    gpus: int = 0

    def at_most(self, workers: int) -> "Placement":
        """No more workers than ``workers`` tasks (at least one)."""
        count = max(1, min(self.workers, workers))
        return replace(self, workers=count, devices=self.devices[:count])

    def describe(self) -> str:
        where = ", ".join(sorted({d or "default device" for d in self.devices}))
        return f"{self.workers} {'Ray actor' if self.ray else 'worker'}(s) x {self.threads} thread(s) on {where}"


def _device_type(device: Optional[str], backend: str) -> str:
    from .runners import runner_class

    return (device or runner_class(backend).device_types[0]).split(":")[0]


def _checked(value: Optional[int], option: str) -> Optional[int]:
    if value is not None and value < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}")
    return value


def local_placement(device: Optional[str], backend: str, workers: Optional[int] = None,
                    threads: Optional[int] = None) -> Placement:
    """Workers on this machine: on ``cuda`` one per visible GPU (``cuda:N``: all on that one), else one
    per ``threads`` usable cores."""
    workers, threads = _checked(workers, "--workers"), _checked(threads, "--threads")
    if _device_type(device, backend) == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError(f"--device {device or 'cuda'}: no CUDA device is visible here")
        if device and ":" in device:
            count = workers or 1
            return Placement(count, threads or DEFAULT_GPU_THREADS, (device,) * count)
        count = workers or gpus
        return Placement(count, threads or DEFAULT_GPU_THREADS, tuple(f"cuda:{i % gpus}" for i in range(count)))
    threads = threads or DEFAULT_CPU_THREADS
    count = workers or max(1, usable_cpus() // threads)
    return Placement(count, threads, (device,) * count)


def ray_placement(resources: dict, device: Optional[str], backend: str, workers: Optional[int] = None,
                  threads: Optional[int] = None) -> Placement:
    """Actors on a Ray cluster of ``resources`` (``ray.cluster_resources()``): on CUDA one per GPU of
    the cluster, each reserving it, else one per ``threads`` CPUs of the cluster."""
    workers, threads = _checked(workers, "--workers"), _checked(threads, "--threads")
    if _device_type(device, backend) == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise ClusterError("--device cuda: the Ray cluster has no GPUs (start workers on GPU machines with "
                               "ray start --address ...)")
        count = workers or gpus
        return Placement(count, threads or DEFAULT_GPU_THREADS, ("cuda",) * count, ray=True, gpus=1)
    threads = threads or DEFAULT_CPU_THREADS
    cpus = int(resources.get("CPU", 0))
    if threads > cpus:
        raise ClusterError(f"--threads {threads}: the Ray cluster has {cpus} CPUs")
    count = workers or max(1, cpus // threads)
    return Placement(count, threads, (device or "cpu",) * count, ray=True)


def place(device: Optional[str], backend: str, workers: Optional[int] = None, threads: Optional[int] = None,
          ray_address: Optional[str] = None) -> Placement:
    """Where a command's workers run: on the Ray cluster at ``ray_address`` (connected here: ``auto``,
    the cluster this machine belongs to, else a new local one), else on this machine."""
    if ray_address is None:
        return local_placement(device, backend, workers, threads)
    return ray_placement(connect_ray(ray_address), device, backend, workers, threads)


# --------------------------------------------------------------------------------------------- codecs
def _cache_folder(digest: str) -> Path:
    return config.cache_dir() / "codecs" / digest


@dataclass(frozen=True)
class CodecSource:
    """What a worker opens its codec from: a ``CodecRequest`` and, where the worker may run on another
    machine, the request's files (a checkpoint, an export folder's files) as a reference into Ray's
    object store, written under the node's cache folder (``HPCM_CACHE_DIR``/codecs/<digest>) the first
    time a worker there needs them."""

    request: CodecRequest
    files: Any = None  # a Ray ObjectRef of {name: bytes}, or None: the request's paths are local
    digest: str = ""

    def open(self, device: Optional[str] = None, **runner_options: Any) -> CodecSession:
        """The codec on an active runner (on ``device`` where given, else the request's)."""
        request = self.request if self.files is None else self._materialised()
        if device is not None:
            request = replace(request, device=device)
        return open_codec(request, announce=False, **runner_options)

    def _materialised(self) -> CodecRequest:
        import ray

        folder = _cache_folder(self.digest)
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{self.digest}."))
            try:
                for name, data in ray.get(self.files).items():
                    (staging / name).write_bytes(data)
                staging.rename(folder)
            except OSError:
                if not folder.is_dir():  # not another worker of this node that finished first
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if self.request.export is not None:
            return replace(self.request, export=folder)
        return replace(self.request, checkpoint=folder / Path(self.request.checkpoint).name)


def _request_files(request: CodecRequest) -> dict[str, bytes]:
    """The files ``request`` names, by name: an export folder's manifest and the files it lists, or a
    checkpoint (verified on the worker as on this machine: hashes, digests)."""
    if request.export is not None:
        export = request.export if isinstance(request.export, ExportDir) else ExportDir.open(Path(request.export))
        names = [MANIFEST_NAME] + [record.file for _, record in export.manifest.files()]
        return {name: (export.path / name).read_bytes() for name in names}
    if request.checkpoint is not None:
        path = Path(request.checkpoint)
        return {path.name: path.read_bytes()}
    return {}


def ship(request: CodecRequest) -> CodecSource:
    """``request`` made openable on any node of the connected Ray cluster: its files put into the object
    store once, a variant file read into its spec (the seeded model needs nothing else)."""
    import ray

    from hpcm.models.variants import get_variant

    if isinstance(request.variant, str) and Path(request.variant).suffix == ".json":
        request = replace(request, variant=get_variant(request.variant))
    files = _request_files(request)
    if not files:
        return CodecSource(request)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return CodecSource(request, ray.put(files), digest.hexdigest()[:32])


# --------------------------------------------------------------------------------------------- pools
class Pool(Protocol):
    window: int  # tasks kept in flight

    def submit(self, task: Any) -> None: ...

    def next_result(self) -> Any: ...


def stream(pool: Pool, tasks: Iterable[Any]) -> Iterator[Any]:
    """The results of ``tasks`` in the order they complete, with at most ``pool.window`` in flight (the
    next task is taken from ``tasks`` only when one completes)."""
    in_flight = 0
    for task in tasks:
        if in_flight >= pool.window:
            yield pool.next_result()
            in_flight -= 1
        pool.submit(task)
        in_flight += 1
    for _ in range(in_flight):
        yield pool.next_result()


class InProcessPool:
    """One worker, in this process, on ``threads`` threads while the pool is open: each task runs when
    its result is asked for."""

    window = 1

    def __init__(self, factory: WorkerFactory, device: Optional[str], threads: int) -> None:
        self.threads_before = set_threads(threads)
        try:
            self.worker = factory(device)
        except BaseException:
            set_threads(self.threads_before)
            raise
        self.tasks: collections.deque = collections.deque()

    def submit(self, task: Any) -> None:
        self.tasks.append(task)

    def next_result(self) -> Any:
        return self.worker.run(self.tasks.popleft())

    def __enter__(self) -> "InProcessPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.close()
        set_threads(self.threads_before)


# The worker of a ProcessPool's process: made by its first task (so that a failure to open the codec
# reaches the driver as that task's error, in one line, not as a broken pool), kept for the next ones.
_PROCESS_WORKER: dict[str, Worker] = {}


def _process_start(factory: WorkerFactory, devices: "multiprocessing.Queue", threads: int) -> None:
    set_threads(threads)
    _PROCESS_WORKER.clear()
    _PROCESS_WORKER["factory"] = factory
    _PROCESS_WORKER["device"] = devices.get()


def _process_run(task: Any) -> Any:
    if "worker" not in _PROCESS_WORKER:
        _PROCESS_WORKER["worker"] = _PROCESS_WORKER["factory"](_PROCESS_WORKER["device"])
    return _PROCESS_WORKER["worker"].run(task)


class ProcessPool:
    """``placement.workers`` worker processes on this machine, each made by ``factory`` on its device."""

    def __init__(self, factory: WorkerFactory, placement: Placement) -> None:
        context = multiprocessing.get_context("spawn")
        devices = context.Queue()
        for device in placement.devices:
            devices.put(device)
        self.window = 2 * placement.workers
        self.executor = concurrent.futures.ProcessPoolExecutor(placement.workers, mp_context=context,
                                                               initializer=_process_start,
                                                               initargs=(factory, devices, placement.threads))
        self.futures: set[concurrent.futures.Future] = set()
        self.done: collections.deque = collections.deque()

    def submit(self, task: Any) -> None:
        self.futures.add(self.executor.submit(_process_run, task))

    def next_result(self) -> Any:
        if not self.done:
            finished, self.futures = concurrent.futures.wait(self.futures,
                                                             return_when=concurrent.futures.FIRST_COMPLETED)
            self.done.extend(finished)
        try:
            return self.done.popleft().result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise ClusterError("a worker process died (out of memory, or killed); rerun with fewer --workers "
                               "to resume") from exc

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self.futures:
            future.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)


def import_ray() -> Any:
    """Ray, or a ClusterError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(f"--ray needs Ray, which is not installed here: {RAY_INSTALL}") from exc
    return ray


def connect_ray(address: str) -> dict:
    """Connect to the Ray cluster at ``address`` unless this process already is (``place``); returns the
    cluster's resources."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, logging_level=logging.ERROR,
                     include_dashboard=False, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"--ray {address}: cannot connect to a Ray cluster ({str(exc).splitlines()[0]})") \
                from exc
    return ray.cluster_resources()


class _Actor:
    """A worker inside a Ray actor, made by ``start`` (not the constructor, so that an error opening
    the codec reaches the driver as itself rather than as a dead actor)."""

    def __init__(self, factory: WorkerFactory, threads: int) -> None:
        set_threads(threads)
        self.factory = factory
        self.worker: Optional[Worker] = None

    def start(self) -> str:
        """Make the worker; returns the hpcm-rwkv version this actor runs."""
        self.worker = self.factory(None)
        return __version__

    def run(self, task: Any) -> Any:
        return self.worker.run(task)


class RayPool:
    """``placement.workers`` Ray actors, each made by ``factory(None)``, in a Ray ``ActorPool``.

    Started actors are checked to run this hpcm-rwkv version (same version, same bytes); an error a
    worker raises reaches the driver as itself (one line), not as Ray's remote traceback."""

    def __init__(self, factory: WorkerFactory, placement: Placement) -> None:
        ray = import_ray()
        from ray.util import ActorPool

        self.ray = ray
        actor = ray.remote(num_cpus=placement.threads, num_gpus=placement.gpus)(_Actor)
        self.actors = [actor.remote(factory, placement.threads) for _ in range(placement.workers)]
        self.window = 2 * placement.workers
        for version in self._get([a.start.remote() for a in self.actors]):
            if version != __version__:
                raise ClusterError(f"a Ray worker runs hpcm-rwkv {version}, this process {__version__}: install "
                                   "the same version on every node")
        self.pool = ActorPool(self.actors)

    def _get(self, refs: Any) -> Any:
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, HPCMError):
                raise exc.cause from None
            raise

    def submit(self, task: Any) -> None:
        self.pool.submit(lambda actor, value: actor.run.remote(value), task)

    def next_result(self) -> Any:
        try:
            return self.pool.get_next_unordered()
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, HPCMError):
                raise exc.cause from None
            raise
        except self.ray.exceptions.RayActorError as exc:
            raise ClusterError(f"a Ray worker died ({str(exc).splitlines()[0]}); rerun to resume") from exc

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc: object) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


@contextlib.contextmanager
def open_pool(factory: WorkerFactory, placement: Placement) -> Iterator[Pool]:
    """A ``RayPool`` for a Ray placement, else a ``ProcessPool`` (an ``InProcessPool`` for one local
    worker: no process to start)."""
    if placement.ray:
        with RayPool(factory, placement) as pool:
            yield pool
    elif placement.workers == 1:
        with InProcessPool(factory, placement.devices[0], placement.threads) as pool:
            yield pool
    else:
        with ProcessPool(factory, placement) as pool:
            yield pool
