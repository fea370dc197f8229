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
    limit: int | None, report: Path | None, *, verify: bool = True, device: Any = None, model_dtype: Any = None,
    executor: Any = None,
) -> list[dict[str, Any]]:
    """Score the first ``limit`` queries (all when None) against a store made
    with ``--hf-model``; returns one record per (query, rank). With
    ``report``, also writes the HTML report (its proponents or opponents are
    the ones of the records, not computed again). ``verify``: check each
    shard read against its checksum. ``device``, ``model_dtype``,
    ``executor``: as :class:`~gradtrace.scoring.Attributor` takes them
    (under a distributed executor every rank calls this, and only the main
    one writes the report)."""
    attributor, b, examples, qids, qf = query_hf(
        store, queries, behaviour, hf_model, limit, verify=verify, device=device, model_dtype=model_dtype, executor=executor,
        variant=variant,
    )
    topk = attributor.top_k(qf, k=k, largest=not opponents, variant=variant)
    records = topk.to_records(list(qids), attributor.store.tags)
    if report is not None:
        other = attributor.top_k(qf, k=k, largest=opponents, variant=variant)
        pro, opp = (other, topk) if opponents else (topk, other)
        if getattr(executor, "is_main", True):
                write_report(report, attributor, qf, examples, qids, pro, opp, variant, behaviour)
    return records


def write_report(
    report: Path, attributor: Any, qf: Any, examples: list, qids: list[str], pro: Any, opp: Any, variant: str, behaviour: str,
) -> None:
    """The proponents ``pro`` and opponents ``opp`` (:class:`~gradtrace.scoring.TopK`)
    of each query with their per-checkpoint contributions, as HTML."""
    from ..report.lm_report import lm_report

    st = attributor.store
    bpro, bopp = rowwise_breakdown(attributor, qf, [pro, opp], variant)
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


def rowwise_breakdown(attributor: Any, qf: Any, topks: list[Any], variant: str) -> list[Any]:
    """For each :class:`~gradtrace.scoring.TopK` of ``topks``, the
    ``[n_checkpoint, n_query, k]`` per-checkpoint contributions to each
    query's own listed examples; one :meth:`Attributor.breakdown` pass over
    the examples listed anywhere."""
    import numpy as np

    flat = sorted({int(i) for t in topks for i in t.indices.ravel()})
    col = {i: j for j, i in enumerate(flat)}
    full = attributor.breakdown(qf, flat, variant=variant)
    out = []
    for topk in topks:
        cols = np.array([[col[int(i)] for i in row] for row in topk.indices], dtype=np.int64).reshape(topk.indices.shape)
        out.append(full[:, np.arange(cols.shape[0])[:, None], cols])
    return out


__all__ = ["run_hf_query", "write_report", "rowwise_breakdown", "HFSpec"]
