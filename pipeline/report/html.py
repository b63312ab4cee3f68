"""A self-contained ``index.html`` report: headings, paragraphs, tables and PNG figures.

No external CSS/JS; figures are linked by paths relative to the report's folder, so
the folder can be copied or zipped as a whole. All text is HTML-escaped.

A report is a title plus a list of *blocks*, each a dict with one of the keys:

* ``{"h2": text}`` / ``{"h3": text}``: headings;
* ``{"p": text}``: a paragraph (``{"p": text, "note": True}`` renders it muted);
* ``{"table": rows, "columns": [...], "headers": optional [...], "caption": optional}``:
  numbers formatted by ``pipeline.report.tables.fmt`` (``"fmt_as": column`` formats every column
  but the first like ``column``, for pivoted tables);
* ``{"img": relative path, "caption": text, "width": optional px}``;
* ``{"pre": text}``: preformatted text (e.g. a command line).
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Sequence

from pipeline.core.fsio import atomic_write_text
from pipeline.report.tables import fmt

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #eee;padding-bottom:.2em}
h3{font-size:1.1em;margin-top:1.3em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;color:#555;padding-bottom:.3em}
figure{margin:1em 0 1.6em}
figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.92em}
p.note{color:#666;font-size:.92em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
nav a{margin-right:1em}
"""


def _table(block: dict) -> str:
    rows: Sequence[dict] = block["table"]
    cols: Sequence[str] = block["columns"]
    headers = block.get("headers") or cols
    out = ["<table>"]
    if block.get("caption"):
        out.append(f"<caption>{html.escape(block['caption'])}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr>")
    fmt_as = block.get("fmt_as")
    for r in rows:
        cells = []
        for i, c in enumerate(cols):
            v = r.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cls = ' class="num"' if num else ""
            cells.append(f"<td{cls}>{html.escape(fmt(v, c if (fmt_as is None or i == 0) else fmt_as))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render(title: str, blocks: Sequence[dict], *, subtitle: str | None = None) -> str:
    """The HTML text of a report (see the module docstring for the blocks)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        body.append(f"<p class=\"note\">{html.escape(subtitle)}</p>")
    heads = [b["h2"] for b in blocks if "h2" in b]
    if len(heads) > 2:
        body.append("<nav>" + "".join(f"<a href=\"#s{i}\">{html.escape(h)}</a>" for i, h in enumerate(heads))
                    + "</nav>")
    n_h2 = 0
    for b in blocks:
        if "h2" in b:
            body.append(f"<h2 id=\"s{n_h2}\">{html.escape(b['h2'])}</h2>")
            n_h2 += 1
        elif "h3" in b:
            body.append(f"<h3>{html.escape(b['h3'])}</h3>")
        elif "p" in b:
            cls = " class=\"note\"" if b.get("note") else ""
            body.append(f"<p{cls}>{html.escape(b['p'])}</p>")
        elif "pre" in b:
            body.append(f"<pre>{html.escape(b['pre'])}</pre>")
        elif "table" in b:
            body.append(_table(b))
        elif "img" in b:
            width = f" width=\"{int(b['width'])}\"" if b.get("width") else ""
            cap = html.escape(b.get("caption", ""))
            src = html.escape(str(b["img"]), quote=True)
            body.append(f"<figure><a href=\"{src}\"><img src=\"{src}\" alt=\"{cap}\"{width}></a>"
                        f"<figcaption>{cap}</figcaption></figure>")
        else:
            raise ValueError(f"unknown report block {sorted(b)}")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body.append(f"<p class=\"note\">Written by avfuse on {stamp}.</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(path: str | Path, title: str, blocks: Sequence[dict], *, subtitle: str | None = None) -> str:
    """Write ``render(...)`` to ``path`` atomically; image paths must be relative to its folder."""
    path = Path(path)
    for b in blocks:
        if "img" in b and (Path(str(b["img"])).is_absolute() or not (path.parent / str(b["img"])).is_file()):
            raise ValueError(f"report image {b['img']} must be an existing file relative to {path.parent}")
    atomic_write_text(path, render(title, blocks, subtitle=subtitle))
    return str(path)
