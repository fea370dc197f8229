"""Self-contained HTML report of a diff: a 2-D map of the texts coloured by
model or cluster (:func:`gradtrace.report.figures.diff_map`, plotly's
JavaScript inlined: zoom and hover work offline), then the clusters sorted
by skew with their labels, shares and examples. No external files; every
text is escaped. ``gradtrace serve`` shows the same map, linked to the
clusters' texts."""

from __future__ import annotations

from pathlib import Path
from ..report import figures
from ..report.html import Raw, esc, page, table
from .pipeline import ClusterRecord, DiffResult

def _examples(texts: list[str]) -> Raw:
    return Raw("".join(f"<blockquote>{esc(t[:400])}</blockquote>" for t in texts) or "<span class=\"note\">none</span>")


def _cluster_block(c: ClusterRecord, alpha: float) -> str:
    flag = "flagged" if c.q_value <= alpha else "not flagged"
    title = f"#{c.rank} [{c.level}] {c.llm_label or c.label}"
    rows = [
        ("share of cluster from B", f"{c.share_b:.3f} (overall {c.overall_share_b:.3f}); skewed to {c.skew}"),
        ("validation texts in cluster (A / B)", f"{c.valid_a} / {c.valid_b}"),
        ("p-value / q-value (BH)", f"{c.p_value:.3g} / {c.q_value:.3g} ({flag} at FDR {alpha})"),
        ("log odds ratio (95% CI)", f"{c.log_odds:.2f} ({c.log_odds_low:.2f}, {c.log_odds_high:.2f})"),
        ("keywords (c-TF-IDF)", ", ".join(c.keywords)),
        ("label validation accuracy", "n/a" if c.label_accuracy != c.label_accuracy else f"{c.label_accuracy:.3f} (0.5 = chance)"),
    ]
    if c.judgement:
        rows.append(("judge", f"{c.judgement}: {c.judgement_reason or ''}"))
    body = table(["measure", "value"], rows)
    return (f'<section class="cluster"><h3>{esc(title)}</h3>{body}'
            f'<details open><summary>representative texts (medoids)</summary>{_examples(c.medoids).html}</details>'
            f'<details><summary>examples from B</summary>{_examples(c.examples_b).html}</details>'
            f'<details><summary>examples from A</summary>{_examples(c.examples_a).html}</details></section>')


def write_report(result: DiffResult, path: str | Path, title: str = "Behavioural diff", intended: str | None = None,
                 names: tuple[str, str] = ("A", "B"), max_clusters: int = 30) -> Path:
    """Write the HTML report; returns its path."""
    alpha = result.config.alpha
    flagged = result.significant()
    parts = [
        f"<p>Model A: <b>{esc(names[0])}</b> ({result.n_a} texts). Model B: <b>{esc(names[1])}</b> ({result.n_b} texts). "
        f"Embedder: {esc(result.embedder)}.</p>",
    ]
    if intended:
        parts.append(f"<p>Intended change: <i>{esc(intended)}</i></p>")
    parts.append(f"<p><b>{len(flagged)}</b> of {len(result.clusters)} clusters flagged at FDR {alpha} "
                 "(Fisher's exact test on the held-out validation half, Benjamini-Hochberg over both levels).</p>")
    parts.append("<h2>Map of the texts</h2><p class=\"note\">First two principal components of the text embeddings "
                 "(drag to zoom, hover for the text).</p>")
    names = {c.cluster: c.llm_label or c.label for c in result.clusters if c.level == "text"}
    parts.append(figures.embed(figures.diff_map(result.points, names)) if result.points else "<p class=\"note\">no points</p>")
    parts.append("<h2>Clusters, most skewed first</h2>")
    summary = [
        (c.rank, c.level, c.llm_label or c.label, f"{c.share_b:.3f}", c.valid_a, c.valid_b, f"{c.q_value:.3g}", f"{c.log_odds:.2f}",
         "yes" if c.q_value <= alpha else "no")
        for c in result.clusters[:max_clusters]
    ]
    parts.append(table(["rank", "level", "label", "share B", "A", "B", "q", "log OR", "flagged"], summary, numeric=(0, 3, 4, 5, 6, 7)))
    parts.append("<h2>Levels</h2>")
    parts.append(table(["level", "clusters", "exploration rows", "validation rows", "unassigned (explore / valid)", "stability (ARI)"],
                       [(s.level, s.n_clusters, s.n_explore, s.n_validation, f"{s.unassigned_explore} / {s.unassigned_validation}",
                         f"{s.stability_ari:.3f}") for s in result.levels]))
    parts.append("<h2>Details</h2>")
    parts.extend(_cluster_block(c, alpha) for c in result.clusters[:max_clusters])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, "\n".join(parts), figures=bool(result.points)), encoding="utf-8")
    return path
