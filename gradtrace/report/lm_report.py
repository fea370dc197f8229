"""Self-contained HTML report of LM attribution, one section per query.

For each query: its prompt and completion (or chosen/rejected pair), the top
proponents and opponents with their full text, tag and score, each one's
contribution at every checkpoint (influence over training) as numbers and as
a bar plot, and a line plot of the cumulative influence of the top examples
across checkpoints (plotly figures from :mod:`gradtrace.report.figures`).
Every text is escaped: training data is untrusted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..scoring import SCORE_MEANING, TopK
from . import figures
from .html import Raw, esc, page, table


def example_text(example: Any) -> str:
    """An LM example (prompt/completion, chat messages or a preference pair) as one plain text."""
    if isinstance(example, dict):
        if "messages" in example:
            return "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in example["messages"])
        if "chosen" in example:
            return f"{example.get('prompt', '')}\n  chosen: {example['chosen']}\n  rejected: {example['rejected']}"
        return f"{example.get('prompt', '')}{example.get('completion', '')}"
    return str(example)


def lm_report(
    title: str,
    queries: Sequence[Any],
    query_ids: Sequence[str],
    train: Sequence[Any],
    train_ids: Sequence[str],
    tags: Sequence[Any] | None,
    proponents: TopK,
    opponents: TopK,
    breakdown_pro: np.ndarray,
    breakdown_opp: np.ndarray,
    checkpoint_labels: Sequence[str],
    behaviour: str,
    intro: str = "",
) -> str:
    """The report page. ``breakdown_*`` are ``[n_checkpoint, n_query, k]``
    contributions of the listed proponents/opponents, row by row."""
    body = [f'<p class="note">{esc(intro)}</p>' if intro else "",
            f'<p class="note"><b>Behaviour traced:</b> {esc(behaviour)}</p>',
            f'<p class="note"><b>Score.</b> {esc(SCORE_MEANING[proponents.variant])}</p>',
            '<p class="note">Per-checkpoint bars: each example\'s contribution at each checkpoint '
            "(lr-weighted); the line plot shows the cumulative influence of the top proponents over training.</p>"]
    for q, qid in enumerate(query_ids):
        body.append(f"<h2>Query {esc(qid)}</h2><pre>{esc(example_text(queries[q]))}</pre>")
        for kind, topk, contrib in (("Proponents", proponents, breakdown_pro), ("Opponents", opponents, breakdown_opp)):
            rows = []
            for r in range(topk.indices.shape[1]):
                i = int(topk.indices[q, r])
                per_ckpt = contrib[:, q, r]
                rows.append([
                    r + 1, train_ids[i], "" if tags is None else tags[i], float(topk.scores[q, r]),
                    Raw(f"<pre>{esc(example_text(train[i]))}</pre>"),
                    ", ".join(f"{v:.3g}" for v in per_ckpt),
                ])
            body.append(f"<h3>{esc(kind)}</h3>")
            body.append(table(["rank", "id", "tag", "score", "text", "per checkpoint"], rows, numeric=(0, 3)))
            names = [str(train_ids[int(i)]) for i in topk.indices[q]]
            body.append(figures.embed(figures.contributions(contrib[:, q, :], names, list(checkpoint_labels),
                                                            f"{kind}: contribution per checkpoint")))
        top = min(5, proponents.indices.shape[1])
        body.append(figures.embed(figures.cumulative(
            breakdown_pro[:, q, :top], [str(train_ids[int(i)]) for i in proponents.indices[q, :top]], list(checkpoint_labels),
            "cumulative influence of the top proponents over checkpoints")))
    return page(title, "\n".join(body), figures=True)
