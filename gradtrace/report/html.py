"""Building blocks of self-contained HTML reports: no scripts, no external
files, every text escaped (training data is untrusted and may carry markup)."""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

import numpy as np

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}.note{color:#555;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.5rem}.card{border:1px solid #ddd;padding:.3rem;font-size:.8rem;width:120px}
.flipped{background:#fff0f0}.pos{color:#0a6}.neg{color:#c33}code{background:#f5f5f5;padding:0 .2rem}
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped unless given as :class:`Raw`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            text = cell.html if isinstance(cell, Raw) else esc(_fmt(cell))
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Raw:
    """Markup made by this module (already safe), to place in a table cell."""

    def __init__(self, html_text: str):
        self.html = html_text


def grey_image_svg(image: np.ndarray, scale: int = 8, vmax: float | None = None) -> str:
    """A small grey-scale image as inline SVG (dark = high value)."""
    img = np.asarray(image, dtype=float)
    top = vmax if vmax is not None else (img.max() or 1.0)
    h, w = img.shape
    rects = []
    for r in range(h):
        for c in range(w):
            level = int(255 - 255 * min(max(img[r, c] / top, 0.0), 1.0))
            rects.append(f'<rect x="{c * scale}" y="{r * scale}" width="{scale}" height="{scale}" fill="rgb({level},{level},{level})"/>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * scale}" height="{h * scale}" role="img">{"".join(rects)}</svg>'


def bars_svg(values: Sequence[float], labels: Sequence[str] | None = None, width: int = 160, height: int = 48) -> str:
    """Signed bar chart (e.g. influence per checkpoint): green up, red down."""
    vals = [float(v) for v in values]
    top = max((abs(v) for v in vals), default=0.0) or 1.0
    n = max(len(vals), 1)
    bw = width / n
    mid = height / 2
    parts = [f'<line x1="0" y1="{mid}" x2="{width}" y2="{mid}" stroke="#999" stroke-width="0.5"/>']
    for i, v in enumerate(vals):
        h = abs(v) / top * (mid - 2)
        y = mid - h if v >= 0 else mid
        colour = "#0a6" if v >= 0 else "#c33"
        title = esc(f"{labels[i] if labels else i}: {v:.4g}")
        parts.append(f'<rect x="{i * bw + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{colour}"><title>{title}</title></rect>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
