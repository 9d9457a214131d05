"""``hpcm plot``: which curves are compared (``compare_curves``: the measured results, the published
anchors, the BD reference) and the R-D figure, PSNR and MS-SSIM (dB) against bpp, of the measured
curves over the anchors.

Drawn with matplotlib's object API (``Figure`` + its Agg canvas): no pyplot, no display, no global
backend choice. The file type follows the output's suffix (``FIGURE_FORMATS``), checked with the
other outputs before any work (``PlotFiles``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from hpcm import config
from hpcm.files import Output, atomic_output, check_outputs
from hpcm.log import LOG

from .bd import Curve, ResultsError, anchor_curves, bd_table, markdown_table, read_curve


FIGURE_FORMATS = ("png", "svg", "pdf")


@dataclasses.dataclass(frozen=True)
class PlotFiles:
    """Where ``hpcm plot`` writes: the figure (``-o``) and the BD table (``--table``), each optional."""

    figure: Optional[Path]
    table: Optional[Path]

    @classmethod
    def checked(cls, figure: Optional[Path], table: Optional[Path], inputs: Sequence[Path] = ()) -> "PlotFiles":
        """Checked before any work (``hpcm.files.check_outputs``: writable, none an input, not the same
        file), the figure's suffix one of ``FIGURE_FORMATS``."""
        outputs = [Output(figure, "-o", "the figure -o"), Output(table, "--table", "the BD table --table")]
        check_outputs([o for o in outputs if o.path is not None], inputs)
        if figure is not None and figure.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
            raise ResultsError(f"-o {figure}: the figure's format follows its suffix; end it with "
                               f"{', '.join('.' + f for f in FIGURE_FORMATS)}")
        return cls(figure, table)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The measured ``curves``, the ``anchors`` drawn beside them, the BD ``reference`` and its ``table``."""

    curves: list[Curve]
    anchors: list[Curve]
    reference: Curve
    table: str

    def write(self, files: PlotFiles, title: str = "") -> None:
        """The figure (by its suffix) and the Markdown table, where ``files`` (checked) asks for them."""
        if files.table is not None:
            with atomic_output(files.table, option="--table") as tmp:
                tmp.write_text(self.table + "\n")
        if files.figure is not None:
            rd_figure(self.curves, self.anchors, files.figure, title=title, reference=self.reference)


def _published(anchors: Optional[Path]) -> tuple[Path, dict[str, Curve]]:
    """The anchor folder (default: the configured one, skipped with a notice when absent) and its
    curves by file stem, each marked as published (a measured JPEG and the published one must not
    share a name)."""
    folder = anchors if anchors is not None else config.default_anchor_folder()
    if not folder.is_dir():
        if anchors is not None:
            raise ResultsError(f"--anchors {anchors} is not a folder")
        LOG.warning(f"no anchors at {folder}: plotting and comparing the given results only")
        return folder, {}
    return folder, {stem: c if "published" in c.name.lower() else dataclasses.replace(c, name=f"{c.name} (published)")
                    for stem, c in anchor_curves(folder).items()}


def _reference_curve(reference: Optional[str], curves: list[Curve], published: dict[str, Curve]) -> Curve:
    if reference is None:
        return published.get("vtm", curves[0])
    key = reference.lower()
    if key in published:
        return published[key]
    for curve in [*curves, *published.values()]:
        if curve.name.lower() == key:
            return curve
    names = sorted({*published, *(c.name for c in curves)})
    raise ResultsError(f"--reference: no curve {reference!r}; choose one of {', '.join(names)}")


def compare_curves(results: Sequence[Path], anchors: Optional[Path] = None, anchor_names: Sequence[str] = (),
                   reference: Optional[str] = None) -> Comparison:
    """The result files against the anchors of ``anchors`` (only ``anchor_names``, file stems, when
    given) and BD values against ``reference`` (an anchor's stem or any curve's name; default: vtm
    where the anchors hold it, else the first result)."""
    curves = [read_curve(p) for p in results]
    folder, published = _published(anchors)
    wanted = [n.lower() for n in anchor_names]
    unknown = [n for n in wanted if n not in published]
    if unknown:
        raise ResultsError(f"--anchor {', '.join(unknown)}: not among the anchors in {folder} "
                           f"({', '.join(published) or 'none'})")
    drawn = [c for stem, c in published.items() if not wanted or stem in wanted]
    ref = _reference_curve(reference, curves, published)
    table = markdown_table(bd_table(curves + [c for c in drawn if c is not ref], ref), ref)
    return Comparison(curves, drawn, ref, table)


def rd_figure(curves: Sequence[Curve], anchors: Sequence[Curve], output: Path, title: str = "",
              reference: Optional[Curve] = None) -> None:
    """Write the figure of ``curves`` (solid, with markers) over ``anchors`` (thin, dashed)."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    palette = rcParams["axes.prop_cycle"].by_key()["color"]
    # one colour per curve in both panels (a curve without MS-SSIM must not shift the others' colours)
    color = {id(c): palette[i % len(palette)] for i, c in enumerate((*anchors, *curves))}

    with_ms_ssim = any(c.ms_ssim is not None for c in (*curves, *anchors))
    figure = Figure(figsize=(12 if with_ms_ssim else 6.5, 5), layout="constrained")
    axes = figure.subplots(1, 2 if with_ms_ssim else 1, squeeze=False)[0]
    panels = [("psnr", "PSNR (dB), RGB")] + ([("ms_ssim", "MS-SSIM (dB), RGB")] if with_ms_ssim else [])
    for ax, (metric, label) in zip(axes, panels):
        for curve in anchors:
            values = curve.psnr if metric == "psnr" else curve.ms_ssim_db()
            if values is not None:
                is_reference = reference is not None and curve.source == reference.source
                ax.plot(curve.bpp, values, color=color[id(curve)], linestyle="--",
                        linewidth=1.6 if is_reference else 0.9,
                        alpha=1.0 if is_reference else 0.7, label=curve.name)
        for curve in curves:
            values = curve.psnr if metric == "psnr" else curve.ms_ssim_db()
            if values is not None:
                ax.plot(curve.bpp, values, color=color[id(curve)], marker="o", markersize=3.5, linewidth=1.8,
                        label=curve.name)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    if title:
        figure.suptitle(title)
    output = Path(output)
    with atomic_output(output) as tmp:
        figure.savefig(tmp, format=output.suffix.lower().lstrip(".") or "png", dpi=110)
