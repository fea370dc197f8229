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


def heatmap_svg(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], cell: int = 28, label_width: int = 220) -> str:
    """Signed heatmap (rows x cols): green positive, red negative, white 0,
    scaled by the largest magnitude; each cell's value in its tooltip."""
    vals = np.asarray(values, dtype=float)
    top = float(np.nanmax(np.abs(vals))) if vals.size else 0.0
    top = top or 1.0
    n_r, n_c = vals.shape
    width, height = label_width + n_c * cell, 18 + n_r * cell
    parts = []
    for j, c in enumerate(cols):
        parts.append(f'<text x="{label_width + j * cell + cell / 2:.1f}" y="12" font-size="9" text-anchor="middle">{esc(j + 1)}'
                     f'<title>{esc(c)}</title></text>')
    for i, r in enumerate(rows):
        y = 18 + i * cell
        parts.append(f'<text x="{label_width - 4}" y="{y + cell / 2 + 3:.1f}" font-size="10" text-anchor="end">{esc(_clip(r, 36))}'
                     f'<title>{esc(r)}</title></text>')
        for j in range(n_c):
            v = vals[i, j]
            a = 0.0 if not np.isfinite(v) else min(abs(v) / top, 1.0)
            level = int(255 - 200 * a)
            colour = f"rgb({level},255,{level})" if v >= 0 else f"rgb(255,{level},{level})"
            parts.append(f'<rect x="{label_width + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{colour}">'
                         f'<title>{esc(f"{r} | {cols[j]}: {v:.4g}")}</title></rect>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def scatter_svg(x: Sequence[float], y: Sequence[float], labels: Sequence[str] | None = None, size: int = 220,
                x_name: str = "x", y_name: str = "y") -> str:
    """A scatter plot of ``y`` against ``x`` with the diagonal; points' labels in tooltips."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    lo = float(min(xs.min(initial=0.0), ys.min(initial=0.0)))
    hi = float(max(xs.max(initial=0.0), ys.max(initial=0.0)))
    span = (hi - lo) or 1.0
    pad = 6

    def px(v: float) -> float:
        return pad + (v - lo) / span * (size - 2 * pad)

    parts = [f'<line x1="{px(lo):.1f}" y1="{size - px(lo):.1f}" x2="{px(hi):.1f}" y2="{size - px(hi):.1f}" stroke="#bbb" stroke-width="0.7"/>',
             f'<text x="{size / 2}" y="{size + 12}" font-size="10" text-anchor="middle">{esc(x_name)}</text>',
             f'<text x="2" y="10" font-size="10">{esc(y_name)}</text>']
    for i, (a, b) in enumerate(zip(xs, ys)):
        title = esc(f"{labels[i] if labels else i}: {a:.3g}, {b:.3g}")
        parts.append(f'<circle cx="{px(a):.1f}" cy="{size - px(b):.1f}" r="1.8" fill="#36c" fill-opacity="0.6"><title>{title}</title></circle>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 16}" role="img">{"".join(parts)}</svg>'


def _clip(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else "…" + text[-(n - 1):]
