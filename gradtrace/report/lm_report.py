"""Self-contained HTML report of LM attribution, one section per query.

For each query: its prompt and completion (or chosen/rejected pair), the top
proponents and opponents with their full text, tag and score, each one's
contribution at every checkpoint (influence over training) as numbers and as
a bar plot, and a line plot of the cumulative influence of the top examples
across checkpoints. Every text is escaped: training data is untrusted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..scoring import SCORE_MEANING, TopK
from .html import Raw, bars_svg, esc, page, table

COLOURS = ("#0a6", "#06c", "#c60", "#939", "#c33", "#396", "#669", "#963")


def cumulative_svg(series: Sequence[Sequence[float]], labels: Sequence[str], width: int = 360, height: int = 140) -> str:
    """Lines of cumulative influence over checkpoints, one per example."""
    curves = [np.cumsum(np.asarray(s, dtype=float)) for s in series]
    if not curves or len(curves[0]) == 0:
        return ""
    lo = min(0.0, min(float(c.min()) for c in curves))
    hi = max(0.0, max(float(c.max()) for c in curves))
    span = (hi - lo) or 1.0
    n = len(curves[0])
    pad = 8

    def xy(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * (i / max(n - 1, 1))
        y = pad + (height - 2 * pad) * (1 - (v - lo) / span)
        return f"{x:.1f},{y:.1f}"

    zero = pad + (height - 2 * pad) * (1 - (0 - lo) / span)
    parts = [f'<line x1="{pad}" y1="{zero:.1f}" x2="{width - pad}" y2="{zero:.1f}" stroke="#999" stroke-width="0.5"/>']
    for j, c in enumerate(curves):
        colour = COLOURS[j % len(COLOURS)]
        points = " ".join(xy(i, float(v)) for i, v in enumerate(c))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"><title>{esc(labels[j])}</title></polyline>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def _example_text(example: Any) -> str:
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
        body.append(f"<h2>Query {esc(qid)}</h2><pre>{esc(_example_text(queries[q]))}</pre>")
        for kind, topk, contrib in (("Proponents", proponents, breakdown_pro), ("Opponents", opponents, breakdown_opp)):
            rows = []
            for r in range(topk.indices.shape[1]):
                i = int(topk.indices[q, r])
                per_ckpt = contrib[:, q, r]
                rows.append([
                    r + 1, train_ids[i], "" if tags is None else tags[i], float(topk.scores[q, r]),
                    Raw(f"<pre>{esc(_example_text(train[i]))}</pre>"),
                    Raw(bars_svg(per_ckpt, list(checkpoint_labels), width=120, height=36)),
                    ", ".join(f"{v:.3g}" for v in per_ckpt),
                ])
            body.append(f"<h3>{esc(kind)}</h3>")
            body.append(table(["rank", "id", "tag", "score", "text", "per checkpoint", "values"], rows, numeric=(0, 3)))
        top = min(5, proponents.indices.shape[1])
        body.append("<p>Cumulative influence of the top proponents over checkpoints:</p>")
        body.append(cumulative_svg([breakdown_pro[:, q, r] for r in range(top)], [train_ids[int(proponents.indices[q, r])] for r in range(top)]))
    return page(title, "\n".join(body))
