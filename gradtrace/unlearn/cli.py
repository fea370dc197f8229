"""The ``gradtrace unlearn`` and ``gradtrace validate`` commands (registered
in :mod:`gradtrace.cli`); each maps to one library call."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from ..spec import import_target

console = Console()
BUILTIN_SPECS = ("digits", "tiny-lm")




def unlearn_command(
    spec: str = typer.Option("digits", help="'digits', 'tiny-lm', or path/to/file.py:fn returning (UnlearnSpec, CompareConfig)"),
    method: list[str] = typer.Option([], help="methods to run (repeat): base, filter, ga, graddiff, npo, rmu, era; default all"),
    labelled: float = typer.Option(1.0, help="built-in specs: share of the forget examples that are labelled"),
    seed: int = typer.Option(0, help="built-in specs: seed of init, batches and label draw"),
    out: Path = typer.Option(Path("unlearn_out"), help="directory for results.json, report.html and the resume cache"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Unlearn with each method, then attack each with relearning; write a report.

    Finished methods are kept under OUT/cache: re-running a killed command
    with the same arguments continues where it stopped."""
    from .compare import CompareConfig, compare_methods
    from .report import comparison_html

    from ..cli import _run

    def go() -> None:
        if spec == "digits":
            from ..demos.era_digits import digits_compare_config, digits_forget_spec

            the_spec, config = digits_forget_spec(labelled, seed), digits_compare_config(seed)
        elif spec == "tiny-lm":
            from ..demos.era_lm import lm_compare_config, lm_forget_spec

            the_spec, config = lm_forget_spec(labelled, seed), lm_compare_config(seed)
        else:
            made = import_target(spec, "--spec")()
            if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], CompareConfig)):
                raise InputError(f"--spec {spec} must return (UnlearnSpec, CompareConfig); got {type(made).__name__}")
            the_spec, config = made
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
        ks = list(config.relearn.ks)
        table = Table("method", "forget", "retain", *[f"relearn k={k}" for k in ks], title=the_spec.name)
        for m, r in result.results.items():
            table.add_row(m, f"{r.forget:.3f}", f"{r.retain:.3f}", *[f"{r.relearn['best'][str(k)]:.3f}" for k in ks])
        console.print(table)
        console.print(f"results: {out / 'results.json'}\nreport: {out / 'report.html'}")

    _run(go)


def validate_command(
    store: Path = typer.Option(..., help="a store made by 'gradtrace featurize' with the same --task"),
    task: str = typer.Option(..., help="path/to/file.py:make_task (model, task, checkpoints, training set, queries)"),
    train_fn: str = typer.Option(..., "--train-fn", help="path/to/file.py:fn returning train_fn(train_indices, seed) -> model"),
    behaviour: str = typer.Option("loss", help="'loss' (task loss), 'margin' (logit margin), or path/to/file.py:fn returning a Behaviour"),
    k: int = typer.Option(10, help="examples removed"),
    seeds: list[int] = typer.Option([0], help="training seeds (repeat the option)"),
    limit: int = typer.Option(20, help="use the first N queries of the task"),
    iterative_rounds: int = typer.Option(0, "--iterative-rounds", help="also remove iteratively: this many rounds of remove k/rounds, retrain, re-attribute (0: skip)"),
    attribute: str = typer.Option("", "--attribute", help="path/to/file.py:fn returning attribute(model, kept_indices) -> scores for the iterative arm; default: TracIn at the retrained model (one checkpoint), featurized like --store"),
    out: Path = typer.Option(Path("validate_out"), help="directory for validation.json, report.html and the resume cache"),
    progress: bool = typer.Option(True),
) -> None:
    """Remove the top-k proponents of a behaviour vs k random examples, retrain, measure.

    Finished retrains are kept under OUT/cache: re-running a killed command
    with the same arguments continues where it stopped."""
    from ..cli import _run
    from ..spec import load_task_spec
    from ..task import LogitMarginBehaviour, resolve_behaviour

    def go() -> None:
        from .report import validation_html
        from .retrain import RemovalConfig

        spec = load_task_spec(task)
        if spec.queries is None:
            raise InputError(f"--task {task}: the TaskSpec has no queries")
        if behaviour == "loss":
            beh = resolve_behaviour(spec.behaviour, spec.task)
        elif behaviour == "margin":
            beh = LogitMarginBehaviour()
        else:
            beh = import_target(behaviour, "--behaviour")()
        queries = tuple(t[:limit] for t in spec.queries) if isinstance(spec.queries, tuple) else spec.queries[:limit]
        attr = import_target(attribute, "--attribute")() if attribute else None
        result = validate(store, spec, import_target(train_fn, "--train-fn")(), beh, queries,
                          RemovalConfig(k=k, seeds=tuple(seeds), iterative_rounds=iterative_rounds), progress=progress,
                          attribute=attr, cache_dir=out / "cache", cache_tag=[task, train_fn, behaviour, attribute, limit])
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        (out / "report.html").write_text(validation_html(result, "gradtrace validate"), encoding="utf-8")
        table = Table("arm", "behaviour (mean over seeds)", title=f"removing {k} examples; behaviour {behaviour}")
        for arm, v in result["summary"].items():
            table.add_row(arm, f"{v:.5g}")
        console.print(table)
        console.print(f"results: {out / 'validation.json'}\nreport: {out / 'report.html'}")

    _run(go)


def validate(
    store: Any, spec: Any, train_fn: Any, behaviour: Any, queries: Any, config: Any, *, progress: bool = False,
    attribute: Any = None, cache_dir: Path | None = None, cache_tag: Any = None,
) -> dict[str, Any]:
    """Counterfactual validation of a store's attribution of ``behaviour`` on
    ``queries``: scores summed over queries rank the training set; the
    measure is the behaviour's mean over the queries. With
    ``config.iterative_rounds``, ``attribute(model, kept) -> scores``
    re-attributes between rounds (default :func:`retrained_tracin`).
    ``cache_dir``/``cache_tag``: see :class:`RemovalExperiment`."""
    from ..scoring.attributor import Attributor
    from ..task import describe
    from .retrain import RemovalExperiment

    attributor = Attributor(store, spec.model(), spec.task, checkpoint_loader=spec.checkpoint_loader)
    scores = attributor.score(queries, behaviour).sum(axis=0)
    n = attributor.store.n_examples
    collate = getattr(spec.task, "collate", None)

    import torch

    def measure(model: torch.nn.Module) -> float:
        from ..data import as_source

        src = as_source(queries, collate)
        with torch.no_grad():
            return float(behaviour(model, src.batch(0, len(src))).mean())

    source_of_attribution = "retrained_tracin (one checkpoint: the retrained model)" if attribute is None else "user attribute function"
    if config.iterative_rounds and attribute is None:
        attribute = retrained_tracin(spec, attributor.store.config, behaviour, queries)
    exp = RemovalExperiment(train_fn, measure, n, config, progress=progress, attribute=attribute,
                            cache_dir=cache_dir, cache_tag=cache_tag)
    result = exp.run(scores).to_dict()
    result["behaviour"] = describe(behaviour)
    result["direction"] = getattr(behaviour, "direction", "increase")
    result["removed_ids"] = [attributor.store.ids[i] for i in result["removed_topk"]]
    if config.iterative_rounds:
        result["iterative_attribution"] = source_of_attribution
    return result


def retrained_tracin(spec: Any, featurize_config: Any, behaviour: Any, queries: Any) -> Callable[[Any, Any], Any]:
    """``attribute(model, kept) -> scores``: TracIn of ``behaviour`` on
    ``queries`` (summed) at the retrained ``model`` alone -- one checkpoint,
    learning rate 1 -- for the kept training examples, featurized with the
    original store's settings in a temporary directory. The retrained
    model's own checkpoints are not available to the CLI (the training
    function returns only the model); pass ``--attribute`` to use them."""
    import tempfile

    import numpy as np
    import torch

    from ..checkpoints import CheckpointRef
    from ..featurize import featurize
    from ..scoring.attributor import Attributor

    def attribute(model: Any, kept: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="gradtrace-iterative-") as tmp:
            path = Path(tmp) / "model.pt"
            torch.save(model.state_dict(), path)
            template = spec.model()
            data = _subset(spec.train, np.asarray(kept))
            sub = featurize(template, spec.task, [CheckpointRef(str(path), 1.0)], data, Path(tmp) / "store", featurize_config, progress=False)
            return Attributor(sub, template, spec.task).score(queries, behaviour).sum(axis=0)

    return attribute


def _subset(data: Any, idx: Any) -> Any:
    """Rows ``idx`` of a tensor, a tuple of tensors or a sequence of examples."""
    import torch

    if isinstance(data, torch.Tensor):
        return data[torch.as_tensor(idx)]
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        return tuple(t[torch.as_tensor(idx)] for t in data)
    return [data[int(i)] for i in idx]
