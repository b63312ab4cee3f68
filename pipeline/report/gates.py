"""The DCA gate table's columns and its figure (share of the attended features per trial type)."""

from __future__ import annotations

from pathlib import Path

COLUMNS = ["system", "group", "value", "n", "audio_cross_share", "face_cross_share",
           "audio_mean_gate", "face_mean_gate", "audio_steps", "face_steps"]


HEADERS = ["system", "group", "value", "n", "audio: share cross", "face: share cross",
           "audio: mean g1", "face: mean g1", "audio steps", "face steps"]


def plot_gates(rows: list[dict], path: str | Path) -> str:
    """Left: cross share by trial type for every gated system; right: by clip condition (or decision)
    for the first system."""
    from pipeline.report.plots import grouped_bars, plt, save

    pyplot = plt()
    systems = list(dict.fromkeys(r["system"] for r in rows))

    def get(system, group, value, key):
        for r in rows:
            if r["system"] == system and r["group"] == group and r["value"] == value:
                return r[key]
        return None

    fig, axes = pyplot.subplots(1, 2, figsize=(max(11, 2.2 * len(systems) + 5), 4.6))
    series = [(f"{mod} steps, {tt} trials", [get(s, "trial type", tt, f"{mod}_cross_share") for s in systems])
              for mod in ("audio", "face") for tt in ("target", "non-target")]
    grouped_bars(axes[0], systems, series, ylabel="share of steps with g1 > 0.5",
                 title="Gate picks cross-attended features, by trial type", ylim=(0, 1.45))
    first = systems[0]
    cond = [(r["group"], r["value"]) for r in rows if r["system"] == first and r["group"].endswith("condition")]
    if not cond:
        cond = [(r["group"], r["value"]) for r in rows if r["system"] == first and r["group"].startswith("decision")]
    names = [f"{g.split()[0]} {v}" if g.endswith("condition") else v for g, v in cond]
    series = [(f"{mod} steps", [get(first, g, v, f"{mod}_cross_share") for g, v in cond]) for mod in ("audio", "face")]
    grouped_bars(axes[1], names, series, ylabel="share of steps with g1 > 0.5",
                 title=f"{first}: by clip condition" if cond and cond[0][0].endswith("condition")
                 else f"{first}: by decision at the EER threshold", ylim=(0, 1.45))
    for ax in axes:
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    fig.tight_layout()
    return save(fig, path)
