"""Files of ``avfuse ablate``: tables (Markdown/CSV/JSON), figures (PNG) and ``index.html``.

Written to the output folder:

| file | what |
| --- | --- |
| ``table.{md,csv,json}`` | system x mode: EER (%), minDCF (p=0.01, 0.05), trial counts |
| ``missing.{md,csv,json}``, ``missing.png`` | AVxAV with a share of faces / audio dropped |
| ``length.{md,csv,json}``, ``length.png`` | AVxAV with the first k segments/frames only |
| ``sweeps.{md,csv,json}``, ``sweeps.png`` | retrained head variants, every mode |
| ``gates.{md,csv,json}``, ``gates.png`` | DCA gate statistics |
| ``ablation.json`` | everything above plus the systems and the run's provenance |
| ``index.html`` | the tables and figures in one page (relative links) |

The CSV/JSON files hold long rows (one per cell, full precision); the Markdown
pivots them for reading. Parts that were not run write no files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.core.fsio import atomic_write_text
from pipeline.report.tables import METRIC_KEYS, markdown_table, pivot, to_json_text, write_table

CELL_COLUMNS = ["eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "n_target", "n_nontarget",
                "n_skipped"]
TITLES = {"eer_percent": "EER (%)", "min_dcf_p0.01": "minDCF (p=0.01)", "min_dcf_p0.05": "minDCF (p=0.05)"}


def _pivots(rows, index, columns, col_label=str, keys=METRIC_KEYS, level="###") -> str:
    parts = []
    for key in keys:
        wide, cols = pivot(rows, index, columns, key)
        headers = [index] + [col_label(c) for c in cols[1:]]
        parts.append(f"{level} {TITLES[key]}\n\n" + markdown_table(wide, cols, headers, fmt_as=key))
    return "\n".join(parts)


def _pct(v) -> str:
    return f"{100 * float(v):g}%"


def write_ablation(result: dict, out: Path, *, modes: Sequence[str]) -> dict:
    """Write every file of the module docstring for ``run_ablation``'s ``result``; returns the paths."""
    from pipeline.report.gates import COLUMNS as GATE_COLUMNS
    from pipeline.report.gates import HEADERS as GATE_HEADERS
    from pipeline.report.gates import plot_gates

    files: dict = {}
    meta = result["meta"]
    n = meta["trials"]["n_trials"]
    intro = (f"Trial list {meta['trials']['path']} ({n:,} trials), cache {meta['cache']['path']} "
             f"(fingerprint {meta['cache']['fingerprint']}).")

    table = result["table"]
    md = (f"## Head x mode\n\n{intro} Rows: systems ('none' = raw backbone embeddings); columns: "
          "enrol x test modes.\n\n" + _pivots(table, "system", "mode"))
    files["table"] = write_table(out, "table", table, ["system", "mode"] + CELL_COLUMNS, markdown=md)

    if result["missing"]:
        rows = result["missing"]
        md = ("## Test-time missing modality (AVxAV)\n\n" + intro +
              f" A share of the {rows[0]['n_candidates']:,} trial-list clips that have both modalities loses "
              "its face (or its audio), on both sides of the trials; the same seeded clips in both parts, "
              "nested across shares. 0% is the plain AVxAV cell.\n\n")
        for dropped in ("face", "audio"):
            part = [r for r in rows if r["dropped"] == dropped]
            md += f"### {dropped.capitalize()} dropped\n\n" + _pivots(part, "system", "share", _pct, level="####")
        files["missing"] = write_table(out, "missing", rows, ["system", "mode", "dropped", "share", "n_dropped",
                                                             "n_candidates"] + CELL_COLUMNS, markdown=md)
        files["missing_png"] = plot_missing(rows, out / "missing.png")

    if result["length"]:
        rows = result["length"]
        md = ("## Clip length (AVxAV)\n\n" + intro + " Only the first k cached audio segments and face frames "
              f"of every clip (of {meta['max_steps']}); clip-level heads and 'none' use the mean of those "
              "steps as the clip embedding, sequence heads mask the later steps. 'full' = the cached clip "
              "embeddings (the plain AVxAV cell).\n\n" + _pivots(rows, "system", "steps"))
        files["length"] = write_table(out, "length", rows, ["system", "mode", "steps"] + CELL_COLUMNS, markdown=md)
        files["length_png"] = plot_length(rows, out / "length.png", meta["max_steps"])

    if result["sweeps"]:
        rows = result["sweeps"]
        md = "## Sweeps (retrained variants)\n\n" + intro + "\n\n"
        for key in dict.fromkeys((r["head"], r["field"]) for r in rows):
            part = [r for r in rows if (r["head"], r["field"]) == key]
            md += f"### {key[0]}.{key[1]}\n\n" + _pivots(part, "value", "mode", level="####")
        files["sweeps"] = write_table(out, "sweeps", rows, ["system", "head", "field", "value", "mode"]
                                      + CELL_COLUMNS, markdown=md)
        files["sweeps_png"] = plot_sweeps(rows, out / "sweeps.png")

    if result["gates"]:
        rows = result["gates"]
        md = ("## DCA gate analysis\n\nShare of valid steps whose gate puts more weight on the cross-attended "
              "features (g1 > 0.5), and the mean g1, per modality. Trial groups pool both clips' steps.\n\n"
              + markdown_table(rows, GATE_COLUMNS, GATE_HEADERS))
        files["gates"] = write_table(out, "gates", rows, GATE_COLUMNS, markdown=md)
        files["gates_png"] = plot_gates(rows, out / "gates.png")

    body = {k: v for k, v in result.items() if k != "files"}
    atomic_write_text(out / "ablation.json", to_json_text(body))
    files["ablation_json"] = str(out / "ablation.json")
    files["index_html"] = write_index(result, out, files)
    return files


# ------------------------------------------------------------------ figures
def plot_missing(rows: list[dict], path: Path) -> str:
    from pipeline.report.plots import line_panels

    panels = []
    for dropped in ("face", "audio"):
        part = [r for r in rows if r["dropped"] == dropped]
        systems = list(dict.fromkeys(r["system"] for r in part))
        series = []
        for s in systems:
            pts = sorted((r["share"], r["eer_percent"]) for r in part if r["system"] == s)
            series.append((s, [100 * x for x, _ in pts], [y for _, y in pts]))
        panels.append({"title": f"{dropped.capitalize()} dropped at test time", "series": series, "legend": True,
                       "xlabel": f"clips without {dropped} (% of clips with both)", "ylabel": "EER (%), AVxAV"})
    return line_panels(path, panels, suptitle="Test-time missing modality", shared_legend="system")


def plot_length(rows: list[dict], path: Path, max_steps: int) -> str:
    from pipeline.report.plots import line_panels

    ks = sorted({r["steps"] for r in rows if r["steps"] != "full"})
    pos = {k: i for i, k in enumerate(ks)}
    full_x = len(ks) + 0.3
    systems = list(dict.fromkeys(r["system"] for r in rows))
    series, extra = [], []
    for i, s in enumerate(systems):
        pts = sorted((r["steps"], r["eer_percent"]) for r in rows if r["system"] == s and r["steps"] != "full")
        series.append((s, [pos[k] for k, _ in pts], [y for _, y in pts]))
        for r in rows:
            if r["system"] == s and r["steps"] == "full":
                extra.append((s, full_x, r["eer_percent"], i))
    ticks = ([pos[k] for k in ks] + [full_x], [str(k) for k in ks] + ["full\n(cached)"])
    panel = {"title": "EER vs clip length", "series": series, "extra": extra, "xticks": ticks, "legend": True,
             "xlabel": f"first k of the {max_steps} cached audio segments / face frames",
             "ylabel": "EER (%), AVxAV",
             "note": "hollow markers: the cached whole-clip embeddings (plain AVxAV cell)"}
    return line_panels(path, [panel], panel_size=(7.5, 4.8), shared_legend="system")


def plot_sweeps(rows: list[dict], path: Path) -> str:
    from pipeline.report.plots import line_panels

    panels = []
    for key in dict.fromkeys((r["head"], r["field"]) for r in rows):
        part = [r for r in rows if (r["head"], r["field"]) == key]
        values = list(dict.fromkeys(r["value"] for r in part))
        modes = list(dict.fromkeys(r["mode"] for r in part))
        series = [(m, list(range(len(values))), [next(r["eer_percent"] for r in part if r["mode"] == m
                                                       and r["value"] == v) for v in values]) for m in modes]
        panels.append({"title": f"{key[0]}: sweep of {key[1]}", "series": series, "legend": True,
                       "xticks": (list(range(len(values))), values), "xlabel": key[1], "ylabel": "EER (%)"})
    return line_panels(path, panels, suptitle="Retrained variants (EER per mode)", shared_legend="mode")


# ------------------------------------------------------------------ html
def write_index(result: dict, out: Path, files: dict) -> str:
    from pipeline.report.gates import COLUMNS as GATE_COLUMNS
    from pipeline.report.gates import HEADERS as GATE_HEADERS
    from pipeline.report.html import write_report

    meta = result["meta"]

    def pivots(rows, index, columns, col_label=str, keys=("eer_percent", "min_dcf_p0.01")):
        blocks = []
        for key in keys:
            wide, cols = pivot(rows, index, columns, key)
            blocks.append({"table": wide, "columns": cols, "caption": TITLES[key], "fmt_as": key,
                           "headers": [index] + [col_label(c) for c in cols[1:]]})
        return blocks

    blocks: list[dict] = [{"p": f"Cache {meta['cache']['path']} (fingerprint {meta['cache']['fingerprint']}); "
                               f"trials {meta['trials']['path']} ({meta['trials']['n_trials']:,} trials, "
                               f"{meta['trials']['n_target']:,} target). Ran in {meta['seconds']:.1f} s."}]
    for note in result.get("notes", []):
        blocks.append({"p": note, "note": True})
    blocks += [{"h2": "Head x mode"}, {"p": "'none' = raw backbone embeddings (AV: mean of the audio and face "
                                            "cosine scores). Modes are enrol x test modalities."}]
    blocks += pivots(result["table"], "system", "mode", keys=METRIC_KEYS)
    if result["missing"]:
        blocks += [{"h2": "Test-time missing modality"},
                   {"img": "missing.png", "caption": "AVxAV EER with a share of the clips' faces (left) or "
                                                     "audio (right) dropped on both sides of the trials."}]
        for dropped in ("face", "audio"):
            part = [r for r in result["missing"] if r["dropped"] == dropped]
            blocks.append({"h3": f"{dropped.capitalize()} dropped"})
            blocks += pivots(part, "system", "share", _pct)
    if result["length"]:
        blocks += [{"h2": "Clip length"},
                   {"img": "length.png", "caption": "AVxAV EER using only the first k cached segments / frames "
                                                    "of every clip (both sides)."}]
        blocks += pivots(result["length"], "system", "steps")
    if result["sweeps"]:
        blocks += [{"h2": "Sweeps"}, {"img": "sweeps.png", "caption": "EER of each retrained variant per mode."}]
        for key in dict.fromkeys((r["head"], r["field"]) for r in result["sweeps"]):
            part = [r for r in result["sweeps"] if (r["head"], r["field"]) == key]
            blocks.append({"h3": f"{key[0]}.{key[1]}"})
            blocks += pivots(part, "value", "mode")
    if result["gates"]:
        blocks += [{"h2": "DCA gates"},
                   {"img": "gates.png", "caption": "Share of valid steps whose gate prefers the cross-attended "
                                                   "features (g1 > 0.5)."},
                   {"table": result["gates"], "columns": GATE_COLUMNS, "headers": GATE_HEADERS}]
    blocks += [{"h2": "Systems"},
               {"table": result["systems"], "columns": ["label", "head", "source", "path", "train_seconds",
                                                        "epochs_run", "best_dev_eer_percent"]},
               {"p": "Files: " + ", ".join(sorted(Path(p).name for v in files.values()
                                                  for p in (v.values() if isinstance(v, dict) else [v]))),
                "note": True}]
    return write_report(out / "index.html", "avfuse ablation", blocks)
