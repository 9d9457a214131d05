"""The export folder: the one deployment artifact, its manifest, and how it is opened and written.

An export folder is the codec without PyTorch weights: the graphs (``*.onnx``), their shared weights
(``weights.bin``), and ``codec.npz`` with everything the codec needs that is not a network (the z
means and the entropy tables; variant, latent sizes, alignment and weights digest are in the
manifest). ``ExportDir.open`` checks it before anything runs: known format version, the manifest's
own digest (``manifest_sha256``, over everything else it records: an edited variant or file hash is
refused like a damaged file), every file present, and every file's SHA-256 equal to the manifest's.
These digests find damage and edits, not forgery: whoever rewrites a file, its hash and the
manifest's digest together makes a folder that opens (authenticity would need a signature and a key).
A folder copied to a machine without the checkpoint or the source tree encodes and decodes, and its
streams are interchangeable with eager PyTorch on the same weights. Its files may be hard links or
symbolic links (``cp -al``, ``rsync --link-dest``, DVC's and git-annex's caches): what is read is
checked by its hash, wherever it lies.

``ExportWriter`` writes a folder transactionally: into a temporary folder beside the target, renamed
into place only when the export succeeded, so an interrupted or failed export never leaves a
half-written folder (and never touches an existing one); one export at a time writes a target
(``hpcm.files.exclusive``: a second is refused at once), and the temporary folder of an export that
was killed is removed by the next write beside it (``hpcm.files.remove_stale_temporaries``).

This module imports neither the exporter nor any runner, so runners can open folders cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from hpcm.codec import CodecParameters, EntropyTables
from hpcm.digests import document_digest, file_sha256
from hpcm.errors import ArtifactError, HPCMError
from hpcm.files import exclusive, set_aside_name, temporary_folder
from hpcm.models.graphs import GRAPHS, step_graph_name
from hpcm.models.progressive import SCALES, STEPS
from hpcm.models.variants import VariantSpec

FORMAT = "hpcm-rwkv-onnx-export"
# 2: codec.npz (z means and tables) makes the folder self-contained; files are verified on open.
# 3: the manifest holds a digest of itself (MANIFEST_DIGEST), verified on open.
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is tens of KB; larger is not one
CODEC_FILE = "codec.npz"
WEIGHTS_NAME = "weights.bin"
MEANS_HYPER = "means_hyper"
PRECISIONS = ("fp32", "fp16")
WKV_ROUTES = ("custom", "decomposed")


def schedule_record() -> list[dict]:
    """The progressive schedule the graphs were exported for (checked against the code on open)."""
    return [{"step": i, "scale": SCALES[s.scale], "part": s.part,
             "graph": step_graph_name(i) if s.has_network else None, "last_of_scale": s.last_of_scale}
            for i, s in enumerate(STEPS)]


@dataclass(frozen=True)
class FileRecord:
    file: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> "FileRecord":
        return cls(path.name, file_sha256(path), path.stat().st_size)


@dataclass(frozen=True)
class Profile:
    """Image sizes (pixels, multiples of the export's alignment) deployment engines accept."""

    min_size: tuple[int, int]
    opt_size: tuple[int, int]
    max_size: tuple[int, int]
    max_batch: int = 1

    def validate(self, alignment: int) -> "Profile":
        for label, size in (("min", self.min_size), ("opt", self.opt_size), ("max", self.max_size)):
            if len(size) != 2 or any(not isinstance(s, int) or s <= 0 or s % alignment for s in size):
                raise ArtifactError(f"{label} size {size} must be two positive multiples of {alignment}")
        if not all(a <= b <= c for a, b, c in zip(self.min_size, self.opt_size, self.max_size)):
            raise ArtifactError("profile sizes must satisfy min <= opt <= max in both dimensions")
        if not 1 <= self.max_batch <= 256:
            raise ArtifactError(f"max batch {self.max_batch} must be in 1..256")
        return self

    def with_sizes(self, min_size: Optional[tuple[int, int]] = None, opt_size: Optional[tuple[int, int]] = None,
                   max_size: Optional[tuple[int, int]] = None) -> "Profile":
        """This profile with the given sizes replaced (others kept)."""
        return Profile(tuple(min_size or self.min_size), tuple(opt_size or self.opt_size),
                       tuple(max_size or self.max_size), self.max_batch)

    def input_shapes(self, graph: str, channels: dict[str, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """(min, opt, max) shape of every input of ``graph`` (``channels``: per input name)."""
        shapes = {}
        for spec in GRAPHS[graph].inputs:
            def shape(size: tuple[int, int], batch: int) -> tuple[int, ...]:
                return (batch, channels[spec.name], size[0] // spec.stride, size[1] // spec.stride)

            shapes[spec.name] = (shape(self.min_size, 1), shape(self.opt_size, 1),
                                 shape(self.max_size, self.max_batch))
        return shapes

    def to_json(self) -> dict:
        return {"min": list(self.min_size), "opt": list(self.opt_size), "max": list(self.max_size),
                "max_batch": self.max_batch}

    @classmethod
    def from_json(cls, raw: dict) -> "Profile":
        return cls(tuple(raw["min"]), tuple(raw["opt"]), tuple(raw["max"]), int(raw.get("max_batch", 1)))


@dataclass(frozen=True)
class GraphRecord:
    """One exported graph: its file, hashes, and what the export's checks found."""

    file: FileRecord
    weights_sha256: str  # digest of exactly the weights.bin bytes this graph references
    inputs: dict[str, list]  # name -> dims (ints or symbolic names)
    outputs: dict[str, list]
    input_channels: dict[str, int]
    nodes: int
    wkv_nodes: int
    export_seconds: float
    error_vs_float32: Optional[dict] = None  # reduced-precision exports only
    # Reduced-precision forward only: {"decisions", "differing"}, its rounding decisions on the sample
    # and how many of them differ from float32's (error_vs_float32 is measured with float32's).
    rounding_vs_float32: Optional[dict] = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "GraphRecord":
        return cls(**{**raw, "file": FileRecord(**raw["file"])})


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what the folder holds and how it was made."""

    variant: VariantSpec
    alignment: int
    weights_digest: str  # hex; equals the eager model's (hpcm.codec.codec.weights_digest)
    wkv: str
    precision: str
    opset: int
    sample_size: tuple[int, int]
    profile: Profile
    graphs: dict[str, GraphRecord]
    weights_file: FileRecord
    codec_file: FileRecord
    trained_weights: bool
    seed: Optional[int]  # the seeded untrained model's seed (no checkpoint)
    source: Optional[str]  # the checkpoint's file name, for people; never opened
    schedule: list[dict]
    wkv_contract: dict
    max_abs_decay: float
    onnxscript_optimized: bool
    versions: dict
    total_export_seconds: float
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The manifest's JSON, with its own digest (``MANIFEST_DIGEST``) over everything else."""
        body = self._body()
        return {**body, MANIFEST_DIGEST: document_digest(body).hexdigest()}

    def _body(self) -> dict:
        return {
            "format": FORMAT, "format_version": self.format_version, "variant": self.variant.to_dict(),
            "alignment": self.alignment, "weights_digest": self.weights_digest, "wkv": self.wkv,
            "precision": self.precision, "io_dtype": "float32", "opset": self.opset,
            "sample_size": list(self.sample_size), "profile": self.profile.to_json(),
            "graphs": {name: g.to_json() for name, g in self.graphs.items()},
            "weights_file": asdict(self.weights_file), "codec_file": asdict(self.codec_file),
            "trained_weights": self.trained_weights, "seed": self.seed, "source": self.source,
            "schedule": self.schedule,
            "wkv_contract": self.wkv_contract, "max_abs_decay": self.max_abs_decay,
            "onnxscript_optimized": self.onnxscript_optimized, "versions": self.versions,
            "total_export_seconds": self.total_export_seconds, **self.extra,
        }

    @classmethod
    def from_json(cls, raw: Any, where: Path) -> "Manifest":
        """Parse with a clear error naming ``where`` for anything missing or malformed."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ArtifactError(f"{where} is not an hpcm-export manifest (format {FORMAT!r} expected)")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            hint = "re-export it with this hpcm-rwkv" if isinstance(version, int) and version < FORMAT_VERSION \
                else "it was written by a newer hpcm-rwkv"
            raise ArtifactError(f"{where}: unknown export format version {version!r} (this hpcm-rwkv reads "
                                f"{FORMAT_VERSION}); {hint}")
        body = {key: value for key, value in raw.items() if key != MANIFEST_DIGEST}
        if raw.get(MANIFEST_DIGEST) != document_digest(body).hexdigest():
            raise ArtifactError(f"{where} was edited or damaged after the export (it does not match its "
                                f"{MANIFEST_DIGEST}): re-export the folder")
        try:
            manifest = cls(
                variant=VariantSpec.from_dict(raw["variant"]), alignment=int(raw["alignment"]),
                weights_digest=str(raw["weights_digest"]), wkv=str(raw["wkv"]), precision=str(raw["precision"]),
                opset=int(raw["opset"]), sample_size=tuple(raw["sample_size"]),
                profile=Profile.from_json(raw["profile"]),
                graphs={name: GraphRecord.from_json(g) for name, g in raw["graphs"].items()},
                weights_file=FileRecord(**raw["weights_file"]), codec_file=FileRecord(**raw["codec_file"]),
                trained_weights=bool(raw["trained_weights"]), seed=raw.get("seed"), source=raw.get("source"),
                schedule=list(raw["schedule"]),
                wkv_contract=dict(raw["wkv_contract"]), max_abs_decay=float(raw["max_abs_decay"]),
                onnxscript_optimized=bool(raw["onnxscript_optimized"]), versions=dict(raw["versions"]),
                total_export_seconds=float(raw["total_export_seconds"]),
            )
        except HPCMError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where} is malformed ({type(exc).__name__}: {exc})") from exc
        unknown = sorted(set(manifest.graphs) - set(GRAPHS))
        if unknown:
            raise ArtifactError(f"{where} lists unknown graphs {unknown}")
        if manifest.wkv not in WKV_ROUTES or manifest.precision not in PRECISIONS:
            raise ArtifactError(f"{where}: wkv {manifest.wkv!r} / precision {manifest.precision!r} not understood")
        if manifest.schedule != schedule_record():
            raise ArtifactError(f"{where}: the folder was exported for another progressive schedule than this "
                                "hpcm-rwkv's; re-export it")
        manifest.profile.validate(manifest.alignment)
        return manifest

    def files(self) -> list[tuple[str, FileRecord]]:
        """(what, record) of every file the folder must hold."""
        return ([(f"graph {name}", g.file) for name, g in self.graphs.items()]
                + [("shared weights", self.weights_file), ("codec parameters", self.codec_file)])


class ExportDir:
    """An export folder opened for use: its manifest, checked files, and codec parameters."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: Union[str, Path], verify: bool = True) -> "ExportDir":
        """Open ``path``; with ``verify`` (the default) every file's presence and hash is checked."""
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not path.is_dir():
            raise ArtifactError(f"{path} is not a folder: pass the folder hpcm-export wrote")
        if not manifest_path.is_file():
            raise ArtifactError(f"{manifest_path} does not exist: is {path} an hpcm-export folder?")
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{manifest_path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB: not an export "
                                "manifest")
        try:
            raw = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path} is not readable JSON ({exc})") from exc
        export = cls(path, Manifest.from_json(raw, manifest_path))
        if verify:
            export.verify()
        return export

    def verify(self) -> None:
        """Every file present with the manifest's size and hash, else an error naming it."""
        for what, record in self.manifest.files():
            file = self.path / record.file
            if Path(record.file).name != record.file:
                raise ArtifactError(f"{self.path / MANIFEST_NAME}: {what} file name {record.file!r} is not a plain name")
            if not file.exists():
                raise ArtifactError(f"{file} ({what}) is missing from the export (or a link to nothing): re-export "
                                    "the folder")
            if not file.is_file():
                raise ArtifactError(f"{file} ({what}) is not a regular file: re-export the folder")
            if file.stat().st_size != record.bytes or file_sha256(file) != record.sha256:
                raise ArtifactError(f"{file} ({what}) does not match its hash in {MANIFEST_NAME}: it was altered "
                                    "or damaged; re-export the folder")

    @property
    def variant(self) -> VariantSpec:
        return self.manifest.variant

    @property
    def graphs(self) -> tuple[str, ...]:
        return tuple(self.manifest.graphs)

    def graph(self, name: str) -> GraphRecord:
        if name not in self.manifest.graphs:
            raise ArtifactError(f"graph {name!r} is not in {self.path} (it has {', '.join(self.graphs)}); "
                                "export it with hpcm-export --graph")
        return self.manifest.graphs[name]

    def graph_path(self, name: str) -> Path:
        return self.path / self.graph(name).file.file

    @cached_property
    def codec_parameters(self) -> CodecParameters:
        """The codec's non-network state, from ``codec.npz`` and the manifest."""
        file = self.path / self.manifest.codec_file.file
        try:
            stored = np.load(file, allow_pickle=False)
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an archive")
            with stored:
                arrays = {name: stored[name] for name in stored.files}
        except Exception as exc:  # numpy and zipfile raise many types for a damaged archive
            raise ArtifactError(f"{file} is damaged: not a readable codec parameter archive ({type(exc).__name__}); "
                                "re-export the folder") from exc
        if MEANS_HYPER not in arrays:
            raise ArtifactError(f"{file} lacks {MEANS_HYPER}; re-export the folder")
        spec = self.manifest.variant
        return CodecParameters(variant=spec.name, M=spec.M, N=spec.N, alignment=self.manifest.alignment,
                               means_hyper=torch.from_numpy(arrays.pop(MEANS_HYPER)).float(),
                               tables=EntropyTables(arrays, source=str(file)),
                               weights_digest=bytes.fromhex(self.manifest.weights_digest))

    def describe(self) -> str:
        m = self.manifest
        weights = "trained weights" if m.trained_weights else f"untrained seeded weights (seed {m.seed})"
        return (f"{self.path}: {m.variant.name} ({m.precision}, wkv {m.wkv}), {len(m.graphs)} graphs, {weights}")


class ExportWriter:
    """Writes an export folder transactionally (see the module docstring); use it as a ``with`` block,
    which holds the target's lock and the temporary folder.

    ``target`` must be absent, an empty folder, or an earlier export folder (then replaced whole).
    """

    def __init__(self, target: Union[str, Path]) -> None:
        self.target = self.check_target(target)
        if not self.target.name:  # "." or "..": named once absolute
            self.target = Path(os.path.abspath(self.target))
        self._held = contextlib.ExitStack()
        self.folder: Optional[Path] = None

    @staticmethod
    def check_target(target: Union[str, Path]) -> Path:
        """``target`` if an export may be written there, else an ArtifactError saying why (before any work)."""
        target = Path(target)
        if target.exists() and not target.is_dir():
            raise ArtifactError(f"{target} exists and is not a folder: choose another -o")
        if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
            raise ArtifactError(f"{target} is a non-empty folder that is not an hpcm-export folder: "
                                "refusing to write into it (choose another -o)")
        parent = target.resolve().parent
        if not parent.is_dir():
            raise ArtifactError(f"the folder {parent} for -o {target} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ArtifactError(f"cannot write into {parent} (permission denied)")
        return target

    def path(self, name: str) -> Path:
        return self.folder / name

    def write_codec_parameters(self, parameters: CodecParameters) -> FileRecord:
        file = self.folder / CODEC_FILE
        arrays = {**parameters.tables.numpy(), MEANS_HYPER: parameters.means_hyper.numpy()}
        with open(file, "wb") as f:
            np.savez(f, **arrays)
        return FileRecord.of(file)

    def commit(self, manifest: Manifest) -> Path:
        """Write the manifest and move the folder into place; returns the manifest's path."""
        (self.folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2))
        ExportDir.open(self.folder)  # what we wrote must open
        backup = None
        if self.target.exists():
            backup = set_aside_name(self.target)
            os.replace(self.target, backup)
        os.replace(self.folder, self.target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        return self.target / MANIFEST_NAME

    def __enter__(self) -> "ExportWriter":
        self._held.enter_context(exclusive(self.target))
        self.folder = temporary_folder(self.target)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        try:
            if self.folder is not None and self.folder.exists():
                shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self._held.close()
