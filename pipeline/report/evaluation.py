"""What ``avfuse evaluate`` adds to EER/minDCF: LLR metrics, thresholds, the several-files table.

Kept apart from ``pipeline.cli.score`` so that module's edit stays small: ``extend_metrics`` adds
``act_dcf_p0.01``, ``act_dcf_p0.05``, ``cllr``, ``min_cllr`` (``pipeline.core.llr_metrics``) and
the requested operating points to the metrics dict of one scores file.
"""

from __future__ import annotations

from typing import Sequence

LLR_KEYS = ("act_dcf_p0.01", "act_dcf_p0.05", "cllr", "min_cllr")
TABLE_COLUMNS = ("system", "eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "act_dcf_p0.01", "act_dcf_p0.05",
                 "cllr", "min_cllr", "n_trials")
TABLE_HEADERS = ("system", "EER (%)", "minDCF .01", "minDCF .05", "actDCF .01", "actDCF .05", "Cllr",
                 "minCllr", "trials")


def parse_thresholds(specs: Sequence[str]) -> list[tuple[str, str, float]]:
    """``["far=1%"]`` -> ``[("far=1%", "far", 0.01)]`` (bad specs: ``ConfigError``)."""
    from pipeline.core.llr_metrics import parse_operating_point
    return [(s.strip(), *parse_operating_point(s)) for s in specs]


def extend_metrics(m: dict, scores, labels, curves, thresholds: Sequence[tuple[str, str, float]] = ()) -> dict:
    """``m`` plus the LLR metrics and, if asked, ``m["thresholds"][spec] = {threshold, far, frr}``."""
    from pipeline.core.llr_metrics import compute_llr_metrics, threshold_from_curves

    m.update(compute_llr_metrics(scores, labels, curves))
    if thresholds:
        m["thresholds"] = {spec: threshold_from_curves(curves, **{kind: value})
                           for spec, kind, value in thresholds}
    return m


def llr_text(m: dict) -> str:
    """``"  actDCF(p=0.01) ..  actDCF(p=0.05) ..  Cllr ..  minCllr .."`` (empty without those keys)."""
    if "cllr" not in m:
        return ""
    return (f"  actDCF(p=0.01) {m['act_dcf_p0.01']:.4f}  actDCF(p=0.05) {m['act_dcf_p0.05']:.4f}  "
            f"Cllr {m['cllr']:.4f}  minCllr {m['min_cllr']:.4f}")


def threshold_lines(m: dict, name: str | None = None) -> list[str]:
    head = f"{name}: " if name else ""
    return [f"{head}threshold at {spec}: {t['threshold']:.6g} (accept if score > threshold; "
            f"FAR {100 * t['far']:.3f}%, FRR {100 * t['frr']:.3f}%)"
            for spec, t in m.get("thresholds", {}).items()]


def results_table(results: Sequence[tuple[str, dict]]) -> str:
    """One fixed-width table, a row per scores file, threshold columns if asked."""
    from pipeline.report.tables import text_table

    rows = [{"system": name, **m} for name, m in results]
    cols, heads = list(TABLE_COLUMNS), list(TABLE_HEADERS)
    for spec in results[0][1].get("thresholds", {}):
        key = f"thr@{spec}"
        for r in rows:
            r[key] = r["thresholds"][spec]["threshold"]
        cols.append(key)
        heads.append(f"threshold {spec}")
    return text_table(rows, cols, heads).rstrip("\n")


def list_entry(path: str, label: str | None) -> tuple[str, str]:
    """``(system, list)`` of a scores file for the by-list table: from a ``SYSTEM:LIST`` label,
    else from its sidecar (mode [+ head name] [+ norm]; the trial list's file name)."""
    import json
    from pathlib import Path

    from pipeline.core.errors import ConfigError
    from pipeline.score.files import sidecar_path

    if label is not None:
        if ":" not in label:
            raise ConfigError(f"--label {label!r} has no ':'", hint="with --by-list name files SYSTEM:LIST, "
                                                                    "e.g. --label ECAPA:Vox1-O")
        system, lst = label.rsplit(":", 1)
        return system, lst
    side = sidecar_path(path)
    info = {}
    if side.is_file():
        try:
            info = json.loads(side.read_text())
        except ValueError:
            info = {}
    trials = (info.get("trials") or {}).get("path")
    if not trials:
        return Path(path).name, "-"
    system = str(info.get("mode", Path(path).stem))
    if info.get("head"):
        system += f" {info['head'].get('name')}"
    if (info.get("norm") or {}).get("method", "none") != "none":
        system += f" {info['norm']['method']}"
    name = Path(trials).name
    for ext in (".gz", ".txt"):
        name = name[:-len(ext)] if name.endswith(ext) else name
    return system, name


def by_list_table(entries: Sequence[tuple[str, str, dict]]) -> str:
    """Systems x trial lists, as papers print VoxCeleb1-O/E/H: a row per system, per list the
    EER (%) and minDCF (p=0.05) columns; ``-`` where a system lacks a list."""
    from pipeline.report.tables import text_table

    systems = list(dict.fromkeys(s for s, _, _ in entries))
    lists = list(dict.fromkeys(lst for _, lst, _ in entries))
    cell = {(s, lst): m for s, lst, m in entries}
    rows, cols, heads = [], ["system"], ["system"]
    for lst in lists:
        cols += [f"eer_percent|{lst}", f"min_dcf_p0.05|{lst}"]
        heads += [f"{lst} EER (%)", f"{lst} minDCF .05"]
    for s in systems:
        row = {"system": s}
        for lst in lists:
            m = cell.get((s, lst), {})
            row[f"eer_percent|{lst}"] = m.get("eer_percent")
            row[f"min_dcf_p0.05|{lst}"] = m.get("min_dcf_p0.05")
        rows.append(row)
    return text_table(rows, cols, heads).rstrip("\n")
