"""The ``gradtrace`` command. Thin: every verb maps to one library call.

Everything printed goes through :mod:`gradtrace.cli_common` (untrusted text
escaped, plain output off a terminal); ``--json`` prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .cli_common import (  # noqa: F401 - check_variant and PYTHON_ONLY_METHODS are public here too
    PYTHON_ONLY_METHODS, check_variant, console, device_option, json_option, output_dir, output_file, positive_option, print_json,
    progress_option, run_or_exit, table, variant_help,
)
from .errors import InputError
from .scoring import SCORE_MEANING, get_method

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Trace model behaviour back to training data.",
    pretty_exceptions_show_locals=False,  # a traceback must never print local values (an API key, a user's data)
)

RECORD_SUFFIXES = (".jsonl", ".parquet")


def _params(params: list[str]) -> Any:
    if params in ([], ["all"]):
        return "all"
    if params == ["last"]:
        return "last"
    return tuple(params)


def model_dtype_option() -> Any:
    """``--model-dtype``: the dtype of the forward and backward passes."""
    return typer.Option(
        None, help="float32 | bfloat16 | float16 | float64: dtype of the forward/backward passes (default: the model's own); "
        "features and norms accumulate in float32",
    )


def _variant_help() -> str:
    return variant_help()


def _print_store_summary(store: Any, as_json: bool) -> None:
    """What featurize reports about the store it wrote."""
    s = {"store": str(store.root), "examples": store.n_examples, "checkpoints": len(store.checkpoints),
         "feature_dim": store.feature_dim, "complete": bool(store.complete)}
    if as_json:
        print_json(s)
    else:
        console.print(f"store {s['store']}: {s['examples']} examples, {s['checkpoints']} checkpoints, "
                      f"feature dim {s['feature_dim']}, complete={s['complete']}")


@app.command()
def featurize(
    task: Optional[str] = typer.Option(None, help="path/to/file.py:make_task, a function returning a gradtrace.spec.TaskSpec"),
    out: Path = typer.Option(..., help="store directory (created, resumed, or appended to)"),
    hf_model: Optional[str] = typer.Option(None, help="instead of --task: 'smollm2' or a local Hugging Face causal-LM folder"),
    checkpoints: Optional[Path] = typer.Option(None, help="with --hf-model: a Trainer run (checkpoint-N folders) or an adapter folder"),
    data: Optional[Path] = typer.Option(None, help="with --hf-model: training examples, JSONL of prompt/completion or messages"),
    max_length: int = typer.Option(256, help="with --hf-model: token cap of prompt + completion"),
    as_chat: bool = typer.Option(False, help="with --hf-model: render prompt/completion with the chat template"),
    lr: Optional[float] = typer.Option(None, help="with --hf-model: learning rate of every checkpoint (default: from trainer_state.json)"),
    adam: bool = typer.Option(False, help="with --hf-model: Adam-preconditioned training gradients from optimizer.pt"),
    projection: str = typer.Option("none", help="none | factored | dense | kronecker"),
    dim: Optional[int] = typer.Option(None, help="projection size (dense: total; kronecker: per layer)"),
    seed: int = typer.Option(0, help="projection seed"),
    params: list[str] = typer.Option(["all"], help="'all', 'last', or name patterns (repeat the option)"),
    batch_size: int = typer.Option(64),
    shard_size: int = typer.Option(4096),
    dtype: str = typer.Option("float32", help="float16 | float32 | float64"),
    batch_order: Optional[str] = typer.Option(
        None, help="file | length: batch each shard's examples in data order, or longest first (less padding; rows are "
                   "stored in data order either way). Default: a new store 'length', an existing one its own",
    ),
    exact_norms: bool = typer.Option(
        True, help="keep each example's exact squared gradient norm (raw self-influence reads them; "
                   "--no-exact-norms skips their cost, with --projection kronecker a Gram matrix per layer and example)",
    ),
    append: bool = typer.Option(False, help="add the task's training data as new examples"),
    on_nonfinite: str = typer.Option(
        "raise", help="an example whose loss or gradient is not finite: raise (stop, naming it) | skip (store zeros, record it)",
    ),
    device: str = device_option(),
    model_dtype: Optional[str] = model_dtype_option(),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Compute and store per-example training gradients at every checkpoint.

    Launched as several processes (torchrun, accelerate launch, srun), the
    missing shards are split over them (docs/scale.md)."""
    from . import FeaturizeConfig, ProjectionConfig
    from . import featurize as do_featurize
    from .devices import resolve_model_dtype
    from .execution_dist import launched_executor
    from .spec import load_task_spec

    def go() -> None:
        output_dir(out, "--out")
        resolve_model_dtype(model_dtype, "--model-dtype")
        with launched_executor(device) as (executor, dev):
            if hf_model is not None:
                from .models.hf_cli import featurize_hf

                store = featurize_hf(
                    hf_model=hf_model, checkpoints=checkpoints, data=data, out=out, projection=projection, dim=dim, seed=seed,
                    params=_params(params), batch_size=batch_size, shard_size=shard_size, dtype=dtype, append=append,
                    progress=progress, max_length=max_length, as_chat=as_chat, lr=lr, adam=adam, on_nonfinite=on_nonfinite,
                    device=dev, model_dtype=model_dtype, executor=executor, batch_order=batch_order, exact_norms=exact_norms,
                )
            else:
                if task is None:
                    raise InputError("featurize needs --task (a TaskSpec file) or --hf-model (a Hugging Face run)")
                spec = load_task_spec(task)
                config = FeaturizeConfig(
                    params=_params(params), projection=ProjectionConfig(projection, dim, seed), batch_size=batch_size,
                    shard_size=shard_size, dtype=dtype, batch_order=batch_order, exact_norms=exact_norms,
                )
                store = do_featurize(
                    spec.model(), spec.task, spec.checkpoints, spec.train, out, config, ids=spec.train_ids,
                    tags=spec.train_tags, append=append, checkpoint_loader=spec.checkpoint_loader, progress=progress,
                    on_nonfinite=on_nonfinite, executor=executor, device=dev, model_dtype=model_dtype,
                )
            if executor.is_main:
                _print_store_summary(store, as_json)

    run_or_exit(go)


def verify_option() -> Any:
    """``--verify/--no-verify`` of the commands that read a store's shards."""
    return typer.Option(True, help="check each shard read against its recorded checksum (--no-verify: faster, trusts the files)")


def _open_store(path: Path, verify: bool) -> Any:
    from .store import GradientStore

    return GradientStore.open(path, verify=verify)


@app.command()
def query(
    store: Path = typer.Argument(..., help="a store made by 'gradtrace featurize'"),
    task: Optional[str] = typer.Option(None, help="the same --task as featurize; its queries are scored"),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="for a store made with --hf-model: query examples (JSONL)"),
    behaviour: Optional[str] = typer.Option(None, help="with --queries: logprob (default) | margin | contrast | loss"),
    hf_model: Optional[str] = typer.Option(None, help="with --queries: the model (default: the one saved with the store)"),
    report: Optional[Path] = typer.Option(None, help="with --queries: write an HTML report here"),
    k: int = typer.Option(10, help="examples per query"),
    opponents: bool = typer.Option(False, help="most negative scores instead of most positive"),
    variant: str = typer.Option("raw", help=_variant_help()),
    out: Optional[Path] = typer.Option(None, help="write results as .jsonl or .parquet"),
    limit: Optional[int] = typer.Option(None, help="score only the first N queries"),
    show: int = typer.Option(3, help="queries to print as tables (a positive integer)"),
    index: bool = typer.Option(False, "--index", help="take candidates from the store's index ('gradtrace index'), re-rank them exactly"),
    index_dir: Optional[Path] = typer.Option(None, help="with --index: the index folder (default: index/ inside the store)"),
    candidates: Optional[int] = typer.Option(None, help="with --index: candidates per query from each approximate norm bucket, re-ranked exactly (default 1000, at least --k)"),
    verify: bool = verify_option(),
    device: str = device_option(),
    model_dtype: Optional[str] = model_dtype_option(),
    as_json: bool = json_option(),
) -> None:
    """Proponents (or opponents) of each query's behaviour.

    Launched as several processes (torchrun, srun), each scans its share of
    the shards and the top-k lists are merged (docs/scale.md)."""
    from .data import head
    from .devices import resolve_model_dtype
    from .execution_dist import launched_executor
    from .scoring import Attributor
    from .spec import load_task_spec

    def go() -> None:
        positive_option(limit, "--limit")
        positive_option(show, "--show")
        check_variant(variant)
        output_file(out, "--out", RECORD_SUFFIXES)
        output_file(report, "--report")
        resolve_model_dtype(model_dtype, "--model-dtype")
        use_index = _index_option(store, index, index_dir, candidates, k, variant, verify)
        if queries_file is not None or task is None:
            from .models.hf_query import run_hf_query

            if queries_file is None:
                raise InputError("query needs --task (a TaskSpec file) or --queries (for a store made with --hf-model)")
            if task is not None:
                raise InputError("give one of --task and --queries, not both")
            with launched_executor(device) as (executor, dev):
                records = run_hf_query(store, queries_file, behaviour or "logprob", hf_model, k, opponents, variant, limit,
                                       report, verify=verify, device=dev, model_dtype=model_dtype, executor=executor,
                                       index=use_index, candidates=candidates)
                if executor.is_main:
                    _print_query_results(records, out, show, variant, report, as_json)
            return
        given = [name for name, value in (("--behaviour", behaviour), ("--report", report), ("--hf-model", hf_model)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} apply only with --queries (a store made with --hf-model); "
                             f"with --task the TaskSpec sets the model and the behaviour")
        st = _open_store(store, verify)
        get_method(variant).check(st)
        spec = load_task_spec(task)
        if spec.queries is None:
            raise InputError(f"--task {task}: the TaskSpec has no queries")
        queries = head(spec.queries, limit, "--limit")
        qids = head(list(spec.query_ids), limit, "--limit") if spec.query_ids is not None else None
        with launched_executor(device) as (executor, dev):
            attributor = Attributor(st, spec.model(), spec.task, checkpoint_loader=spec.checkpoint_loader, executor=executor,
                                    device=dev, model_dtype=model_dtype, index=use_index, candidates=candidates)
            topk = attributor.top_k(queries, k=k, largest=not opponents, behaviour=spec.behaviour, variant=variant)
            if executor.is_main:
                _print_query_results(topk.to_records(qids, attributor.store.tags), out, show, variant, None, as_json)

    run_or_exit(go)


def _index_option(
    store: Path, index: bool, index_dir: Path | None, candidates: int | None, k: int, variant: str, verify: bool,
) -> Any:
    """What ``Attributor(index=...)`` gets from ``--index``/``--index-dir``, the
    index checked against the store before any model is loaded (None: exact scan)."""
    if not index:
        given = [name for name, value in (("--index-dir", index_dir), ("--candidates", candidates)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} apply only with --index")
        return None
    positive_option(candidates, "--candidates")
    positive_option(k, "--k")
    if candidates is not None and candidates < k:
        raise InputError(f"--candidates ({candidates}) must be at least --k ({k})")
    from .index import check_index, import_faiss

    import_faiss()
    check_index(_open_store(store, verify), variant, index_dir)
    return True if index_dir is None else index_dir


def _print_query_results(
    records: list[dict[str, Any]], out: Path | None, show: int, variant: str, report: Path | None, as_json: bool,
) -> None:
    if out is not None:
        write_records(records, out)
    if as_json:
        print_json({"variant": variant, "meaning": SCORE_MEANING[variant], "records": records, "out": out, "report": report})
        return
    if out is not None:
        console.print(f"wrote {len(records)} rows to {out}")
    _print_topk(records, show)
    console.print(SCORE_MEANING[variant], style="dim")
    if report is not None:
        console.print(f"report: {report}")


@app.command("self-influence")
def self_influence_cmd(
    store: Path = typer.Argument(..., help="a store made by 'gradtrace featurize'"),
    top: int = typer.Option(20, help="rows to print"),
    out: Optional[Path] = typer.Option(None, help="write every example's score as .jsonl or .parquet"),
    variant: str = typer.Option("raw", help="raw (exact TracIn) | fisher | kfac | ekfac (kfac/ekfac: after gradtrace fit-factors)"),
    verify: bool = verify_option(),
    device: str = device_option(),
    as_json: bool = json_option(),
) -> None:
    """Rank training examples by self-influence (mislabelled and odd ones first)."""
    import numpy as np

    from .devices import resolve_device
    from .scoring import Attributor, self_influence

    def go() -> None:
        positive_option(top, "--top")
        check_variant(variant)
        output_file(out, "--out", RECORD_SUFFIXES)
        dev = resolve_device(device, "--device")
        st = _open_store(store, verify)
        scores = self_influence(st, device=dev) if variant == "raw" else Attributor(st, None, None).self_influence(variant)
        order = np.argsort(-scores, kind="stable")
        ids, tags = st.ids, st.tags
        records = [
            {"rank": r + 1, "train_index": int(i), "train_id": ids[i], "self_influence": float(scores[i]), "train_tag": tags[i]}
            for r, i in enumerate(order)
        ]
        if out is not None:
            write_records(records, out)
        if as_json:
            print_json({"store": str(st.root), "examples": len(records), "top": records[:top], "out": out})
            return
        if out is not None:
            console.print(f"wrote {len(records)} rows to {out}")
        console.print(table("highest self-influence", ["rank", "train_id", "self_influence", "tag"], (
            (rec["rank"], rec["train_id"], f"{rec['self_influence']:.5g}", rec["train_tag"]) for rec in records[:top]
        )))

    run_or_exit(go)


def _verify(st: Any) -> list[str]:
    """Every problem of the store: each shard against its checksum, and the ids and tags files."""
    from .errors import StoreError

    problems = st.verify()
    try:
        st.ids, st.tags
    except StoreError as exc:
        problems.append(str(exc))
    return problems


@app.command("fit-factors")
def fit_factors_cmd(
    store: Path = typer.Argument(..., help="a store made by 'gradtrace featurize' (projection none, factored or kronecker)"),
    task: Optional[str] = typer.Option(None, help="the same --task as featurize (not needed for a store made with --hf-model)"),
    checkpoints: str = typer.Option("all", help="all (kfac/ekfac sum over checkpoints) | last (the final checkpoint only)"),
    name: str = typer.Option("ekfac", help="name of the fitted factors (variant kfac/ekfac read 'ekfac')"),
    fisher: str = typer.Option("empirical", help="empirical (training labels) | true (labels drawn from the model; classifiers)"),
    seed: int = typer.Option(0, help="with --fisher true: seed of the label draws"),
    batch_size: Optional[int] = typer.Option(None, help="examples per pass (default: the store's)"),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Fit the Kronecker factors (K-FAC) and eigenvalue correction (EK-FAC) of the store's training data, saved in the store."""
    from .scoring.factors import fit_factors
    from .spec import load_task_spec

    def go() -> None:
        positive_option(batch_size, "--batch-size")
        if checkpoints not in ("all", "last"):
            raise InputError(f"--checkpoints must be 'all' or 'last'; got {checkpoints!r}")
        st = _open_store(store, True)
        if task is None:
            from .models.hf_cli import fit_factors_hf

            path = fit_factors_hf(st, checkpoints=checkpoints, name=name, fisher=fisher, seed=seed, batch_size=batch_size,
                                  progress=progress)
        else:
            spec = load_task_spec(task)
            path = fit_factors(st, spec.model(), spec.task, spec.train, checkpoints=checkpoints, name=name, fisher=fisher,
                               seed=seed, batch_size=batch_size, checkpoint_loader=spec.checkpoint_loader, progress=progress)
        if as_json:
            print_json({"store": str(st.root), "factors": str(path), "name": name, "checkpoints": checkpoints, "fisher": fisher})
        else:
            console.print(f"factors {name!r} of {st.root} written to {path}; score with --variant ekfac or kfac")

    run_or_exit(go)


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="a store directory"),
    verify: bool = typer.Option(False, help="check every shard's checksum and the ids files (exit 1 on a problem)"),
    as_json: bool = json_option(),
) -> None:
    """Show a store's settings, size and completeness."""

    def go() -> None:
        st = _open_store(store, True)
        m = st.manifest
        total = len(list(st.iter_shards()))
        missing = st.missing_shards()
        summary: dict[str, Any] = {
            "store": str(st.root), "examples": st.n_examples, "segments": len(st.segments), "checkpoints": len(st.checkpoints),
            "learning_rates": [float(lr) for lr in st.learning_rates], "task": m["task"], "parameters": len(st.param_names),
            "grad_dim": m["model"]["grad_dim"], "method": m["model"]["method"], "projection": m["config"]["projection"],
            "feature_dim": st.feature_dim, "dtype": m["config"]["dtype"], "shards": total, "shards_written": total - len(missing),
            "complete": bool(st.complete), "size_bytes": st.size_bytes(),
        }
        problems = _verify(st) if verify else None
        if as_json:
            print_json(dict(summary, problems=problems))
        else:
            s = summary
            console.print(table(f"gradient store {st.root}", ["field", "value"], [
                ("examples", s["examples"]), ("segments", s["segments"]), ("checkpoints", s["checkpoints"]),
                ("learning rates", ", ".join(f"{lr:g}" for lr in s["learning_rates"])), ("task", s["task"]),
                ("parameters", f"{s['parameters']} tensors, gradient dim {s['grad_dim']:,}"), ("method", s["method"]),
                ("projection", json.dumps(s["projection"])), ("feature dim", s["feature_dim"]), ("dtype", s["dtype"]),
                ("shards", f"{s['shards_written']} of {s['shards']} written"), ("complete", s["complete"]),
                ("size on disk", f"{s['size_bytes'] / 2**20:.1f} MiB"),
            ]))
            for p in problems or []:
                console.print(p, style="red")
            if problems is not None:
                console.print("checksums OK" if not problems else f"{len(problems)} problem(s)")
        if problems:
            raise typer.Exit(1)

    run_or_exit(go)


@app.command()
def demo(
    which: str = typer.Argument("digits", help="digits (fast) | lm (a planted behaviour in a fine-tuned LM)"),
    out: Path = typer.Option(Path("demo_out"), help="where checkpoints, store and report go"),
    progress: bool = progress_option(),
    model: str = typer.Option("smollm2", help="lm demo: smollm2 (real model, slow on CPU) | tiny (a tiny GPT-2, minutes)"),
) -> None:
    """Digits with 20% flipped labels (default), or `demo lm`: trace a planted misaligned behaviour."""
    from .demos.digits_demo import run_digits_demo

    def go() -> None:
        if which not in ("digits", "lm"):
            raise InputError(f"demo: which must be 'digits' or 'lm'; got {which!r}")
        output_dir(out, "--out")
        if which == "lm":
            from .demos.lm_demo import lm_demo_command

            lm_demo_command(out, model, progress, console)
            return
        result = run_digits_demo(out, progress=progress)
        console.print(table(f"share of the {result.n_flipped} flipped labels found", ["checked", "self-influence", "final loss (baseline)"], (
            (f"top {key}", f"{value:.3f}", f"{result.found_loss[key]:.3f}") for key, value in result.found_self_influence.items()
        )))
        tags = _open_store(result.store, True).tags
        qids = [f"test-{q}" for q in result.query_indices]
        records = result.proponents.to_records(qids, tags) + result.opponents.to_records(qids, tags)
        _print_topk(records, 2)
        console.print(f"report: {result.report}")

    run_or_exit(go)


def _print_topk(records: list[dict[str, Any]], show: int) -> None:
    queries = list(dict.fromkeys(r["query"] for r in records))[:show]
    for q in queries:
        console.print(table(f"query {q}", ["kind", "rank", "train_id", "score", "tag"], (
            (r["kind"], r["rank"], r["train_id"], f"{r['score']:.5g}", r.get("train_tag")) for r in records if r["query"] == q
        )))


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    """JSONL for ``.jsonl``, Parquet for ``.parquet``; other suffixes are an error."""
    path = output_file(Path(path), "--out", RECORD_SUFFIXES)  # type: ignore[assignment]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("pyarrow", "Parquet output", "pip install 'gradtrace[parquet]'") from None
    pq.write_table(pa.Table.from_pylist(records), path)


def _register_all() -> None:
    """The verbs defined in other modules, each through its ``register(app)``."""
    from .audit import cli as audit_cli
    from .allocate import cli as allocate_cli
    from .diff import cli as diff_cli
    from .explore import cli as explore_cli
    from .loop import cli as loop_cli
    from .probes import cli as probes_cli
    from .unlearn import cli as unlearn_cli

    from .index import cli as index_cli

    for module in (unlearn_cli, loop_cli, diff_cli, allocate_cli, explore_cli, index_cli, audit_cli, probes_cli):
        module.register(app)


_register_all()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
