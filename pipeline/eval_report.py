"""What ``avfuse evaluate`` adds to EER/minDCF: LLR metrics, thresholds, the several-files table.

Kept apart from ``score_cli`` so that module's edit stays small: ``extend_metrics`` adds
``act_dcf_p0.01``, ``act_dcf_p0.05``, ``cllr``, ``min_cllr`` (``pipeline.llr_metrics``) and
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
    from pipeline.llr_metrics import parse_operating_point
    return [(s.strip(), *parse_operating_point(s)) for s in specs]


def extend_metrics(m: dict, scores, labels, curves, thresholds: Sequence[tuple[str, str, float]] = ()) -> dict:
    """``m`` plus the LLR metrics and, if asked, ``m["thresholds"][spec] = {threshold, far, frr}``."""
    from pipeline.llr_metrics import compute_llr_metrics, threshold_from_curves

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
    from pipeline.tables import text_table

    rows = [{"system": name, **m} for name, m in results]
    cols, heads = list(TABLE_COLUMNS), list(TABLE_HEADERS)
    for spec in results[0][1].get("thresholds", {}):
        key = f"thr@{spec}"
        for r in rows:
            r[key] = r["thresholds"][spec]["threshold"]
        cols.append(key)
        heads.append(f"threshold {spec}")
    return text_table(rows, cols, heads).rstrip("\n")
