"""Self-contained review pages (``report.html``): tables and pictures in one file, nothing fetched.

Pictures are embedded as base64 data (PNG as drawn; large or wider than :data:`MAX_WIDTH` pixels as a
JPEG of at most that width), style and a small table sorter inline, so the page opens from
any folder, offline, and can be mailed. :func:`write_report` builds a page from sections;
:func:`prediction_report` (``landmark-predict --report``) and :func:`evaluation_report`
(``landmark-evaluate report=true``) are the two pages the tools write.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment
from PIL import Image

from landmark_lit.utils import atomic_write_text

log = logging.getLogger(__name__)

MAX_WIDTH = 1000  # pixels: wider pictures are embedded as a downscaled JPEG
MAX_PNG_BYTES = 250_000  # larger PNGs (photographic content: X-rays, slices) are embedded as JPEG

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th.sortable { cursor: pointer; background: #eef; }
tr.flagged td { background: #ffe3c2; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 640px; border: 1px solid #ccc; }
.missing { color: #a00; font-style: italic; }
</style></head>
<body>
<h1>{{ title }}</h1>
{% for s in sections %}<section id="section-{{ loop.index }}">
<h2>{{ s.heading }}</h2>
{% if s.text %}<p>{{ s.text }}</p>{% endif %}
{% for t in s.tables %}<table class="{{ 'sortable' if t.sortable }}" data-caption="{{ t.caption }}">
<caption>{{ t.caption }}</caption>
<thead><tr>{% for c in t.columns %}<th{% if t.sortable %} class="sortable"{% endif %}>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr{% if row.flagged %} class="flagged"{% endif %}>{% for cell in row.cells %}<td data-value="{{ cell.value }}">{{ cell.text }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% endfor %}{% for im in s.images %}<figure>{% if im.data %}<img src="data:{{ im.mime }};base64,{{ im.data }}" alt="{{ im.caption }}">{% else %}<p class="missing">picture missing: {{ im.name }}</p>{% endif %}<figcaption>{{ im.caption }}</figcaption></figure>
{% endfor %}</section>
{% endfor %}
<script>
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var up = th.dataset.order !== "asc";
      table.querySelectorAll("th").forEach(function (h) { h.dataset.order = ""; h.textContent = h.textContent.replace(/ [\\u25b2\\u25bc]$/, ""); });
      th.dataset.order = up ? "asc" : "desc";
      th.textContent += up ? " \\u25b2" : " \\u25bc";
      var body = table.tBodies[0], rows = Array.from(body.rows);
      function key(r) { var v = r.cells[col].dataset.value; var n = parseFloat(v); return isNaN(n) ? v : n; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), c;
        if (typeof x === "number" && typeof y === "number") c = x - y;
        else c = String(x).localeCompare(String(y));
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>
</body></html>
"""


def _cell(value: Any) -> dict[str, str]:
    """Display text and sort key of one table cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return {"text": "", "value": ""}
    if isinstance(value, bool):
        return {"text": "yes" if value else "no", "value": str(int(value))}
    if isinstance(value, int):
        return {"text": str(value), "value": str(value)}
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
        return {"text": text, "value": repr(float(value))}
    return {"text": str(value), "value": str(value)}


def _image(spec: dict[str, Any]) -> dict[str, str]:
    path = Path(spec["path"]) if spec.get("path") else None
    if path is None or not path.is_file():
        name = path.name if path is not None else "(none)"
        log.warning("report: picture missing: %s", path)
        return {"caption": str(spec.get("caption", "")), "data": "", "name": name}
    raw, mime = path.read_bytes(), "image/png"
    try:
        with Image.open(path) as im:
            # a page of 150 cephalograms as drawn would weigh 100+ MB: large pictures as JPEG
            if im.width > MAX_WIDTH or len(raw) > MAX_PNG_BYTES:
                small = im.convert("RGB")
                small.thumbnail((MAX_WIDTH, MAX_WIDTH * im.height // im.width + 1))
                buffer = io.BytesIO()
                small.save(buffer, "JPEG", quality=85)
                raw, mime = buffer.getvalue(), "image/jpeg"
    except OSError as exc:
        log.warning("report: picture unreadable: %s (%s)", path, exc)
        return {"caption": str(spec.get("caption", "")), "data": "", "name": path.name}
    data = base64.b64encode(raw).decode("ascii")
    return {"caption": str(spec.get("caption", "")), "data": data, "mime": mime, "name": path.name}


def write_report(path: str | os.PathLike, title: str, sections: Sequence[dict[str, Any]]) -> Path:
    """One self-contained HTML page (written atomically). Each section: ``heading``, optional ``text``,
    ``tables`` (``caption``, ``columns``, ``rows``, optional ``sortable`` (default True) and ``highlight``,
    one bool per row) and ``images`` (``caption``, ``path`` of a PNG, embedded; a missing file shows a
    'picture missing' note)."""
    built = []
    for s in sections:
        tables = []
        for t in s.get("tables") or []:
            marks = list(t.get("highlight") or [False] * len(t["rows"]))
            rows = [
                {"cells": [_cell(v) for v in r], "flagged": bool(m)}
                for r, m in zip(t["rows"], marks, strict=True)
            ]
            tables.append({"caption": t.get("caption", ""), "columns": list(t["columns"]), "rows": rows,
                           "sortable": t.get("sortable", True)})  # fmt: skip
        built.append({"heading": s["heading"], "text": s.get("text"), "tables": tables,
                      "images": [_image(i) for i in s.get("images") or []]})  # fmt: skip
    html = Environment(autoescape=True).from_string(_TEMPLATE).render(title=title, sections=built)
    path = Path(path)
    atomic_write_text(path, html)
    return path


def _position(world: Sequence[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in world)


def prediction_report(
    path: str | os.PathLike, cases: Sequence[dict[str, Any]], title: str = "landmark_lit predictions"
) -> Path:
    """The review page of ``landmark-predict``: cases (``case``, ``picture``, ``landmarks``: ``name``,
    ``confidence``, ``flagged``, ``radius_mm``, ``world``) sorted by their lowest confidence, a summary
    table first, then each case's picture and landmarks, flagged ones first."""

    def lowest(c: dict[str, Any]) -> float:
        return min((lm["confidence"] for lm in c["landmarks"]), default=1.0)

    ordered = sorted(cases, key=lowest)
    summary = {
        "caption": "Cases, least confident first (click a column to sort)",
        "columns": ["case", "lowest confidence", "landmarks flagged"],
        "rows": [[c["case"], lowest(c), sum(bool(lm["flagged"]) for lm in c["landmarks"])] for c in ordered],
    }
    flagged = sum(r[2] for r in summary["rows"])
    n = sum(len(c["landmarks"]) for c in ordered)
    sections = [{"heading": "Summary", "text": f"{len(ordered)} images, {flagged} of {n} landmarks flagged "
                 "(confidence below the model's threshold): check those first.", "tables": [summary]}]  # fmt: skip
    for c in ordered:
        lms = sorted(c["landmarks"], key=lambda lm: (not lm["flagged"], lm["confidence"]))
        table = {
            "caption": f"{c['case']}: landmarks, flagged first",
            "columns": ["landmark", "confidence", "flagged", "radius (mm)", "position (mm)"],
            "rows": [
                [
                    lm["name"],
                    lm["confidence"],
                    bool(lm["flagged"]),
                    lm.get("radius_mm"),
                    _position(lm["world"]),
                ]
                for lm in lms
            ],  # fmt: skip
            "highlight": [bool(lm["flagged"]) for lm in lms],
        }
        images = [{"caption": c["case"], "path": c.get("picture")}]
        sections.append({"heading": c["case"], "tables": [table], "images": images})
    return write_report(path, title, sections)


def evaluation_report(
    path: str | os.PathLike,
    summary_tables: Sequence[dict[str, Any]],
    images: Sequence[dict[str, Any]],
    title: str = "landmark_lit evaluation",
) -> Path:
    """The page of ``landmark-evaluate``: its tables, then its figures (SDR curve, confidence curve, worst
    cases)."""
    return write_report(
        path,
        title,
        [
            {"heading": "Summary", "tables": list(summary_tables)},
            {"heading": "Figures", "images": list(images)},
        ],
    )
