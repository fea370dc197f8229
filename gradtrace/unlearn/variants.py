"""Score variants of TracIn from one gradient store, for comparing them (LDS).

* ``raw``: ``sum_c lr_c <g_c(z), q_c>`` (the engine's default).
* ``cosine``: ``sum_c lr_c cos(g_c(z), q_c)``.
* ``adam``: ``sum_c lr_c <g_c(z), D_c q_c>`` with ``D_c = 1/(sqrt(v_hat_c)+eps)``
  from the Adam state saved with checkpoint ``c`` (see
  :func:`gradtrace.grads.query_preconditioners.adam_diagonal`). ``D_c`` is applied
  to the exact query gradient before the store's projection, so the stored
  training features are reused as they are.
* ``fisher``: ``sum_c lr_c q_c^T (G_c^T G_c / n + lambda_c I)^{-1} g_c(z)`` on
  the stored projected features ``G_c``, with ``lambda_c = damping *
  trace(G_c^T G_c / n) / k`` (damping relative to the mean eigenvalue, so one
  setting fits any gradient scale).

All variants share the engine's sign convention: a positive score means a
step on z moves the query's behaviour in its direction. Only ``none`` and
``dense`` projections are supported for ``adam`` and ``fisher`` (their stored
rows are linear in the gradient).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointRef, load_checkpoint
from ..data import as_source
from ..errors import InputError
from ..featurize import _restored
from ..grads.per_example import GradientFeaturizer
from ..grads.query_preconditioners import adam_diagonal, fisher_inverse
from ..grads.projection import DenseProjector, ProjectionConfig
from ..scoring.attributor import Attributor
from ..store.gradient_store import GradientStore
from ..task import behaviour_sign, resolve_behaviour

VARIANTS = ("raw", "cosine", "adam", "fisher")


@dataclasses.dataclass(frozen=True)
class VariantConfig:
    """``fisher_damping``: lambda relative to the mean eigenvalue of the
    projected Fisher; ``adam_eps``: override of the optimizer's eps (None:
    the recorded one)."""

    variants: tuple[str, ...] = VARIANTS
    fisher_damping: float = 0.1
    adam_eps: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.variants, list):
            object.__setattr__(self, "variants", tuple(self.variants))
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise InputError(f"variants must be a non-empty subset of {VARIANTS}; got {self.variants!r}")
        if not self.fisher_damping > 0:
            raise InputError(f"fisher_damping must be positive; got {self.fisher_damping!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["variants"] = list(self.variants)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VariantConfig":
        return cls(**{**d, "variants": tuple(d.get("variants", VARIANTS))})


def score_variants(
    store: GradientStore | str, model: nn.Module, task: Any, queries: Any, behaviour: Any = None,
    config: VariantConfig = VariantConfig(), *,
    adam_states: Sequence[Mapping[str, Any]] | None = None,
    checkpoint_loader: Callable[[nn.Module, CheckpointRef], Any] | None = None,
) -> dict[str, np.ndarray]:
    """``{variant: [n_query, n_train] float64 scores}`` for each configured variant.

    ``adam_states``: one ``optimizer.state_dict()`` per checkpoint of the
    store (needed for ``adam``).
    """
    attributor = Attributor(store, model, task, checkpoint_loader=checkpoint_loader)
    st = attributor.store
    kind = st.config.projection.kind
    if ("adam" in config.variants or "fisher" in config.variants) and kind not in ("none", "dense"):
        raise InputError(f"variants 'adam' and 'fisher' need a store with projection 'none' or 'dense'; this one has {kind!r}")
    qf = attributor.query_features(queries, behaviour)
    out: dict[str, np.ndarray] = {}
    for v in ("raw", "cosine"):
        if v in config.variants:
            out[v] = attributor.score(qf, variant=v)
    if "fisher" in config.variants:
        q = [u.to(torch.float64) * n.to(torch.float64)[:, None] for u, n in zip(qf.unit, qf.norms)]
        out["fisher"] = _fisher_scores(st, q, config.fisher_damping)
    if "adam" in config.variants:
        if adam_states is None or len(adam_states) != len(st.checkpoints):
            got = None if adam_states is None else len(adam_states)
            raise InputError(f"adam_states: need one optimizer state dict per checkpoint ({len(st.checkpoints)}); got {got}")
        q = _adam_queries(attributor, queries, behaviour, adam_states, config.adam_eps, checkpoint_loader)
        out["adam"] = _linear_scores(st, q)
    return {v: out[v] for v in config.variants}


def stored_gradients(store: GradientStore, ckpt: int, a: int, b: int) -> Tensor:
    """Projected training gradients (unit rows times their norms), float64."""
    rows = torch.from_numpy(np.asarray(store.features(ckpt, a, b), dtype=np.float64))
    return rows * torch.from_numpy(np.asarray(store.norms(ckpt, a, b)[:, 0], dtype=np.float64))[:, None]


def _fisher_scores(store: GradientStore, queries: list[Tensor], damping: float) -> np.ndarray:
    n, k = store.n_examples, store.feature_dim
    out = np.zeros((queries[0].shape[0], n), dtype=np.float64)
    for c, lr in enumerate(store.learning_rates):
        gram = torch.zeros(k, k, dtype=torch.float64)
        for a, b in store.shard_ranges():
            g = stored_gradients(store, c, a, b)
            gram += g.T @ g
        lam = damping * float(torch.trace(gram)) / n / k
        lam = lam if lam > 0 else damping
        pre = queries[c] @ fisher_inverse(gram, n, lam)
        for a, b in store.shard_ranges():
            out[:, a:b] += float(lr) * (pre @ stored_gradients(store, c, a, b).T).numpy()
    return out


def _linear_scores(store: GradientStore, queries: list[Tensor]) -> np.ndarray:
    out = np.zeros((queries[0].shape[0], store.n_examples), dtype=np.float64)
    for c, lr in enumerate(store.learning_rates):
        for a, b in store.shard_ranges():
            out[:, a:b] += float(lr) * (queries[c] @ stored_gradients(store, c, a, b).T).numpy()
    return out


def _adam_queries(
    attributor: Attributor, queries: Any, behaviour: Any, adam_states: Sequence[Mapping[str, Any]],
    eps: float | None, checkpoint_loader: Callable[[nn.Module, CheckpointRef], Any] | None,
) -> list[Tensor]:
    """Signed exact query gradients times the Adam diagonal, then projected as the store is."""
    st, model, task = attributor.store, attributor.model, attributor.task
    assert model is not None
    behaviour = resolve_behaviour(behaviour, task)
    sign = behaviour_sign(behaviour)
    source = as_source(queries, collate=getattr(task, "collate", None))
    exact = GradientFeaturizer(st.param_names, ProjectionConfig("none"), st.config.method)
    projection = st.config.projection
    projector = DenseProjector(exact.grad_dim(model), projection) if projection.kind == "dense" else None
    loader = checkpoint_loader or (lambda m, ref: load_checkpoint(m, ref))

    def signed(m: nn.Module, batch: Any) -> Tensor:
        return sign * behaviour(m, batch)

    out = []
    with _restored(model):
        model.eval()
        for ref, state in zip(st.checkpoints, adam_states):
            loader(model, ref)
            diag = adam_diagonal(state, model, st.param_names, eps=eps)
            grads = []
            bs = st.config.batch_size
            for a in range(0, len(source), bs):
                g = exact(model, signed, source.batch(a, min(a + bs, len(source)))).features.detach()
                g = g.to(torch.float64) * diag[None, :]
                if projector is not None:
                    g = projector.project(g.to(_feature_dtype(model))).to(torch.float64)
                grads.append(g)
            out.append(torch.cat(grads))
    return out


def _feature_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
