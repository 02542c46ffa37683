"""report.html: content, escaping, self-containment, and a real render in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_pipeline import SAME_FRAME, ThresholdPredictor, studies  # noqa: E402, F401

from petflare.constants import PATTERNS  # noqa: E402
from petflare.inference.html import render_report_html, write_report_html  # noqa: E402
from petflare.inference.pipeline import PatternCall, run_pair  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def report(studies: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """A real pair report (threshold segmenter, rule-based pattern)."""
    result = run_pair(
        studies["baseline"], studies["followup"], ThresholdPredictor(), registration=SAME_FRAME
    )
    return result.report()


def tiny_png() -> bytes:
    """A small but non-trivial PNG, standing in for mip.png."""
    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.imshow(np.arange(100).reshape(10, 10), cmap="gray_r")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def test_page_shows_everything_a_reader_needs(report: dict[str, Any]) -> None:
    png = tiny_png()
    page = render_report_html(report, png)
    assert page.startswith("<!DOCTYPE html>")
    assert "Research use only; trained on synthetic phantoms unless stated otherwise" in page
    assert 'id="pattern">new_lesions' in page
    assert "rule-based classifier" in page and report["pattern"]["rule"] in page
    for criteria in ("PERCIST 1.0", "EORTC 1999", "Choi"):
        assert criteria in page
    # one lesion-table row per lesion per timepoint, with the matching status as a row class
    table = re.search(r'<table id="lesions">(.*?)</table>', page, re.S)
    assert table is not None
    rows = re.findall(r"<tr( class=\"(\w+)\")?><td>", table.group(1))
    assert sorted(cls for _, cls in rows) == ["new", "persisting", "persisting", "resolved"]
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert "suv_ge_4" in page  # the model's name
    assert "quantify_and_compare" in page  # per-stage timings


def test_page_is_self_contained_and_escaped(report: dict[str, Any]) -> None:
    hostile = dict(report, patient_id="<script>alert(1)</script>")
    page = render_report_html(hostile, tiny_png())
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for external in ("http://", "https://", "<link", 'src="/', "@import"):
        assert external not in page, external


def test_learned_head_probabilities_are_tabulated(report: dict[str, Any]) -> None:
    probs = dict(zip(PATTERNS, (0.1, 0.7, 0.15, 0.05), strict=True))
    evidence = {"explanations": ["5 of 6 lesions rose"], "temperature": 1.3}  # the head's form
    call = PatternCall("diffuse_flare", "learned_head", probs, None, evidence)
    page = render_report_html(dict(report, pattern=call.to_dict()), None)
    assert "learned pattern head" in page and "rule-based" not in page
    assert "p = 0.70" in page
    for label in PATTERNS:
        assert f"<td>{label}</td>" in page
    assert "<li>5 of 6 lesions rose</li>" in page


def test_single_scan_page_has_no_pattern(report: dict[str, Any]) -> None:
    single = {
        "notice": report["notice"],
        "pattern": None,
        "timepoints": {"scan": report["timepoints"]["followup"]},
        "timings_s": {"segment_scan": 0.1},
        "model": report["model"],
    }
    page = render_report_html(single, None)
    assert "Single scan: no change pattern" in page
    assert "PERCIST" not in page


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
def test_page_renders_in_headless_chromium(report: dict[str, Any], tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium)")
    from PIL import Image

    page = write_report_html(report, tmp_path / "report.html", mip_png=tiny_png())
    shot = tmp_path / "screenshot.png"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2000, 1280)
    # not blank: text, tables and the yellow notice make many distinct, varied pixels
    assert pixels.std() > 10.0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    # the notice banner's yellow (#fff4ce) is on the page
    yellow = np.all(np.abs(pixels - np.array([255, 244, 206])) < 4, axis=-1)
    assert yellow.sum() > 1000


#: Any percentage printed on the page (``+12.5%``, ``-2487.7%``, ``1200 %``).
_PERCENT = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*%")


def assert_no_number_the_standard_would_not_produce(page: str) -> None:
    """No nan / inf and no percentage above 1000 % anywhere in the visible text."""
    text = re.sub(r"<[^>]+>", " ", re.sub(r"data:image/png;base64,[^\"]+", "", page))
    assert not re.search(r"\b(nan|inf|infinity)\b", text, re.I), re.findall(
        r".{40}\b(?:nan|inf)\b.{40}", text, re.I
    )
    too_big = [p for p in _PERCENT.findall(text) if abs(float(p)) > 1000.0]
    assert not too_big, too_big


def test_page_shows_no_nan_inf_or_huge_percentage(report: dict[str, Any]) -> None:
    assert_no_number_the_standard_would_not_produce(render_report_html(report, tiny_png()))
    # A report as an older version wrote it (the issue-35 PF0002 case) or with non-finite
    # numbers from a hand-made JSON: the page still prints none of them.
    bad = dict(report)
    bad["choi"] = dict(report["choi"], density_change_pct=-2487.7, density_assessable=True)
    bad["percist"] = dict(report["percist"], change_pct=2400.0, tlg_change_pct=float("nan"))
    bad["eortc"] = dict(report["eortc"], change_pct=float("inf"), baseline_suv_max=float("nan"))
    page = render_report_html(bad, None)
    assert_no_number_the_standard_would_not_produce(page)
    assert "x25.0" in page  # the +2400% rise as a fold change


def test_criteria_show_inputs_normalisation_and_not_assessable_reasons(
    report: dict[str, Any],
) -> None:
    page = render_report_html(report, None)
    for text in (
        "normalisation",
        "measurability threshold",
        "uptake times",
        "target lesions (baseline -&gt; follow-up)",
        "CT contrast (ct_contrast)",
        "driven by",
    ):
        assert text in page, text
    ne = dict(
        report,
        percist=dict(
            report["percist"],
            category="NE",
            not_assessable_reason="no measurable lesion at baseline",
            measurability_threshold=3.4,
            measurable_baseline=False,
        ),
        choi=dict(
            report["choi"],
            density_assessable=False,
            density_reason="density not assessable: baseline mean -34 HU of the target lesions",
            density_change_pct=None,
            category_basis="size only",
        ),
        criteria_evidence=["PERCIST PMD while the pattern is controlled: lesion 3"],
    )
    page = render_report_html(ne, None)
    assert "NE (not assessable: no measurable lesion at baseline)" in page
    assert "1.5 x liver mean + 2 SD = 3.40; baseline hottest not above it" in page
    assert "density not assessable: baseline mean -34 HU" in page and "size only" in page
    assert '<ul id="criteria-evidence"><li>PERCIST PMD while the pattern is controlled' in page
