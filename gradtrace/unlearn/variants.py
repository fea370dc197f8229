"""Score variants of TracIn from one gradient store, for comparing them (LDS).

* ``raw``: ``sum_c lr_c <g_c(z), q_c>`` (the engine's default).
* ``cosine``: ``sum_c lr_c cos(g_c(z), q_c)``.
* ``adam``: ``sum_c lr_c <g_c(z), D_c q_c>`` with ``D_c = 1/(sqrt(v_hat_c)+eps)``
  from the Adam state saved with checkpoint ``c`` (see
  :func:`gradtrace.grads.adam.adam_diagonal`). ``D_c`` is applied
  to the exact query gradient before the store's projection, so the stored
  training features are reused as they are.
* ``fisher``: ``sum_c lr_c q_c^T (G_c^T G_c / n + lambda_c I)^{-1} g_c(z)`` on
  the stored projected features ``G_c``, with ``lambda_c = damping *
  trace(G_c^T G_c / n) / k`` (damping relative to the mean eigenvalue, so one
  setting fits any gradient scale).

* ``kfac``, ``ekfac``: influence with the (eigenvalue-corrected) Kronecker-
  factored Fisher per linear layer, from factors fitted on the store first
  (``gradtrace.scoring.factors.fit_factors``; stores ``none``, ``factored``,
  ``kronecker``); ``kfac_damping`` relative to the mean eigenvalue.
* ``trackstar``: cosine of Adam-normalised projected gradients (see
  :mod:`gradtrace.scoring.methods.trackstar`); needs
  ``adam_states`` and a store of exact or TrackStar-normalised gradients.

The default ``variants`` are the four that need nothing fitted beforehand.
Each is a score method of :mod:`gradtrace.scoring.methods`; this module runs
:meth:`gradtrace.Attributor.score` once per variant. All variants share the
engine's sign convention: a positive score means a step on z moves the
query's behaviour in its direction. Only ``none`` and ``dense`` projections
are supported for ``adam`` and ``fisher`` (their stored rows are linear in the
gradient).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from torch import nn

from ..checkpoints import CheckpointRef
from ..configbase import ConfigBase, optional, positive, subset_of
from ..scoring.attributor import Attributor, QueryFeatures
from ..scoring.methods import (
    AdamMethod, EKFACMethod, FisherMethod, KFACMethod, ScoreMethod, TrackStarMethod, available_methods, get_method, stored_gradients,
)
from ..scoring.results import VARIANTS

#: what :class:`VariantConfig` scores by default: the variants that need nothing fitted on the store first
DEFAULT_VARIANTS = ("raw", "cosine", "adam", "fisher")
from ..store.gradient_store import GradientStore

__all__ = ["DEFAULT_VARIANTS", "VARIANTS", "VariantConfig", "score_variants", "stored_gradients"]


@dataclasses.dataclass(frozen=True)
class VariantConfig(ConfigBase):
    """``fisher_damping``: lambda relative to the mean eigenvalue of the
    projected Fisher; ``kfac_damping``: the same for ``kfac`` and ``ekfac``
    (per layer); ``adam_eps``: override of the optimizer's eps for ``adam``
    and ``trackstar`` (None: the recorded one); ``trackstar_whitening``: the
    name of a whitening fitted with ``fit_whitening`` (None: none)."""

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    fisher_damping: float = 0.1
    adam_eps: float | None = None
    kfac_damping: float = 0.1
    trackstar_whitening: str | None = None

    _checks = {"fisher_damping": positive, "adam_eps": optional(positive), "kfac_damping": positive}

    def _check(self) -> None:
        subset_of(available_methods())(self.variants, "variants")  # registered methods count, so looked up now


def score_variants(
    store: GradientStore | str, model: nn.Module, task: Any, queries: Any, behaviour: Any = None,
    config: VariantConfig = VariantConfig(), *,
    adam_states: Sequence[Mapping[str, Any]] | None = None,
    checkpoint_loader: Callable[[nn.Module, CheckpointRef], Any] | None = None,
) -> dict[str, np.ndarray]:
    """``{variant: [n_query, n_train] float64 scores}`` for each configured variant.

    ``adam_states``: one ``optimizer.state_dict()`` per checkpoint of the
    store (needed for ``adam`` and ``trackstar``).
    """
    attributor = Attributor(store, model, task, checkpoint_loader=checkpoint_loader)
    methods = {v: _method(v, config, adam_states) for v in config.variants}
    for method in methods.values():  # every check before any computation
        method.check(attributor.store)
    plain: QueryFeatures | None = None
    out: dict[str, np.ndarray] = {}
    for v, method in methods.items():
        if method.transforms_queries:
            out[v] = attributor.score(queries, behaviour, variant=method)
            continue
        if plain is None:
            plain = attributor.query_features(queries, behaviour)
        out[v] = attributor.score(plain, variant=method)
    return out


def _method(name: str, config: VariantConfig, adam_states: Sequence[Mapping[str, Any]] | None) -> ScoreMethod:
    """The method of variant ``name`` with this config's options."""
    if name == "fisher":
        return FisherMethod(config.fisher_damping)
    if name == "adam":
        return AdamMethod(adam_states, eps=config.adam_eps)
    if name == "kfac":
        return KFACMethod(config.kfac_damping)
    if name == "ekfac":
        return EKFACMethod(config.kfac_damping)
    if name == "trackstar":
        return TrackStarMethod(adam_states, eps=config.adam_eps, whitening=config.trackstar_whitening)
    return get_method(name)
