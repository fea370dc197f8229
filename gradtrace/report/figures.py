"""Every plot of gradtrace, built with plotly: one function per figure, used by
the static HTML reports and by the explorer (``gradtrace serve``) alike.

Untrusted text (training texts, model outputs, ids, cluster labels) reaches a
figure only through :func:`plot_text`: plotly renders hover text, titles and
legends as a small HTML subset, so markup in the data is escaped first and
plotly shows it as literal characters.

A figure is placed on a page with :func:`embed`: a ``<div class="plot">``
whose ``data-figure`` attribute holds the figure's JSON (HTML-escaped, so no
text can close a tag or a script). :data:`BOOT_JS` draws every such div; a
static page inlines plotly's JavaScript and :data:`BOOT_JS` once
(:func:`plotly_scripts`), so reports work offline; the explorer serves both
as static files.
"""

from __future__ import annotations

import functools
import html
import math
from typing import Any, Mapping, Sequence

import numpy as np

COLOURS = ("#1f77b4", "#e66101", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
MODEL_COLOURS = {"A": "#1f77b4", "B": "#e66101"}
POS, NEG = "#0a6", "#c33"
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=10, t=36, b=40), font=dict(size=11))


def _go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:  # pragma: no cover - plotly is a core dependency of reports
        from ..errors import MissingDependencyError

        raise MissingDependencyError("plotly", "plots in reports and the explorer", "pip install 'gradtrace[explore]'") from None
    return go


def plot_text(value: Any, limit: int | None = 300) -> str:
    """``value`` as text plotly shows literally (its HTML subset escaped:
    ``&``, ``<`` and ``>``, so no tag can form; quotes stay as they are,
    since plotly would show ``&quot;`` as written), cut to ``limit``
    characters (None: whole)."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return html.escape(text, quote=False)


def _finite(values: Sequence[Any]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        f = float(v) if isinstance(v, (int, float, np.floating, np.integer)) else float("nan")
        out.append(f if math.isfinite(f) else None)
    return out


def per_checkpoint(values: Sequence[float], checkpoint_labels: Sequence[str], title: str, height: int = 220) -> Any:
    """Signed bars, one per checkpoint (a self-influence or a contribution
    over training): green up, red down."""
    go = _go()
    vals = [float(v) for v in values]
    labels = [plot_text(c, 60) for c in checkpoint_labels]
    fig = go.Figure(go.Bar(x=labels, y=vals, marker_color=[POS if v >= 0 else NEG for v in vals],
                           hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(title=plot_text(title, 120), height=height, yaxis_title="value", showlegend=False, **_LAYOUT)
    return fig


def contributions(matrix: np.ndarray, example_labels: Sequence[str], checkpoint_labels: Sequence[str], title: str,
                  height: int = 300) -> Any:
    """Grouped bars: ``matrix[c, j]`` is example ``j``'s contribution at checkpoint ``c``."""
    go = _go()
    m = np.asarray(matrix, dtype=float)
    ckpts = [plot_text(c, 60) for c in checkpoint_labels]
    fig = go.Figure([
        go.Bar(name=plot_text(example_labels[j], 60), x=ckpts, y=m[:, j].tolist(), marker_color=COLOURS[j % len(COLOURS)],
               hovertemplate=f"{plot_text(example_labels[j], 60)}<br>%{{x}}: %{{y:.4g}}<extra></extra>")
        for j in range(m.shape[1])
    ])
    fig.update_layout(title=plot_text(title, 120), barmode="group", height=height, yaxis_title="contribution", **_LAYOUT)
    return fig


def cumulative(matrix: np.ndarray, example_labels: Sequence[str], checkpoint_labels: Sequence[str], title: str,
               height: int = 300) -> Any:
    """Lines of cumulative influence over checkpoints (the running sum of
    ``matrix[:, j]``), one per example."""
    go = _go()
    m = np.cumsum(np.asarray(matrix, dtype=float), axis=0)
    ckpts = [plot_text(c, 60) for c in checkpoint_labels]
    fig = go.Figure([
        go.Scatter(name=plot_text(example_labels[j], 60), x=ckpts, y=m[:, j].tolist(), mode="lines+markers",
                   line=dict(color=COLOURS[j % len(COLOURS)]),
                   hovertemplate=f"{plot_text(example_labels[j], 60)}<br>%{{x}}: %{{y:.4g}}<extra></extra>")
        for j in range(m.shape[1])
    ])
    fig.add_hline(y=0, line_color="#999", line_width=0.5)
    fig.update_layout(title=plot_text(title, 120), height=height, yaxis_title="cumulative influence", **_LAYOUT)
    return fig


def curves(steps: Sequence[float], series: Mapping[str, Sequence[float]], title: str, x_title: str = "step",
           y_title: str = "value", height: int = 320) -> Any:
    """One line per named series over ``steps`` (a relearning curve per method, say)."""
    go = _go()
    fig = go.Figure([
        go.Scatter(x=list(steps), y=_finite(values), mode="lines+markers", name=plot_text(name, 60),
                   line=dict(color=COLOURS[j % len(COLOURS)]),
                   hovertemplate=f"{plot_text(name, 60)}<br>{plot_text(x_title, 30)} %{{x}}: %{{y:.4g}}<extra></extra>")
        for j, (name, values) in enumerate(series.items())
    ])
    fig.update_layout(title=plot_text(title, 120), height=height, xaxis_title=plot_text(x_title, 40), yaxis_title=plot_text(y_title, 40),
                      **_LAYOUT)
    return fig


def heatmap(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, height_per_row: int = 22,
            cell_ids: bool = False) -> Any:
    """A signed heatmap (``values[i, j]`` for row ``i``, column ``j``): green
    positive, red negative, white 0, symmetric about 0; each cell's value on
    hover. ``cell_ids``: each cell's ``customdata`` is ``i * len(cols) + j``
    (for click handlers)."""
    go = _go()
    vals = np.asarray(values, dtype=float)
    top = float(np.nanmax(np.abs(vals))) if vals.size else 0.0
    top = top or 1.0
    z = [[None if not math.isfinite(v) else v for v in row] for row in vals.tolist()]
    fig = go.Figure(go.Heatmap(z=z, x=[plot_text(c, 60) for c in cols], y=[plot_text(r, 60) for r in rows],
                               colorscale=[[0.0, NEG], [0.5, "#ffffff"], [1.0, POS]], zmin=-top, zmax=top,
                               hovertemplate="%{y} | %{x}: %{z:.4g}<extra></extra>"))
    if cell_ids:
        fig.update_traces(customdata=[[i * len(cols) + j for j in range(len(cols))] for i in range(len(rows))])
    fig.update_layout(title=plot_text(title, 120), height=80 + height_per_row * max(len(rows), 1),
                      yaxis=dict(autorange="reversed"), **_LAYOUT)
    return fig


def scatter(x: Sequence[float], y: Sequence[float], labels: Sequence[str], title: str, x_title: str = "x",
            y_title: str = "y", height: int = 360) -> Any:
    """Points ``(x[i], y[i])`` with the diagonal; each point's label on hover."""
    go = _go()
    xs, ys = _finite(x), _finite(y)
    finite = [v for v in xs + ys if v is not None]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    fig = go.Figure([
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="#bbb", width=1), hoverinfo="skip", showlegend=False),
        go.Scatter(x=xs, y=ys, mode="markers", marker=dict(size=4, color=COLOURS[0], opacity=0.6), showlegend=False,
                   text=[plot_text(s, 80) for s in labels], hovertemplate="%{text}: %{x:.3g}, %{y:.3g}<extra></extra>"),
    ])
    fig.update_layout(title=plot_text(title, 120), height=height, xaxis_title=plot_text(x_title, 40),
                      yaxis_title=plot_text(y_title, 40), **_LAYOUT)
    return fig


def diff_map(points: Sequence[Mapping[str, Any]], cluster_names: Mapping[int, str] | None = None, height: int = 480) -> Any:
    """The 2-D map of a diff's texts. Two colourings, switched by buttons:
    by model (A blue, B orange) and by cluster. Hover shows the model, the
    cluster and the text (when the points carry it). Each point's
    ``customdata`` is its text-level cluster number (for click handlers)."""
    go = _go()
    names = dict(cluster_names or {})

    def hover(p: Mapping[str, Any]) -> str:
        c = int(p.get("cluster", -1))
        head = f"model {plot_text(p.get('model'), 4)} · cluster {c}"
        if c in names:
            head += f": {plot_text(names[c], 80)}"
        text = p.get("text")
        return head + ("" if text is None else "<br>" + "<br>".join(_wrap(plot_text(text, 240), 80)))

    traces, by_model, by_cluster = [], [], []
    for model in ("A", "B"):
        pts = [p for p in points if p.get("model") == model]
        traces.append(go.Scatter(
            x=[p["x"] for p in pts], y=[p["y"] for p in pts], mode="markers", name=f"model {model}",
            marker=dict(color=MODEL_COLOURS[model], size=6, opacity=0.65), customdata=[int(p.get("cluster", -1)) for p in pts],
            text=[hover(p) for p in pts], hovertemplate="%{text}<extra></extra>",
        ))
        by_model.append(True)
        by_cluster.append(False)
    clusters = sorted({int(p.get("cluster", -1)) for p in points})
    for k, c in enumerate(clusters):
        pts = [p for p in points if int(p.get("cluster", -1)) == c]
        label = f"cluster {c}" + (f": {plot_text(names[c], 40)}" if c in names else "")
        traces.append(go.Scatter(
            x=[p["x"] for p in pts], y=[p["y"] for p in pts], mode="markers", name=label, visible=False,
            marker=dict(color=COLOURS[k % len(COLOURS)] if c >= 0 else "#bbb", size=6, opacity=0.65,
                        symbol=["circle" if p.get("model") == "A" else "diamond" for p in pts]),
            customdata=[c] * len(pts), text=[hover(p) for p in pts], hovertemplate="%{text}<extra></extra>",
        ))
        by_model.append(False)
        by_cluster.append(True)
    fig = go.Figure(traces)
    fig.update_layout(
        height=height, xaxis_title="PC 1", yaxis_title="PC 2", dragmode="zoom", hovermode="closest",
        updatemenus=[dict(type="buttons", direction="right", x=0, y=1.12, xanchor="left", showactive=True, buttons=[
            dict(label="colour by model", method="update", args=[{"visible": by_model}]),
            dict(label="colour by cluster", method="update", args=[{"visible": by_cluster}]),
        ])],
        **_LAYOUT,
    )
    return fig


def _wrap(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def metric_panels(rounds: Sequence[int], series: Mapping[str, Sequence[float]], title: str, stop_round: int | None = None,
                  thresholds: Mapping[str, Sequence[float]] | None = None, height_per_row: int = 220) -> Any:
    """One panel per metric over rounds (a figure per monitor): the values as
    a line with markers (``customdata``: the round), each threshold of
    ``thresholds[metric]`` as a dotted grey line, the stop round as a dashed
    red line."""
    go = _go()
    from plotly.subplots import make_subplots

    names = list(series)
    cols = min(3, max(len(names), 1))
    rows = max(1, math.ceil(len(names) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[plot_text(n, 60) for n in names] or None)
    for i, name in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(
            x=list(rounds), y=_finite(series[name]), mode="lines+markers", name=plot_text(name, 60), customdata=list(rounds),
            line=dict(color="#1565c0"), hovertemplate=f"{plot_text(name, 60)}<br>round %{{x}}: %{{y:.5g}}<extra></extra>",
        ), row=r, col=c)
        for b in (thresholds or {}).get(name, ()):
            fig.add_hline(y=float(b), line_dash="dot", line_color="#888", row=r, col=c,
                          annotation_text=f"threshold {float(b):g}", annotation_font_size=9)
        if stop_round is not None:
            fig.add_vline(x=stop_round, line_dash="dash", line_color="#c33", row=r, col=c)
    fig.update_xaxes(dtick=1, title_text="round")
    fig.update_layout(title=plot_text(title, 120), showlegend=False, height=height_per_row * rows + 40, **_LAYOUT)
    return fig


def probe_accuracy(subtasks: Sequence[str], runs: Mapping[str, Sequence[tuple[float | None, float | None, float | None]]], title: str,
                   height: int = 340) -> Any:
    """Accuracy per probe subtask, one bar per run (a model, a side of a
    comparison, a loop round): ``runs[label][i]`` is ``(accuracy, CI low, CI
    high)`` of ``subtasks[i]`` (None: not known), the interval as an error
    bar. Each bar's ``customdata`` is its subtask (for click handlers)."""
    go = _go()
    subs = [plot_text(s, 40) for s in subtasks]
    traces = []
    for j, (label, values) in enumerate(runs.items()):
        acc = _finite([v[0] for v in values])
        up = [None if a is None or v[2] is None else float(v[2]) - a for a, v in zip(acc, values)]
        down = [None if a is None or v[1] is None else a - float(v[1]) for a, v in zip(acc, values)]
        name = plot_text(label, 60)
        traces.append(go.Bar(name=name, x=subs, y=acc, customdata=list(subtasks), marker_color=COLOURS[j % len(COLOURS)],
                             error_y=dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1, width=3),
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    fig = go.Figure(traces)
    fig.update_layout(title=plot_text(title, 120), barmode="group", height=height, yaxis=dict(title="accuracy", range=[0, 1.05]),
                      **_LAYOUT)
    return fig


def embed(fig: Any, click: str | None = None, base: str | None = None) -> str:
    """The markup that places ``fig`` on a page (drawn by :data:`BOOT_JS`).
    ``click``/``base`` name what a click on a point does in the explorer
    (``"link"``: go to ``base + customdata``; ``"panel"``: load
    ``base + customdata`` as JSON into the page's panel)."""
    attrs = f'class="plot" data-figure="{html.escape(fig.to_json(), quote=True)}"'
    if click is not None:
        attrs += f' data-click="{html.escape(click, quote=True)}" data-base="{html.escape(base or "", quote=True)}"'
    return f"<div {attrs}></div>"


#: Draws every ``div.plot[data-figure]`` of the page; the explorer's own script adds click handlers.
BOOT_JS = """
(function () {
  function draw() {
    document.querySelectorAll('div.plot[data-figure]').forEach(function (el) {
      var fig = JSON.parse(el.getAttribute('data-figure'));
      Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false}).then(function () {
        el.dispatchEvent(new CustomEvent('gradtrace:plotted', {bubbles: true}));
      });
    });
  }
  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', draw); } else { draw(); }
})();
"""


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly's JavaScript bundle (shipped with the plotly package; no network)."""
    _go()
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def plotly_scripts() -> str:
    """plotly's JavaScript and :data:`BOOT_JS`, inlined: placed once at the end
    of a static page that holds figures."""
    js = plotly_js().replace("</script", "<\\/script")
    return f'<script type="text/javascript">{js}</script>\n<script type="text/javascript">{BOOT_JS}</script>'

