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
from .behaviours import Behaviour, group_behaviours
from .likelihood import LikelihoodResult
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


def _behaviour_block(b: Behaviour) -> str:
    members = table(["rank", "level", "label", "A / B (valid)", "q"],
                    [(m.rank, m.level, m.llm_label or m.label, f"{m.valid_a} / {m.valid_b}", f"{m.q_value:.3g}") for m in b.members],
                    numeric=(0, 4))
    rows = [r for _, r in b.rows_b[:6]] if b.skew == "B" else [r for _, r in b.rows_a[:6]]
    return (f'<section class="behaviour"><h3>{esc(f"behaviour {b.rank}: {b.label}")}</h3>'
            f"<p>{len(b.members)} member cluster(s); {len(b.ids_a)} texts of A and {len(b.ids_b)} of B have a row in one. "
            f"Validation texts in the behaviour (A / B): {b.valid_a} / {b.valid_b}; share B {b.share_b:.3f} "
            f"(overall {b.overall_share_b:.3f}); p {b.p_value:.3g}, q {b.q_value:.3g}; log odds ratio {b.log_odds:.2f} "
            f"({b.log_odds_low:.2f}, {b.log_odds_high:.2f}).</p>{members}"
            f"<details><summary>rows from {esc(b.skew)} in the behaviour</summary>{_examples(rows).html}</details></section>")


def _likelihood_section(lik: LikelihoodResult) -> str:
    flagged = lik.significant()
    rows = [(c.rank, c.level, c.label, c.valid_in, c.valid_out, f"{c.d_in:.3g}", f"{c.d_out:.3g}", f"{c.shift:.3g}", f"{c.p_value:.3g}",
             f"{c.q_value:.3g}", "yes" if c.q_value <= lik.config.alpha else "no") for c in lik.clusters]
    parts = [f"<h2>Likelihood view</h2><p><b>{len(flagged)}</b> of {len(lik.clusters)} clusters flagged at FDR {lik.config.alpha}. "
             f"d = log p_B - log p_A of B's texts and sentences given their prompts ({esc(lik.config.stat)}); clusters of "
             "exploration rows with outlying d, each tested on the validation half against B's other texts (one-sided "
             "Mann-Whitney, Benjamini-Hochberg over both levels).</p>",
             table(["rank", "level", "label", "valid in", "valid out", "median d in", "median d out", "shift", "p", "q", "flagged"],
                   rows, numeric=(0, 3, 4, 5, 6, 7, 8, 9)) if rows else "<p class=\"note\">no cluster tested</p>"]
    for c in lik.clusters:
        parts.append(f'<section class="cluster"><h3>{esc(f"#{c.rank} [{c.level}] {c.label}")}</h3>'
                     f'<details open><summary>representative rows (medoids)</summary>{_examples(c.medoids).html}</details>'
                     f'<details><summary>validation rows of B in the cluster</summary>{_examples(c.examples_b).html}</details></section>')
    return "".join(parts)


def write_report(result: DiffResult | None, path: str | Path, title: str = "Behavioural diff", intended: str | None = None,
                 names: tuple[str, str] = ("A", "B"), max_clusters: int = 30, behaviours: list[Behaviour] | None = None,
                 likelihood: LikelihoodResult | None = None) -> Path:
    """Write the HTML report; returns its path. ``behaviours``: the flagged clusters grouped
    (default: :func:`~gradtrace.diff.behaviours.group_behaviours` with its default rule, when the
    result still holds its member texts; else no behaviours section). ``likelihood``: the likelihood
    view's section. ``result`` None: only the likelihood view ran."""
    if result is None:
        parts = [f"<p>Model A: <b>{esc(names[0])}</b>. Model B: <b>{esc(names[1])}</b>.</p>"]
        if intended:
            parts.append(f"<p>Intended change: <i>{esc(intended)}</i></p>")
        if likelihood is not None:
            parts.append(_likelihood_section(likelihood))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page(title, "\n".join(parts), figures=False), encoding="utf-8")
        return path
    alpha = result.config.alpha
    flagged = result.significant()
    if behaviours is None and result.members and len(result.texts_a) == result.n_a and len(result.texts_b) == result.n_b:
        behaviours = group_behaviours(result)
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
    if behaviours is not None:
        parts.append("<h2>Behaviours</h2><p class=\"note\">Flagged clusters merged when skewed the same way and their texts overlap "
                     "(Jaccard) or their centred centroids are close (cosine), single linkage; each behaviour is tested on the union "
                     "of its members' validation texts.</p>")
        parts.append(table(["behaviour", "skew", "label", "members (rank)", "A", "B", "share B", "p", "q"],
                           [(b.rank, b.skew, b.label, ", ".join(f"#{m.rank}" for m in b.members), b.valid_a, b.valid_b,
                             f"{b.share_b:.3f}", f"{b.p_value:.3g}", f"{b.q_value:.3g}") for b in behaviours],
                           numeric=(0, 4, 5, 6, 7, 8)) if behaviours else "<p class=\"note\">no flagged cluster</p>")
        parts.extend(_behaviour_block(b) for b in behaviours)
    if likelihood is not None:
        parts.append(_likelihood_section(likelihood))
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
