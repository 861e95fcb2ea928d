"""Review pages in detail (no browser): the file holds everything, cells, highlights, notes, order, escaping."""

from __future__ import annotations

import base64
import logging
import os
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from landmark_lit.evaluation.html import evaluation_report, prediction_report, write_report  # noqa: E402

HOSTILE = '<script>alert("case")</script>'
HOSTILE_LANDMARK = '"><img src=x onerror=alert(1)>'


def _png(path, value: float = 0.5):
    """A small real PNG (200 x 200 pixels, embedded as drawn)."""
    fig = plt.figure(figsize=(2, 2), dpi=100)
    fig.add_subplot().plot([0, 1], [0, value])
    fig.savefig(path)
    plt.close(fig)
    return path


def _lm(name, confidence, flagged=False, radius=1.0, world=(1.0, 2.0, 3.0)):
    return {
        "name": name,
        "confidence": confidence,
        "flagged": flagged,
        "radius_mm": radius,
        "world": list(world),
    }


def _cases(tmp_path):
    return [
        {"case": "sure", "picture": _png(tmp_path / "sure.png"),
         "landmarks": [_lm("a", 0.99), _lm("b", 0.95)]},
        {"case": "doubtful", "picture": _png(tmp_path / "doubtful.png", 0.2),
         "landmarks": [_lm("a", 0.97), _lm("b", 0.30, True, 4.5), _lm("c", 0.60), _lm("d", 0.10, True, None),
                       _lm("e", 0.80)]},
        {"case": HOSTILE, "picture": tmp_path / "never_drawn.png",
         "landmarks": [_lm(HOSTILE_LANDMARK, 0.90, radius=None, world=(0.5, -1.25))]},
    ]  # fmt: skip


class _Page(HTMLParser):
    """The parts of a page the tests read: headings, tables (cells' text, data-value, row class), images,
    script tags and missing-picture notes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.headings, self.tables, self.images, self.scripts, self.notes = [], [], [], 0, []
        self._text = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"class": a.get("class") or "", "caption": "", "columns": [], "rows": []})
        elif tag == "tr" and self.tables:
            self._row = {"class": a.get("class") or "", "cells": [], "values": []}
        elif tag == "td":
            self._row["values"].append(a.get("data-value"))
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts += 1
        elif tag == "p" and "missing" in (a.get("class") or ""):
            self.notes.append("")
        if tag in ("h2", "caption", "th", "td", "p"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        text = "".join(self._text or [])
        if tag == "h2":
            self.headings.append(text)
        elif tag == "caption":
            self.tables[-1]["caption"] = text
        elif tag == "th":
            self.tables[-1]["columns"].append(text)
        elif tag == "td":
            self._row["cells"].append(text)
        elif tag == "tr" and self.tables and self._row["cells"]:
            self.tables[-1]["rows"].append(self._row)
        elif tag == "p" and self.notes and self.notes[-1] == "":
            self.notes[-1] = text
        if tag in ("h2", "caption", "th", "td", "p"):
            self._text = None


def test_page_is_one_file_with_nothing_fetched_and_pictures_embedded_byte_for_byte(tmp_path):
    pictures = [_png(tmp_path / "one.png", 0.1), _png(tmp_path / "two.png", 0.9)]
    out = evaluation_report(
        tmp_path / "out" / "report.html",
        [{"caption": "t", "columns": ["x"], "rows": [[1.0]]}],
        [{"caption": p.stem, "path": p} for p in pictures],
    )
    assert out == tmp_path / "out" / "report.html"
    assert sorted(os.listdir(out.parent)) == ["report.html"]  # one file, no temporary left behind
    text = out.read_text(encoding="utf-8")
    for bad in ("http://", "https://", "<link", "@import", "url("):
        assert bad not in text
    page = _Page(text)
    assert page.headings == ["Summary", "Figures"]
    srcs = [im["src"] for im in page.images]
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert [base64.b64decode(s.split(",", 1)[1]) for s in srcs] == [p.read_bytes() for p in pictures]
    # written again: replaced in place, still the only file
    evaluation_report(out, [], [])
    assert sorted(os.listdir(out.parent)) == ["report.html"] and _Page(out.read_text()).images == []


def test_cells_highlight_and_sortable_flag(tmp_path):
    table = {"caption": "c <1>", "columns": ["name", "value", "n", "ok"],
             "rows": [["<b>x</b>", 0.123456, 3, True], ["y", None, None, False], ["z", float("nan"), 12, None]],
             "highlight": [False, True, False]}  # fmt: skip
    fixed = {"caption": "fixed", "columns": ["a"], "rows": [["q"]], "sortable": False}
    page = _Page(
        write_report(tmp_path / "r.html", "T & t", [{"heading": "h", "tables": [table, fixed]}]).read_text()
    )
    sortable, plain = page.tables
    assert "sortable" in sortable["class"] and "sortable" not in plain["class"]
    assert sortable["caption"] == "c <1>" and sortable["columns"] == ["name", "value", "n", "ok"]
    cells = [r["cells"] for r in sortable["rows"]]
    assert cells == [["<b>x</b>", "0.123", "3", "yes"], ["y", "", "", "no"], ["z", "", "12", ""]]
    assert [r["class"] for r in sortable["rows"]] == ["", "flagged", ""]
    assert float(sortable["rows"][0]["values"][1]) == pytest.approx(0.123456)  # full value kept for sorting


def test_missing_or_unreadable_picture_is_a_note_and_a_warning(tmp_path, caplog):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    images = [{"caption": "gone", "path": tmp_path / "gone.png"}, {"caption": "broken", "path": tmp_path / "broken.png"},
              {"caption": "here", "path": _png(tmp_path / "here.png")}]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="landmark_lit.evaluation.html"):
        page = _Page(write_report(tmp_path / "r.html", "t", [{"heading": "h", "images": images}]).read_text())
    assert page.notes == ["picture missing: gone.png", "picture missing: broken.png"]
    assert len(page.images) == 1 and page.images[0]["src"].startswith("data:image/png;base64,")
    assert "gone.png" in caplog.text and "broken.png" in caplog.text


def test_prediction_report_orders_cases_and_landmarks(tmp_path):
    page = _Page(prediction_report(tmp_path / "report.html", _cases(tmp_path)).read_text())
    assert page.headings == ["Summary", "doubtful", HOSTILE, "sure"]  # lowest confidence first
    summary = page.tables[0]
    assert summary["columns"] == ["case", "lowest confidence", "landmarks flagged"]
    assert "sortable" in summary["class"]
    assert [r["cells"] for r in summary["rows"]] == [["doubtful", "0.100", "2"], [HOSTILE, "0.900", "0"],
                                                     ["sure", "0.950", "0"]]  # fmt: skip
    doubtful = page.tables[1]
    assert doubtful["columns"] == ["landmark", "confidence", "flagged", "radius (mm)", "position (mm)"]
    # flagged first, then by confidence ascending; flagged rows highlighted
    assert [r["cells"][:3] for r in doubtful["rows"]] == [
        ["d", "0.100", "yes"], ["b", "0.300", "yes"], ["c", "0.600", "no"], ["e", "0.800", "no"], ["a", "0.970", "no"]]  # fmt: skip
    assert [r["class"] for r in doubtful["rows"]] == ["flagged", "flagged", "", "", ""]
    assert [r["cells"][3] for r in doubtful["rows"]][:2] == ["", "4.500"]  # radius None -> ''
    assert doubtful["rows"][0]["cells"][4] == "1.0, 2.0, 3.0"
    hostile = page.tables[2]
    assert hostile["rows"][0]["cells"] == [HOSTILE_LANDMARK, "0.900", "no", "", "0.5, -1.2"]  # 2D: "x, y"
    assert page.notes == ["picture missing: never_drawn.png"]


def test_text_is_escaped(tmp_path):
    sections = [{"heading": HOSTILE, "text": f"a < b & {HOSTILE}",
                 "tables": [{"caption": HOSTILE, "columns": [HOSTILE], "rows": [[HOSTILE_LANDMARK]]}]}]  # fmt: skip
    text = write_report(tmp_path / "r.html", HOSTILE, sections).read_text()
    page = _Page(text)
    assert page.scripts == 1  # the table sorter, nothing else
    assert page.images == []  # the landmark name did not become an <img>
    assert page.headings == [HOSTILE] and page.tables[0]["rows"][0]["cells"] == [HOSTILE_LANDMARK]
    assert "a &lt; b &amp; &lt;script&gt;" in text
    pred = _Page(prediction_report(tmp_path / "p.html", _cases(tmp_path)).read_text())
    assert pred.scripts == 1 and all(im["src"].startswith("data:") for im in pred.images)
