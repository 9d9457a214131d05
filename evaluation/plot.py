"""R-D figures: PSNR and MS-SSIM (dB) against bpp, the measured curves over the published anchors.

Drawn with matplotlib's object API (``Figure`` + its Agg canvas): no pyplot, no display, no global
backend choice. The file type follows the output's suffix (.png, .svg, .pdf).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from hpcm.files import atomic_output

from .bd import Curve


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
        figure.savefig(tmp, format=output.suffix.lstrip(".") or "png", dpi=110)
