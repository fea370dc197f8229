"""``trackstar``: TrackStar-style scores (Chang et al., 2024)::

    phi_c(z) = W_c P (D_c g_c(z)),   D_c = 1 / (sqrt(v_hat_c) + eps)
    score(q, z) = sum_c w_c <phi_c(q) / |phi_c(q)|, phi_c(z) / |phi_c(z)|>

``D_c``: Adam's bias-corrected second moment at checkpoint ``c`` (from the
optimizer state saved with it, read by :mod:`gradtrace.grads.adam`), applied
to both gradients before the projection ``P`` (the store's: ``none``,
``dense`` or ``kronecker``); ``W_c``: the optional task-specific whitening
``(Phi^T Phi / n + lambda I)^{-1/2}`` of the normalised projected gradients
``Phi`` of a set of task examples (:func:`fit_whitening`, saved beside the
store; ``lambda = damping x`` their mean eigenvalue); then unit norm and a
dot product. ``w_c = lr_c`` over all checkpoints (TracIn's sum), or 1 for the
last checkpoint alone (``checkpoints="last"``, TrackStar as published), so the
two can be compared.

Training side: a ``none`` store keeps the exact gradients, and ``D_c`` is
applied while scoring; a projected store must hold ``P(D_c g)`` already:
featurize it with ``train_transform=TrackStarTransform(adam_states,
checkpoints)`` (recorded in the manifest and checked here). Needs the states:
``variant=TrackStarMethod(adam_states)``; the registered ``"trackstar"`` has
none and says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, MutableMapping, Sequence

import torch
from torch import Tensor, nn

from ...checkpoints import checkpoints_from_list
from ...errors import InputError
from ...grads.adam import DiagonalTransform, adam_diagonals
from ...grads.per_example import GradTransform
from ..factors import load_artefact, save_artefact, states_digest
from .base import BlockScorer, MethodBase, QueryInputs
from .adam import check_adam_states

WHITENING_KIND = "trackstar-whitening"
MAX_WHITENING_DIM = 8192


@dataclasses.dataclass
class TrackStarTransform:
    """``featurize(..., train_transform=TrackStarTransform(adam_states, checkpoints))``:
    training gradients multiplied by ``D_c = 1/(sqrt(v_hat_c)+eps)`` before
    the projection, for TrackStar on a projected store. ``adam_states``: one
    ``optimizer.state_dict()`` per checkpoint, in the order of ``checkpoints``."""

    adam_states: dataclasses.InitVar[Sequence[Mapping[str, Any]]]
    checkpoints: dataclasses.InitVar[Sequence[Any]]
    eps: float | None = None

    def __post_init__(self, adam_states: Sequence[Mapping[str, Any]], checkpoints: Sequence[Any]) -> None:
        refs = checkpoints_from_list(checkpoints)
        if len(refs) != len(adam_states):
            raise InputError(f"TrackStarTransform: need one optimizer state per checkpoint ({len(refs)}); got {len(adam_states)}")
        _check_eps(self.eps)
        self._by_path = {str(r.path): s for r, s in zip(refs, adam_states)}

    def __call__(self, model: nn.Module, ref: Any, param_names: list[str]) -> GradTransform:
        state = self._by_path.get(str(ref.path))
        if state is None:
            raise InputError(f"TrackStarTransform: no optimizer state for checkpoint {ref.path!r}")
        return DiagonalTransform(adam_diagonals(state, model, param_names, eps=self.eps))


def _check_eps(eps: Any) -> None:
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0):
        raise InputError(f"trackstar eps must be a positive number or None; got {eps!r}")


class TrackStarMethod(MethodBase):
    name = "trackstar"
    meaning = (
        "TrackStar: sum over checkpoints of lr_c * cos(W P D_c grad behaviour(q), W P D_c grad loss(z)), D_c = "
        "1/(sqrt(v_hat_c)+eps) Adam's second-moment normalisation, P the store's projection, W an optional fitted "
        "task whitening; same sign convention as raw. Direction only: no example tops every list by its norm."
    )
    projections = ("none", "dense", "kronecker")
    transforms_queries = True
    supports_self_influence = False

    def __init__(
        self, adam_states: Sequence[Mapping[str, Any]] | None = None, *, eps: float | None = None,
        checkpoints: str = "all", whitening: str | None = None,
    ):
        _check_eps(eps)
        if checkpoints not in ("all", "last"):
            raise InputError(f"trackstar checkpoints must be 'all' or 'last'; got {checkpoints!r}")
        self.adam_states = None if adam_states is None else list(adam_states)
        self.eps = eps
        self.checkpoints = checkpoints
        self.whitening = whitening
        self._diagonals: dict[tuple[int, tuple[str, ...]], Tensor] = {}

    def __repr__(self) -> str:
        n = None if self.adam_states is None else len(self.adam_states)
        return f"TrackStarMethod(<{n} states>, eps={self.eps!r}, checkpoints={self.checkpoints!r}, whitening={self.whitening!r})"

    def transform_description(self) -> str:
        """How the manifest names the training-side transform this method needs."""
        # what gradtrace.task.describe records for TrackStarTransform(..., eps=self.eps)
        return f"{TrackStarTransform.__module__}.{TrackStarTransform.__qualname__}(eps={self.eps!r})"

    def check(self, store: Any) -> None:
        super().check(store)
        check_adam_states(self.adam_states, store, "trackstar needs", "TrackStarMethod")
        transform = store.manifest["model"].get("train_transform")
        kind = store.settings.projection_kind
        if transform is None and kind != "none":
            raise InputError(
                f"trackstar on a {kind!r} store needs the training gradients normalised before the projection: featurize "
                "it with train_transform=gradtrace.scoring.methods.TrackStarTransform(adam_states, checkpoints"
                f"{'' if self.eps is None else f', eps={self.eps!r}'}), or use a store with projection 'none'"
            )
        if transform is not None and transform != self.transform_description():
            raise InputError(
                f"trackstar needs training gradients that are plain or normalised by {self.transform_description()}; "
                f"the store at {str(store.root)!r} holds gradients transformed by {transform!r}"
            )
        if self.whitening is not None:
            self._whitening(store, {})

    def weights(self, store: Any) -> list[float]:
        lrs = [float(lr) for lr in store.learning_rates]
        return [0.0] * (len(lrs) - 1) + [1.0] if self.checkpoints == "last" else lrs

    def query_transform(self, model: nn.Module, checkpoint: int, param_names: list[str]) -> GradTransform | None:
        if self.adam_states is None or not 0 <= checkpoint < len(self.adam_states):
            raise InputError(f"adam_states: no optimizer state for checkpoint {checkpoint}; pass TrackStarMethod(adam_states)")
        diag = adam_diagonals(self.adam_states[checkpoint], model, param_names, eps=self.eps)
        self._diagonals[(checkpoint, tuple(param_names))] = torch.cat([diag[n].reshape(-1) for n in param_names])
        return DiagonalTransform(diag)

    def _whitening(self, store: Any, cache: MutableMapping[Any, Any]) -> list[Tensor] | None:
        if self.whitening is None:
            return None
        key = (WHITENING_KIND, self.whitening)
        if key not in cache:
            settings, arrays = load_artefact(store, self.whitening, WHITENING_KIND)
            mine = {"eps": self.eps, "adam_states": states_digest(self.adam_states or [])}
            other = {k: settings.get(k) for k in mine}
            if other != mine:
                raise InputError(
                    f"the whitening {self.whitening!r} of the store at {str(store.root)!r} was fitted with other optimizer "
                    f"states or eps ({other['eps']!r}); fit it again with this method's"
                )
            cache[key] = [torch.from_numpy(arrays[f"c{c}"]) for c in range(len(store.manifest["checkpoints"]))]
        return cache[key]

    def prepare(self, store: Any, queries: QueryInputs, cache: MutableMapping[Any, Any]) -> BlockScorer:
        weights = self.weights(store)
        whiten = self._whitening(store, cache)
        qf, compute, acc = queries.features, queries.compute, queries.accumulate
        device = qf.unit[0].device  # where the scan scores
        scale_rows = store.manifest["model"].get("train_transform") is None  # a 'none' store of plain gradients
        diagonals: list[Tensor | None] = []
        for c in range(len(qf.unit)):
            if not scale_rows:
                diagonals.append(None)
                continue
            d = self._diagonals.get((c, tuple(store.param_names)))
            if d is None:
                raise InputError("trackstar: compute the query features with this method first (query_features(queries, variant=method))")
            diagonals.append(d.to(device=device, dtype=compute))
        operands: list[Tensor] = []
        for c, u in enumerate(qf.unit):
            q = u.to(device="cpu", dtype=torch.float64)
            if whiten is not None:
                q = _unit(q @ whiten[c])
            operands.append((q * weights[c]).to(device=device, dtype=compute))
        mats = None if whiten is None else [w.to(device=device, dtype=compute) for w in whiten]

        def score(c: int, rows: Tensor, norms: Tensor) -> Tensor:
            if not weights[c]:
                return torch.zeros((qf.n, rows.shape[0]), dtype=acc, device=rows.device)
            r = rows
            if diagonals[c] is not None:
                r = r * diagonals[c][None, :]
            if mats is not None:
                r = r @ mats[c]
            if diagonals[c] is not None or mats is not None:
                r = _unit(r)
            return (operands[c] @ r.T).to(acc)

        return score


def _unit(rows: Tensor) -> Tensor:
    n = rows.norm(dim=1, keepdim=True)
    return torch.where(n > 0, rows / n.clamp_min(torch.finfo(rows.dtype).tiny), torch.zeros((), dtype=rows.dtype))


def fit_whitening(
    attributor: Any, examples: Any, method: TrackStarMethod, behaviour: Any = None, *, name: str = "trackstar",
    damping: float = 0.1,
) -> Path:
    """Fit TrackStar's task-specific whitening ``W_c = (Phi^T Phi / n +
    lambda I)^{-1/2}`` per checkpoint, ``Phi`` the normalised projected
    gradients (``P D_c g``) of ``behaviour`` (default: the task loss) on the
    task ``examples``, ``lambda = damping x`` their mean eigenvalue, and save it
    beside the store as ``factors/NAME`` (use ``TrackStarMethod(...,
    whitening=NAME)``). Needs a feature dim of at most 8192 (a projected store)."""
    store = attributor.store
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
        raise InputError(f"whitening damping must be a positive number; got {damping!r}")
    if store.feature_dim > MAX_WHITENING_DIM:
        raise InputError(
            f"TrackStar whitening holds a feature_dim x feature_dim matrix per checkpoint; the store at {str(store.root)!r} "
            f"has feature dim {store.feature_dim} (at most {MAX_WHITENING_DIM}): featurize with a projection"
        )
    plain = TrackStarMethod(method.adam_states, eps=method.eps, checkpoints=method.checkpoints)
    plain.check(store)
    qf = attributor.query_features(examples, behaviour, variant=plain)
    arrays = {}
    for c, (u, n) in enumerate(zip(qf.unit, qf.norms)):
        phi = u.to(torch.float64) * n.to(torch.float64)[:, None]
        e, v = torch.linalg.eigh(phi.T @ phi / phi.shape[0])
        e = e.clamp_min(0.0)
        lam = float(damping) * float(e.mean())
        lam = lam if lam > 0 else float(damping)
        arrays[f"c{c}"] = ((v * (e + lam).rsqrt()[None, :]) @ v.T).numpy()
    settings = {"damping": float(damping), "eps": method.eps, "adam_states": states_digest(method.adam_states or []),
                "n_examples": qf.n, "behaviour": qf.behaviour}
    return save_artefact(store, name, WHITENING_KIND, settings, arrays)
