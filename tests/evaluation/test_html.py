"""Review pages: self-contained files, the order a reviewer needs, escaped text, and, in a real headless
Chromium (the Debian package driven by Playwright), every image loads, tables sort, no console errors."""

from __future__ import annotations

import base64
import os
import re
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from landmark_lit.evaluation.html import evaluation_report, prediction_report, write_report  # noqa: E402


def _png(path, value: float = 0.5):
    fig = plt.figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, value])
    fig.savefig(path)
    plt.close(fig)
    return path


def _cases(tmp_path):
    return [
        {"case": "sure", "picture": _png(tmp_path / "sure.png"), "landmarks": [
            {"name": "a", "confidence": 0.99, "flagged": False, "radius_mm": 1.0, "world": [1.0, 2.0]},
            {"name": "b", "confidence": 0.95, "flagged": False, "radius_mm": 1.2, "world": [3.0, 4.0]}]},
        {"case": "doubtful", "picture": _png(tmp_path / "doubtful.png", 0.2), "landmarks": [
            {"name": "a", "confidence": 0.97, "flagged": False, "radius_mm": 1.1, "world": [1.0, 2.0]},
            {"name": "b", "confidence": 0.30, "flagged": True, "radius_mm": 4.5, "world": [3.0, 4.0]}]},
        {"case": "<script>alert(1)</script>", "picture": None, "landmarks": [
            {"name": "a", "confidence": 0.90, "flagged": False, "radius_mm": None, "world": [0.0, 0.0]},
            {"name": "b", "confidence": 0.80, "flagged": False, "radius_mm": None, "world": [0.0, 0.0]}]},
    ]  # fmt: skip


def test_prediction_page_is_self_contained_and_ordered(tmp_path):
    page = prediction_report(tmp_path / "report.html", _cases(tmp_path)).read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched
    # every picture embedded byte for byte
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(
        (tmp_path / f).read_bytes() for f in ("sure.png", "doubtful.png")
    )
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == ["Summary", "doubtful", "&lt;script&gt;alert(1)&lt;/script&gt;", "sure"]
    assert "<script>alert" not in page and "picture missing: (none)" in page
    # within a case: flagged landmarks first, highlighted
    doubtful = page.split("<h2>doubtful</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr( class=\"flagged\")?><td data-value=\"(\w)\">", doubtful)
    assert rows == [(' class="flagged"', "b"), ("", "a")]
    assert "1 of 6 landmarks flagged" in page


def test_wide_pictures_are_embedded_downscaled(tmp_path):
    from PIL import Image

    Image.new("RGB", (3000, 1500), (200, 10, 10)).save(tmp_path / "wide.png")
    page = write_report(tmp_path / "r.html", "t", [{"heading": "h", "images": [
        {"caption": "wide", "path": tmp_path / "wide.png"}]}]).read_text()  # fmt: skip
    data = base64.b64decode(re.search(r'src="data:image/jpeg;base64,([^"]+)"', page).group(1))
    import io

    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (1000, 500)


def test_missing_picture_is_a_note_not_an_error(tmp_path):
    page = write_report(tmp_path / "r.html", "t", [{"heading": "h", "images": [
        {"caption": "gone", "path": tmp_path / "gone.png"}]}]).read_text()  # fmt: skip
    assert "picture missing: gone.png" in page and "<img" not in page


def _browser():
    """Playwright's sync API and the Debian chromium, or skip (fail when the CI requires the browser)."""
    required = os.environ.get("LANDMARK_LIT_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if required:
            pytest.fail("LANDMARK_LIT_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return sync_playwright, chromium


def test_pages_open_in_chromium_with_their_images_and_sorting_tables(tmp_path):
    sync_playwright, chromium = _browser()
    pred = prediction_report(tmp_path / "pred.html", _cases(tmp_path))
    table = {"caption": "errors", "columns": ["landmark", "MRE mm"],
             "rows": [["a", 2.5], ["b", 0.7], ["c", 11.0], ["d", 1.25]]}  # fmt: skip
    ev = evaluation_report(
        tmp_path / "eval.html", [table], [{"caption": "curve", "path": _png(tmp_path / "c.png")}]
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            for file, n_images in ((pred, 2), (ev, 1)):
                page = browser.new_page()
                errors = []
                page.on("console", lambda m, out=errors: out.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, out=errors: out.append(str(e)))
                page.goto(file.as_uri())
                page.wait_for_load_state("load")
                widths = page.eval_on_selector_all(
                    "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
                )
                assert len(widths) == n_images and all(w > 0 for w in widths)
                assert errors == []
                page.close()
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(ev.as_uri())
            header = page.locator("table.sortable th", has_text="MRE mm")

            def column() -> list[float]:
                return [
                    float(t)
                    for t in page.locator("table.sortable tbody tr td:nth-child(2)").all_inner_texts()
                ]

            assert column() == [2.5, 0.7, 11.0, 1.25]
            header.click()
            assert column() == sorted(column()) == [0.7, 1.25, 2.5, 11.0]
            assert "\u25b2" in header.inner_text()
            header.click()
            assert column() == [11.0, 2.5, 1.25, 0.7]
            assert errors == []  # sorting raised nothing
        finally:
            browser.close()
