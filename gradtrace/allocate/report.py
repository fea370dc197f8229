"""Self-contained HTML reports of allocations, influence over time and
run comparisons (every text escaped: ids, paths and names are untrusted)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..report import figures
from ..report.html import esc, page, table
from .path import RunAllocation
from .runs import RunComparison, standardised
from .timeline import InfluenceTimeline


def allocation_html(run: RunAllocation, title: str = "gradtrace: loss-change allocation", top: int = 20) -> str:
    labels = [iv.label() for iv in run.intervals]
    body = [
        f'<p class="note">Behaviour {esc(run.behaviour)} (direction: {esc(run.direction)}), mean over {run.n_queries} queries; '
        f"rule {esc(run.rule)} with {run.points} points. Each interval's change B(end) &minus; B(start) is split over the "
        "parameters that moved by the path integral of the behaviour's gradient along the straight line between the two "
        "checkpoints. Negative allocations lower the behaviour (for a loss: helped).</p>",
        "<h2>Intervals</h2>",
        table(["#", "interval", "B(start)", "B(end)", "measured change", "sum of allocations", "completeness error", "relative error"],
              [[i + 1, iv.label(), iv.value_start, iv.value_end, iv.measured_change, iv.allocated, iv.completeness_error,
                iv.relative_error] for i, iv in enumerate(run.intervals)], numeric=(0, 2, 3, 4, 5, 6, 7)),
    ]
    if run.unallocated:
        body.append(f'<p class="note">Moved but not allocated (outside the selection): {esc(", ".join(run.unallocated))}</p>')
    for level in ("layer", "block", "module"):
        by = run.by(level)
        names = list(by)
        if not names:
            continue
        matrix = np.array([by[g] for g in names])
        body.append(f"<h2>By {esc(level)} &times; interval</h2>")
        body.append('<p class="note">Green: raised the behaviour; red: lowered it.</p>')
        body.append(figures.embed(figures.heatmap(matrix, names, labels, f"allocation by {level} and interval")))
        order = sorted(names, key=lambda g: -abs(float(by[g].sum())))[:top]
        body.append(table([level, "whole run", "share of |allocation|"],
                          [[g, float(by[g].sum()), _share(by, g)] for g in order], numeric=(1, 2)))
    return page(title, "\n".join(body), figures=True)


def _share(by: dict[str, np.ndarray], g: str) -> float:
    total = sum(float(np.abs(v).sum()) for v in by.values())
    return float(np.abs(by[g]).sum()) / total if total else 0.0


def timeline_html(tl: InfluenceTimeline, train_ids: Sequence[str], train_tags: Sequence[Any] | None,
                  title: str = "gradtrace: influence over time", show: int = 20) -> str:
    share = tl.abs_share
    crit = tl.behaviour_critical()
    body = [
        '<p class="note">Each checkpoint&rsquo;s TracIn term stands for the training period around it. abs share: the part of '
        "the query&rsquo;s total |influence| carried by that checkpoint; signed: the net push of all training examples there "
        f"(positive: in the behaviour&rsquo;s direction). Critical period: the shortest run of consecutive checkpoints holding at "
        f"least {tl.mass:.0%} of the |influence| (docs/allocate.md).</p>",
        "<h2>All queries</h2>",
        figures.embed(figures.per_checkpoint(share.mean(axis=1), tl.labels, "mean share of |influence| per checkpoint")),
        table(["critical period", "share", "concentration", "peak"],
              [[f"{tl.labels[crit.first]} .. {tl.labels[crit.last]}", crit.share, crit.concentration, tl.labels[crit.peak]]],
              numeric=(1, 2)),
    ]
    for q, qid in enumerate(tl.query_ids[:show]):
        c = tl.critical(q)
        body.append(f"<h2>query {esc(qid)}</h2>")
        body.append(f"<p>critical period {esc(tl.labels[c.first])} .. {esc(tl.labels[c.last])} "
                    f"(share {c.share:.3f}, concentration {c.concentration:.2f})</p>")
        body.append(figures.embed(figures.per_checkpoint(tl.signed[:, q], tl.labels, "signed influence per checkpoint")))
        rows = []
        for ci, label in enumerate(tl.labels):
            pro = ", ".join(_named(train_ids, train_tags, int(i)) for i in tl.top[ci, q])
            opp = ", ".join(_named(train_ids, train_tags, int(i)) for i in tl.bottom[ci, q])
            rows.append([label, float(share[ci, q]), float(tl.signed[ci, q]), pro, opp])
        body.append(table(["checkpoint", "abs share", "signed", "top proponents", "top opponents"], rows, numeric=(1, 2)))
    return page(title, "\n".join(body), figures=True)


def _named(ids: Sequence[str], tags: Sequence[Any] | None, i: int) -> str:
    tag = tags[i] if tags is not None else None
    return f"{ids[i]}" + (f" [{tag}]" if tag not in (None, "") else "")


#: At most this many points per scatter plot: the SCATTER_EXTREME examples with the largest |z|
#: in either run, then a seeded random sample of the others.
SCATTER_POINTS = 2000
SCATTER_EXTREME = 500


def _scatter_points(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    n = za.size
    if n <= SCATTER_POINTS:
        return np.arange(n)
    extreme = np.argsort(-np.maximum(np.abs(za), np.abs(zb)), kind="stable")[:SCATTER_EXTREME]
    rest = np.setdiff1d(np.arange(n), extreme)
    sample = np.random.default_rng(0).choice(rest, SCATTER_POINTS - SCATTER_EXTREME, replace=False)
    return np.sort(np.concatenate([extreme, sample]))


def runs_html(names: Sequence[str], pairs: list[tuple[int, int, RunComparison]], query_ids: Sequence[str],
              train_ids: Sequence[str], scores: Sequence[np.ndarray] | None, stability: list[dict[str, float]] | None,
              self_influence: dict[str, Any] | None, title: str = "gradtrace: influence across runs", show: int = 10) -> str:
    body = ['<p class="note">Runs: ' + ", ".join(f"{i + 1}: {esc(n)}" for i, n in enumerate(names)) + ". Spearman: rank "
            "correlation of a query's scores over all training examples; Jaccard: overlap of the top-k proponents "
            "(opponents); most different: largest difference of the scores divided by each run's own standard deviation.</p>"]
    if self_influence is not None:
        body.append("<h2>Self-influence (no queries needed)</h2>")
        body.append(table(["runs", "Spearman", f"top-{self_influence['k']} Jaccard"],
                          [[f"{r['a'] + 1} vs {r['b'] + 1}", r["spearman"], r["jaccard"]] for r in self_influence["pairs"]],
                          numeric=(1, 2)))
    if pairs:
        body.append("<h2>Query scores, run against run</h2>")
        body.append(table(["runs", "mean Spearman", "mean Jaccard (proponents)", "mean Jaccard (opponents)"],
                          [[f"{a + 1} vs {b + 1}", c.summary()["spearman_mean"], c.summary()["jaccard_mean"],
                            c.summary()["jaccard_opponents_mean"]] for a, b, c in pairs], numeric=(1, 2, 3)))
    if stability:
        body.append("<h2>Averaging runs</h2>")
        body.append('<p class="note">Agreement between the averages of two disjoint sets of m runs each.</p>')
        body.append(table(["m", "Spearman", "Jaccard", "splits"],
                          [[s["m"], s["spearman"], s["jaccard"], s["n_splits"]] for s in stability], numeric=(0, 1, 2, 3)))
    if pairs and scores is not None:
        a, b, comp = pairs[0]
        za, zb = standardised(scores[a]), standardised(scores[b])
        for q, qid in enumerate(list(query_ids)[:show]):
            body.append(f"<h2>query {esc(qid)}: run {a + 1} vs run {b + 1}</h2>")
            body.append(f"<p>Spearman {comp.spearman[q]:.3f}, top-{comp.k} Jaccard {comp.jaccard[q]:.3f}</p>")
            shown = _scatter_points(za[q], zb[q])
            if shown.size < za.shape[1]:
                body.append(f'<p class="note">{shown.size} of {za.shape[1]} examples drawn: the {SCATTER_EXTREME} largest |z| '
                            "of either run and a seeded random sample of the rest.</p>")
            body.append(figures.embed(figures.scatter(za[q, shown], zb[q, shown], [train_ids[int(i)] for i in shown],
                                                      f"query {qid}", x_title=f"run {a + 1} (z)", y_title=f"run {b + 1} (z)")))
            body.append(table(["train", f"z run {a + 1}", f"z run {b + 1}", "difference"],
                              [[train_ids[int(i)], za[q, int(i)], zb[q, int(i)], float(d)]
                               for i, d in zip(comp.differ[q], comp.differ_z[q])], numeric=(1, 2, 3)))
    return page(title, "\n".join(body), figures=True)
