"""What computes a codec, decided once: which model, which entropy tables, which runner.

``open_codec(CodecRequest(...))`` takes what the user gave (a checkpoint, an export folder, a variant,
the header of a bitstream to decode, a backend and a device; in Python also a model object) and
returns a ``CodecSession``: the codec on an active runner and its ``Provenance`` (trained or seeded
weights, where the entropy tables came from). Every command and the Python API go through it, or
through ``resolve``, its first half, where a command needs a model and no codec (export, train,
convert, info, the eager reference of ``hpcm check``)::

    with open_codec(CodecRequest(export="out/phase2")) as session:
        data = session.codec.compress(image).data

The rules, all here:

* an export folder fixes the variant, the weights and the tables (its ``codec.npz``) and runs on a
  graph backend (ONNX Runtime unless ``backend`` says otherwise). Where its eager model is needed
  (``hpcm check``, the eager backends of ``hpcm mismatch``), that is the checkpoint given with it
  (its weights digest must be the export's), else the seeded model its manifest names;
* a checkpoint's tables are the ones stored in it, else computed from its weights with a notice
  (LIC-HPCM-LALIC fork checkpoints store none); either way they are validated against the file;
* with neither, the seeded untrained model of the variant (``DEFAULT_VARIANT``, seed ``DEFAULT_SEED``)
  with its computed tables, announced: untrained weights give meaningless rate-distortion. A
  bitstream's header names that variant when decoding (a built-in name only: the name comes from an
  untrusted file), and the size it claims is refused above the pixel limit before any model loads;
* a model object given in Python is used as it is: its tables must have been computed (``update()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from hpcm.codec import Codec, CodecParameters
from hpcm.codec.bitstream import Header
from hpcm.codec.codec import check_claimed_size, weights_digest
from hpcm.config import DEFAULT_SEED, DEFAULT_VARIANT
from hpcm.errors import ArtifactError, BitstreamError, CheckpointError, ConfigError, EntropyTableError, RunnerError
from hpcm.export.artifact import ExportDir
from hpcm.log import LOG
from hpcm.models.hpcm import HPCM
from hpcm.models.progressive import NO_CLOCK, StageClock
from hpcm.models.variants import VARIANTS, VariantSpec, get_variant

from .runners import GRAPH_RUNNERS, RUNNERS, runner_class
from .runners.base import Runner

UNTRAINED_NOTICE = ("no checkpoint given: using the seeded UNTRAINED {variant} model (seed {seed}); untrained "
                    "weights give meaningless rate-distortion (good for plumbing, speed and memory checks only)")


@dataclass(frozen=True)
class CodecRequest:
    """What the user gave to say what computes; every field may be left out.

    ``export``: a folder (path or opened ``ExportDir``); ``header``: the header of the bitstream to be
    decoded; ``model``: a model object (Python API); ``seed``: of the untrained model built when no
    weights are given (None: ``DEFAULT_SEED``); ``max_pixels``: the codec's pixel limit (None: the
    configured one)."""

    checkpoint: Optional[Path] = None
    export: Union[str, Path, ExportDir, None] = None
    variant: Union[str, VariantSpec, None] = None
    header: Optional[Header] = None
    model: Optional[HPCM] = None
    backend: Optional[str] = None
    device: Optional[str] = None
    max_pixels: Optional[int] = None
    seed: Optional[int] = None

    @property
    def backend_name(self) -> str:
        """The backend: the one asked for, else the export's graphs on ONNX Runtime, else eager PyTorch."""
        if self.backend is not None:
            return self.backend
        return GRAPH_RUNNERS[0] if self.export is not None else "eager"


@dataclass(frozen=True)
class Provenance:
    """What a codec or model says about itself: its variant, where its weights and its entropy tables
    came from, and the seed of untrained weights (None: weights that were given, not made here)."""

    variant: str
    weights: str
    tables: str
    seed: Optional[int] = None

    @property
    def trained(self) -> bool:
        return self.seed is None


@dataclass(frozen=True)
class Source:
    """The model and/or export folder a request resolved to. ``parameters``: the codec's tables and
    the rest of its non-network state (None where tables were not asked for)."""

    provenance: Provenance
    model: Optional[HPCM] = None
    export: Optional[ExportDir] = None
    parameters: Optional[CodecParameters] = None


# --------------------------------------------------------------------------------------------- models
def _checkpoint_model(checkpoint: Path, variant: Union[str, VariantSpec, None], tables: bool
                      ) -> tuple[HPCM, Provenance]:
    from hpcm.models.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint, variant)
    stored = model.has_entropy_tables
    if tables and not stored:
        LOG.warning(f"{checkpoint} has no entropy tables; computing them (save the checkpoint after "
                    "model.update() to pin them)")
        try:
            model.update()
        except EntropyTableError as exc:
            raise CheckpointError(f"{checkpoint}: no entropy tables can be computed from its weights ({exc})") \
                from exc
    origin = f"stored in {checkpoint}" if stored else f"computed from the weights of {checkpoint}"
    return model.eval(), Provenance(model.spec.name, f"checkpoint {checkpoint}", origin)


def untrained(request: CodecRequest) -> Optional[Provenance]:
    """What ``request`` resolves to when it names no weights (the seeded untrained model, known without
    building it), or None when it names a checkpoint, an export folder or a model."""
    if request.checkpoint is not None or request.export is not None or request.model is not None:
        return None
    spec, seed = get_variant(_seeded_variant(request)), _seed(request)
    return Provenance(spec.name, f"seeded, untrained (seed {seed})", "computed from the seeded weights", seed=seed)


def _seed(request: CodecRequest) -> int:
    return DEFAULT_SEED if request.seed is None else request.seed


def _seeded_variant(request: CodecRequest) -> Union[str, VariantSpec]:
    """The variant of the seeded model: the one asked for, else a bitstream header's, else the default."""
    if request.variant is not None:
        return request.variant
    return _header_variant(request.header) if request.header is not None else DEFAULT_VARIANT


def _seeded_model(variant: Union[str, VariantSpec], seed: int, tables: bool, announce: bool) -> HPCM:
    from hpcm.models import build_model

    model = build_model(variant, seed=seed)
    if announce:
        LOG.warning(UNTRAINED_NOTICE.format(variant=model.spec.name, seed=seed))
    if tables:
        model.update()
    return model.eval()


def _header_variant(header: Header) -> str:
    """The seeded model to decode ``header``'s stream with: the variant it names, if built in."""
    if header.variant not in VARIANTS:  # never let a name from a file select a variant .json path
        raise BitstreamError(f"encoded with variant {header.variant!r}; pass the checkpoint that encoded it "
                             "with --checkpoint")
    return header.variant


def _export_model(export: ExportDir, checkpoint: Optional[Path]) -> HPCM:
    """The eager model ``export`` was made from: ``checkpoint``, else the seeded model of its manifest."""
    if checkpoint is not None:
        return _checkpoint_model(checkpoint, None, tables=False)[0]
    manifest = export.manifest
    if manifest.seed is None:
        source = f" ({manifest.source})" if manifest.source else ""
        raise ArtifactError(f"{export.path} holds trained weights{source}: pass the checkpoint it was exported "
                            "from with --checkpoint to run it on eager PyTorch")
    return _seeded_model(manifest.variant, int(manifest.seed), tables=False, announce=False)


def _export_provenance(export: ExportDir) -> Provenance:
    manifest = export.manifest
    seed = None if manifest.trained_weights or manifest.seed is None else int(manifest.seed)
    weights = f"export folder {export.path}" + (f" (seeded, untrained, seed {seed})" if seed is not None else "")
    return Provenance(manifest.variant.name, weights, f"stored in {export.path}", seed=seed)


def resolve(request: CodecRequest, *, need_model: bool, tables: bool = True, announce: bool = True) -> Source:
    """The model and/or export folder ``request`` names, and what they say about themselves.

    ``need_model``: a PyTorch model is wanted (an export's own, see the module's rules); ``tables``:
    the codec's entropy tables are wanted (``Source.parameters``); ``announce``: say so when the weights
    are untrained (commands that code; not training, which starts from them, nor timing)."""
    if request.export is not None:
        return _resolve_export(request, need_model, tables)
    if request.model is not None:
        model = request.model
        provenance = Provenance(model.spec.name, "a model object", "the model's own")
    elif request.checkpoint is not None:
        model, provenance = _checkpoint_model(Path(request.checkpoint), request.variant, tables)
    else:
        provenance = untrained(request)
        model = _seeded_model(_seeded_variant(request), _seed(request), tables, announce)
    parameters = None
    if tables:  # a table fault is reported against the checkpoint
        parameters = CodecParameters.from_model(model, str(request.checkpoint) if request.checkpoint else None)
    return Source(provenance, model=model, parameters=parameters)


def _resolve_export(request: CodecRequest, need_model: bool, tables: bool) -> Source:
    """The export folder of ``request`` (opened and verified after the request is found consistent)."""
    if request.variant is not None:
        raise ConfigError("--variant and --export exclude each other: the export fixes the variant")
    if request.checkpoint is not None and not need_model:
        raise ConfigError("--checkpoint and --export exclude each other: the export holds its weights (a checkpoint "
                          "goes with an export only to run it on eager PyTorch: hpcm check, hpcm mismatch)")
    export = request.export if isinstance(request.export, ExportDir) else ExportDir.open(Path(request.export))
    model = request.model
    if model is None and need_model:
        model = _export_model(export, request.checkpoint)
    parameters = None
    if tables:
        parameters = export.codec_parameters
        if model is not None and weights_digest(model) != parameters.weights_digest:
            raise ArtifactError(f"{export.path} was exported from other weights than the given model's; pass the "
                                "checkpoint it was exported from (or export again)")
    return Source(_export_provenance(export), model=model, export=export, parameters=parameters)


# --------------------------------------------------------------------------------------------- codecs
class CodecSession:
    """A codec on an active runner, and the ``Source`` it came from; ``close()`` (or the end of a
    ``with`` block) releases the runner."""

    def __init__(self, codec: Codec, source: Source) -> None:
        self.codec = codec
        self.source = source

    @property
    def provenance(self) -> Provenance:
        return self.source.provenance

    def close(self) -> None:
        self.codec.runner.deactivate()

    def __enter__(self) -> "CodecSession":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self.close()


def check_backend(backend: str, has_export: bool, device: Optional[str] = None, **runner_options: Any) -> None:
    """Refuse, before anything loads, an unknown backend, a graph backend without an export folder, or
    a device or runner option (e.g. an eager runner's ``dtype``) that backend's runner cannot use here."""
    if backend not in RUNNERS:
        raise RunnerError(f"unknown backend {backend!r}; use one of {', '.join(RUNNERS)}")
    if backend in GRAPH_RUNNERS and not has_export:
        raise RunnerError(f"the {backend} backend runs an export folder's graphs: give --export DIR "
                          f"(made by hpcm-export); backends for a checkpoint: eager")
    runner_class(backend).check_options(device, **runner_options)


def open_runner(backend: str, model: Optional[HPCM] = None, export: Optional[ExportDir] = None,
                device: Optional[str] = None, **options: Any) -> Runner:
    """A (not yet active) runner: ``eager`` runs ``model``; ``onnxruntime``/``tensorrt`` run ``export``."""
    check_backend(backend, export is not None)
    if backend == "eager" and model is None:
        raise RunnerError("the eager backend runs a PyTorch model: give --checkpoint (or no --export) "
                          "instead of an export folder")
    return runner_class(backend)(model if backend == "eager" else export, device=device, **options)


def open_codec(request: CodecRequest, *, clock: StageClock = NO_CLOCK, announce: bool = True,
               **runner_options: Any) -> CodecSession:
    """The codec ``request`` describes, on an active runner (see the module's rules).

    ``clock`` sees the codec's stages (``Codec``); ``announce``: as in ``resolve``; ``runner_options``
    go to the runner (e.g. ``dtype`` of an eager runner, ``cache_dir`` of TensorRT's)."""
    backend = request.backend_name
    check_backend(backend, request.export is not None, request.device, **runner_options)
    if request.header is not None:
        check_claimed_size(request.header, request.max_pixels)
    source = resolve(request, need_model=backend == "eager", announce=announce)
    runner = open_runner(backend, model=source.model, export=source.export, device=request.device, **runner_options)
    codec = Codec(runner.activate(), source.parameters, max_pixels=request.max_pixels, clock=clock)
    return CodecSession(codec, source)


def eager_codec(model: HPCM, device: Optional[str] = None) -> Codec:
    """The codec of ``model`` (with its entropy tables) on eager PyTorch, ready to use (an eager runner
    holds nothing that needs releasing, so no ``with`` block is needed)."""
    return open_codec(CodecRequest(model=model, backend="eager", device=device)).codec
