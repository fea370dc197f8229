"""``gradtrace allocate``, ``gradtrace influence-over-time`` and ``gradtrace compare-runs``."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ..cli_common import (
    check_variant, console, json_option, jsonable, output_file, positive_option, print_json, progress_option, run_or_exit,
    table, variant_help,
)
from ..errors import InputError
from ..fileio import atomic_write_bytes, json_bytes


def register(app: typer.Typer) -> None:
    app.command("allocate")(allocate_command)
    app.command("influence-over-time")(influence_over_time_command)
    app.command("compare-runs")(compare_runs_command)


def _write_outputs(out: Path | None, data: Any, report: Path | None, html_text: Any) -> None:
    if out is not None:
        atomic_write_bytes(out, json_bytes(jsonable(data)))
    if report is not None:
        atomic_write_bytes(report, html_text().encode("utf-8"))


def _fmt(v: float) -> str:
    return f"{v:.5g}"


# -- allocate ---------------------------------------------------------------------------------------------------------

def allocate_command(
    task: Optional[str] = typer.Option(None, help="path/to/file.py:make_task (a TaskSpec): its model, checkpoints, queries and behaviour"),
    hf_model: Optional[str] = typer.Option(None, help="instead of --task: 'smollm2' or a local Hugging Face causal-LM folder"),
    checkpoints: Optional[Path] = typer.Option(None, help="with --hf-model: a Trainer run (checkpoint-N folders)"),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="with --hf-model: query examples (JSONL)"),
    behaviour: str = typer.Option("logprob", help="with --hf-model: logprob | margin | contrast | loss"),
    max_length: int = typer.Option(256, help="with --hf-model: token cap of prompt + completion"),
    as_chat: bool = typer.Option(False, help="with --hf-model: render prompt/completion with the chat template"),
    rule: str = typer.Option("gauss", help="quadrature rule: gauss | trapezoid | simpson | left (first-order baseline)"),
    points: Optional[int] = typer.Option(None, help="gradient evaluations per interval (default: 8 for gauss, 17 for trapezoid and simpson, 1 for left)"),
    params: list[str] = typer.Option(["moved"], help="'moved' (every parameter that changes), 'all', or name patterns (repeat)"),
    from_init: bool = typer.Option(False, help="with --task: the model factory's weights are the run's start (an interval before the first checkpoint)"),
    limit: Optional[int] = typer.Option(None, help="use only the first N queries"),
    batch_size: int = typer.Option(64, help="queries per forward/backward pass"),
    level: str = typer.Option("module", help="grouping printed: tensor | module | block | layer"),
    top: int = typer.Option(15, help="groups to print"),
    out: Optional[Path] = typer.Option(None, help="write the allocation as JSON"),
    report: Optional[Path] = typer.Option(None, help="write an HTML report (heatmaps layer/block/module x interval)"),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Which parameters moved a behaviour, and when: loss-change allocation between consecutive checkpoints."""
    from .groups import LEVELS
    from .path import allocate_run, default_points, quadrature

    def go() -> None:
        positive_option(limit, "--limit")
        positive_option(top, "--top")
        positive_option(batch_size, "--batch-size")
        if level not in LEVELS:
            raise InputError(f"--level must be one of {', '.join(LEVELS)}; got {level!r}")
        n_points = points if points is not None else default_points(rule)
        quadrature(rule, n_points)
        output_file(out, "--out", (".json",))
        output_file(report, "--report", (".html",))
        selection: Any = "moved" if params == ["moved"] else ("all" if params == ["all"] else tuple(params))
        model, the_task, refs, loader, queries, b = _allocation_inputs(task, hf_model, checkpoints, queries_file, behaviour,
                                                                       max_length, as_chat, from_init, limit)
        run = allocate_run(model, b, queries, refs, task=the_task, rule=rule, points=n_points, params=selection,
                           checkpoint_loader=loader, include_initial=from_init, batch_size=batch_size, progress=progress)
        data = run.to_dict()

        def html() -> str:
            from .report import allocation_html

            return allocation_html(run)

        _write_outputs(out, data, report, html)
        if as_json:
            print_json(dict(data, out=out, report=report))
            return
        console.print(table(f"allocation of {run.behaviour} ({run.rule}, {run.points} points)",
                            ["interval", "measured change", "allocated", "completeness error", "relative"],
                            [(iv.label(), _fmt(iv.measured_change), _fmt(iv.allocated), _fmt(iv.completeness_error),
                              _fmt(iv.relative_error)) for iv in run.intervals]))
        totals = run.total(level)
        order = sorted(totals, key=lambda g: -abs(totals[g]))[:top]
        console.print(table(f"whole run by {level}", [level, "allocation"], [(g, _fmt(totals[g])) for g in order]))
        if run.unallocated:
            console.print(f"moved but not allocated (outside --params): {', '.join(run.unallocated)}")
        for path, what in ((out, "allocation"), (report, "report")):
            if path is not None:
                console.print(f"{what}: {path}")

    run_or_exit(go)


def _allocation_inputs(task: str | None, hf_model: str | None, checkpoints: Path | None, queries_file: Path | None,
                       behaviour: str, max_length: int, as_chat: bool, from_init: bool, limit: int | None) -> tuple:
    from ..data import head

    if (task is None) == (hf_model is None):
        raise InputError("allocate needs one of --task (a TaskSpec file) and --hf-model (a Hugging Face run)")
    if task is not None:
        given = [n for n, v in (("--checkpoints", checkpoints), ("--queries", queries_file)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} apply only with --hf-model; with --task the TaskSpec gives them")
        from ..spec import load_task_spec

        spec = load_task_spec(task)
        if spec.queries is None:
            raise InputError(f"--task {task}: the TaskSpec has no queries (the behaviour is measured on them)")
        return (spec.model(), spec.task, list(spec.checkpoints), spec.checkpoint_loader, head(spec.queries, limit, "--limit"),
                spec.behaviour)
    if from_init:
        raise InputError("--from-init applies only with --task (a Hugging Face run's initial adapter is not saved)")
    if checkpoints is None or queries_file is None:
        raise InputError("--hf-model needs --checkpoints (a Trainer run) and --queries (a JSONL file)")
    from ..models.hf import PreferenceMarginBehaviour, behaviour_by_name
    from ..models.hf_checkpoints import load_hf_checkpoint
    from ..models.hf_spec import COMPLETION_FIELDS, PAIR_FIELDS, HFSpec, read_jsonl

    b = behaviour_by_name(behaviour)
    fields = PAIR_FIELDS if isinstance(b, PreferenceMarginBehaviour) else COMPLETION_FIELDS
    examples, _, _ = read_jsonl(queries_file, "--queries", fields, f"--behaviour {behaviour} needs")
    spec = HFSpec(model=hf_model, checkpoints=str(Path(checkpoints).resolve()), max_length=max_length, as_chat=as_chat, lr=1.0)
    refs = spec.refs()  # the learning rate plays no part in an allocation
    model, the_task = spec.load()
    return model, the_task, refs, load_hf_checkpoint, head(examples, limit, "--limit"), b


# -- query side shared by influence-over-time and compare-runs ---------------------------------------------------------

def _query_features(store: Path, task: str | None, queries_file: Path | None, behaviour: str | None, hf_model: str | None,
                    limit: int | None, variant: str, verify: bool) -> tuple[Any, Any, list[str]]:
    """``(attributor, query features, query ids)`` for a store made with --task or --hf-model."""
    from ..data import head

    if (task is None) == (queries_file is None):
        raise InputError("give one of --task (a TaskSpec file) and --queries (for stores made with --hf-model)")
    if task is not None:
        given = [n for n, v in (("--behaviour", behaviour), ("--hf-model", hf_model)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} apply only with --queries; with --task the TaskSpec sets the model and the behaviour")
        from ..scoring import Attributor
        from ..spec import load_task_spec
        from ..store import GradientStore

        spec = load_task_spec(task)
        if spec.queries is None:
            raise InputError(f"--task {task}: the TaskSpec has no queries")
        queries = head(spec.queries, limit, "--limit")
        qids = head(list(spec.query_ids), limit, "--limit") if spec.query_ids is not None else None
        attributor = Attributor(GradientStore.open(store, verify=verify), spec.model(), spec.task,
                                checkpoint_loader=spec.checkpoint_loader)
        qf = attributor.query_features(queries, spec.behaviour, variant=variant)
        return attributor, qf, list(qids) if qids is not None else [f"q{i}" for i in range(qf.n)]
    from ..models.hf_query import query_hf

    if variant != "raw":
        raise InputError("--variant: with --queries only raw is supported here")
    attributor, _, _, qids, qf = query_hf(store, queries_file, behaviour or "logprob", hf_model, limit, verify=verify)  # type: ignore[arg-type]
    return attributor, qf, list(qids)


def _variant_option() -> Any:
    return typer.Option("raw", help=variant_help())


# -- influence over time ----------------------------------------------------------------------------------------------

def influence_over_time_command(
    store: Path = typer.Argument(..., help="a store made by 'gradtrace featurize'"),
    task: Optional[str] = typer.Option(None, help="the same --task as featurize; its queries are traced"),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="for a store made with --hf-model: query examples (JSONL)"),
    behaviour: Optional[str] = typer.Option(None, help="with --queries: logprob (default) | margin | contrast | loss"),
    hf_model: Optional[str] = typer.Option(None, help="with --queries: the model (default: the one saved with the store)"),
    k: int = typer.Option(5, help="proponents and opponents listed per checkpoint"),
    mass: float = typer.Option(0.5, help="critical period: the shortest run of checkpoints holding this share of |influence|"),
    limit: Optional[int] = typer.Option(None, help="trace only the first N queries"),
    variant: str = _variant_option(),
    show: int = typer.Option(3, help="queries to print"),
    out: Optional[Path] = typer.Option(None, help="write the timeline as JSON"),
    report: Optional[Path] = typer.Option(None, help="write an HTML report (influence-over-time bars per query)"),
    verify: bool = typer.Option(True, help="check each shard read against its recorded checksum"),
    as_json: bool = json_option(),
) -> None:
    """Which checkpoints (training periods) carried each query's influence, and which examples dominated each."""
    from .timeline import influence_over_time

    def go() -> None:
        positive_option(k, "--k")
        positive_option(limit, "--limit")
        positive_option(show, "--show")
        if not 0.0 < mass <= 1.0:
            raise InputError(f"--mass must be in (0, 1]; got {mass!r}")
        check_variant(variant)
        output_file(out, "--out", (".json",))
        output_file(report, "--report", (".html",))
        attributor, qf, qids = _query_features(store, task, queries_file, behaviour, hf_model, limit, variant, verify)
        tl = influence_over_time(attributor, qf, k=k, mass=mass, variant=variant, query_ids=qids)
        st = attributor.store
        data = tl.to_dict(st.ids)

        def html() -> str:
            from .report import timeline_html

            return timeline_html(tl, st.ids, st.tags)

        _write_outputs(out, data, report, html)
        if as_json:
            print_json(dict(data, out=out, report=report))
            return
        share = tl.abs_share
        crit = tl.behaviour_critical()
        console.print(table("influence over time (all queries)", ["checkpoint", "mean abs share", "mean signed"],
                            [(lab, _fmt(share[c].mean()), _fmt(tl.signed[c].mean())) for c, lab in enumerate(tl.labels)]))
        console.print(f"critical period: {tl.labels[crit.first]} .. {tl.labels[crit.last]} "
                      f"(share {crit.share:.3f}, concentration {crit.concentration:.2f}, peak {tl.labels[crit.peak]})")
        for q, qid in enumerate(qids[:show]):
            c = tl.critical(q)
            console.print(table(f"query {qid}: critical {tl.labels[c.first]} .. {tl.labels[c.last]} (share {c.share:.3f})",
                                ["checkpoint", "abs share", "signed", "top proponent", "top opponent"],
                                [(lab, _fmt(share[ci, q]), _fmt(tl.signed[ci, q]), st.ids[int(tl.top[ci, q, 0])],
                                  st.ids[int(tl.bottom[ci, q, 0])]) for ci, lab in enumerate(tl.labels)]))
        for path, what in ((out, "timeline"), (report, "report")):
            if path is not None:
                console.print(f"{what}: {path}")

    run_or_exit(go)


# -- compare runs -----------------------------------------------------------------------------------------------------

def compare_runs_command(
    stores: list[Path] = typer.Argument(..., help="two or more stores of the same training data under different runs"),
    task: Optional[str] = typer.Option(None, help="a TaskSpec file whose model and queries fit every store (else: self-influence only)"),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="for stores made with --hf-model: query examples (JSONL)"),
    behaviour: Optional[str] = typer.Option(None, help="with --queries: logprob (default) | margin | contrast | loss"),
    k: int = typer.Option(10, help="top-k for the overlap"),
    n_differ: int = typer.Option(10, help="examples listed per query whose influence differs most"),
    limit: Optional[int] = typer.Option(None, help="compare only the first N queries"),
    variant: str = _variant_option(),
    max_splits: int = typer.Option(20, help="split-half stability: pairs of disjoint run sets per size"),
    out: Optional[Path] = typer.Option(None, help="write the comparison as JSON"),
    report: Optional[Path] = typer.Option(None, help="write an HTML report (scatter plots, overlaps, averaging)"),
    verify: bool = typer.Option(True, help="check each shard read against its recorded checksum"),
    as_json: bool = json_option(),
) -> None:
    """How stable is attribution across runs: rank correlation, top-k overlap, the examples that differ most, and averaging."""
    from ..scoring import self_influence
    from ..store import GradientStore
    from .runs import average_runs, compare_runs, spearman_rows, split_half_stability, topk_jaccard

    def go() -> None:
        positive_option(k, "--k")
        positive_option(n_differ, "--n-differ")
        positive_option(limit, "--limit")
        positive_option(max_splits, "--max-splits")
        check_variant(variant)
        if len(stores) < 2:
            raise InputError(f"compare-runs needs at least two stores; got {len(stores)}")
        output_file(out, "--out", (".json",))
        output_file(report, "--report", (".html",))
        opened = [GradientStore.open(s, verify=verify) for s in stores]
        ids = opened[0].ids
        for s, st in zip(stores[1:], opened[1:]):
            if st.ids != ids:
                raise InputError(f"store {str(s)!r} holds other training examples than {str(stores[0])!r} "
                                 f"({st.n_examples} vs {len(ids)} examples, or other ids): compare runs of the same data")
        prints = [[seg.get("fingerprint") for seg in st.manifest["segments"]] for st in opened]
        for s, fp in zip(stores[1:], prints[1:]):
            if fp != prints[0]:
                warnings.warn(f"store {str(s)!r} was featurized on training data whose content differs from {str(stores[0])!r}'s "
                              "(data fingerprints); examples are matched by id and position")
        names = [str(s) for s in stores]
        si = [self_influence(st)[None, :] for st in opened]
        si_pairs = [{"a": a, "b": b, "spearman": float(spearman_rows(si[a], si[b])[0]), "jaccard": float(topk_jaccard(si[a], si[b], k)[0])}
                    for a, b in itertools.combinations(range(len(si)), 2)]
        data: dict[str, Any] = {"stores": names, "k": k, "self_influence": {"k": k, "pairs": si_pairs}}
        pairs, scores, stability, qids = [], None, None, []
        if task is not None or queries_file is not None:
            scores = []
            for s in stores:
                attributor, qf, qids = _query_features(s, task, queries_file, behaviour, None, limit, variant, verify)
                scores.append(attributor.score(qf, variant=variant))
            pairs = [(a, b, compare_runs(scores[a], scores[b], k, n_differ)) for a, b in itertools.combinations(range(len(scores)), 2)]
            stability = split_half_stability(scores, k=k, max_splits=max_splits) if len(scores) >= 2 else None
            mean = average_runs(scores)
            data["queries"] = qids
            data["pairs"] = [{
                "a": a, "b": b, **c.summary(), "spearman": c.spearman.tolist(), "jaccard": c.jaccard.tolist(),
                "most_different": [[{"train": ids[int(i)], "z_difference": float(d)} for i, d in zip(row_i, row_d)]
                                   for row_i, row_d in zip(c.differ, c.differ_z)],
            } for a, b, c in pairs]
            data["averaging"] = stability
            data["averaged_vs_each_run"] = [{"run": r, "spearman_mean": float(np.nanmean(spearman_rows(mean, sc)))}
                                            for r, sc in enumerate(scores)]

        def html() -> str:
            from .report import runs_html

            return runs_html(names, pairs, qids, ids, scores, stability, data["self_influence"])

        _write_outputs(out, data, report, html)
        if as_json:
            print_json(dict(data, out=out, report=report))
            return
        console.print(table(f"self-influence across runs (top-{k} overlap)", ["runs", "Spearman", "Jaccard"],
                            [(f"{p['a'] + 1} vs {p['b'] + 1}", _fmt(p["spearman"]), _fmt(p["jaccard"])) for p in si_pairs]))
        if pairs:
            console.print(table(f"query scores across runs ({len(qids)} queries, top-{k})",
                                ["runs", "mean Spearman", "mean Jaccard (proponents)", "mean Jaccard (opponents)"],
                                [(f"{a + 1} vs {b + 1}", _fmt(c.summary()["spearman_mean"]), _fmt(c.summary()["jaccard_mean"]),
                                  _fmt(c.summary()["jaccard_opponents_mean"])) for a, b, c in pairs]))
        if stability:
            console.print(table("averaging m runs: agreement of two disjoint averages", ["m", "Spearman", "Jaccard", "splits"],
                                [(s["m"], _fmt(s["spearman"]), _fmt(s["jaccard"]), s["n_splits"]) for s in stability]))
        console.print("runs: " + ", ".join(f"{i + 1}: {n}" for i, n in enumerate(names)))
        for path, what in ((out, "comparison"), (report, "report")):
            if path is not None:
                console.print(f"{what}: {path}")

    run_or_exit(go)
