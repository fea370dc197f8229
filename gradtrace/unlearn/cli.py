"""The ``gradtrace unlearn`` and ``gradtrace validate`` commands: flags in,
one library call (:func:`~gradtrace.unlearn.compare_methods`,
:func:`~gradtrace.unlearn.validate.validate`), tables and files out."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from ..cli_common import console, json_option, output_dir, positive_option, print_json, progress_option, run_or_exit, table, warn


def register(app: typer.Typer) -> None:
    app.command("unlearn")(unlearn_command)
    app.command("validate")(validate_command)


def unlearn_command(
    spec: str = typer.Option("digits", help="'digits', 'tiny-lm', or path/to/file.py:fn returning (UnlearnSpec, CompareConfig)"),
    method: list[str] = typer.Option([], help="methods to run (repeat): base, filter, ga, graddiff, npo, rmu, era; default all"),
    labelled: float = typer.Option(1.0, help="built-in specs: share of the forget examples that are labelled"),
    seed: int = typer.Option(0, help="built-in specs: seed of init, batches and label draw"),
    out: Path = typer.Option(Path("unlearn_out"), help="directory for results.json, report.html and the resume cache"),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Unlearn with each method, then attack each with relearning; write a report.

    Finished methods are kept under OUT/cache: re-running a killed command
    with the same arguments continues where it stopped."""
    from .compare import compare_methods, load_unlearn_spec
    from .report import comparison_html

    def go() -> None:
        output_dir(out, "--out")
        the_spec, config = load_unlearn_spec(spec, labelled, seed, "--spec")
        if method:
            config = dataclasses.replace(config, methods=tuple(method))
        result = compare_methods(the_spec, config, progress=progress, cache_dir=out / "cache")
        data = result.to_dict()
        data["spec"] = the_spec.name
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
        (out / "report.html").write_text(
            comparison_html(data, f"gradtrace unlearn: {the_spec.name}", attacker_maximises=the_spec.attacker_maximises), encoding="utf-8",
        )
        if as_json:
            print_json({"results": data, "results_file": out / "results.json", "report": out / "report.html"})
            return
        ks = list(config.relearn.ks)
        console.print(table(the_spec.name, ["method", "forget", "retain", *[f"relearn k={k}" for k in ks]], (
            (m, f"{r.forget:.3f}", f"{r.retain:.3f}", *[f"{r.relearn['best'][str(k)]:.3f}" for k in ks]) for m, r in result.results.items()
        )))
        console.print(f"results: {out / 'results.json'}\nreport: {out / 'report.html'}")

    run_or_exit(go)


def validate_command(
    store: Path = typer.Option(..., help="a store made by 'gradtrace featurize' with the same --task"),
    task: str = typer.Option(..., help="path/to/file.py:make_task (model, task, checkpoints, training set, queries)"),
    train_fn: str = typer.Option(..., "--train-fn", help="path/to/file.py:fn returning train_fn(train_indices, seed) -> model"),
    behaviour: str = typer.Option("loss", help="'loss' (task loss), 'logit-margin' (label logit minus the largest other), or path/to/file.py:fn returning a Behaviour"),
    k: int = typer.Option(10, help="examples removed"),
    seeds: list[int] = typer.Option([0], help="training seeds (repeat the option)"),
    limit: int = typer.Option(20, help="use the first N queries of the task"),
    iterative_rounds: int = typer.Option(0, "--iterative-rounds", help="also remove iteratively: this many rounds of remove k/rounds, retrain, re-attribute (0: skip)"),
    attribute: str = typer.Option("", "--attribute", help="path/to/file.py:fn returning attribute(model, kept_indices) -> scores for the iterative arm; default: TracIn at the retrained model (one checkpoint), featurized like --store"),
    out: Path = typer.Option(Path("validate_out"), help="directory for validation.json, report.html and the resume cache"),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Remove the top-k proponents of a behaviour vs k random examples, retrain, measure.

    Finished retrains are kept under OUT/cache: re-running a killed command
    with the same arguments continues where it stopped."""
    from ..data import head
    from ..errors import InputError
    from ..spec import import_target, load_task_spec
    from .report import validation_html
    from .retrain import RemovalConfig
    from .validate import DEPRECATED_BEHAVIOURS, behaviour_named, validate

    def go() -> None:
        positive_option(limit, "--limit")
        output_dir(out, "--out")
        if behaviour in DEPRECATED_BEHAVIOURS:
            warn(f"--behaviour {behaviour} is deprecated; use --behaviour {DEPRECATED_BEHAVIOURS[behaviour]}")
        spec = load_task_spec(task)
        if spec.queries is None:
            raise InputError(f"--task {task}: the TaskSpec has no queries")
        beh = behaviour_named(behaviour, spec)
        queries = head(spec.queries, limit, "--limit")
        attr = import_target(attribute, "--attribute")() if attribute else None
        result = validate(store, spec, import_target(train_fn, "--train-fn")(), beh, queries,
                          RemovalConfig(k=k, seeds=tuple(seeds), iterative_rounds=iterative_rounds), progress=progress,
                          attribute=attr, cache_dir=out / "cache", cache_tag=[task, train_fn, behaviour, attribute, limit])
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        (out / "report.html").write_text(validation_html(result, "gradtrace validate"), encoding="utf-8")
        if as_json:
            print_json({"summary": result["summary"], "results_file": out / "validation.json", "report": out / "report.html"})
            return
        console.print(table(f"removing {k} examples; behaviour {behaviour}", ["arm", "behaviour (mean over seeds)"], (
            (arm, f"{v:.5g}") for arm, v in result["summary"].items()
        )))
        console.print(f"results: {out / 'validation.json'}\nreport: {out / 'report.html'}")

    run_or_exit(go)
