"""The audit's self-contained HTML page: no scripts, no external files, every
text escaped (training data and generated texts are untrusted). Per-checkpoint
contributions are written as numbers (no figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes
from ..report.html import Raw, esc, page, table


def _share(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    return f"{s['share']:.3f} ({s['count']}/{s['n']}; 95% CI {lo:.3f}-{hi:.3f})"


def example_text(ex: dict[str, Any]) -> str:
    """A training example (prompt/completion or messages) as plain text, as the
    report and the explorer show it (unescaped: escape it where it is placed)."""
    if "messages" in ex:
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in ex["messages"])
    return f"prompt: {ex.get('prompt', '')}\ncompletion: {ex.get('completion', '')}"


def _example(ex: dict[str, Any]) -> Raw:
    return Raw(f"<pre style=\"white-space:pre-wrap;margin:0\">{esc(example_text(ex)[:600])}</pre>")


def _member_counts(m: dict[str, Any]) -> str:
    if m.get("view") == "likelihood":  # tested against B's other texts, not against A
        return f"B in {m['valid_b']} / B out {m['valid_out']}; median d {m['d_in']:.3g} vs {m['d_out']:.3g}"
    return f"{m['valid_a']}/{m['valid_b']}"


def _behaviour(b: dict[str, Any]) -> str:
    parts = [f"<section><h3>#{b['index'] + 1} {esc(b['label'])}</h3>"]
    test = b.get("test")
    q_name = ("q-value (BH, the behaviour tested as a whole)" if test else
              "q-value (BH, lowest member)")
    parts.append(table(["measure", "value"], [
        ("found by", f"the {b.get('view', 'clusters')} view, {len(b['members'])} member cluster(s)"),
        ("skewed to", b["skew"]), (q_name, f"{b['q_value']:.3g}" if b["q_value"] is not None else "n/a"),
        *([("validation texts in the behaviour (A / B)", f"{test['valid_a']} / {test['valid_b']}")] if test else []),
        ("share of A's texts", _share(b["share_a"])), ("share of B's texts", _share(b["share_b"])),
        *([("share of influence carried by the top proponents", f"{b['influence_share_top_k']:.3f}")] if "influence_share_top_k" in b else []),
    ]))
    parts.append(f"<details open><summary>member clusters ({len(b['members'])})</summary>" + table(
        ["rank", "view", "level", "label", "q", "A/B (validation)", "judge"],
        [(m["rank"], m.get("view", "clusters"), m["level"], m["label"], f"{m['q_value']:.3g}", _member_counts(m),
          (m.get("judgement") or "") + (f": {m['judgement_reason']}" if m.get("judgement_reason") else "")) for m in b["members"]],
    ) + "</details>")
    if "target" in b:
        if b["target"]["behaviour"] == "contrast":
            head, cells = ["prompt", "chosen (B)", "rejected (A)"], [(q["prompt"], q["chosen"], q["rejected"]) for q in b["target"]["queries"]]
        else:  # logprob: only B's text (cut after the behaviour's sentence) is traced
            head, cells = ["prompt", "B's text (its log-probability is traced)"], [(q["prompt"], q["chosen"]) for q in b["target"]["queries"]]
        parts.append(f"<details><summary>attribution target: {esc(b['target']['behaviour'])} (first queries)</summary>"
                     + table(head, cells) + "</details>")
    if "proponents" in b:
        rows = []
        for p in b["proponents"]:
            steps = list(p["per_checkpoint"])
            rows.append((p["rank"], p["id"], f"{p['score']:.4g}",
                         "; ".join(f"step {s}: {p['per_checkpoint'][s]:+.3g}" for s in steps), _example(p["example"])))
        parts.append("<h4>Top training examples (proponents)</h4>")
        parts.append(table(["rank", "id", "score", "per checkpoint", "example"], rows, numeric=(0, 2)))
    v = b.get("verification")
    if v:
        rows = [("none (B as trained)", "", _share(v["share_b_before"]), "", "", "")]
        if "retrain_all" in v:
            a = v["retrain_all"]
            rows.append(("none, retrained on all the data (does the recipe rebuild B?)", "", _share(a["share_b_after"]), "yes" if a["within_base_ci95"] else "no",
                         "yes" if a["rediff_still_flagged"] else "no", ""))
        for arm, name in (("topk", f"top {v['k']} proponents"), ("random", f"{v['k']} random examples")):
            a = v[arm]
            moved = [o["label"] for o in a["other_behaviours"].values() if o["moved"]]
            rows.append((name, ", ".join(a["removed_ids"][:12]) + (" ..." if len(a["removed_ids"]) > 12 else ""),
                         _share(a["share_b_after"]), "yes" if a["within_base_ci95"] else "no",
                         "yes" if a["rediff_still_flagged"] else "no", "; ".join(moved) or "none"))
        parts.append("<h4>Verification: removed, retrained, re-sampled</h4>")
        parts.append(table(["removed", "ids", "share of B's texts", "within A's 95% CI", "still flagged in re-diff",
                            "other behaviours that moved (p < 0.05)"], rows))
        parts.append(f"<p>Removing the top proponents lowered the share more than removing random examples: "
                     f"<b>{'yes' if v['topk_reduces_more_than_random'] else 'no'}</b>.</p>")
    parts.append("</section>")
    return "".join(parts)


def write_report(audit: dict[str, Any], path: str | Path) -> Path:
    beh = audit["behaviours"]
    parts = [
        f"<p>Model A: <b>{esc(audit['model_a'])}</b>. Model B: the {esc(audit['run_kind'])} run <b>{esc(audit['run'])}</b> "
        f"({len(audit['checkpoints'])} checkpoints) on <b>{esc(audit['data'])}</b> ({audit['n_training_examples']} examples).</p>",
        f"<p>{audit['n_texts']['a']} texts from A and {audit['n_texts']['b']} from B; {audit['diff']['flagged']} of "
        f"{audit['diff']['clusters']} clusters flagged at FDR {audit['diff']['alpha']} ({esc(audit['diff']['embedder'])}), grouped into "
        f"{len(beh)} behaviours by {esc(audit['grouper'])}.</p>",
        *([f"<p>Likelihood view (texts and sentences B finds far likelier than A): {audit['likelihood']['flagged']} of "
           f"{audit['likelihood']['clusters']} clusters flagged at FDR {audit['likelihood']['alpha']}.</p>"] if audit.get("likelihood") else []),
        "<p class=\"note\">Share: the fraction of a model's sampled texts that show the behaviour (95% Wilson interval). "
        "Proponents: training examples whose TracIn score over the run's checkpoints raises the behaviour's contrast target "
        "most; see docs/audit.md for what each number means and what the verification does and does not prove.</p>",
        "<h2>Behaviours</h2>",
        table(["#", "view", "label", "members", "skew", "q", "share A", "share B", "verified: top-k / random share after"],
              [(b["index"] + 1, b.get("view", "clusters"), b["label"], len(b["members"]), b["skew"],
                f"{b['q_value']:.3g}" if b["q_value"] is not None else "n/a",
                f"{b['share_a']['share']:.3f}", f"{b['share_b']['share']:.3f}",
                (f"{b['verification']['topk']['share_b_after']['share']:.3f} / {b['verification']['random']['share_b_after']['share']:.3f}"
                 if "verification" in b else "")) for b in beh]),
        "<h2>Details</h2>",
        *[_behaviour(b) for b in beh],
    ]
    path = Path(path)
    atomic_write_bytes(path, page("gradtrace audit", "\n".join(parts)).encode("utf-8"))
    return path
