"""Counterfactual validation of a gradient store's attribution (what
``gradtrace validate`` runs): remove the top-k proponents of a behaviour and,
separately, k random examples, retrain, and measure the behaviour again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..spec import import_target

#: Behaviours ``validate`` knows by name (besides ``file.py:fn``).
BEHAVIOURS = ("loss", "logit-margin")
#: Deprecated names: old name -> current name.
DEPRECATED_BEHAVIOURS = {"margin": "logit-margin"}


def behaviour_named(name: str, spec: Any, option: str = "--behaviour") -> Any:
    """The behaviour ``name`` stands for: ``loss`` (the TaskSpec's behaviour,
    by default its task loss), ``logit-margin`` (:class:`LogitMarginBehaviour`),
    or ``path/to/file.py:fn`` whose ``fn()`` returns a behaviour. The
    deprecated ``margin`` means ``logit-margin``."""
    from ..task import LogitMarginBehaviour, resolve_behaviour

    name = DEPRECATED_BEHAVIOURS.get(name, name)
    if name == "loss":
        return resolve_behaviour(spec.behaviour, spec.task)
    if name == "logit-margin":
        return LogitMarginBehaviour()
    if ":" not in name:
        raise InputError(f"{option} must be one of {BEHAVIOURS} or path/to/file.py:fn; got {name!r}")
    return import_target(name, option)()


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
    import torch

    from ..data import as_source
    from ..scoring.attributor import Attributor
    from ..task import describe
    from .retrain import RemovalExperiment

    attributor = Attributor(store, spec.model(), spec.task, checkpoint_loader=spec.checkpoint_loader)
    scores = attributor.score(queries, behaviour).sum(axis=0)
    n = attributor.store.n_examples
    collate = getattr(spec.task, "collate", None)

    def measure(model: torch.nn.Module) -> float:
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
    import numpy as np
    import torch

    from ..checkpoints import CheckpointRef
    from ..data import take
    from ..featurize import featurize
    from ..scoring.attributor import Attributor

    def attribute(model: Any, kept: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="gradtrace-iterative-") as tmp:
            path = Path(tmp) / "model.pt"
            torch.save(model.state_dict(), path)
            template = spec.model()
            data = take(spec.train, np.asarray(kept))
            sub = featurize(template, spec.task, [CheckpointRef(str(path), 1.0)], data, Path(tmp) / "store", featurize_config, progress=False)
            return Attributor(sub, template, spec.task).score(queries, behaviour).sum(axis=0)

    return attribute


__all__ = ["BEHAVIOURS", "DEPRECATED_BEHAVIOURS", "behaviour_named", "validate", "retrained_tracin"]
