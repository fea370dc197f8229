"""The HTML report of a probe run: per-subtask accuracy (a table and the
figure ``gradtrace serve`` shows, :func:`gradtrace.report.figures.probe_accuracy`)
and the items the model got most wrong. Self-contained (plotly inlined);
every text (items are untrusted data) is escaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..fileio import atomic_write_bytes
from ..report.html import esc, page, table
from .items import SUBTASK_MEANING, Item


def run_report_html(record: Mapping[str, Any], items: Sequence[Item], worst: int = 5) -> str:
    by_id = {it.id: it for it in items}
    parts = [f'<p class="note">model {esc(record["model"])}, suite {esc(record["suite"])}. Accuracy: the key has the highest '
             "length-normalised log-probability, averaged over the cyclic orders of the options; 95% Wilson interval.</p>"]
    from ..report import figures

    subs = list(record["summary"])
    fig = figures.probe_accuracy(subs, {str(record["model"]): [(record["summary"][s]["accuracy"], record["summary"][s]["ci_low"],
                                                               record["summary"][s]["ci_high"]) for s in subs]},
                                 "accuracy per subtask (95% Wilson interval)")
    parts.append(figures.embed(fig))
    parts.append(table(["subtask", "meaning", "n", "accuracy", "CI low", "CI high", "paraphrase consistency", "groups"], (
        [s, SUBTASK_MEANING[s], v["n"], v["accuracy"], v["ci_low"], v["ci_high"], v["consistency"], v["paraphrase_groups"]]
        for s, v in record["summary"].items()), numeric=(2, 3, 4, 5, 6, 7)))
    for sub in record["summary"]:
        rows = sorted((r for r in record["items"] if r["subtask"] == sub), key=lambda r: r["margin"])[:worst]
        body = []
        for r in rows:
            it = by_id.get(r["id"])
            if it is None:
                continue
            opts = " | ".join(f"{'*' if i == it.key else ''}{o}" for i, o in enumerate(it.options))
            body.append([r["id"], it.scenario, it.question, opts, r["margin"]])
        parts.append(f"<h2>{esc(sub)}: lowest margins</h2>" + table(["id", "scenario", "question", "options (* key)", "margin"], body,
                                                                   numeric=(4,)))
    return page(f"probe run: {record['model']}", "\n".join(parts), figures=True)


def write_run_report(path: str | Path, record: Mapping[str, Any], items: Sequence[Item]) -> Path:
    path = Path(path)
    atomic_write_bytes(path, run_report_html(record, items).encode("utf-8"))
    return path
