"""Result tables as Markdown, CSV, JSON and fixed-width terminal text.

A *table* is a list of row dicts (JSON-able values) plus the ordered list of
columns to show. Numbers are formatted by column: ``eer_percent`` with 2
decimals, ``min_dcf_*`` with 4, other floats with 4 significant digits, ints as
is; ``None``/NaN show as ``-``. CSV and JSON keep full precision (CSV: ``repr``
of floats, so a round trip is exact).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from pipeline.core.fsio import atomic_write_json, atomic_write_text

METRIC_KEYS = ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05")
METRIC_LABELS = {"eer_percent": "EER (%)", "min_dcf_p0.01": "minDCF (p=0.01)",
                 "min_dcf_p0.05": "minDCF (p=0.05)"}


def fmt(value: Any, column: str = "") -> str:
    """Display text of one cell (see the module docstring)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if column.startswith("eer") or column.endswith("_deg") or column.endswith("_percent"):
            return f"{value:.2f}"
        if column.startswith("min_dcf") or column.startswith("silhouette") or column.endswith("share"):
            return f"{value:.4f}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
                   fmt_as: str | None = None) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned). ``fmt_as``: format every
    column but the first like that column name (for pivoted tables of one metric)."""
    headers = list(headers or columns)
    cells = [[fmt(r.get(c), c if (fmt_as is None or i == 0) else fmt_as) for i, c in enumerate(columns)]
             for r in rows]
    numeric = [all(_is_num(r.get(c)) for r in rows) and bool(rows) for c in columns]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
               fmt_as: str | None = None) -> str:
    """Fixed-width columns for the terminal (first column left-aligned, the rest right)."""
    headers = list(headers or columns)
    cells = [[fmt(r.get(c), c if (fmt_as is None or i == 0) else fmt_as) for i, c in enumerate(columns)]
             for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(items):
        return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(items, widths)))
    out = [line(headers), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]
    return "\n".join(out) + "\n"


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with a header line; floats as ``repr`` (exact), None as empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c])
                    for c in columns])
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a CSV written by ``csv_text`` (numbers parsed back; empty -> None)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def pivot(rows: Sequence[dict], index: str, columns: str, value: str,
          index_order: Sequence | None = None, column_order: Sequence | None = None,
          ) -> tuple[list[dict], list[str]]:
    """Long rows -> one row per ``index`` value with one column per ``columns`` value.

    Returns ``(wide rows, column names)``; the first column is ``index``.
    """
    idx = list(index_order) if index_order is not None else _unique(r[index] for r in rows)
    cols = list(column_order) if column_order is not None else _unique(r[columns] for r in rows)
    table = {(r[index], r[columns]): r.get(value) for r in rows}
    wide = [{index: i, **{str(c): table.get((i, c)) for c in cols}} for i in idx]
    return wide, [index] + [str(c) for c in cols]


def write_table(out_dir: str | Path, stem: str, rows: Sequence[dict], columns: Sequence[str], *,
                markdown: str | None = None, meta: dict | None = None) -> dict[str, str]:
    """Write ``stem.md`` (``markdown`` or a plain table), ``stem.csv`` and ``stem.json``.

    ``stem.json`` = ``{"columns": [...], "rows": [...], **meta}``. Returns the paths by format.
    """
    out = Path(out_dir)
    md = markdown if markdown is not None else markdown_table(rows, columns)
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["csv"], csv_text(rows, columns))
    atomic_write_json(paths["json"], {"columns": list(columns), "rows": [_clean(r) for r in rows],
                                      **(meta or {})})
    return {k: str(v) for k, v in paths.items()}


def to_json_text(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n"


# ------------------------------------------------------------------ helpers
def _is_num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _unique(items) -> list:
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def _parse(v: str) -> Any:
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def _clean(obj: Any) -> Any:
    """NaN -> None (JSON has no NaN); numpy scalars -> Python; recursive."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def safe_name(label: str) -> str:
    """A file-name-safe form of a system label (``dca[temperature=0.05]`` -> ``dca_temperature=0.05``)."""
    return re.sub(r"_+$", "", re.sub(r"[^A-Za-z0-9_.=-]+", "_", label))
