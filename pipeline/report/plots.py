"""Shared matplotlib helpers for the ablation and analysis figures (Agg backend, no display).

One style for every figure: 11 pt text, 12 pt titles, labelled axes, a legend
whenever more than one series is drawn, light grid. Figures are written
atomically at 120 dpi (PNG unless the file name says otherwise).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from pipeline.core.fsio import atomic_write_bytes

STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def plt():
    """``matplotlib.pyplot`` with the Agg backend and the shared style."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as pyplot
    pyplot.rcParams.update(STYLE)
    return pyplot


def save(fig, path: str | Path, dpi: int = 120) -> str:
    """Write ``fig`` (atomically) in the format of ``path``'s suffix (PNG without one) and
    close it; returns the path."""
    pyplot = plt()
    buf = io.BytesIO()
    suffix = Path(str(path)).suffix.lower().lstrip(".")
    fig.savefig(buf, format=suffix or "png", dpi=dpi, bbox_inches="tight")
    pyplot.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def style_for(i: int) -> dict:
    """Colour + marker of series ``i`` (tab10 cycle, distinct markers for print)."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)]}


def line_panels(path: str | Path, panels: Sequence[dict], *, suptitle: str | None = None,
                ncols: int | None = None, panel_size: tuple[float, float] = (5.2, 4.0),
                shared_legend: bool | str = False) -> str:
    """One line plot per panel.

    ``shared_legend``: one legend for the whole figure, right of the panels (the
    panels draw the same series), instead of one per panel; a string is the legend's title.

    Each panel: ``{"title", "xlabel", "ylabel", "series": [(label, xs, ys), ...],
    "xticks": optional (positions, labels), "extra": optional [(label, x, y, series index)]
    single points drawn hollow, "note": optional text under the axes}``.
    """
    pyplot = plt()
    n = len(panels)
    ncols = ncols or min(n, 2)
    nrows = -(-n // ncols)
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
                                squeeze=False)
    for ax, p in zip(axes.flat, panels):
        for i, (label, xs, ys) in enumerate(p["series"]):
            ax.plot(xs, ys, label=label, lw=1.6, ms=6, **style_for(i))
        for label, x, y, i in p.get("extra", []):
            st = style_for(i)
            ax.plot([x], [y], ls="none", marker=st["marker"], ms=8, mfc="none", mec=st["color"], mew=1.6)
        if p.get("xticks"):
            ax.set_xticks(p["xticks"][0])
            ax.set_xticklabels(p["xticks"][1])
        ax.set_title(p.get("title", ""))
        ax.set_xlabel(p.get("xlabel", ""))
        ax.set_ylabel(p.get("ylabel", ""))
        ax.grid(True, ls="--", lw=0.5, alpha=0.6)
        if not shared_legend and (len(p["series"]) > 1 or p.get("legend")):
            ax.legend(loc="best", frameon=True)
        if p.get("note"):
            ax.text(0.0, -0.2, p["note"], transform=ax.transAxes, fontsize=9, va="top", color="0.3",
                    wrap=True)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    if shared_legend:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=True,
                   fontsize=STYLE["legend.fontsize"] + 1,
                   title=shared_legend if isinstance(shared_legend, str) else None)
    return save(fig, path)


def grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *,
                 ylabel: str, title: str, value_fmt: str = "{:.2f}", ylim: tuple | None = None) -> None:
    """Bars of ``series`` (label, one value per group) side by side within each group, values printed."""
    import numpy as np

    k = max(1, len(series))
    width = 0.8 / k
    x = np.arange(len(groups))
    for i, (label, vals) in enumerate(series):
        vals = [float("nan") if v is None else float(v) for v in vals]
        bars = ax.bar(x + (i - (k - 1) / 2) * width, vals, width, label=label, color=f"C{i % 10}")
        for b, v in zip(bars, vals):
            if v == v:  # not NaN
                ax.annotate(value_fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom" if v >= 0 else "top", fontsize=8,
                            xytext=(0, 2 if v >= 0 else -2), textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20 if max((len(g) for g in groups), default=0) > 10 else 0,
                       ha="right" if max((len(g) for g in groups), default=0) > 10 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.grid(True, axis="y", ls="--", lw=0.5, alpha=0.6)
    if len(series) > 1:   # above the bars' range when ylim leaves headroom, else best
        ax.legend(loc="upper center" if ylim else "best", ncol=2 if ylim else 1)
