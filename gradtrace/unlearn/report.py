"""HTML reports of unlearning comparisons and counterfactual validation.

Self-contained (no external files; plotly's JavaScript inlined for the
relearning curves); every text goes through :func:`gradtrace.report.html.esc`,
:func:`gradtrace.report.html.table` or :func:`gradtrace.report.figures.plot_text`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..report import figures
from ..report.html import Raw, esc, page, table

def comparison_html(result: Mapping[str, Any], title: str, *, attacker_maximises: bool) -> str:
    """Report of a :class:`~gradtrace.unlearn.compare.Comparison` (its ``to_dict()``)."""
    methods = result["methods"]
    ks = sorted({int(k) for r in methods.values() for k in r["relearn"]["best"]}, key=int)
    better = "lower" if attacker_maximises else "higher"
    share = float(result.get("labelled_fraction", float("nan")))
    rows = [[m, r["forget"], r["retain"], *[r["relearn"]["best"][str(k)] for k in ks]] for m, r in methods.items()]
    body = [
        f"<p class=\"note\">Forget metric: {esc(better)} is better forgotten; the relearning columns show the best "
        f"forget metric an attacker reaches by fine-tuning on k held-out forget examples (learning-rate sweep, fixed "
        f"budget). Labelled share of the training set: {share:.3f}.</p>",
        table(["method", "forget", "retain", *[f"relearn k={k}" for k in ks]], rows, numeric=range(1, 3 + len(ks))),
    ]
    for k in ks:
        curves, steps = {}, None
        for m, r in methods.items():
            rel = r["relearn"]
            lr = rel["best_lr"][str(k)]
            curves[f"{m} (lr {lr:g})"] = rel["curves"][str(k)][repr(lr)]
            steps = rel["steps"]
        body.append(f"<h2>Relearning, k = {esc(k)}</h2>" + figures.embed(figures.curves(
            steps or [0], curves, f"relearning with k = {k}", "attack step", "forget metric")))
    chosen = [[m, r["selection"]["selected"]["lr"], r["selection"]["selected"]["steps"], r["selection"]["selected"]["forget"],
               r["selection"]["selected"]["retain"], r["selection"]["retain_limit"], "yes" if r["selection"]["admissible"] else "no",
               len(r["selection"]["points"])] for m, r in methods.items() if r.get("selection")]
    if chosen:
        body.append(
            "<h2>Selected settings</h2><p>Each method's grid point with the best validation forget metric among those whose "
            "validation retain metric is within the rule's limit of the base model's (see <code>rule</code> below).</p>"
            + table(["method", "lr", "steps", "forget (val.)", "retain (val.)", "retain limit", "admissible", "grid points"],
                    chosen, numeric=[1, 2, 3, 4, 5, 7])
        )
    era_sel = (methods.get("era") or {}).get("selection") or {}
    if "after_ablation" in era_sel:
        a = era_sel["after_ablation"]
        body.append(
            f"<p>ERA right after the ablation, before the coherence fine-tune (validation): forget {a['forget']:.4g}, retain "
            f"{a['retain']:.4g} (base model's retain: {era_sel['base_retain']:.4g}). A retain metric far from the base model's "
            "means the new units carried retain computation, and the coherence fine-tune is re-training it.</p>"
        )
    body.append("<h2>Settings</h2>" + table(["field", "value"], [[k, Raw(f"<code>{esc(json.dumps(v))}</code>")] for k, v in result["config"].items()]))
    return page(title, "\n".join(body), figures=bool(ks))


def validation_html(result: Mapping[str, Any], title: str) -> str:
    """Report of a counterfactual validation (:class:`RemovalResult.to_dict()` plus context)."""
    s = result["summary"]
    rows = [[arm, s[arm]] for arm in ("base", "after_topk", "after_random", "after_iterative") if arm in s]
    seeds = result["config"]["seeds"]
    iterative = bool(result.get("after_iterative"))
    per_seed = [[seed, result["base"][i], result["after_topk"][i], result["after_random"][i]]
                + ([result["after_iterative"][i]] if iterative else []) for i, seed in enumerate(seeds)]
    removed = result.get("removed_ids", result["removed_topk"])
    body = [
        f"<p>Behaviour: <code>{esc(result.get('behaviour', '?'))}</code> (mean over the queries). Removing the top "
        f"{esc(result['config']['k'])} proponents should move it against its direction far more than removing as many random examples.</p>",
        table(["arm", "behaviour (mean over seeds)"], rows, numeric=[1]),
        "<h2>Per seed</h2>", table(["seed", "base", "after top-k", "after random"] + (["after iterative"] if iterative else []),
                                   per_seed, numeric=[1, 2, 3, 4] if iterative else [1, 2, 3]),
        "<h2>Removed (top-k)</h2>", "<p>" + ", ".join(esc(r) for r in removed) + "</p>",
        "<h2>Settings</h2>", f"<p><code>{esc(json.dumps(result['config']))}</code></p>",
    ]
    return page(title, "\n".join(body))
