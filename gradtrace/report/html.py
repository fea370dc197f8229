"""Building blocks of self-contained HTML reports: no external files, every
text escaped (training data is untrusted and may carry markup). Plots come
from :mod:`gradtrace.report.figures` (plotly, its JavaScript inlined once per
page); images are inline PNGs."""

from __future__ import annotations

import base64
import html
import struct
import zlib
from typing import Any, Iterable, Sequence

import numpy as np

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}.note{color:#555;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.5rem}.card{border:1px solid #ddd;padding:.3rem;font-size:.8rem;width:120px}
.flipped{background:#fff0f0}img.pixels{image-rendering:pixelated}.plot{min-height:200px}.pos{color:#0a6}.neg{color:#c33}code{background:#f5f5f5;padding:0 .2rem}
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str, figures: bool = False) -> str:
    """A whole HTML page. ``figures``: the body holds plotly figures
    (:func:`gradtrace.report.figures.embed`); plotly's JavaScript is then
    inlined once, so the page works offline."""
    scripts = ""
    if figures:
        from .figures import plotly_scripts

        scripts = plotly_scripts()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>\n{body}\n{scripts}</body></html>\n"
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


def grey_image_png(image: np.ndarray, scale: int = 8, vmax: float | None = None) -> str:
    """A small grey-scale image (dark = high value) as a ``data:image/png``
    URI, each pixel ``scale`` x ``scale``; for an ``<img src>``."""
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {img.shape}")
    top = vmax if vmax is not None else (float(img.max()) or 1.0)
    grey = (255 - 255 * np.clip(img / top, 0.0, 1.0)).astype(np.uint8)
    big = np.repeat(np.repeat(grey, scale, axis=0), scale, axis=1)
    raw = b"".join(b"\x00" + row.tobytes() for row in big)  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", big.shape[1], big.shape[0], 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_tag(image: np.ndarray, scale: int = 8, vmax: float | None = None, alt: str = "image") -> str:
    """An ``<img>`` of :func:`grey_image_png`."""
    return f'<img class="pixels" src="{grey_image_png(image, scale, vmax)}" alt="{esc(alt)}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
