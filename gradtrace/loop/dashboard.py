"""The loop's dashboard: one self-contained HTML page (no external files;
plotly's JavaScript inlined), one figure per monitor with a panel per metric
across rounds (:func:`gradtrace.report.figures.metric_panels`), the stop
event and the rules' thresholds marked in every panel, and a link to the last
round's diff report. Every text is escaped (generations are untrusted data).
``gradtrace serve RUN`` shows the same figures, linked to each round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..fileio import atomic_write_bytes
from ..report import figures
from ..report.html import esc, page, table
from .stop import StopEvent, StopRule

DASHBOARD = "dashboard.html"
DIFF_REPORT = "diff_report.html"


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
                    rules: Sequence[StopRule] = (), attribution: Mapping[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/dashboard.html`` from the results table; returns its
    path. Threshold ``rules`` are drawn in their metric's panel; the stop
    trace (``attribution``, :func:`gradtrace.loop.trace.trace_stop`) gets its
    own section after the stop event."""
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
        if attribution is not None:
            parts.append(attribution_html(attribution))
    else:
        parts.append(f'<p class="note">No stop rule fired over rounds {esc(min(rounds) if rounds else "-")} to {esc(max(rounds) if rounds else "-")}.</p>')
    last_diff = _last_diff(out_dir, rounds)
    if last_diff is not None:
        rel = last_diff.relative_to(out_dir).as_posix()
        parts.append(f'<p>Behavioural diff of the last round against round 0: <a href="{esc(rel)}">{esc(rel)}</a></p>')
    probe_acc = [m for m in metrics if m.startswith("probes.") and m.endswith(".accuracy")]
    if probe_acc:
        series = {m[len("probes."):-len(".accuracy")]: [r.get(m, float("nan")) for r in rows] for m in probe_acc}
        fig = figures.curves(rounds, series, "per-subtask accuracy", x_title="round", y_title="accuracy")
        if stop_round is not None:
            fig.add_vline(x=stop_round, line_dash="dash", line_color="#c33")
        parts.append(f"<h2>probes: per-subtask accuracy</h2>{figures.embed(fig)}")
    for monitor, names in groups.items():
        fig = figures.metric_panels(rounds, {n: [r.get(n, float("nan")) for r in rows] for n in names}, monitor, stop_round,
                                    {n: rule_bounds(rules, n) for n in names})
        parts.append(f"<h2>{esc(monitor)}</h2>{figures.embed(fig)}")
    header = ["round"] + metrics
    parts.append("<h2>results table</h2><div style=\"overflow-x:auto\">" + table(header, [[int(r["round"])] + [r.get(m, float("nan")) for m in metrics] for r in rows], numeric=tuple(range(len(header)))) + "</div>")
    path = out_dir / DASHBOARD
    traced = attribution is not None and bool(attribution.get("traced"))
    atomic_write_bytes(path, page(title, "\n".join(parts), figures=bool(groups) or bool(probe_acc) or traced).encode("utf-8"))
    return path


def attribution_html(a: Mapping[str, Any]) -> str:
    """The stop trace's section: per round its signed influence and share (a
    bar chart and a table), then the top training examples (text escaped)."""
    head = "<h2>What drove the stop</h2>"
    if not a.get("traced"):
        return head + f'<p class="note">Not traced: {esc(a.get("reason"))}</p>'
    target = a["target"]
    rounds = a["rounds"]
    fig = figures.per_checkpoint([r["influence"] for r in rounds], [f"round {r['round']}" for r in rounds],
                                 f"influence on {a['metric']} by round's training data")
    table_rounds = table(["round", "examples", "scored", "influence", "share", "sum of the listed scores", "positive share"],
                         [[r["round"], r["n_examples"], r["n_scored"], r["influence"], percent(r["share"]), r["influence_from_scores"],
                           percent(r["positive_share"])] for r in rounds], numeric=(0, 1, 2, 3, 4, 5, 6))
    top = table(["rank", "id", "round", "source", "score", "text"],
                [[e["rank"], e["id"], e["round"], e.get("source"), e["score"], e["text"]] for e in a["top_examples"]], numeric=(0, 2, 4))
    return (
        head + f'<p>Target: {esc(target["description"])}. Method: {esc(a["method"])}. '
        + (f'Round whose data carried the largest share: <b>{esc(a["largest_share_round"])}</b>. '
           if a["largest_share_round"] is not None else
           '<b>No round\'s data pushed the metric toward the breach</b> (every round\'s influence is 0 or negative). ')
        + f'Every example\'s score: <code>{esc(a["scores_file"])}</code>.</p>'
        '<p class="note">A score is TracIn\'s first-order estimate of how much training on the example in its round moved '
        'the target toward the breach; a round\'s influence is the sum over its examples and its share that sum over the '
        'total (negative: the round pushed the other way). It ranks data by gradient alignment; it does not prove that '
        'removing the data would have prevented the stop (docs/loop.md).</p>'
        + figures.embed(fig) + table_rounds + "<h3>Top training examples</h3>" + top
    )


def percent(x: Any) -> str:
    """A share as a percentage (``-`` for None: no total to share)."""
    return "-" if x is None else f"{100 * float(x):.1f}%"


def rule_bounds(rules: Sequence[StopRule], metric: str) -> list[float]:
    """The thresholds of the threshold rules on ``metric``."""
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
