"""``hpcm bench``: encoding and decoding latency per stage, peak memory, parameters and MACs.

Each configuration (variant or export, image size, backend, device) runs in a fresh Python process
(``python -m hpcm.evaluation.bench``), so its peak memory is its own: the process's peak resident set
on CPU (``VmHWM``: PyTorch, the model and the coding together; the resident size once the codec is
open is reported beside it), the CUDA caching allocator's peak on a GPU (memory that TensorRT
allocates itself is not in it). In that process the codec codes a smooth synthetic image ``warmup``
times untimed, then ``repeats`` times through a ``StageTimeline``: per call, the time of every stage
(``timing.STAGES``), their sum and the wall time, the work overlapped with them on other threads
(the encoder's entropy coding beside the next step's networks), and the coder's throughput: the
symbols of z and y over the entropy-coding time, on the calling thread and overlapped together
(a slight underestimate, since the calling thread's last wait for the worker counts too). Images
are synthetic; weights are seeded unless a checkpoint or an export is given: network times do not
depend on the weights, entropy-coding times do (seeded weights code almost every symbol as 0; a
checkpoint whose latents spread shows the coder's real work).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from hpcm.child import child_main, run_child
from hpcm.codec.codec import memory_for, padded_size
from hpcm.codec.images import check_pixel_count, pixel_limit
from hpcm.config import DEFAULT_VARIANT, coder_threads
from hpcm.errors import ConfigError, HPCMError
from hpcm.files import Output, atomic_output, check_outputs
from hpcm.models.variants import VariantSpec, get_variant
from hpcm.runtime.session import CodecRequest, check_backend, resolve

from .timing import DECODE_STAGES, ENCODE_STAGES, StageTimeline, summary

DIRECTIONS = {"encode": ENCODE_STAGES, "decode": DECODE_STAGES}
CODING = "entropy_coding"


class BenchError(HPCMError, RuntimeError):
    """A measurement this system cannot make."""


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration; ``variant`` is a ``VariantSpec.to_dict()`` (None with ``export``);
    ``checkpoint``: its weights (None: seeded); ``seed``: of the untrained weights (None: the default
    seed); ``max_pixels``: the codec's pixel limit (None: the configured one), which the size was
    checked against when planned."""

    name: str
    width: int
    height: int
    backend: str = "eager"
    device: Optional[str] = None
    variant: Optional[dict] = None
    export: Optional[str] = None
    checkpoint: Optional[str] = None
    warmup: int = 1
    repeats: int = 3
    seed: Optional[int] = None
    max_pixels: Optional[int] = None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image (coarse noise upsampled plus fine noise), a stand-in for a photo."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 16 + 2, width // 16 + 2, generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_resident_bytes() -> int:
    """This process's peak resident set since it started (``VmHWM``).

    Not ``ru_maxrss``: Linux carries it across ``exec``, so a process started by a large parent (a
    test runner holding gigabytes) reports at least the parent's size at the fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise BenchError("this system reports no peak resident set (/proc/self/status has no VmHWM)")


def measure(config: BenchConfig) -> dict:
    """Run ``config`` in this process (``run_configuration`` runs it in a fresh one)."""
    from hpcm.runtime.runners import runner_class
    from hpcm.runtime.session import open_codec

    variant = VariantSpec.from_dict(config.variant) if config.variant is not None else None
    request = CodecRequest(checkpoint=None if config.checkpoint is None else Path(config.checkpoint),
                           export=config.export, variant=variant, backend=config.backend, seed=config.seed)
    # seeded weights time as trained ones do (see the module's docstring): no notice
    source = resolve(request, need_model=config.backend == "eager", announce=False)
    with memory_for(config.height, config.width):
        image = smooth_image(config.height, config.width)
    device = runner_class(request.backend_name).resolve_device(config.device)
    cuda = device.type == "cuda"
    timeline = StageTimeline(device)
    given = CodecRequest(model=source.model, export=source.export, backend=config.backend, device=str(device),
                         max_pixels=config.max_pixels)
    with open_codec(given, clock=timeline) as session:
        codec = session.codec
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        loaded = torch.cuda.memory_allocated(device) if cuda else _resident_bytes()
        runs: dict[str, list[dict]] = {"encode": [], "decode": []}
        for i in range(config.warmup + config.repeats):
            with timeline.measure() as encoding:
                encoded = codec.compress(image)
            with timeline.measure() as decoding:
                codec.decompress(encoded.data)
            if i >= config.warmup:
                runs["encode"].append(asdict(encoding))
                runs["decode"].append(asdict(decoding))
        data = encoded.data
        symbols = encoded.y_hat.numel() + encoded.z_hat.numel()
        fingerprint = codec.fingerprint
        variant = codec.variant
    if cuda:
        memory = {"kind": "cuda_allocator_peak", "peak_bytes": torch.cuda.max_memory_allocated(device),
                  "loaded_bytes": loaded}
    else:
        memory = {"kind": "peak_rss", "peak_bytes": _peak_resident_bytes(),
                  "loaded_bytes": loaded}
    result = {"name": config.name, "variant": variant, "size": config.size, "width": config.width,
              "height": config.height, "backend": config.backend, "device": str(device), "fingerprint": fingerprint,
              "threads": torch.get_num_threads(), "coder_threads": coder_threads(), "warmup": config.warmup,
              "weights": source.provenance.weights, "bytes": len(data),
              "bpp": 8 * len(data) / (config.width * config.height), "symbols": symbols, "memory": memory}
    for direction, stages in DIRECTIONS.items():
        samples = runs[direction]
        coding = [r["stages"].get(CODING, 0.0) + r["overlapped"].get(CODING, 0.0) for r in samples]
        result[direction] = {
            "wall": summary([r["wall"] for r in samples]),
            "stages": {s: summary([r["stages"].get(s, 0.0) for r in samples]) for s in stages},
            "overlapped": {CODING: summary([r["overlapped"].get(CODING, 0.0) for r in samples])},
            "coder_symbols_per_second": summary([symbols / t for t in coding if t > 0]),
            "runs": samples,
        }
    return result


def run_configuration(config: BenchConfig) -> dict:
    """``measure(config)`` in a fresh Python process (``hpcm.child``: its failure is one line)."""
    return run_child("hpcm.evaluation.bench", asdict(config),
                     f"the {config.name} {config.size} {config.backend} configuration")


# ---------------------------------------------------------------------- reports
def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def _mib(count: int) -> str:
    return f"{count / 2**20:,.0f}"


def _baseline_of(result: dict, results: Sequence[dict], compare: Optional[str]) -> Optional[dict]:
    if compare is None:
        return None
    for other in results:
        if (other["name"] == compare and other["size"] == result["size"] and other["backend"] == result["backend"]
                and other["device"] == result["device"]):
            return other
    return None


def markdown(report: dict, compare: Optional[str] = None) -> str:
    """The report as Markdown: a latency/memory/cost table (ratio columns against ``compare``) and one
    table of median milliseconds per stage."""
    results, costs = report["results"], report["costs"]
    header = ["variant", "size", "backend", "encode ms (median / p90)", "decode ms (median / p90)", "N",
              "peak memory MiB", "parameters M", "MACs/pixel K"]
    if compare:
        header += [f"encode / {compare}", f"decode / {compare}", f"memory / {compare}", f"MACs / {compare}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cost = costs.get(r["name"], {})
        enc, dec = r["encode"]["wall"], r["decode"]["wall"]
        row = [r["name"], r["size"], f"{r['backend']} {r['device']}", f"{_ms(enc['median'])} / {_ms(enc['p90'])}",
               f"{_ms(dec['median'])} / {_ms(dec['p90'])}", str(enc["n"]), _mib(r["memory"]["peak_bytes"]),
               f"{cost['total_parameters'] / 1e6:.2f}" if cost else "-",
               f"{cost['total_macs_per_pixel'] / 1e3:.0f}" if cost else "-"]
        base = _baseline_of(r, results, compare)
        if compare:
            base_cost = costs.get(compare, {})
            ratios = []
            if base is not None:
                ratios = [r["encode"]["wall"]["median"] / base["encode"]["wall"]["median"],
                          r["decode"]["wall"]["median"] / base["decode"]["wall"]["median"],
                          r["memory"]["peak_bytes"] / base["memory"]["peak_bytes"]]
            else:
                ratios = [None] * 3
            ratios.append(cost["total_macs_per_pixel"] / base_cost["total_macs_per_pixel"]
                          if cost and base_cost else None)
            row += ["-" if v is None else f"{v:.2f}" for v in ratios]
        lines.append("| " + " | ".join(row) + " |")
    kinds = {"peak_rss": "peak RSS of a fresh process per row (PyTorch and the model included)",
             "cuda_allocator_peak": "CUDA caching allocator peak (TensorRT's own allocations not included)"}
    lines += ["", "Peak memory: " + "; ".join(kinds[k] for k in sorted({r["memory"]["kind"] for r in results})) + "."]
    stages = [s for s in ENCODE_STAGES if s != "other"] + ["synthesis", "other"]
    lines += ["", "Median milliseconds per stage (encode | decode):", "",
              "| variant | size | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
    for r in results:
        cells = []
        for stage in stages:
            enc = r["encode"]["stages"].get(stage, {}).get("median")
            dec = r["decode"]["stages"].get(stage, {}).get("median")
            cells.append(f"{_ms(enc)} \\| {_ms(dec)}")
        lines.append(f"| {r['name']} | {r['size']} | " + " | ".join(cells) + " |")
    lines += ["", "Entropy coding, median ms (encode | decode): on the calling thread (the stage above), overlapped "
              "with the networks on the coder's worker thread (not in the stages' sum), and the coder's "
              "throughput over both:", "",
              "| variant | size | weights | symbols | on the calling thread | overlapped | M symbols/s "
              "| coder threads |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for key in ("stages", "overlapped"):
            cells.append(" \\| ".join(_ms(r[d][key].get(CODING, {}).get("median")) for d in DIRECTIONS))
        rates = [r[d]["coder_symbols_per_second"]["median"] for d in DIRECTIONS]
        cells.append(" \\| ".join("-" if v is None else f"{v / 1e6:.0f}" for v in rates))
        lines.append(f"| {r['name']} | {r['size']} | {r['weights']} | {r['symbols']:,} | " + " | ".join(cells)
                     + f" | {r['coder_threads']} |")
    return "\n".join(lines)


def stage_figure(report: dict, output: Path) -> None:
    """Stacked bars of the median time per stage, an encode and a decode bar per configuration."""
    from matplotlib.figure import Figure

    from .timing import STAGES

    results = report["results"]
    labels, bottoms, bars = [], [], {s: [] for s in STAGES}
    for r in results:
        for direction in ("encode", "decode"):
            labels.append(f"{r['name']}\n{r['size']} {direction[:3]}")
            for stage in STAGES:
                bars[stage].append(r[direction]["stages"].get(stage, {}).get("median") or 0.0)
    figure = Figure(figsize=(max(6.0, 1.1 * len(labels)), 5), layout="constrained")
    ax = figure.subplots()
    bottoms = [0.0] * len(labels)
    for stage in STAGES:
        ax.bar(range(len(labels)), bars[stage], bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, bars[stage])]
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("seconds (median per stage)")
    ax.legend(fontsize=7, ncols=2)
    with atomic_output(output) as tmp:
        figure.savefig(tmp, format=Path(output).suffix.lstrip(".") or "png", dpi=100)


# ---------------------------------------------------------------------- the command
@dataclass(frozen=True)
class BenchFiles:
    """Where ``hpcm bench -o OUT.json`` writes: the JSON report, OUT.md (tables) and OUT.png (stages)."""

    json: Path
    markdown: Path
    figure: Path

    @classmethod
    def checked(cls, output: Path, inputs: Sequence[Path] = ()) -> "BenchFiles":
        """The three files of ``output``, checked before any work starts (``hpcm.files.check_outputs``:
        writable, none an input, no two the same)."""
        return cls(*check_outputs([Output(output, role="the JSON report"),
                                   Output(output.with_suffix(".md"), role="the Markdown tables beside -o"),
                                   Output(output.with_suffix(".png"), role="the stage figure beside -o")], inputs))


@dataclass(frozen=True)
class BenchPlan:
    """The configurations to measure, the variants whose parameters and MACs are counted, and the
    variant the ratio columns compare with."""

    configurations: list[BenchConfig]
    variants: list[VariantSpec]
    compare: Optional[str]


def bench_plan(variants: Sequence[str], exports: Sequence[Path], sizes: Sequence[tuple[int, int]],
               backend: Optional[str] = None, device: Optional[str] = None, warmup: int = 1, repeats: int = 3,
               compare: Optional[str] = None, ablate: Optional[str] = None,
               checkpoint: Optional[Path] = None, max_pixels: Optional[int] = None) -> BenchPlan:
    """Every variant (seeded; default ``DEFAULT_VARIANT``), the model of ``checkpoint`` or every export
    folder at every size (width, height) on ``backend``; with ``ablate`` (``ablation.ABLATIONS``) also
    each one-part change of the first variant, compared with it unless ``compare`` names another. Every
    option is checked here, before anything is measured: the backend and device, ``compare``, and every
    size (padded to its variant's alignment) against the pixel limit ``max_pixels`` (None: the
    configured one)."""
    from .ablation import ablation_variants

    if exports and (variants or ablate or checkpoint):
        raise ConfigError("--export excludes --variant, --checkpoint and --ablate: an export fixes its variant "
                          "and weights")
    if checkpoint is not None and (ablate or len(variants) > 1):
        raise ConfigError("--checkpoint benches its own model: it excludes --ablate and more than one --variant")
    backend = CodecRequest(export=exports[0] if exports else None, backend=backend).backend_name
    check_backend(backend, has_export=bool(exports), device=device)
    limit = pixel_limit(max_pixels)
    if checkpoint is not None:
        request = CodecRequest(checkpoint=checkpoint, variant=variants[0] if variants else None)
        specs = [resolve(request, need_model=True, tables=False, announce=False).model.spec]
    else:
        specs = [get_variant(n) for n in (variants or [DEFAULT_VARIANT])] if not exports else []
    if ablate:
        base = variants[0] if variants else DEFAULT_VARIANT
        specs += [s for s in ablation_variants(base, ablate) if s.name not in {t.name for t in specs}]
        compare = compare or specs[0].name
    folders = {path: resolve(CodecRequest(export=path), need_model=False, tables=False).export for path in exports}
    configurations = []
    for width, height in sizes:
        configurations += [BenchConfig(spec.name, width, height, backend, device, variant=spec.to_dict(),
                                       checkpoint=None if checkpoint is None else str(checkpoint),
                                       warmup=warmup, repeats=repeats, max_pixels=limit) for spec in specs]
        configurations += [BenchConfig(export.variant.name, width, height, backend, device, export=str(path),
                                       warmup=warmup, repeats=repeats, max_pixels=limit)
                           for path, export in folders.items()]
    alignments = {spec.name: spec.alignment for spec in specs}
    alignments.update({export.variant.name: export.manifest.alignment for export in folders.values()})
    for c in configurations:
        check_pixel_count(f"--size {c.size} ({c.name})", c.height, c.width, limit,
                          padded_size(c.height, c.width, alignments[c.name]))
    names = sorted({c.name for c in configurations})
    if compare is not None and compare not in names:
        raise ConfigError(f"--compare {compare!r} is not among the benched variants ({', '.join(names)})")
    counted = {spec.name: spec for spec in specs + [export.variant for export in folders.values()]}
    return BenchPlan(configurations, list(counted.values()), compare)


def run_bench(plan: BenchPlan, files: BenchFiles, macs: bool = True, progress: bool = True) -> str:
    """Measure every configuration of ``plan`` in its own process, count parameters and MACs (``macs``;
    on seeded weights, which do not change the counts), write ``files``; returns the Markdown tables."""
    from tqdm import tqdm

    from .flops import module_costs

    results = [run_configuration(config) for config in tqdm(plan.configurations, unit="configuration",
                                                            disable=None if progress else True, dynamic_ncols=True)]
    costs = {}
    if macs:
        for spec in plan.variants:
            model = resolve(CodecRequest(variant=spec), need_model=True, tables=False, announce=False).model
            costs[spec.name] = module_costs(model)
    report = {"configurations": [asdict(c) for c in plan.configurations], "results": results, "costs": costs,
              "compare": plan.compare}
    with atomic_output(files.json) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report, plan.compare)
    with atomic_output(files.markdown) as tmp:
        tmp.write_text(table + "\n")
    stage_figure(report, files.figure)
    return table


if __name__ == "__main__":
    child_main(lambda payload: measure(BenchConfig(**payload)))
