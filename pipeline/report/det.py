"""DET curves: the one plotter that ``avfuse evaluate --det-plot`` and the analysis report use."""

from __future__ import annotations

from pipeline.core.metrics import ErrorCurves, det_points, eer_from_curves, probit

DET_TICKS = (0.0001, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4,
             0.6, 0.8, 0.9, 0.95, 0.98, 0.99)


DET_LINESTYLES = ("-", "--", "-.", ":")


def plot_det(curves: list[tuple[str, ErrorCurves]], path, *, title: str = "DET curve") -> str:
    """Save a DET plot (normal-deviate axes, ticks labelled in %) of one or more systems; returns ``path``.

    Each curve is drawn with its EER point marked and listed in the legend as
    ``"<label> (EER x.xx%)"``; curves cycle line styles as well as colours, so identical
    curves (e.g. AxA and AVxA of raw backbones) stay visible. The axes run to 60%, or to
    95% when an EER is above 25% (small or weak systems); the legend sits in the lower-left
    corner, which a DET curve never reaches. Written with matplotlib's Agg backend,
    atomically (format from the file suffix, PNG by default).
    """
    from pipeline.report.plots import plt, save

    pyplot = plt()
    eers = [eer_from_curves(c)[0] for _, c in curves]
    low = min(0.0005, max(0.0001, min(eers) / 5 if min(eers) > 0 else 0.0001))
    high = 0.95 if max(eers) > 0.25 else 0.6
    ticks = [t for t in DET_TICKS if low <= t <= high]
    fig, ax = pyplot.subplots(figsize=(6.4, 6.2))
    for i, ((label, c), e) in enumerate(zip(curves, eers)):
        pfa, pmiss = det_points(c)
        line, = ax.plot(probit(pfa), probit(pmiss), lw=1.8, ls=DET_LINESTYLES[i % len(DET_LINESTYLES)],
                        color=f"C{i % 10}", label=f"{label} (EER {100 * e:.2f}%)")
        ax.plot([probit(e)], [probit(e)], "o", color=line.get_color(), ms=6)
    lim = (float(probit(low)), float(probit(high)))
    ax.plot(lim, lim, ":", color="0.6", lw=1, label="Pmiss = Pfa")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xticks(probit(ticks))
    ax.set_yticks(probit(ticks))
    labels = [f"{100 * t:g}" for t in ticks]
    ax.set_xticklabels(labels)
    ax.set_yticklabels(labels)
    ax.set_xlabel("False acceptance rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.set_title(title)
    ax.grid(True, ls="--", lw=0.5, alpha=0.6)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save(fig, path)
