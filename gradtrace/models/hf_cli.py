"""The CLI's Hugging Face path: ``featurize --hf-model`` and ``query --queries``.

Thin wrappers: they turn flags into an :class:`~gradtrace.models.hf_spec.HFSpec`
and call :func:`gradtrace.featurize` / :class:`gradtrace.Attributor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import FeaturizeConfig
from ..errors import InputError
from ..grads.projection import ProjectionConfig
from .hf import PreferenceMarginBehaviour, behaviour_by_name, lora_selection
from .hf_checkpoints import adam_transform, load_hf_checkpoint
from .hf_spec import COMPLETION_FIELDS, PAIR_FIELDS, HFSpec, read_jsonl


def featurize_hf(
    *, hf_model: str, checkpoints: Path | None, data: Path | None, out: Path, projection: str, dim: int | None, seed: int,
    params: Any, batch_size: int, shard_size: int, dtype: str, append: bool, progress: bool, max_length: int,
    as_chat: bool, lr: float | None, adam: bool, on_nonfinite: str = "raise", device: Any = None, model_dtype: Any = None,
    executor: Any = None, batch_order: str | None = None, exact_norms: bool = True,
) -> Any:
    """Featurize a Hugging Face run; returns the store. ``device``,
    ``model_dtype``, ``executor``: as :func:`gradtrace.featurize` takes them;
    ``batch_order``, ``exact_norms``: as :class:`gradtrace.FeaturizeConfig`."""
    from ..featurize import featurize

    if checkpoints is None or data is None:
        raise InputError("--hf-model needs --checkpoints (a Trainer run or adapter folder) and --data (a JSONL file)")
    # the data is checked before the model loads (seconds to minutes)
    examples, ids, tags = read_jsonl(data, "--data", COMPLETION_FIELDS, "each training example needs")
    spec = HFSpec(model=hf_model, checkpoints=str(Path(checkpoints).resolve()), max_length=max_length, as_chat=as_chat, lr=lr,
                  data=str(Path(data).resolve()))
    refs = spec.refs()
    model, task = spec.load()
    if params == "all":
        params = lora_selection(model)
    if projection == "none" and dim is None and _grad_dim(model, params) > 1_000_000:
        raise InputError(
            "--projection none would store more than 1,000,000 numbers per example for this model; "
            "use --projection kronecker --dim 4096 (or select fewer parameters with --params)"
        )
    config = FeaturizeConfig(
        params=params, projection=ProjectionConfig(projection, dim, seed), batch_size=batch_size, shard_size=shard_size, dtype=dtype,
        batch_order=batch_order, exact_norms=exact_norms,
    )
    store = featurize(
        model, task, refs, examples, out, config, ids=ids, tags=tags, append=append, checkpoint_loader=load_hf_checkpoint,
        progress=progress, train_transform=adam_transform if adam else None, on_nonfinite=on_nonfinite,
        device=device, model_dtype=model_dtype, executor=executor,
    )
    if getattr(executor, "is_main", True):
        spec.save(store.root)
    return store


def _grad_dim(model: Any, params: Any) -> int:
    from ..grads.selection import select_parameters

    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    return sum(sizes[n] for n in select_parameters(model, params))


def fit_factors_hf(
    store: Any, *, checkpoints: str, name: str, batch_size: int | None, progress: bool, fisher: str = "empirical", seed: int = 0,
) -> Path:
    """``gradtrace fit-factors`` for a store made with ``--hf-model``: the
    model, checkpoints and training data saved with it (:class:`HFSpec`)."""
    from ..scoring.factors import fit_factors

    spec = HFSpec.saved(store.root)
    if spec.data is None:
        raise InputError(f"the store {str(store.root)!r} does not record its training data file; pass --task")
    examples, _, _ = read_jsonl(Path(spec.data), "the store's --data", COMPLETION_FIELDS, "each training example needs")
    model, task = spec.load()
    return fit_factors(store, model, task, examples, checkpoints=checkpoints, name=name, fisher=fisher, seed=seed,
                       batch_size=batch_size, checkpoint_loader=load_hf_checkpoint, progress=progress)


def query_hf(
    store: Path, queries: Path, behaviour: str, hf_model: str | None, limit: int | None = None, *, verify: bool = True,
    device: Any = None, model_dtype: Any = None, executor: Any = None, variant: str | None = None,
    index: Any = None, candidates: int | None = None,
) -> tuple[Any, Any, list[dict[str, Any]], list[str], Any]:
    """``(attributor, behaviour, query examples, query ids, query features)``
    for a store made with ``--hf-model``; ``limit``: only the first N queries
    (a positive integer, named ``--limit`` in errors); ``verify``: check each
    shard read against its checksum. The queries are checked for the fields
    the behaviour needs before the model loads, and so is the store for
    ``variant`` when given. ``device``, ``model_dtype``, ``executor``,
    ``index``, ``candidates``: as :class:`~gradtrace.scoring.Attributor` takes them."""
    from ..data import head
    from ..scoring import Attributor
    from ..store import GradientStore

    spec = HFSpec.saved(store)
    if hf_model is not None and hf_model != spec.model:
        raise InputError(f"--hf-model {hf_model!r} differs from the model the store was made with ({spec.model!r})")
    b = behaviour_by_name(behaviour)
    fields = PAIR_FIELDS if isinstance(b, PreferenceMarginBehaviour) else COMPLETION_FIELDS
    examples, ids, _ = read_jsonl(queries, "--queries", fields, f"--behaviour {behaviour} needs")
    qids = ids if ids is not None else [f"q{i}" for i in range(len(examples))]
    examples, qids = head(examples, limit, "--limit"), head(qids, limit, "--limit")
    st = GradientStore.open(store, verify=verify)
    if variant is not None:  # e.g. factors not fitted: said before the model loads
        from ..scoring import get_method

        get_method(variant).check(st)
    model, task = spec.load()
    attributor = Attributor(st, model, task, checkpoint_loader=load_hf_checkpoint, device=device, model_dtype=model_dtype,
                            executor=executor, index=index, candidates=candidates)
    qf = attributor.query_features(examples, b)
    return attributor, b, examples, qids, qf
