"""``report.html``: one self-contained page per reconstruction (images embedded as base64 PNG, inline
CSS, no scripts, nothing fetched), so it can be mailed or opened offline.

Sections: a table of facts (model, photo, face, pose, errors), the images (photo, overlay, comparison,
energy curve, turntable, texture — whichever are given), the coefficients as a bar chart (inline SVG,
values in the tooltips) and the timings per stage.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from os import PathLike

import numpy as np

from morphable.io.atomic import atomic_write

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { padding: 3px 12px 3px 0; text-align: left; vertical-align: top; }
th { color: #666; font-weight: normal; }
figure { display: inline-block; margin: 0 18px 18px 0; vertical-align: top; }
figure img { max-width: 100%; max-height: 480px; border: 1px solid #ddd; background: white; }
figcaption { font-size: 13px; color: #555; }
svg { background: white; border: 1px solid #ddd; }
"""


def png_data_uri(image: np.ndarray) -> str:
    """``data:image/png;base64,...`` for an ``(H, W, 3)`` uint8 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=4)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def coefficient_chart(values: Sequence[float], *, width: int = 640, height: int = 120) -> str:
    """Inline SVG bar chart of coefficients (0 in the middle, ±3 at the edges; values in tooltips)."""
    v = np.asarray(values, dtype=np.float64)
    n = max(len(v), 1)
    bar = width / n
    limit = max(3.0, float(np.abs(v).max()) if len(v) else 3.0)
    mid = height / 2
    rects = []
    for i, x in enumerate(v):
        h = abs(x) / limit * (height / 2 - 4)
        y = mid - h if x >= 0 else mid
        rects.append(f'<rect x="{i * bar:.2f}" y="{y:.2f}" width="{max(bar - 1, 0.5):.2f}" height="{h:.2f}" '
                     f'fill="#3a6ea5"><title>{i}: {x:.4g}</title></rect>')
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            f'<line x1="0" y1="{mid}" x2="{width}" y2="{mid}" stroke="#aaa"/>{"".join(rects)}</svg>')


def report_html(*, title: str, facts: Mapping[str, str], images: Sequence[tuple[str, np.ndarray]],
                coefficients: Mapping[str, Sequence[float]], timings: Mapping[str, float]) -> str:
    """The report page as a string (see the module docstring)."""
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts.items())
    figures = "".join(f'<figure><img src="{png_data_uri(img)}" alt="{e(caption)}">'
                      f"<figcaption>{e(caption)} ({img.shape[1]} × {img.shape[0]})</figcaption></figure>"
                      for caption, img in images)
    charts = "".join(f"<h3>{e(name)} ({len(vals)})</h3>{coefficient_chart(vals)}"
                     for name, vals in coefficients.items() if len(vals))
    total = sum(timings.values())
    times = "".join(f"<tr><th>{e(k)}</th><td>{v:.2f} s</td></tr>" for k, v in timings.items())
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>"
            f"<table>{rows}</table><h2>Images</h2>{figures}<h2>Coefficients</h2>{charts}"
            f"<h2>Timings</h2><table>{times}<tr><th>total</th><td>{total:.2f} s</td></tr></table>"
            "</body></html>\n")


def write_report(path: str | PathLike, **kwargs) -> None:
    """Write :func:`report_html` to ``path`` atomically."""
    text = report_html(**kwargs)
    with atomic_write(path, "w") as f:
        f.write(text)
