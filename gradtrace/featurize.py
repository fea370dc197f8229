"""Featurize: turn a training set into a gradient store, once.

For each checkpoint, every training example's loss gradient (with respect to
the selected parameters, projected as configured) is written to the store,
one shard (checkpoint, example range) at a time. An interrupted run loses at
most the shard in progress; running the same call again finishes the store,
and the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoints import CheckpointRef, checkpoints_from_list
from .config import FeaturizeConfig
from .data import ExampleSource, as_source
from .devices import Placement, accumulation_dtype, dtype_name
from .errors import InputError
from .execution import Executor, LocalExecutor, ShardTask
from .grads.compute import CheckpointLoader, compute_shard, model_fingerprint, resolve_loader, restored
from .grads.per_example import GradientFeaturizer
from .grads.selection import select_parameters
from .progress import Progress, human_bytes, progress_bar
from .store.gradient_store import MANIFEST, GradientStore, Segment
from .store.settings import BATCH_ORDERS, LEGACY_CONFIG
from .task import Task, check_task, describe

__all__ = ["CheckpointLoader", "Estimate", "TrainTransform", "compute_shard", "estimate_resources", "example_lengths", "featurize", "model_fingerprint", "store_settings"]

NONFINITE_CHOICES = ("raise", "skip")

# Called after each checkpoint is loaded: (model, ref, param_names) -> GradTransform for that checkpoint.
TrainTransform = Callable[[nn.Module, CheckpointRef, list[str]], Any]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What a featurize run will need, said before it starts."""

    n_examples: int
    n_checkpoints: int
    grad_dim: int
    feature_dim: int
    disk_bytes: int
    peak_memory_bytes: int
    device: str | None = None  # an accelerator the work runs on (None: the host)
    device_memory_bytes: int = 0  # on that device: weights, projection factors, a batch of features
    device_free_bytes: int | None = None  # free there now, when the device says

    def describe(self) -> str:
        text = (
            f"{self.n_examples} examples x {self.n_checkpoints} checkpoints; gradient dim {self.grad_dim:,}, "
            f"feature dim {self.feature_dim:,}; store needs ~{human_bytes(self.disk_bytes)} on disk, "
            f"peak working memory ~{human_bytes(self.peak_memory_bytes)} beyond the model"
        )
        if self.device is not None:
            free = "" if self.device_free_bytes is None else f" of {human_bytes(self.device_free_bytes)} free"
            text += (
                f"; on {self.device} ~{human_bytes(self.device_memory_bytes)}{free} for weights, projection factors "
                "and a batch of features, plus the activations of one batch (they grow with batch size x tokens)"
            )
        return text


def featurize(
    model: nn.Module,
    task: Task,
    checkpoints: Sequence[CheckpointRef | tuple[str | Path, float]],
    data: Any,
    out: str | Path,
    config: FeaturizeConfig | None = None,
    *,
    ids: Sequence[str] | None = None,
    tags: Sequence[Any] | None = None,
    append: bool = False,
    checkpoint_loader: CheckpointLoader | None = None,
    weights_only: bool = True,
    progress: bool = True,
    train_transform: TrainTransform | None = None,
    executor: Executor | None = None,
    on_nonfinite: str = "raise",
    device: str | torch.device | None = None,
    model_dtype: str | torch.dtype | None = None,
) -> GradientStore:
    """Write (or finish, or extend) the gradient store at ``out``.

    ``model`` is an instance of the trained architecture; each checkpoint is
    loaded into it in turn (with ``checkpoint_loader(model, ref)`` if given,
    else as a state dict) and its original weights are restored at the end.
    If ``out`` already holds a store made with the same settings, the call
    resumes it (same data) or, with ``append=True``, adds ``data`` as new
    examples. Other settings raise :class:`~gradtrace.errors.ConfigMismatchError`.

    The store is written in a session under its locks
    (:func:`gradtrace.store.writer.open_for_writing`): a second run with
    other settings is refused while this one writes, one with the same
    settings joins it. The checkpoint files are fingerprinted when the store
    is made and checked before each is loaded (a file changed since is a
    :class:`~gradtrace.errors.CheckpointError` naming it); on resume, shards
    that fail their checksum are written again.

    ``train_transform(model, ref, param_names)``, if given, returns the
    gradient transform for checkpoint ``ref`` (e.g. Adam preconditioning from
    its optimizer state, :func:`gradtrace.models.hf_checkpoints.adam_transform`);
    training gradients are mapped by it before projection, query gradients
    stay plain. Its description is recorded in the manifest.

    ``on_nonfinite``: what to do with a training example whose loss or
    gradient is not finite (NaN or inf) at a checkpoint. ``"raise"`` (the
    default) stops at the first one with an :class:`~gradtrace.errors.InputError`
    naming its id, its index and the checkpoint; ``"skip"`` writes its rows
    and norms as zeros, records it in the shard's record and goes on: it is
    listed in ``store.skipped_examples`` and every score of it reads as 0.

    ``executor`` decides where the missing shards are computed (default:
    :class:`~gradtrace.execution.LocalExecutor`, in this process; see
    :mod:`gradtrace.execution`; :func:`gradtrace.execution_dist.launched_executor`
    gives a torch.distributed one under torchrun or srun). Only its main
    process shows progress (of its share of the shards).

    ``device`` (``"auto" | "cpu" | "cuda" | "cuda:N"``; None: where the model
    is) is where the model, each batch and the projection matrices live;
    features come back to the host in the store's dtype. ``model_dtype``
    (``"float32" | "bfloat16" | "float16"``; None: the model's own) is the
    dtype of the forward and backward passes; features and norms accumulate
    in float32. A model dtype that changes the model's is recorded in the
    manifest (a store is resumed only with the same one). The model is given
    back on its own device, in its own dtype, with its own weights.
    """
    if on_nonfinite not in NONFINITE_CHOICES:
        raise InputError(f"on_nonfinite must be one of {NONFINITE_CHOICES}; got {on_nonfinite!r}")
    config = _decided(config or FeaturizeConfig(), Path(out))
    placement = Placement.of(device, model_dtype)
    task = check_task(task)
    refs = checkpoints_from_list(checkpoints)
    source = as_source(data, collate=getattr(task, "collate", None))
    n = len(source)
    if n == 0:
        raise InputError("data: the training set is empty")
    param_names = select_parameters(model, config.params)
    featurizer = GradientFeaturizer(param_names, config.projection, config.method, exact_norms=config.exact_norms)
    settings = store_settings(model, task, refs, config, featurizer, param_names)
    if train_transform is not None:
        settings["model"]["train_transform"] = describe(train_transform)
    if placement.dtype is not None and any(p.dtype != placement.dtype for p in model.parameters() if p.is_floating_point()):
        settings["model"]["dtype"] = dtype_name(placement.dtype)  # absent when the model runs in its own dtype
    data_fp = source.fingerprint()

    if tags is not None and len(tags) != n:
        raise InputError(f"tags: need one tag per example ({n}); got {len(tags)}")
    checked_ids = _check_ids(ids, n, 0) if ids is not None else None
    prepare = _segment_finder(Path(out), data_fp, n, checked_ids, tags, append)

    executor = executor or LocalExecutor()
    progress = progress and getattr(executor, "is_main", True)
    # the first process checks and repairs the store's shards; the others join it as it is then
    session = executor.setup(lambda first: GradientStore.writer(out, settings, prepare=prepare, repair=first))
    with session:
        store, segment = session.store, session.prepared
        tasks = [ShardTask(c, a, b) for c, a, b in store.missing_shards(segment)]
        estimate = estimate_resources(store, featurizer, model, n_examples=segment.stop - segment.start, placement=placement)
        total = sum(t.size for t in tasks)
        with progress_bar("featurize", sum(t.size for t in executor.share(tasks)), progress) as bar, restored(model), placement.model(model):
            bar.note(f"gradtrace: {estimate.describe()}")
            for c, a, b, problem in session.repaired:
                bar.note(f"gradtrace: shard checkpoint {c} rows {a}-{b} failed its check ({problem}); rewriting it")
            if total < (segment.stop - segment.start) * len(refs):
                bar.note(f"gradtrace: resuming; {len(tasks)} shard(s) left")
            model.eval()
            worker = _ShardWriter(
                model, task, refs, resolve_loader(checkpoint_loader, weights_only), train_transform,
                featurizer, param_names, source, segment, config, store, bar, on_nonfinite, placement,
            )
            executor.run(tasks, worker)
    return store


@dataclasses.dataclass
class _ShardWriter:
    """Computes training shards into the store (a :class:`~gradtrace.execution.ShardWorker`)."""

    model: nn.Module
    task: Task
    refs: list[CheckpointRef]
    loader: CheckpointLoader
    train_transform: TrainTransform | None
    featurizer: GradientFeaturizer
    param_names: list[str]
    source: ExampleSource
    segment: Segment
    config: FeaturizeConfig
    store: GradientStore
    bar: Progress
    on_nonfinite: str
    placement: Placement

    def load(self, checkpoint: int) -> None:
        ref = self.refs[checkpoint]
        self.store.check_checkpoints([checkpoint])  # unchanged since the store was made (or this run began)
        self.loader(self.model, ref)
        if self.train_transform is not None:
            self.featurizer.transform = self.train_transform(self.model, ref, self.param_names)

    def compute(self, shard: ShardTask) -> None:
        offset = self.segment.start
        skipped: list[tuple[int, str]] = []

        def nonfinite(index: int, problem: str) -> None:
            ref = self.refs[shard.checkpoint]
            where = (
                f"training example {index} of data (id {self.store.ids[offset + index]!r}) has a {problem} "
                f"at checkpoint {shard.checkpoint} ({ref.path!r})"
            )
            if self.on_nonfinite == "raise":
                raise InputError(
                    f"data: {where}. Fix the example or the checkpoint and featurize into a new directory, or pass "
                    "on_nonfinite='skip' to leave such examples out (they then score 0 and are listed in "
                    "store.skipped_examples); a run with 'skip' finishes this store"
                )
            skipped.append((offset + index, problem))
            if len(skipped) <= 3:
                self.bar.note(f"gradtrace: skipped {where}")

        lo, hi = shard.start - offset, shard.stop - offset
        unit, norms = compute_shard(
            self.model, self.task.per_example_loss, self.featurizer, self.source, lo, hi,
            batch_size=self.config.batch_size, normalise=self.config.projection.kind != "factored",
            dtype=self.config.dtype, bar=self.bar, on_nonfinite=nonfinite, what="data", placement=self.placement,
            lengths=example_lengths(self.task, self.source, lo, hi) if self.config.batch_order == "length" else None,
        )
        if len(skipped) > 3:
            self.bar.note(f"gradtrace: skipped {len(skipped) - 3} more examples of rows {shard.start}-{shard.stop} at checkpoint {shard.checkpoint}")
        self.store.write_shard(shard.checkpoint, shard.start, shard.stop, unit, norms, skipped)


def example_lengths(task: Task, source: ExampleSource, start: int, stop: int, what: str = "data") -> list[int] | None:
    """``task.example_length(example)`` (e.g. its tokens) of examples
    ``start:stop`` of ``source``, the key of ``batch_order="length"``; None
    when the task has no ``example_length`` (every example is one size: the
    batches stay in data order)."""
    length = getattr(task, "example_length", None)
    if length is None or not callable(length):
        return None
    out = []
    for i in range(start, stop):
        try:
            n = length(source.example(i))
        except InputError as exc:
            raise InputError(f"{what}: example {i}: {exc}") from None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InputError(f"the task's example_length must return a non-negative integer; got {n!r} for {what} example {i}")
        out.append(n)
    return out


def _decided(config: FeaturizeConfig, out: Path) -> FeaturizeConfig:
    """``config`` with ``batch_order`` decided when it is None: the order the
    store at ``out`` was written in (``"file"`` for one written before the
    setting existed), or ``"length"`` for a new store. A manifest that cannot
    be read is left to the writer, which says what is wrong with it."""
    if config.batch_order is not None:
        return config
    order = "length"
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        order = str(manifest["config"].get("batch_order", LEGACY_CONFIG["batch_order"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return dataclasses.replace(config, batch_order=order if order in BATCH_ORDERS else "length")


def store_settings(
    model: nn.Module, task: Task, refs: list[CheckpointRef], config: FeaturizeConfig,
    featurizer: GradientFeaturizer, param_names: list[str],
) -> dict[str, Any]:
    """The manifest fields that must match for a store to be resumed or queried."""
    return {
        "config": config.to_dict(),
        "model": {
            "fingerprint": model_fingerprint(model),
            "param_names": param_names,
            "grad_dim": featurizer.grad_dim(model),
            "method": featurizer.resolved_method(model),
            "factor_layout": [list(pair) for pair in featurizer.factor_layout(model)],
        },
        "task": describe(task),
        "checkpoints": [r.to_dict() for r in refs],
        "feature_dim": featurizer.feature_dim(model),
    }


def estimate_resources(
    store: GradientStore, featurizer: GradientFeaturizer, model: nn.Module, n_examples: int, placement: Placement | None = None,
) -> Estimate:
    """Disk and host memory of featurizing ``n_examples`` into ``store``; with
    a ``placement`` on an accelerator, also what its memory must hold besides
    a batch's activations: the weights in the model dtype, the projection
    factors (or dense matrix) and a batch of per-example gradients or features."""
    config = store.settings
    d, k = featurizer.grad_dim(model), store.feature_dim
    item = np.dtype(config.dtype).itemsize
    n_ckpt = len(store.manifest["checkpoints"])
    param_bytes = next(model.parameters()).element_size()
    exact = 0 if config.projection_kind == "kronecker" else config.batch_size * d * param_bytes * 3
    dense_cache = d * k * 4 if config.projection_kind == "dense" else 0
    shard = min(config.shard_size, n_examples) * k * (8 + item)
    estimate = Estimate(n_examples, n_ckpt, d, k, n_examples * n_ckpt * (k * item + 16), exact + dense_cache + shard)
    device = placement.device if placement is not None else None
    if device is None or device.type == "cpu":
        return estimate
    return dataclasses.replace(
        estimate, device=str(device), device_memory_bytes=device_memory(featurizer, model, config.batch_size, placement),  # type: ignore[arg-type]
        device_free_bytes=_free_bytes(device),
    )


def device_memory(featurizer: GradientFeaturizer, model: nn.Module, batch_size: int, placement: Placement) -> int:
    """Bytes an accelerator holds for featurize besides one batch's
    activations: every weight in the model dtype, the projection factors or
    dense matrix (float32), and a batch of exact gradients (unless Kronecker)
    and features (float32)."""
    weights = sum(p.numel() * (placement.dtype.itemsize if placement.dtype is not None and p.is_floating_point() else p.element_size())
                  for p in model.parameters())
    d, k = featurizer.grad_dim(model), featurizer.feature_dim(model)
    kind = featurizer.projection.kind
    acc = accumulation_dtype(placement.dtype or next(model.parameters()).dtype).itemsize
    if kind == "kronecker":
        side = max(1, math.isqrt(featurizer.projection.dim or 1))  # as projection.kronecker_factors
        factors = sum((d_in if d_in > side else 0) * side + (d_out if d_out > side else 0) * side
                      for d_in, d_out in featurizer.linear_shapes(model)) * acc
        grads = 0
    else:
        factors = d * k * acc if kind == "dense" else 0
        grads = batch_size * d * acc * 3
    return int(weights + factors + grads + batch_size * k * acc * 2)


def _free_bytes(device: torch.device) -> int | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except RuntimeError:
        return None


def _segment_finder(
    root: Path, data_fp: str, n: int, ids: list[str] | None, tags: Sequence[Any] | None, append: bool,
) -> Callable[[GradientStore], Segment]:
    """The ``prepare`` step of :func:`gradtrace.store.writer.open_for_writing`
    (run under the manifest lock): the segment already holding this data
    (same fingerprint and ids), or a new one for it when the store is new or
    ``append`` is set."""

    def prepare(store: GradientStore) -> Segment:
        for seg in store.segments:
            if seg.fingerprint == data_fp:
                if ids is not None and store.ids[seg.start : seg.stop] != ids:
                    raise InputError(
                        f"ids differ from those stored for this data in {str(root)!r}; "
                        "resume with the same ids, or featurize into a new directory"
                    )
                return seg
        if store.segments and not append:
            raise InputError(
                f"the store at {str(root)!r} holds other training data (data fingerprints differ); "
                "pass append=True (CLI: --append) to add these examples, or choose a new directory"
            )
        return store.add_segment(data_fp, ids or _check_ids(None, n, store.n_examples), tags)

    return prepare


def _check_ids(ids: Sequence[str] | None, n: int, start: int) -> list[str]:
    if ids is None:
        return [str(start + i) for i in range(n)]
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise InputError(f"ids: need one id per example ({n}); got {len(ids)}")
    if len(set(ids)) != n:
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise InputError(f"ids must be unique; repeated: {dup[:5]!r}")
    return ids


