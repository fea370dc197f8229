"""Artefacts fitted once on a gradient store and saved beside it: the
Kronecker factors of K-FAC / EK-FAC and TrackStar's whitening.

Layout, inside the store directory::

    factors/NAME.npz     the arrays (float64)
    factors/NAME.json    kind, settings, the store's fingerprint, the sha256 of NAME.npz

Both files are written atomically, the record last, so a fit that is
interrupted leaves either the old factors or none. Reading checks the record,
the arrays' checksum and the store's fingerprint
(:meth:`GradientStore.fingerprint`): factors of a store that changed since
(other settings, checkpoints, appended examples) are refused, naming the
fields that differ, with the command that fits them again.

**Kronecker factors** (:func:`fit_factors`). For each selected ``nn.Linear``
of the store and each fitted checkpoint, with ``x`` a token's input (with a 1
appended when the layer has a bias, as the store does) and ``dy`` the
gradient of the example's training loss with respect to that token's output,
both projected with the store's Kronecker factors when the store is
``kronecker``::

    A = sum over tokens x x^T / (number of tokens)
    S = sum over examples sum over tokens dy dy^T / (number of examples)

so that ``A (x) S`` approximates the empirical Fisher ``E_z[vec G_z vec G_z^T]``
of the per-example weight gradients ``G_z = sum_t dy_t x_t^T`` (exactly its
Kronecker factorisation when examples have one token). Tokens whose output
gradient is exactly zero (padding) are left out of ``A``. Then
``A = Q_A diag(a) Q_A^T``, ``S = Q_S diag(s) Q_S^T`` and the eigenvalue
correction of EK-FAC (George et al., 2018; Grosse et al., 2023)::

    Lambda[o, i] = E_z[ (Q_S^T G_z Q_A)[o, i]^2 ]

K-FAC uses ``Lambda = s a^T`` instead. The Fisher is the *empirical* one
(gradients of the training loss at the training labels) by default, or the
*true* Fisher (labels drawn from the model's predictive distribution,
``fisher="true"``, for tasks with ``sampled_loss``: classifiers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointRef
from ..data import ExampleSource, SequenceSource, TensorSource, as_source
from ..errors import ConfigMismatchError, InputError, StoreError
from ..fileio import atomic_write_bytes, json_bytes
from ..fingerprint import file_sha256
from ..grads.compute import input_errors, model_fingerprint, resolve_loader, restored
from ..grads.linear_capture import linear_sites
from ..grads.per_example import GradientFeaturizer
from ..grads.projection import ProjectionConfig, derive_seed
from ..progress import progress_bar
from ..store.gradient_store import GradientStore
from ..store.settings import dict_differences
from ..task import Task, check_task, describe

FACTORS_DIR = "factors"
FORMAT = "gradtrace.factors"
KRONECKER_KINDS = ("none", "factored", "kronecker")
FISHERS = ("empirical", "true")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# -- where a layer's gradient sits in a stored row -------------------------------
def layer_layout(store: GradientStore, model: nn.Module) -> list[dict[str, Any]]:
    """Per selected linear layer (the store's order), where its gradient sits
    in a stored row (JSON-able; saved with the factors):

    * ``none``: ``{"name", "d_in", "d_out", "weight", "bias"}``, the offsets of
      the row-major ``[d_out, d_in - 1]`` weight gradient and the ``[d_out]``
      bias gradient (``bias`` None and ``d_in`` the input size without one);
    * ``kronecker``: ``{"name", "d_in", "d_out", "offset"}``, a row-major
      ``[d_out, d_in]`` block of the projected gradient (projected sizes);
    * ``factored``: ``{"name", "d_in", "d_out", "offset"}``, the input
      ``x`` (``d_in`` numbers) followed by the output gradient (``d_out``).
    """
    kind = store.settings.projection_kind
    check_kronecker_store(store, "Kronecker factors")
    names = store.param_names
    sites = linear_sites(model, names)
    if sites is None or any(s.weight_name is None for s in sites):
        raise InputError(
            "Kronecker factors need every parameter of the store to be the weight (and bias) of an untied nn.Linear; "
            f"the store at {str(store.root)!r} selects {names[:8]!r}"
        )
    out: list[dict[str, Any]] = []
    if kind == "none":
        shapes = {n: p.shape for n, p in model.named_parameters()}
        offsets, at = {}, 0
        for n in names:
            offsets[n] = at
            at += math.prod(shapes[n])
        for s in sites:
            out.append({"name": s.module_name, "d_in": s.d_in + (1 if s.bias_name else 0), "d_out": s.d_out,
                        "weight": offsets[s.weight_name], "bias": offsets[s.bias_name] if s.bias_name else None})
        return out
    at = 0
    if kind == "factored":
        for s, (d_in, d_out) in zip(sites, store.factor_layout):
            out.append({"name": s.module_name, "d_in": int(d_in), "d_out": int(d_out), "offset": at})
            at += d_in + d_out
        return out
    side = max(1, math.isqrt(int(store.settings.projection["dim"])))
    for s in sites:
        d_in, d_out = min(s.d_in + (1 if s.bias_name else 0), side), min(s.d_out, side)
        out.append({"name": s.module_name, "d_in": d_in, "d_out": d_out, "offset": at})
        at += d_in * d_out
    if at != store.feature_dim:
        raise StoreError(f"the store's feature dim {store.feature_dim} does not match its layers' Kronecker blocks ({at})")
    return out


def layer_index(layer: Mapping[str, Any], kind: str) -> Tensor:
    """``[d_out, d_in]`` positions in a stored row of a layer's gradient
    matrix (bias as the last column), for ``none`` and ``kronecker`` stores."""
    d_in, d_out = int(layer["d_in"]), int(layer["d_out"])
    if kind == "kronecker":
        return torch.arange(d_out * d_in).reshape(d_out, d_in) + int(layer["offset"])
    bias = layer["bias"]
    d_w = d_in - (1 if bias is not None else 0)
    idx = torch.arange(d_out * d_w).reshape(d_out, d_w) + int(layer["weight"])
    if bias is not None:
        idx = torch.cat([idx, torch.arange(d_out)[:, None] + int(bias)], dim=1)
    return idx


def check_kronecker_store(store: GradientStore, what: str) -> None:
    """Raise InputError unless ``store`` keeps per-layer gradients K-FAC can use."""
    kind = store.settings.projection_kind
    if kind not in KRONECKER_KINDS:
        raise InputError(
            f"{what} need per-layer gradients: a store with projection 'none', 'factored' or 'kronecker'; the store at "
            f"{str(store.root)!r} is {kind!r}, whose random projection mixes every layer's gradient into each feature "
            "(use variant 'fisher' there, the Fisher in the projected space)"
        )
    transform = store.manifest["model"].get("train_transform")
    if transform is not None:
        raise InputError(
            f"{what} need the plain gradients of the training loss; the store at {str(store.root)!r} holds gradients "
            f"transformed by {transform!r}. Featurize a store without train_transform"
        )


# -- saving and reading --------------------------------------------------------------
def factors_dir(store: GradientStore) -> Path:
    return store.root / FACTORS_DIR


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"factors name must be 1-64 letters, digits, '_', '.' or '-' (not starting with one of the last three); got {name!r}")
    return name


def fit_command(store: GradientStore, name: str = "ekfac", kind: str = "ekfac") -> str:
    """The command that fits the factors ``name`` of ``store`` (for messages)."""
    from ..models.hf_spec import SPEC_FILE

    root = str(store.root)
    if kind != "ekfac":
        return f"gradtrace.scoring.factors.fit_whitening(attributor, examples, method, name={name!r})"
    extra = "" if name == "ekfac" else f" --name {name}"
    if (store.root / SPEC_FILE).is_file():
        return f"gradtrace fit-factors {root}{extra}"
    return (f"gradtrace fit-factors {root} --task FILE.py:make_task{extra} "
            "(the TaskSpec the store was featurized with), or gradtrace.scoring.factors.fit_factors(store, model, task, data)")


def save_artefact(store: GradientStore, name: str, kind: str, settings: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``factors/NAME.npz`` then its record ``factors/NAME.json`` (atomically)."""
    check_name(name)
    folder = factors_dir(store)
    folder.mkdir(exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()})
    digest = atomic_write_bytes(folder / f"{name}.npz", buf.getvalue())
    record = {"format": FORMAT, "kind": kind, "settings": dict(settings), "store": store.fingerprint(), "sha256": digest}
    atomic_write_bytes(folder / f"{name}.json", json_bytes(record))
    return folder / f"{name}.json"


def load_artefact(store: GradientStore, name: str, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(settings, arrays)`` of the fitted artefact ``name`` of ``store``,
    checked (see the module docstring)."""
    check_name(name)
    path = factors_dir(store) / f"{name}.json"
    if not path.is_file():
        raise InputError(
            f"the store at {str(store.root)!r} has no fitted {kind} factors named {name!r} ({str(path)!r} is missing); "
            f"fit them first: {fit_command(store, name, kind)}"
        )
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{str(path)!r} is not valid JSON ({exc}); fit the factors again: {fit_command(store, name, kind)}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("store"), dict):
        raise StoreError(f"{str(path)!r} is not a gradtrace factors record; fit the factors again: {fit_command(store, name, kind)}")
    if record.get("kind") != kind:
        raise InputError(f"the factors {name!r} of the store at {str(store.root)!r} are of kind {record.get('kind')!r}, not {kind!r}")
    changed = dict_differences(record["store"], store.fingerprint())
    if changed:
        raise ConfigMismatchError(
            f"the factors {name!r} of the store at {str(store.root)!r} were fitted before the store changed; fit them "
            f"again ({fit_command(store, name, kind)}). They",
            {f"{field} (sha256)": pair for field, pair in changed.items()},
        )
    npz = path.with_suffix(".npz")
    if not npz.is_file() or file_sha256(npz) != record.get("sha256"):
        raise StoreError(f"{str(npz)!r} is missing or does not match its recorded checksum; fit the factors again: {fit_command(store, name, kind)}")
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return record["settings"], arrays


# -- fitting the Kronecker factors -----------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerFactors:
    """One layer's fitted factors at one checkpoint (float64)."""

    q_a: Tensor  # [d_in, d_in] eigenvectors of A
    a: Tensor  # [d_in] eigenvalues of A
    q_s: Tensor  # [d_out, d_out] eigenvectors of S
    s: Tensor  # [d_out] eigenvalues of S
    corrected: Tensor  # [d_out, d_in] EK-FAC eigenvalues E[(Q_S^T G Q_A)^2]

    def eigenvalues(self, corrected: bool) -> Tensor:
        """``[d_out, d_in]``: EK-FAC's corrected ones, or K-FAC's ``s a^T``."""
        return self.corrected if corrected else self.s[:, None] * self.a[None, :]


@dataclasses.dataclass(frozen=True)
class KroneckerFactors:
    """The fitted factors of a store: ``layers[c][l]`` for each fitted checkpoint ``c``."""

    settings: dict[str, Any]
    layers: dict[int, list[LayerFactors]]

    @property
    def layout(self) -> list[dict[str, Any]]:
        return self.settings["layout"]


def load_factors(store: GradientStore, name: str = "ekfac") -> KroneckerFactors:
    """The Kronecker factors ``name`` fitted on ``store`` (checked; see the module docstring)."""
    settings, arrays = load_artefact(store, name, "ekfac")
    layers: dict[int, list[LayerFactors]] = {}
    for c in settings["checkpoints"]:
        layers[int(c)] = [
            LayerFactors(*(torch.from_numpy(arrays[f"c{c}.l{l}.{k}"]) for k in ("q_a", "a", "q_s", "s", "corrected")))
            for l in range(len(settings["layout"]))
        ]
    return KroneckerFactors(settings, layers)


def fit_factors(
    store: GradientStore | str | Path,
    model: nn.Module,
    task: Task,
    data: Any,
    *,
    checkpoints: str = "all",
    name: str = "ekfac",
    fisher: str = "empirical",
    seed: int = 0,
    batch_size: int | None = None,
    checkpoint_loader: Callable[[nn.Module, CheckpointRef], Any] | None = None,
    weights_only: bool = True,
    progress: bool = True,
) -> Path:
    """Fit K-FAC's factors and EK-FAC's eigenvalue correction on the training
    data of ``store`` at its checkpoints (``"all"``, or ``"last"``: only the
    final one) and save them as ``factors/NAME`` in the store (see the module
    docstring); returns the record's path.

    ``model`` and ``task`` are those the store was made with; ``data`` is its
    training set, all examples in store order (checked against the
    fingerprints the store recorded). Two passes over the data per
    checkpoint: the factors, then the correction in their eigenbasis.

    ``fisher="empirical"`` (default) fits the gradients of the training loss
    at the training labels; ``"true"`` at labels drawn from the model's own
    predictive distribution (the true Fisher, Kronfluence's default), for a
    task with ``sampled_loss(model, batch, generator)``
    (:class:`~gradtrace.task.ClassificationTask` has one): one draw per
    example from a generator seeded with ``seed`` and the checkpoint, the same
    draws in both passes.
    """
    store = store if isinstance(store, GradientStore) else GradientStore.open(store)
    check_name(name)
    if checkpoints not in ("all", "last"):
        raise InputError(f"checkpoints must be 'all' or 'last'; got {checkpoints!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer; got {batch_size!r}")
    if fisher not in FISHERS:
        raise InputError(f"fisher must be one of {FISHERS}; got {fisher!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer; got {seed!r}")
    task = check_task(task)
    if fisher == "true" and not callable(getattr(task, "sampled_loss", None)):
        raise InputError(
            f"fisher='true' needs a task with sampled_loss(model, batch, generator) (labels drawn from the model); "
            f"{type(task).__name__} has none: use fisher='empirical'"
        )
    _check_model_and_task(store, model, task)
    source = as_source(data, collate=getattr(task, "collate", None))
    check_training_data(store, source)
    layout = layer_layout(store, model)
    refs = store.checkpoints
    indices = list(range(len(refs))) if checkpoints == "all" else [len(refs) - 1]
    store.check_checkpoints(indices)
    featurizer = GradientFeaturizer(store.param_names, ProjectionConfig.from_dict(store.settings.projection), "hooks")
    loader = resolve_loader(checkpoint_loader, weights_only)
    bs = batch_size or store.settings.batch_size
    n = len(source)
    arrays: dict[str, np.ndarray] = {}
    with progress_bar("fit factors", 2 * n * len(indices), progress) as bar, restored(model):
        model.eval()
        for c in indices:
            loader(model, refs[c])
            if fisher == "true":
                loss = _sampled(task, derive_seed(seed, "fisher", c))
            else:
                loss = task.per_example_loss
            for l, lf in enumerate(_fit_checkpoint(model, loss, featurizer, source, bs, len(layout), bar)):
                for key, value in dataclasses.asdict(lf).items():
                    arrays[f"c{c}.l{l}.{key}"] = value.numpy()
    settings = {
        "fisher": fisher, "seed": seed if fisher == "true" else None, "checkpoints": indices, "n_examples": n, "layout": layout,
        "projection": dict(store.settings.projection),
    }
    return save_artefact(store, name, "ekfac", settings, arrays)


def _sampled(task: Any, seed: int) -> Callable[..., Tensor]:
    """``task.sampled_loss`` with a generator that restarts at ``seed`` on
    each pass over the data (call ``.restart()``), so both passes draw the same labels."""

    class Loss:
        def __init__(self) -> None:
            self.restart()

        def restart(self) -> None:
            self.generator = torch.Generator().manual_seed(seed)

        def __call__(self, model: nn.Module, batch: Any) -> Tensor:
            return task.sampled_loss(model, batch, self.generator)

    return Loss()


def _fit_checkpoint(
    model: nn.Module, loss: Callable[..., Tensor], featurizer: GradientFeaturizer, source: ExampleSource, bs: int,
    n_layers: int, bar: Any,
) -> list[LayerFactors]:
    n = len(source)
    a_sum: list[Tensor | None] = [None] * n_layers
    s_sum: list[Tensor | None] = [None] * n_layers
    tokens = [0] * n_layers

    def batches():
        if hasattr(loss, "restart"):
            loss.restart()
        for lo in range(0, n, bs):
            hi = min(lo + bs, n)
            batch = source.batch(lo, hi)
            with input_errors("data", lo, hi, batch, model, first=lo == 0):
                pairs, values = featurizer.layer_factors(model, loss, batch)
            if not bool(torch.isfinite(values).all()):
                i = int((~torch.isfinite(values)).nonzero()[0, 0])
                raise InputError(f"data: example {lo + i} has a non-finite loss ({float(values[i])}); Kronecker factors need finite losses")
            yield hi - lo, [(x.to(torch.float64), g.to(torch.float64)) for x, g in pairs]

    for b, pairs in batches():
        for l, (x, g) in enumerate(pairs):
            live = (g != 0).any(dim=-1)  # tokens with a gradient (not padding)
            xl = x[live]
            a = xl.T @ xl
            g2 = g.reshape(-1, g.shape[-1])
            s = g2.T @ g2
            a_sum[l] = a if a_sum[l] is None else a_sum[l] + a
            s_sum[l] = s if s_sum[l] is None else s_sum[l] + s
            tokens[l] += int(live.sum())
        bar.advance(b)
    eig = []
    for l in range(n_layers):
        a = a_sum[l] / max(tokens[l], 1)
        s = s_sum[l] / n
        ea, qa = torch.linalg.eigh(a)
        es, qs = torch.linalg.eigh(s)
        eig.append((qa, ea.clamp_min(0.0), qs, es.clamp_min(0.0)))
    corrected: list[Tensor | None] = [None] * n_layers
    for b, pairs in batches():
        for l, (x, g) in enumerate(pairs):
            qa, _, qs, _ = eig[l]
            grad = torch.einsum("bto,bti->boi", g @ qs, x @ qa)  # Q_S^T G Q_A per example
            sq = grad.pow(2).sum(0)
            corrected[l] = sq if corrected[l] is None else corrected[l] + sq
        bar.advance(b)
    return [LayerFactors(qa, ea, qs, es, corrected[l] / n) for l, (qa, ea, qs, es) in enumerate(eig)]


def _check_model_and_task(store: GradientStore, model: nn.Module, task: Task) -> None:
    fp = model_fingerprint(model)
    if fp != store.manifest["model"]["fingerprint"]:
        raise ConfigMismatchError(f"the model given for the store at {str(store.root)!r}", {"model.fingerprint": (store.manifest["model"]["fingerprint"], fp)})
    diff = dict_differences(store.manifest["task"], describe(task), "task")
    if diff:
        raise ConfigMismatchError(f"the task given for the store at {str(store.root)!r}", diff)


def segment_source(source: ExampleSource, start: int, stop: int) -> ExampleSource:
    """Examples ``start:stop`` of ``source`` as a source of the same kind
    (so its fingerprint is the one featurize recorded for that segment)."""
    if isinstance(source, TensorSource):
        return TensorSource(tuple(t[start:stop] for t in source.tensors), source.single)
    if isinstance(source, SequenceSource):
        return SequenceSource([source.examples[i] for i in range(start, stop)], source.collate)
    raise InputError(f"unsupported data source {type(source).__name__} for a store of several segments")


def check_training_data(store: GradientStore, source: ExampleSource) -> None:
    """Raise InputError unless ``source`` holds the store's training examples, in order."""
    if len(source) != store.n_examples:
        raise InputError(f"data: the store at {str(store.root)!r} holds {store.n_examples} training examples; got {len(source)}")
    segments = store.segments
    for i, seg in enumerate(segments):
        part = source if len(segments) == 1 else segment_source(source, seg.start, seg.stop)
        if part.fingerprint() != seg.fingerprint:
            which = "" if len(segments) == 1 else f" (examples {seg.start}-{seg.stop - 1}, segment {i})"
            raise InputError(
                f"data: these are not the training examples the store at {str(store.root)!r} was featurized with{which} "
                "(their fingerprint differs); pass the same data, in the same order"
            )


def states_digest(adam_states: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the second moments of optimizer states (what whitening depends on)."""
    h = hashlib.sha256()
    for state in adam_states:
        for pid in sorted(state.get("state", {}), key=str):
            v = state["state"][pid].get("exp_avg_sq")
            if isinstance(v, Tensor):
                h.update(str(pid).encode())
                h.update(v.detach().to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()
