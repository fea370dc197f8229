"""``gradtrace query --queries``: proponents/opponents of an LM behaviour,
records for JSONL/Parquet, and the optional HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .hf_cli import query_hf
from .hf_spec import HFSpec, read_jsonl


def run_hf_query(
    store: Path, queries: Path, behaviour: str, hf_model: str | None, k: int, opponents: bool, variant: str,
    limit: int | None, report: Path | None,
) -> list[dict[str, Any]]:
    """Score the queries against a store made with ``--hf-model``; returns one record per (query, rank)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be a positive integer; got {limit!r}")
    attributor, b, examples, qids, qf = query_hf(store, queries, behaviour, hf_model)
    if limit is not None:
        import dataclasses

        qf = dataclasses.replace(qf, unit=[u[:limit] for u in qf.unit], norms=[n[:limit] for n in qf.norms], n=min(limit, qf.n))
        examples, qids = examples[:limit], qids[:limit]
    st = attributor.store
    topk = attributor.top_k(qf, k=k, largest=not opponents, variant=variant)
    records = topk.to_records(list(qids), st.tags)
    if report is not None:
        write_report(report, attributor, qf, examples, qids, k, variant, behaviour)
    return records


def write_report(report: Path, attributor: Any, qf: Any, examples: list, qids: list[str], k: int, variant: str, behaviour: str) -> None:
    """Proponents and opponents of each query with their per-checkpoint contributions, as HTML."""
    from ..report.lm_report import lm_report

    st = attributor.store
    pro = attributor.top_k(qf, k=k, largest=True, variant=variant)
    opp = attributor.top_k(qf, k=k, largest=False, variant=variant)
    bpro, bopp = _rowwise_breakdown(attributor, qf, pro, variant), _rowwise_breakdown(attributor, qf, opp, variant)
    data_path = HFSpec.saved(st.root).data
    if data_path is not None and Path(data_path).is_file():
        train = read_jsonl(data_path, "--data")[0]
    else:
        train = [{"prompt": "(training text not available: the --data file has moved)", "completion": ""} for _ in st.ids]
    if len(train) != st.n_examples:
        raise InputError(f"the --data file {data_path!r} now holds {len(train)} examples; the store has {st.n_examples}")
    labels = [f"step {r.step}" for r in st.checkpoints]
    html_text = lm_report(
        f"gradtrace: {behaviour} attribution", examples, qids, train, st.ids, st.tags, pro, opp, bpro, bopp, labels, behaviour,
        intro=f"store {st.root}: {st.n_examples} training examples, {len(st.checkpoints)} checkpoints",
    )
    Path(report).write_text(html_text, encoding="utf-8")


def _rowwise_breakdown(attributor: Any, qf: Any, topk: Any, variant: str) -> Any:
    """``[n_checkpoint, n_query, k]``: each query's own listed examples."""
    import numpy as np

    flat = sorted({int(i) for i in topk.indices.ravel()})
    col = {i: j for j, i in enumerate(flat)}
    full = attributor.breakdown(qf, flat, variant=variant)
    out = np.zeros((full.shape[0], topk.indices.shape[0], topk.indices.shape[1]))
    for q in range(topk.indices.shape[0]):
        for r in range(topk.indices.shape[1]):
            out[:, q, r] = full[:, q, col[int(topk.indices[q, r])]]
    return out


__all__ = ["run_hf_query", "write_report", "HFSpec"]
