"""report.html: self-contained (every image embedded, nothing fetched), every image decodes to what was given;
a headless-Chromium screenshot shows the page where that browser is installed."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from morphable.viz.report import coefficient_chart, write_report


def _page(tmp_path):
    rng = np.random.default_rng(0)
    images = [("photo", rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)),
              ("overlay <b>", np.full((20, 50, 3), 200, np.uint8))]
    kwargs = dict(title="morphable: test", facts={"model": "sfm", "RMS landmark error": "1.23 px"}, images=images,
                  coefficients={"identity": [0.5, -1.0, 2.0], "expression": []}, timings={"fit": 1.5, "texture": 0.25})
    write_report(tmp_path / "report.html", **kwargs)
    return (tmp_path / "report.html").read_text(), images


def test_report_is_self_contained(tmp_path):
    html, images = _page(tmp_path)
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    for (caption, image), src in zip(images, sources):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
        np.testing.assert_array_equal(decoded, image)
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html and "@import" not in html
    assert "overlay &lt;b&gt;" in html  # captions escaped
    assert "1.23 px" in html and "1.75 s" in html  # facts and the total time
    assert html.count("<rect") == 3 and "expression (0)" not in html


def test_coefficient_chart_bars_follow_the_values():
    svg = coefficient_chart([1.5, -3.0, 0.0], width=300, height=100)
    heights = [float(h) for h in re.findall(r'height="([\d.]+)" fill', svg)]
    ys = [float(y) for y in re.findall(r'<rect x="[\d.]+" y="([\d.]+)"', svg)]
    assert heights == pytest.approx([23.0, 46.0, 0.0])  # |v| / 3 of the half height less 4 px
    assert ys[0] < 50 and ys[1] == 50  # positive bars rise from the middle, negative ones hang below


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="headless Chromium not installed")
def test_report_screenshot_in_chromium(tmp_path):
    """The page renders in a browser: the screenshot holds the embedded photo's pixels somewhere."""
    _page(tmp_path)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=800,900", (tmp_path / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (900, 800)
    grey = (np.abs(image - 200).sum(-1) == 0)  # the 50 x 20 grey "overlay" image, drawn 1:1
    assert grey.sum() >= 50 * 20 * 0.9
    assert (image.std(axis=(0, 1)) > 10).all()  # not a blank page
