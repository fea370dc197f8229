"""The ``gradtrace`` command. Thin: every verb maps to one library call."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .cli_common import console, positive_option, progress_option, run_or_exit
from .errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Trace model behaviour back to training data.")


def _params(params: list[str]) -> Any:
    if params in ([], ["all"]):
        return "all"
    if params == ["last"]:
        return "last"
    return tuple(params)


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
    append: bool = typer.Option(False, help="add the task's training data as new examples"),
    progress: bool = progress_option(),
) -> None:
    """Compute and store per-example training gradients at every checkpoint."""
    from . import FeaturizeConfig, ProjectionConfig
    from . import featurize as do_featurize
    from .spec import load_task_spec

    def go() -> None:
        if hf_model is not None:
            from .models.hf_cli import featurize_hf

            store = featurize_hf(
                hf_model=hf_model, checkpoints=checkpoints, data=data, out=out, projection=projection, dim=dim, seed=seed,
                params=_params(params), batch_size=batch_size, shard_size=shard_size, dtype=dtype, append=append,
                progress=progress, max_length=max_length, as_chat=as_chat, lr=lr, adam=adam,
            )
            console.print(f"store {store.root}: {store.n_examples} examples, {len(store.checkpoints)} checkpoints, "
                          f"feature dim {store.feature_dim}, complete={store.complete}")
            return
        if task is None:
            raise InputError("featurize needs --task (a TaskSpec file) or --hf-model (a Hugging Face run)")
        spec = load_task_spec(task)
        config = FeaturizeConfig(
            params=_params(params), projection=ProjectionConfig(projection, dim, seed), batch_size=batch_size,
            shard_size=shard_size, dtype=dtype,
        )
        store = do_featurize(
            spec.model(), spec.task, spec.checkpoints, spec.train, out, config, ids=spec.train_ids,
            tags=spec.train_tags, append=append, checkpoint_loader=spec.checkpoint_loader, progress=progress,
        )
        console.print(f"store {store.root}: {store.n_examples} examples, {len(store.checkpoints)} checkpoints, "
                      f"feature dim {store.feature_dim}, complete={store.complete}")

    run_or_exit(go)


@app.command()
def query(
    store: Path = typer.Argument(..., help="a store made by 'gradtrace featurize'"),
    task: Optional[str] = typer.Option(None, help="the same --task as featurize; its queries are scored"),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="for a store made with --hf-model: query examples (JSONL)"),
    behaviour: str = typer.Option("logprob", help="with --queries: logprob | margin | contrast | loss"),
    hf_model: Optional[str] = typer.Option(None, help="with --queries: the model (default: the one saved with the store)"),
    report: Optional[Path] = typer.Option(None, help="with --queries: write an HTML report here"),
    k: int = typer.Option(10, help="examples per query"),
    opponents: bool = typer.Option(False, help="most negative scores instead of most positive"),
    variant: str = typer.Option("raw", help="raw | cosine"),
    out: Optional[Path] = typer.Option(None, help="write results as .jsonl or .parquet"),
    limit: Optional[int] = typer.Option(None, help="score only the first N queries"),
    show: int = typer.Option(3, help="queries to print as tables (a positive integer)"),
) -> None:
    """Proponents (or opponents) of each query's behaviour."""
    from .data import head
    from .scoring import SCORE_MEANING, Attributor
    from .spec import load_task_spec

    def go() -> None:
        positive_option(limit, "--limit")
        positive_option(show, "--show")
        if queries_file is not None or task is None:
            from .models.hf_query import run_hf_query

            if queries_file is None:
                raise InputError("query needs --task (a TaskSpec file) or --queries (for a store made with --hf-model)")
            records = run_hf_query(store, queries_file, behaviour, hf_model, k, opponents, variant, limit, report)
            if out is not None:
                write_records(records, out)
                console.print(f"wrote {len(records)} rows to {out}")
            _print_topk(records, show)
            console.print(f"[dim]{SCORE_MEANING[variant]}[/]")
            if report is not None:
                console.print(f"report: {report}")
            return
        spec = load_task_spec(task)
        if spec.queries is None:
            raise InputError(f"--task {task}: the TaskSpec has no queries")
        queries = head(spec.queries, limit, "--limit")
        qids = head(list(spec.query_ids), limit, "--limit") if spec.query_ids is not None else None
        attributor = Attributor(store, spec.model(), spec.task, checkpoint_loader=spec.checkpoint_loader)
        topk = attributor.top_k(queries, k=k, largest=not opponents, behaviour=spec.behaviour, variant=variant)
        records = topk.to_records(qids, attributor.store.tags)
        if out is not None:
            write_records(records, out)
            console.print(f"wrote {len(records)} rows to {out}")
        _print_topk(records, show)
        console.print(f"[dim]{SCORE_MEANING[variant]}[/]")

    run_or_exit(go)


@app.command("self-influence")
def self_influence_cmd(
    store: Path = typer.Argument(..., help="a store made by 'gradtrace featurize'"),
    top: int = typer.Option(20, help="rows to print"),
    out: Optional[Path] = typer.Option(None, help="write every example's score as .jsonl or .parquet"),
) -> None:
    """Rank training examples by self-influence (mislabelled and odd ones first)."""
    import numpy as np

    from .scoring import self_influence
    from .store import GradientStore

    def go() -> None:
        positive_option(top, "--top")
        st = GradientStore.open(store)
        scores = self_influence(st)
        order = np.argsort(-scores, kind="stable")
        records = [
            {"rank": r + 1, "train_index": int(i), "train_id": st.ids[i], "self_influence": float(scores[i]), "train_tag": st.tags[i]}
            for r, i in enumerate(order)
        ]
        if out is not None:
            write_records(records, out)
            console.print(f"wrote {len(records)} rows to {out}")
        table = Table("rank", "train_id", "self_influence", "tag", title="highest self-influence")
        for rec in records[:top]:
            table.add_row(str(rec["rank"]), str(rec["train_id"]), f"{rec['self_influence']:.5g}", str(rec["train_tag"]))
        console.print(table)

    run_or_exit(go)


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="a store directory"),
    verify: bool = typer.Option(False, help="check every shard's checksum"),
) -> None:
    """Show a store's settings, size and completeness."""
    from .store import GradientStore

    def go() -> None:
        st = GradientStore.open(store)
        m = st.manifest
        total = len(list(st.iter_shards()))
        missing = st.missing_shards()
        table = Table("field", "value", title=f"gradient store {st.root}")
        rows = [
            ("examples", st.n_examples), ("segments", len(st.segments)), ("checkpoints", len(st.checkpoints)),
            ("learning rates", ", ".join(f"{lr:g}" for lr in st.learning_rates)),
            ("task", m["task"]), ("parameters", f"{len(st.param_names)} tensors, gradient dim {m['model']['grad_dim']:,}"),
            ("method", m["model"]["method"]), ("projection", json.dumps(m["config"]["projection"])),
            ("feature dim", st.feature_dim), ("dtype", m["config"]["dtype"]),
            ("shards", f"{total - len(missing)} of {total} written"), ("complete", st.complete),
            ("size on disk", f"{st.size_bytes() / 2**20:.1f} MiB"),
        ]
        for key, value in rows:
            table.add_row(key, str(value))
        console.print(table)
        if verify:
            problems = st.verify()
            for p in problems:
                console.print(f"[red]{p}[/]")
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
        if which == "lm":
            from .demos.lm_demo import lm_demo_command

            lm_demo_command(out, model, progress, console)
            return
        if which != "digits":
            raise InputError(f"demo: which must be 'digits' or 'lm'; got {which!r}")
        result = run_digits_demo(out, progress=progress)
        table = Table("checked", "self-influence", "final loss (baseline)", title=f"share of the {result.n_flipped} flipped labels found")
        for key, value in result.found_self_influence.items():
            table.add_row(f"top {key}", f"{value:.3f}", f"{result.found_loss[key]:.3f}")
        console.print(table)
        from .store import GradientStore

        tags = GradientStore.open(result.store).tags
        qids = [f"test-{q}" for q in result.query_indices]
        records = result.proponents.to_records(qids, tags) + result.opponents.to_records(qids, tags)
        _print_topk(records, 2)
        console.print(f"report: {result.report}")

    run_or_exit(go)


def _print_topk(records: list[dict[str, Any]], show: int) -> None:
    queries = list(dict.fromkeys(r["query"] for r in records))[:show]
    for q in queries:
        table = Table("kind", "rank", "train_id", "score", "tag", title=f"query {q}")
        for r in records:
            if r["query"] == q:
                table.add_row(r["kind"], str(r["rank"]), str(r["train_id"]), f"{r['score']:.5g}", str(r.get("train_tag")))
        console.print(table)


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    """JSONL for ``.jsonl``, Parquet for ``.parquet``; other suffixes are an error."""
    path = Path(path)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            from .errors import MissingDependencyError

            raise MissingDependencyError("pyarrow", "Parquet output", "pip install 'gradtrace[parquet]'") from None
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        raise InputError(f"--out must end in .jsonl or .parquet; got {path.name!r}")


def _register_all() -> None:
    """The verbs defined in other modules, each through its ``register(app)``."""
    from .diff import cli as diff_cli
    from .loop import cli as loop_cli
    from .unlearn import cli as unlearn_cli

    for module in (unlearn_cli, loop_cli, diff_cli):
        module.register(app)


_register_all()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
