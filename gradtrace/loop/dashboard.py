"""The loop's dashboard: one self-contained HTML page (no scripts, no external
files), one figure per monitor with a panel per metric across rounds, the
stop event marked in every panel, and a link to the last round's diff report.
Every text is escaped (generations are untrusted data)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from ..report.html import esc, page, table
from .stop import StopEvent, StopRule

DASHBOARD = "dashboard.html"
DIFF_REPORT = "diff_report.html"


def line_svg(rounds: Sequence[int], values: Sequence[float], stop_round: int | None, width: int = 260, height: int = 120,
             bounds: Sequence[float] = ()) -> str:
    """A line chart of one metric over rounds; a dashed red line at
    ``stop_round`` and a dotted grey line at each threshold in ``bounds``."""
    pts = [(r, v) for r, v in zip(rounds, values) if isinstance(v, (int, float)) and math.isfinite(v)]
    pad_l, pad_r, pad_t, pad_b = 44, 8, 8, 18
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    parts = [f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>']
    if pts:
        lo, hi = min([v for _, v in pts] + list(bounds)), max([v for _, v in pts] + list(bounds))
        if hi == lo:
            lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
        r0, r1 = min(rounds), max(max(rounds), min(rounds) + 1)

        def x(r: float) -> float:
            return pad_l + (r - r0) / (r1 - r0) * w

        def y(v: float) -> float:
            return pad_t + (hi - v) / (hi - lo) * h

        parts.append(f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="9" text-anchor="end">{esc(f"{hi:.3g}")}</text>')
        parts.append(f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="9" text-anchor="end">{esc(f"{lo:.3g}")}</text>')
        for r in sorted(set(rounds)):
            parts.append(f'<text x="{x(r):.1f}" y="{height - 4}" font-size="9" text-anchor="middle">{int(r)}</text>')
        if stop_round is not None:
            parts.append(f'<line x1="{x(stop_round):.1f}" y1="{pad_t}" x2="{x(stop_round):.1f}" y2="{pad_t + h}" stroke="#c33" stroke-dasharray="4 3"><title>stop at round {int(stop_round)}</title></line>')
        for b in bounds:
            parts.append(f'<line x1="{pad_l}" y1="{y(b):.1f}" x2="{pad_l + w}" y2="{y(b):.1f}" stroke="#888" stroke-dasharray="1 2"><title>{esc(f"threshold {b:g}")}</title></line>')
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(r):.1f},{y(v):.1f}" for i, (r, v) in enumerate(pts))
        parts.append(f'<path d="{path}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
        for r, v in pts:
            parts.append(f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="2.5" fill="#1565c0"><title>{esc(f"round {int(r)}: {v:.5g}")}</title></circle>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


PALETTE = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#455a64")


def multi_line_svg(rounds: Sequence[int], series: Mapping[str, Sequence[float]], stop_round: int | None, width: int = 560,
                   height: int = 200) -> str:
    """Several metrics over rounds in one chart (one coloured line each, a
    legend below); a dashed red line at ``stop_round``."""
    legend_h = 14 * ((len(series) + 2) // 3)
    pad_l, pad_r, pad_t, pad_b = 44, 8, 8, 18 + legend_h
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    values = [v for vs in series.values() for v in vs if isinstance(v, (int, float)) and math.isfinite(v)]
    parts = [f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>']
    if values and rounds:
        lo, hi = min(values), max(values)
        if hi == lo:
            lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
        r0, r1 = min(rounds), max(max(rounds), min(rounds) + 1)

        def x(r: float) -> float:
            return pad_l + (r - r0) / (r1 - r0) * w

        def y(v: float) -> float:
            return pad_t + (hi - v) / (hi - lo) * h

        parts.append(f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="9" text-anchor="end">{esc(f"{hi:.3g}")}</text>')
        parts.append(f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="9" text-anchor="end">{esc(f"{lo:.3g}")}</text>')
        for r in sorted(set(rounds)):
            parts.append(f'<text x="{x(r):.1f}" y="{pad_t + h + 12}" font-size="9" text-anchor="middle">{int(r)}</text>')
        if stop_round is not None:
            parts.append(f'<line x1="{x(stop_round):.1f}" y1="{pad_t}" x2="{x(stop_round):.1f}" y2="{pad_t + h}" stroke="#c33" stroke-dasharray="4 3"><title>stop at round {int(stop_round)}</title></line>')
        for i, (name, vs) in enumerate(series.items()):
            colour = PALETTE[i % len(PALETTE)]
            pts = [(r, v) for r, v in zip(rounds, vs) if isinstance(v, (int, float)) and math.isfinite(v)]
            if pts:
                path = " ".join(f"{'M' if j == 0 else 'L'}{x(r):.1f},{y(v):.1f}" for j, (r, v) in enumerate(pts))
                parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"><title>{esc(name)}</title></path>')
                for r, v in pts:
                    parts.append(f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"><title>{esc(f"{name}, round {int(r)}: {v:.5g}")}</title></circle>')
    for i, name in enumerate(series):
        lx, ly = pad_l + (i % 3) * (w / 3), pad_t + h + 26 + 14 * (i // 3)
        parts.append(f'<rect x="{lx:.1f}" y="{ly - 8:.1f}" width="10" height="3" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{lx + 14:.1f}" y="{ly:.1f}" font-size="10">{esc(name)}</text>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def write_diff_report(diff_json: Path, out: Path) -> Path:
    """A small HTML page of a round's behavioural diff (``diff.json``): the
    clusters ranked, their shares, q-values, labels and example texts. Used
    when a round has a ``diff.json`` but no full report (the clusters monitor
    writes one with :func:`gradtrace.diff.report.write_report`)."""
    d = json.loads(diff_json.read_text(encoding="utf-8"))
    rows = []
    for c in d.get("clusters", []):
        examples = " | ".join(list(c.get("examples_b") or [])[:2] + list(c.get("examples_a") or [])[:1])
        rows.append([c.get("rank"), c.get("level"), c.get("label"), c.get("share_b"), c.get("overall_share_b"),
                     c.get("log_odds"), c.get("q_value"), examples])
    body = (
        f'<p class="note">A = round 0 generations ({d.get("n_a")}), B = this round ({d.get("n_b")}); embedder {esc(d.get("embedder"))}. '
        "share_b: share of the cluster's validation texts from B; log odds &gt; 0: skewed to B.</p>"
        + table(["rank", "level", "label", "share B", "overall share B", "log odds", "q", "examples"], rows, numeric=(0, 3, 4, 5, 6))
    )
    out.write_text(page("behavioural diff against round 0", body), encoding="utf-8")
    return out


def write_dashboard(out_dir: str | Path, rows: Sequence[Mapping[str, float]], stop: StopEvent | None, title: str = "self-training loop",
                    rules: Sequence[StopRule] = ()) -> Path:
    """Write ``<out_dir>/dashboard.html`` from the results table; returns its
    path. Threshold ``rules`` are drawn in their metric's panel."""
    out_dir = Path(out_dir)
    rounds = [int(r["round"]) for r in rows]
    metrics = [k for k in (rows[0] if rows else {}) if k != "round"]
    groups: dict[str, list[str]] = {}
    for m in metrics:
        groups.setdefault(m.split(".", 1)[0], []).append(m)
    stop_round = stop.round if stop is not None else None
    parts = []
    if stop is not None:
        parts.append(f'<p style="background:#fff0f0;border:1px solid #c33;padding:.5rem"><b>Stopped.</b> {esc(stop.message())}</p>')
    else:
        parts.append(f'<p class="note">No stop rule fired over rounds {esc(min(rounds) if rounds else "-")} to {esc(max(rounds) if rounds else "-")}.</p>')
    last_diff = _last_diff(out_dir, rounds)
    if last_diff is not None:
        rel = last_diff.relative_to(out_dir).as_posix()
        parts.append(f'<p>Behavioural diff of the last round against round 0: <a href="{esc(rel)}">{esc(rel)}</a></p>')
    probe_acc = [m for m in metrics if m.startswith("probes.") and m.endswith(".accuracy")]
    if probe_acc:
        series = {m[len("probes."):-len(".accuracy")]: [r.get(m, float("nan")) for r in rows] for m in probe_acc}
        parts.append('<h2>probes: per-subtask accuracy</h2><figure style="margin:0">'
                     + multi_line_svg(rounds, series, stop_round) + "</figure>")
    for monitor, names in groups.items():
        panels = "".join(
            f'<div style="display:inline-block;margin:.3rem"><div class="note">{esc(n.split(".", 1)[1])}</div>{line_svg(rounds, [r.get(n, float("nan")) for r in rows], stop_round, bounds=_bounds(rules, n))}</div>'
            for n in names
        )
        parts.append(f"<h2>{esc(monitor)}</h2><figure style=\"margin:0\">{panels}</figure>")
    header = ["round"] + metrics
    parts.append("<h2>results table</h2><div style=\"overflow-x:auto\">" + table(header, [[int(r["round"])] + [r.get(m, float("nan")) for m in metrics] for r in rows], numeric=tuple(range(len(header)))) + "</div>")
    path = out_dir / DASHBOARD
    path.write_text(page(title, "\n".join(parts)), encoding="utf-8")
    return path


def _bounds(rules: Sequence[StopRule], metric: str) -> list[float]:
    return [float(b) for r in rules if r.metric == metric and r.kind == "threshold" for b in (r.above, r.below) if b is not None]


def _last_diff(out_dir: Path, rounds: Sequence[int]) -> Path | None:
    for t in sorted(rounds, reverse=True):
        diff_json = out_dir / f"round_{t:03d}" / "diff.json"
        if diff_json.is_file():
            report = diff_json.parent / DIFF_REPORT
            if not report.is_file():
                write_diff_report(diff_json, report)
            return report
    return None
