"""Figures, tables and ``index.html`` of ``avfuse analyze`` (see ``pipeline.experiments.analyze``).

Every figure has a title, labelled axes and a legend when it draws more than one
series; colours for identities in the PCA plots go to the 10 identities with the
most clips (the others are drawn small and grey, and the legend says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.fsio import atomic_write_text
from pipeline.report.tables import markdown_table, pivot, safe_name, to_json_text, write_table

N_COLOURED = 10
METRIC_COLUMNS = ["system", "mode", "eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "n_target",
                  "n_nontarget"]


def plot_silhouettes(geo_rows: list[dict], path: Path) -> str:
    from pipeline.report.plots import grouped_bars, plt, save

    pyplot = plt()
    systems = [r["system"] for r in geo_rows]
    fig, ax = pyplot.subplots(figsize=(max(7.0, 1.3 * len(systems) + 3), 4.6))
    series = [(lab, [r.get(f"silhouette_{key}") for r in geo_rows])
              for key, lab in (("audio", "audio (A)"), ("face", "face (V)"), ("fused", "fused (AV)"))]
    vals = [v for _, vs in series for v in vs if v is not None]
    span = max([0.1] + [abs(v) for v in vals])
    lo = min([0.0] + vals) - 0.1 * span
    hi = max([0.0] + vals) + 0.45 * span
    grouped_bars(ax, systems, series, ylabel="mean silhouette (cosine distance)",
                 title="Identity clustering: silhouette per modality", ylim=(lo, hi), value_fmt="{:.3f}")
    return save(fig, path)


def plot_angles(systems_with_angles: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> str:
    from pipeline.report.plots import plt, save, style_for

    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.4))
    bins = np.linspace(0, 180, 37)
    for i, (label, per_clip, per_id) in enumerate(systems_with_angles):
        c = style_for(i)["color"]
        axes[0].hist(per_clip, bins=bins, histtype="step", lw=1.8, color=c,
                     label=f"{label} (mean {per_clip.mean():.1f} deg)")
        axes[1].hist(per_id, bins=bins, histtype="step", lw=1.8, color=c,
                     label=f"{label} (mean {per_id.mean():.1f} deg)")
    for ax, title, what in ((axes[0], "per clip", "clips"), (axes[1], "per identity (mean embeddings)", "identities")):
        ax.set_title(f"A-V angle {title}")
        ax.set_xlabel("angle between e_A and e_V (degrees)")
        ax.set_ylabel(f"number of {what}")
        ax.set_xlim(0, 180)
        ax.set_xticks(range(0, 181, 30))
        ax.grid(True, ls="--", lw=0.5, alpha=0.6)
        ax.legend(loc="upper left")
    fig.suptitle("Angle between the audio-only and face-only embeddings of a head")
    fig.tight_layout()
    return save(fig, path)


def plot_pca(label: str, emb: dict, speakers: np.ndarray, path: Path, method: str = "pca", seed: int = 0) -> str:
    from pipeline.experiments.stats import pca2
    from pipeline.experiments.umap import umap2
    from pipeline.report.plots import plt, save

    pyplot = plt()
    keys = [(k, t) for k, t in (("A", "audio (e_A)"), ("V", "face (e_V)"), ("AV", "fused (e_AV)")) if k in emb
            and len(emb[k][0]) >= 3]
    fig, axes = pyplot.subplots(1, max(1, len(keys)), figsize=(4.6 * max(1, len(keys)) + 2.2, 4.4), squeeze=False)
    rows_all = np.concatenate([emb[k][0] for k, _ in keys]) if keys else np.zeros(0, np.int64)
    ids, counts = np.unique(speakers[rows_all], return_counts=True)
    top = ids[np.argsort(-counts, kind="stable")[:N_COLOURED]]
    colour = {s: f"C{i}" for i, s in enumerate(sorted(top))}
    for ax, (k, title) in zip(axes[0], keys):
        rows, x = emb[k]
        xy, ratio = pca2(x) if method == "pca" else (umap2(x, seed), None)
        spk = speakers[rows]
        grey = ~np.isin(spk, top)
        if grey.any():
            ax.scatter(xy[grey, 0], xy[grey, 1], s=6, c="0.75", label="other identities")
        for s in sorted(top):
            m = spk == s
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=16, c=colour[s], label=str(s))
        ax.set_title(f"{label}: {title}")
        ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f}% of variance)" if ratio is not None else "UMAP 1")
        ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f}% of variance)" if ratio is not None else "UMAP 2")
        ax.grid(True, ls="--", lw=0.5, alpha=0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    more = f"{len(top)} of {len(ids)} identities in colour" if len(ids) > len(top) else "identity"
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), title=more, fontsize=9)
    fig.suptitle(f"{method.upper()} of the {label} embeddings, coloured by identity")
    fig.tight_layout()
    return save(fig, path)


def plot_score_hists(label: str, results: dict, path: Path) -> str:
    from pipeline.core.metrics import compute_metrics
    from pipeline.report.plots import plt, save

    pyplot = plt()
    modes = list(results)
    ncols = min(3, len(modes))
    nrows = -(-len(modes) // ncols)
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, mode in zip(axes.flat, modes):
        res = results[mode]
        s, y = res.scores, res.labels
        bins = np.linspace(float(s.min()), float(s.max()) + 1e-9, 41)
        ax.hist(s[y == 0], bins=bins, density=True, alpha=0.55, color="C3", label=f"non-target ({(y == 0).sum():,})")
        ax.hist(s[y == 1], bins=bins, density=True, alpha=0.55, color="C2", label=f"target ({(y == 1).sum():,})")
        m = compute_metrics(s, y)
        ax.axvline(m["eer_threshold"], color="0.2", ls="--", lw=1, label="EER threshold")
        ax.set_title(f"{mode} (EER {m['eer_percent']:.2f}%)")
        ax.set_xlabel("score (cosine)" if res.info.get("score_kind") == "cosine" else "score")
        ax.set_ylabel("density")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(True, ls="--", lw=0.5, alpha=0.5)
    for ax in list(axes.flat)[len(modes):]:
        ax.set_visible(False)
    fig.suptitle(f"{label}: target / non-target score distributions")
    fig.tight_layout()
    return save(fig, path)


def write_figures(out: Path, systems, embs: dict, geo_rows: list[dict], view, scores: dict, modes, *,
                  umap: bool = False, seed: int = 0) -> dict:
    """All PNGs; returns ``{name: {"path": relative file name, "caption": text}}`` in display order."""
    from pipeline.core.metrics import error_curves
    from pipeline.report.det import plot_det

    figs: dict = {}

    def add(name, path, caption):
        figs[name] = {"path": Path(path).name, "caption": caption}

    add("silhouette", plot_silhouettes(geo_rows, out / "silhouette.png"),
        "Mean silhouette (cosine distance, speaker labels) of the audio-only, face-only and fused embeddings.")
    angled = [(s.label, embs[s.label]["angles_clip"], embs[s.label]["angles_identity"][1])
              for s in systems if "angles_clip" in embs[s.label]]
    if angled:
        add("angles", plot_angles(angled, out / "angles.png"),
            "Angle between each clip's audio-only and face-only head embeddings (left) and between each "
            "identity's mean audio and mean face embeddings (right).")
    for s in systems:
        f = safe_name(s.label)
        add(f"pca_{f}", plot_pca(s.label, embs[s.label], view.speakers, out / f"pca_{f}.png"),
            f"{s.label}: first two principal components of each embedding, coloured by identity.")
        if umap:
            add(f"umap_{f}", plot_pca(s.label, embs[s.label], view.speakers, out / f"umap_{f}.png", "umap", seed),
                f"{s.label}: 2-D UMAP (cosine, seed {seed}) of each embedding, coloured by identity.")
    if scores:
        for s in systems:
            f = safe_name(s.label)
            res = {m: scores[(s.label, m)] for m in modes if (s.label, m) in scores}
            if not res:
                continue
            add(f"scores_{f}", plot_score_hists(s.label, res, out / f"scores_{f}.png"),
                f"{s.label}: score histograms of target and non-target trials per mode.")
            plot_det([(m, error_curves(r.scores, r.labels)) for m, r in res.items()], out / f"det_{f}.png",
                            title=f"DET: {s.label}, all modes")
            add(f"det_{f}", out / f"det_{f}.png", f"{s.label}: DET curves of every mode.")
        av = [(s.label, scores[(s.label, "AVxAV")]) for s in systems if (s.label, "AVxAV") in scores]
        if av:
            plot_det([(lab, error_curves(r.scores, r.labels)) for lab, r in av], out / "det_AVxAV.png",
                            title="DET: all systems, AVxAV")
            add("det_AVxAV", out / "det_AVxAV.png", "DET curves of every system in AVxAV.")
    return figs


def write_analysis_files(result: dict, out: Path) -> dict:
    """Tables (``geometry.*``, ``metrics.*``), ``analysis.json`` and ``index.html``."""
    from pipeline.report.analysis import GEOMETRY_COLUMNS, GEOMETRY_HEADERS
    from pipeline.report.html import write_report

    meta = result["meta"]
    files: dict = {}
    md = (f"## Embedding geometry ({meta['n_clips']:,} clips of split '{meta['split']}')\n\n"
          + markdown_table(result["geometry"], GEOMETRY_COLUMNS, GEOMETRY_HEADERS))
    files["geometry"] = write_table(out, "geometry", result["geometry"], GEOMETRY_COLUMNS, markdown=md)
    blocks: list[dict] = [
        {"p": f"Cache {meta['cache']['path']} (fingerprint {meta['cache']['fingerprint']}), split "
              f"'{meta['split']}': {meta['n_clips']:,} clips" + (f" (a seeded sample of at most "
                                                                   f"{meta['max_clips']:,})" if meta["sampled"] else "")
              + (f"; trials {meta['trials']['path']} ({meta['trials']['n_trials']:,})" if meta["trials"] else "")
              + f". Ran in {meta['seconds']:.1f} s."},
        {"h2": "Embedding geometry"},
        {"p": "Silhouette: mean over clips of (b - a) / max(a, b) with cosine distance, a = mean distance to the "
              "clip's own identity, b = to the nearest other identity (higher = tighter, better separated "
              "identities). Angle: between a clip's audio-only and face-only embeddings of a head (a shared "
              "space); per identity: between the mean audio and mean face embeddings."},
        {"table": result["geometry"], "columns": GEOMETRY_COLUMNS, "headers": GEOMETRY_HEADERS}]
    if result.get("variance"):
        from pipeline.experiments.variance import VARIANCE_COLUMNS, VARIANCE_HEADERS
        files["variance"] = write_table(out, "variance", result["variance"], VARIANCE_COLUMNS, markdown=(
            "## Within- and between-speaker variance\n\n" + markdown_table(result["variance"], VARIANCE_COLUMNS,
                                                                         VARIANCE_HEADERS)))
        blocks.append({"table": result["variance"], "columns": VARIANCE_COLUMNS, "headers": VARIANCE_HEADERS,
                       "caption": "Within- and between-speaker variance of the L2-normalised embeddings"})
    figs = result["figures"]
    for name in ("silhouette", "angles"):
        if name in figs:
            blocks.append({"img": figs[name]["path"], "caption": figs[name]["caption"]})
    if "angles" not in figs:
        blocks.append({"p": "No angle figure: no system has audio and face embeddings in one shared space "
                            "(pass a head checkpoint with --head).", "note": True})
    if result["metrics"]:
        rows = result["metrics"]
        md = "## Verification metrics\n\n"
        for key, title in (("eer_percent", "EER (%)"), ("min_dcf_p0.01", "minDCF (p=0.01)"),
                           ("min_dcf_p0.05", "minDCF (p=0.05)")):
            wide, cols = pivot(rows, "system", "mode", key)
            md += f"### {title}\n\n" + markdown_table(wide, cols, fmt_as=key) + "\n"
        files["metrics"] = write_table(out, "metrics", rows, METRIC_COLUMNS, markdown=md)
        blocks.append({"h2": "Verification metrics"})
        for key, title in (("eer_percent", "EER (%)"), ("min_dcf_p0.01", "minDCF (p=0.01)")):
            wide, cols = pivot(rows, "system", "mode", key)
            blocks.append({"table": wide, "columns": cols, "caption": title, "fmt_as": key})
        if "det_AVxAV" in figs:
            blocks.append({"img": figs["det_AVxAV"]["path"], "caption": figs["det_AVxAV"]["caption"], "width": 560})
    blocks.append({"h2": "Projections (PCA" + (", UMAP)" if any(n.startswith("umap_") for n in figs) else ")")})
    blocks += [{"img": f["path"], "caption": f["caption"]} for n, f in figs.items() if n.startswith(("pca_", "umap_"))]
    if result["metrics"]:
        blocks.append({"h2": "Scores and DET curves per system"})
        for n, f in figs.items():
            if n.startswith("scores_") or (n.startswith("det_") and n != "det_AVxAV"):
                blocks.append({"img": f["path"], "caption": f["caption"],
                               **({"width": 560} if n.startswith("det_") else {})})
    atomic_write_text(out / "analysis.json", to_json_text({k: v for k, v in result.items() if k != "files"}))
    files["analysis_json"] = str(out / "analysis.json")
    files["index_html"] = write_report(out / "index.html", "avfuse embedding analysis", blocks)
    return files


GEOMETRY_COLUMNS = ["system", "silhouette_audio", "silhouette_face", "silhouette_fused", "angle_clip_mean_deg",
                    "angle_clip_median_deg", "angle_identity_mean_deg", "n_clips", "n_identities", "note"]


GEOMETRY_HEADERS = ["system", "silhouette A", "silhouette V", "silhouette AV", "angle A-V per clip: mean (deg)",
                    "median (deg)", "angle A-V per identity: mean (deg)", "clips", "identities", "note"]
