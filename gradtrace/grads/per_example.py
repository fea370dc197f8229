"""Per-example gradients, projected, of any per-example scalar function.

:class:`GradientFeaturizer` maps ``(model, fn, batch)`` to one feature row per
example (the projected gradient of ``fn(model, batch)[i]`` with respect to the
selected parameters) and that gradient's exact squared norm. Three methods
compute the same gradients:

* ``hooks``: when every selected parameter belongs to an ``nn.Linear``; one
  forward and backward pass, exact, and the only one that supports the
  Kronecker projection. Works on stock Hugging Face models.
* ``vmap``: ``torch.func.vmap`` over ``grad`` with ``functional_call``; any
  model whose forward vmap can trace.
* ``loop``: one backward pass per example; slow, works for anything.

``auto`` picks ``hooks`` when it applies, else ``vmap``, and falls back to
``loop`` with a one-line warning when vmap cannot handle the model.

A :class:`GradTransform` (set as ``featurizer.transform``) maps each exact
per-example gradient elementwise before projection, e.g. Adam
preconditioning of training gradients (see :mod:`gradtrace.grads.adam`).
With the Kronecker projection a transform needs each example's gradient of
each layer, so that path then builds them (one batch at a time) and projects
them with the same factors: features stay comparable with untransformed
(query) features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from ..devices import accumulation_dtype
from ..errors import InputError
from ..task import ExampleError
from .linear_capture import LinearCapture, LinearSite, as_tokens, augmented_input, linear_sites
from .projection import DenseProjector, KroneckerFactors, ProjectionConfig, kronecker_factors

METHODS = ("auto", "hooks", "vmap", "loop")
PerExampleFn = Callable[[nn.Module, Any], Tensor]


class GradTransform(Protocol):
    """Maps one parameter's per-example gradients ``[b, *param.shape]`` to
    tensors of the same shape (applied before projection)."""

    def __call__(self, name: str, grad: Tensor) -> Tensor: ...


@dataclasses.dataclass
class FeatureBatch:
    """Projected per-example gradients and their exact squared norms."""

    features: Tensor  # [b, feature_dim]
    sqnorms: Tensor | None  # [b], squared norm of the unprojected gradient; None when skipped (exact_norms=False)
    values: Tensor | None = None  # [b], the per-example function's values (detached)


class GradientFeaturizer:
    """Projected per-example gradients with respect to ``param_names``.

    The layout of a feature row is fixed by ``param_names`` (exact and dense)
    or by the selected linear layers in module order (Kronecker).

    ``exact_norms=False``: the Kronecker path does not compute the exact
    squared norms (a Gram matrix of each layer's inputs and output gradients
    per example); its batches then have ``sqnorms=None``. The other paths
    have them at no extra cost and always return them.
    """

    def __init__(self, param_names: list[str], projection: ProjectionConfig, method: str = "auto", exact_norms: bool = True):
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}; got {method!r}")
        self.param_names = list(param_names)
        self.projection = projection
        self.method = method
        self.exact_norms = exact_norms
        self._resolved: str | None = None
        self._sites: list[LinearSite] | None = None
        self._dense: DenseProjector | None = None
        self._factors: dict[tuple[str, torch.dtype, torch.device], KroneckerFactors] = {}
        self._warned = False
        self.transform: GradTransform | None = None

    # -- set-up -----------------------------------------------------------
    def grad_dim(self, model: nn.Module) -> int:
        """Number of entries of the full (unprojected) gradient."""
        params = dict(model.named_parameters())
        return sum(params[n].numel() for n in self.param_names)

    def feature_dim(self, model: nn.Module) -> int:
        """Number of entries of one stored feature row."""
        self._resolve(model)
        if self.projection.kind == "none":
            return self.grad_dim(model)
        if self.projection.kind == "dense":
            return int(self.projection.dim)  # type: ignore[arg-type]
        assert self._sites is not None
        if self.projection.kind == "factored":
            return sum(d_in + d_out for d_in, d_out in self.factor_layout(model))
        side = max(1, math.isqrt(int(self.projection.dim)))  # type: ignore[arg-type]
        return sum(
            min(site.d_out, side) * min(site.d_in + (1 if site.bias_name else 0), side) for site in self._sites
        )

    def factor_layout(self, model: nn.Module) -> list[tuple[int, int]]:
        """``(d_in + bias column, d_out)`` of each layer of a factored row, in order."""
        if self.projection.kind != "factored":
            self._resolve(model)
            return []
        return self.linear_shapes(model)

    def linear_shapes(self, model: nn.Module) -> list[tuple[int, int]]:
        """``(d_in + bias column, d_out)`` of each selected linear layer, in
        order, when gradients come from linear-layer hooks (else empty)."""
        self._resolve(model)
        if self._sites is None or self._resolved != "hooks":
            return []
        return [(site.d_in + (1 if site.bias_name else 0), site.d_out) for site in self._sites]

    def resolved_method(self, model: nn.Module) -> str:
        self._resolve(model)
        assert self._resolved is not None
        return self._resolved

    def _resolve(self, model: nn.Module) -> None:
        if self._resolved is not None:
            return
        params = dict(model.named_parameters())
        unknown = [n for n in self.param_names if n not in params]
        if unknown:
            raise InputError(f"selected parameters not in the model: {unknown[:8]!r}")
        sites = linear_sites(model, self.param_names)
        if self.projection.kind in ("kronecker", "factored"):
            kind = self.projection.kind
            if sites is None:
                non_linear = [n for n in self.param_names if not _is_linear_param(model, n)]
                raise InputError(
                    f"projection.kind={kind!r} needs every selected parameter to be the weight or bias of an "
                    f"nn.Linear (not tied to another module); these are not: {non_linear[:8]!r}"
                )
            if any(site.weight_name is None for site in sites):
                bare = [site.module_name for site in sites if site.weight_name is None]
                raise InputError(f"projection.kind={kind!r} needs the weight of each selected linear layer; only the bias is selected in {bare!r}")
            if self.method in ("vmap", "loop"):
                raise InputError(f"projection.kind={kind!r} works with method 'hooks' or 'auto'; got {self.method!r}")
        if self.method == "hooks" and sites is None:
            raise InputError("method='hooks' needs every selected parameter to belong to an untied nn.Linear")
        if self.method == "auto":
            self._resolved = "hooks" if sites is not None else "vmap"
        else:
            self._resolved = self.method
        self._sites = sites
        if self.projection.kind == "dense":
            self._dense = DenseProjector(self.grad_dim(model), self.projection)

    # -- computation ------------------------------------------------------
    def __call__(self, model: nn.Module, fn: PerExampleFn, batch: Any) -> FeatureBatch:
        self._resolve(model)
        with _only_selected_require_grad(model, self.param_names), torch.enable_grad():
            if self._resolved == "hooks":
                if self.projection.kind == "kronecker":
                    if self.transform is not None:
                        return self._kronecker_transformed(model, fn, batch)
                    return self._kronecker(model, fn, batch)
                if self.projection.kind == "factored" and self.transform is not None:
                    raise InputError("projection.kind='factored' keeps gradients as two factors and cannot apply a gradient transform; use 'kronecker', 'dense' or 'none'")
                if self.projection.kind == "factored":
                    return self._factored(model, fn, batch)
                pieces, values = self._exact_pieces(model, fn, batch)
                grads = torch.cat([pieces[n] for n in self.param_names], dim=1)
            elif self._resolved == "vmap":
                try:
                    grads, values = _vmap_grads(model, fn, batch, self.param_names)
                except InputError:
                    raise
                except Exception as exc:  # vmap raises many types for untraceable models
                    if self.method == "vmap":
                        raise
                    if not self._warned:
                        warnings.warn(
                            f"gradtrace: vmap cannot trace this model ({type(exc).__name__}: {str(exc)[:120]}); "
                            "using a per-example loop, which is slower",
                            stacklevel=2,
                        )
                        self._warned = True
                    self._resolved = "loop"
                    grads, values = _loop_grads(model, fn, batch, self.param_names)
            else:
                grads, values = _loop_grads(model, fn, batch, self.param_names)
        grads = _acc(grads)
        if self.transform is not None:
            grads = self._apply_transform(model, grads)
        sqnorms = grads.pow(2).sum(dim=1)
        if self._dense is not None:
            return FeatureBatch(self._dense.project(grads), sqnorms, values)
        return FeatureBatch(grads, sqnorms, values)

    def sqnorms(self, model: nn.Module, fn: PerExampleFn, batch: Any) -> Tensor:
        """Exact squared norm of each example's full gradient, without its features.

        For linear layers (``hooks``) this never builds a per-example gradient:
        ``|sum_t g_t x_t^T|^2`` comes from the captured inputs and output
        gradients. Other methods fall back to the full gradients.
        """
        self._resolve(model)
        if self._resolved != "hooks":
            return self(model, fn, batch).sqnorms
        with _only_selected_require_grad(model, self.param_names), torch.enable_grad():
            b, cap, out_grads, _ = self._forward_capture(model, fn, batch)
            assert self._sites is not None
            sq: Tensor | None = None
            for i, site in enumerate(self._sites):
                if site.weight_name is None:  # bias only: its gradient is the token-summed output gradient
                    site_sq = sum(_acc(as_tokens(g, b, site.module_name)).sum(1) for g in out_grads[i]).pow(2).sum(1)
                else:
                    xs = [_acc(as_tokens(x, b, f"input of {site.module_name}")) for x in cap.inputs[i]]
                    gs = [_acc(as_tokens(g, b, f"output gradient of {site.module_name}")) for g in out_grads[i]]
                    with_bias = site.bias_name is not None
                    if len(xs) == 1 and xs[0].shape[1] == 1:
                        x2 = xs[0][:, 0].pow(2).sum(1) + (1.0 if with_bias else 0.0)
                        site_sq = x2 * gs[0][:, 0].pow(2).sum(1)
                    else:
                        weight = site.module.weight
                        site_sq = _exact_sqnorm(
                            [augmented_input(x, with_bias) for x in xs], gs, b, accumulation_dtype(weight.dtype), weight.device,
                        )
                sq = site_sq if sq is None else sq + site_sq
            if sq is None:
                raise InputError("no selected linear layer was called during the forward pass")
            return sq.detach()

    def layer_factors(self, model: nn.Module, fn: PerExampleFn, batch: Any) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """Per selected linear layer (module order), every token's input ``x``
        (with a 1 for the bias, ``[b, tokens, d_in']``) and output gradient
        ``dy`` (``[b, tokens, d_out']``), projected with the store's Kronecker
        factors when the projection is ``kronecker`` (else as they are), and
        the function's values. The example's (projected) weight gradient is
        ``sum_t dy_t x_t^T``: what K-FAC's factors are fitted on."""
        self._resolve(model)
        if self._sites is None or any(site.weight_name is None for site in self._sites):
            raise InputError(
                "Kronecker factors need every selected parameter to be the weight (and bias) of an untied nn.Linear; "
                f"these parameters are not: {[n for n in self.param_names if not _is_linear_param(model, n)][:8]!r}"
            )
        with _only_selected_require_grad(model, self.param_names), torch.enable_grad():
            b, cap, out_grads, values = self._forward_capture(model, fn, batch)
            out = []
            for i, site in enumerate(self._sites):
                with_bias = site.bias_name is not None
                if not cap.inputs[i]:
                    raise InputError(f"layer {site.module_name!r} was not called during the forward pass")
                x = torch.cat([augmented_input(as_tokens(x, b, f"input of {site.module_name}"), with_bias) for x in cap.inputs[i]], dim=1)
                g = torch.cat([as_tokens(g, b, f"output gradient of {site.module_name}") for g in out_grads[i]], dim=1)
                if self.projection.kind == "kronecker":
                    factors = self._factors_for(site, site.module.weight.dtype, site.module.weight.device)
                    x = x if factors.p_in is None else x @ factors.p_in
                    g = g if factors.p_out is None else g @ factors.p_out
                out.append((x.detach(), g.detach()))
        return out, values

    def _forward_capture(
        self, model: nn.Module, fn: PerExampleFn, batch: Any, input_maps: list[Callable[[Tensor], Tensor]] | None = None,
    ) -> tuple[int, LinearCapture, list[list[Tensor]], Tensor]:
        """Batch size, captured layer inputs (``input_maps`` of them), output
        gradients and the function's (detached) values."""
        assert self._sites is not None
        with LinearCapture(self._sites, input_maps) as cap:
            values = fn(model, batch)
        b = _check_values(values, None, "the per-example function")
        out_grads = cap.output_grads(values.sum())
        return b, cap, out_grads, values.detach()

    def _apply_transform(self, model: nn.Module, grads: Tensor) -> Tensor:
        assert self.transform is not None
        params = dict(model.named_parameters())
        b, out, at = grads.shape[0], [], 0
        for name in self.param_names:
            shape = params[name].shape
            n = params[name].numel()
            piece = self.transform(name, grads[:, at : at + n].reshape(b, *shape))
            out.append(piece.reshape(b, n))
            at += n
        return torch.cat(out, dim=1)

    def _kronecker_transformed(self, model: nn.Module, fn: PerExampleFn, batch: Any) -> FeatureBatch:
        """Kronecker features of transformed exact gradients: ``P_out^T T(G) P_in``."""
        assert self._sites is not None and self.transform is not None
        pieces, values = self._exact_pieces(model, fn, batch)
        feats, sq = [], None
        for site in self._sites:
            w = site.module.weight
            b = pieces[site.weight_name].shape[0]  # type: ignore[index]
            g = self.transform(site.weight_name, pieces[site.weight_name].reshape(b, *w.shape))  # type: ignore[arg-type]
            if site.bias_name:
                gb = self.transform(site.bias_name, pieces[site.bias_name])
                g = torch.cat([g, gb[:, :, None]], dim=2)
            factors = self._factors_for(site, accumulation_dtype(w.dtype), w.device)
            proj = g if factors.p_out is None else torch.einsum("boi,ok->bki", g, factors.p_out)
            proj = proj if factors.p_in is None else proj @ factors.p_in
            feats.append(proj.reshape(b, -1))
            site_sq = g.pow(2).sum(dim=(1, 2))
            sq = site_sq if sq is None else sq + site_sq
        return FeatureBatch(torch.cat(feats, dim=1), sq, values)

    def _exact_pieces(self, model: nn.Module, fn: PerExampleFn, batch: Any) -> tuple[dict[str, Tensor], Tensor]:
        """Each selected parameter's per-example gradient, ``[b, numel]``, and the function's values."""
        b, cap, out_grads, values = self._forward_capture(model, fn, batch)
        assert self._sites is not None
        pieces: dict[str, Tensor] = {}
        for i, site in enumerate(self._sites):
            w = bias = None
            for x, g in zip(cap.inputs[i], out_grads[i]):
                x3 = _acc(as_tokens(x, b, f"input of {site.module_name}"))
                g3 = _acc(as_tokens(g, b, f"output gradient of {site.module_name}"))
                if site.weight_name:
                    gw = torch.einsum("bto,bti->boi", g3, x3)
                    w = gw if w is None else w + gw
                if site.bias_name:
                    gb = g3.sum(dim=1)
                    bias = gb if bias is None else bias + gb
            if site.weight_name:
                pieces[site.weight_name] = w.reshape(b, -1) if w is not None else _zeros(b, site.module.weight)
            if site.bias_name:
                pieces[site.bias_name] = bias if bias is not None else _zeros(b, site.module.bias)  # type: ignore[arg-type]
        return pieces, values

    def _kronecker(self, model: nn.Module, fn: PerExampleFn, batch: Any) -> FeatureBatch:
        assert self._sites is not None
        # without exact norms nothing needs a layer's full input: it is projected as the forward pass records it
        early = None if self.exact_norms else [self._projected_input(site) for site in self._sites]
        b, cap, out_grads, values = self._forward_capture(model, fn, batch, early)
        feats, sq = [], None
        for i, site in enumerate(self._sites):
            with_bias = site.bias_name is not None
            if early is None:
                xs = [augmented_input(_acc(as_tokens(x, b, f"input of {site.module_name}")), with_bias) for x in cap.inputs[i]]
            else:
                xs = [as_tokens(x, b, f"input of {site.module_name}") for x in cap.inputs[i]]
            gs = [_acc(as_tokens(g, b, f"output gradient of {site.module_name}")) for g in out_grads[i]]
            dtype, device = accumulation_dtype(site.module.weight.dtype), site.module.weight.device
            factors = self._factors_for(site, dtype, device)
            feat: Tensor | None = None
            for x, g in zip(xs, gs):
                xp = x if factors.p_in is None or early is not None else x @ factors.p_in
                gp = g if factors.p_out is None else g @ factors.p_out
                term = torch.einsum("bto,bti->boi", gp, xp)
                # 0 + term, as the sum always began: -0.0 becomes +0.0 and every other value is unchanged
                feat = term.add_(0.0) if feat is None else feat.add_(term)
            if feat is None:
                feat = torch.zeros(b, factors.k_out, factors.k_in, dtype=dtype, device=device)
            feats.append(feat.reshape(b, -1))
            if self.exact_norms:
                site_sq = _exact_sqnorm(xs, gs, b, dtype, device)
                sq = site_sq if sq is None else sq + site_sq
        return FeatureBatch(torch.cat(feats, dim=1), sq, values)

    def _projected_input(self, site: LinearSite) -> Callable[[Tensor], Tensor]:
        """A layer's input as :meth:`_kronecker` uses it (accumulation dtype, a
        column of ones for the bias, projected by the layer's input factor), for
        :class:`LinearCapture` to keep instead of the input itself."""
        with_bias = site.bias_name is not None
        factors = self._factors_for(site, accumulation_dtype(site.module.weight.dtype), site.module.weight.device)

        def project(x: Tensor) -> Tensor:
            x = augmented_input(_acc(x), with_bias)
            return x if factors.p_in is None else x @ factors.p_in

        return project

    def _factored(self, model: nn.Module, fn: PerExampleFn, batch: Any) -> FeatureBatch:
        b, cap, out_grads, values = self._forward_capture(model, fn, batch)
        assert self._sites is not None
        parts, sq = [], None
        for i, site in enumerate(self._sites):
            calls = len(cap.inputs[i])
            x = cap.inputs[i][0] if calls else None
            if calls != 1 or x is None or x.dim() != 2 or x.shape[0] != b:
                shape = None if x is None else tuple(x.shape)
                raise InputError(
                    f"projection.kind='factored' needs each selected linear layer to be called once per forward "
                    f"on inputs of shape (batch, features); {site.module_name!r} was called {calls} time(s) with "
                    f"input shape {shape}: use kind='none' or 'kronecker'"
                )
            xa = augmented_input(_acc(x), site.bias_name is not None)
            g = _acc(out_grads[i][0])
            parts += [xa, g]
            site_sq = xa.pow(2).sum(1) * g.pow(2).sum(1)
            sq = site_sq if sq is None else sq + site_sq
        return FeatureBatch(torch.cat(parts, dim=1), sq, values)

    def _factors_for(self, site: LinearSite, dtype: torch.dtype, device: torch.device) -> KroneckerFactors:
        key = (site.module_name, dtype, device)
        if key not in self._factors:
            d_in = site.d_in + (1 if site.bias_name else 0)
            self._factors[key] = kronecker_factors(site.module_name, d_in, site.d_out, self.projection, dtype, device)
        return self._factors[key]


def _exact_sqnorm(xs: list[Tensor], gs: list[Tensor], b: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``|sum_t g_t x_t^T|_F^2`` per example, by token Gram matrices when
    sequences are short and by building one example's gradient at a time
    otherwise (never the whole batch's)."""
    x = torch.cat(xs, dim=1)
    g = torch.cat(gs, dim=1)
    t, d_in, d_out = x.shape[1], x.shape[2], g.shape[2]
    if t * (d_in + d_out) <= d_in * d_out:
        return ((g @ g.transpose(1, 2)) * (x @ x.transpose(1, 2))).sum(dim=(1, 2))
    out = torch.empty(b, dtype=dtype, device=device)
    for i in range(b):
        out[i] = (g[i].T @ x[i]).pow(2).sum()
    return out


def _zeros(b: int, p: Tensor) -> Tensor:
    return p.new_zeros(b, p.numel(), dtype=accumulation_dtype(p.dtype))


def _acc(t: Tensor) -> Tensor:
    """``t`` in the dtype features and norms accumulate in (float32 for a
    half-precision model; unchanged, not copied, otherwise)."""
    return t.to(accumulation_dtype(t.dtype))


def _is_linear_param(model: nn.Module, name: str) -> bool:
    module_name, _, _ = name.rpartition(".")
    return isinstance(model.get_submodule(module_name) if module_name else model, nn.Linear)


def _check_values(values: Any, b: int | None, what: str) -> int:
    if not isinstance(values, Tensor):
        raise InputError(f"{what} must return a torch.Tensor with one value per example; got {type(values).__name__}")
    if values.dim() != 1 or (b is not None and values.shape[0] != b):
        want = f"({b},)" if b is not None else "(batch_size,)"
        raise InputError(f"{what} must return one value per example, shape {want}; got shape {tuple(values.shape)}")
    return int(values.shape[0])


@contextlib.contextmanager
def _only_selected_require_grad(model: nn.Module, names: list[str]) -> Iterator[None]:
    params = dict(model.named_parameters())
    before = {n: p.requires_grad for n, p in params.items()}
    wanted = set(names)
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(before[n])


def _batch_size(batch: Any) -> int:
    leaves, _ = tree_flatten(batch)
    for leaf in leaves:
        if isinstance(leaf, Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    raise InputError("batch holds no tensor with a batch dimension")


class _Bound(nn.Module):
    """``fn(model, batch)`` as a module, so ``functional_call`` can swap the
    model's parameters."""

    def __init__(self, model: nn.Module, fn: PerExampleFn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Tensor:
        return self.fn(self.model, batch)


def _vmap_grads(model: nn.Module, fn: PerExampleFn, batch: Any, names: list[str]) -> tuple[Tensor, Tensor]:
    """Per-example gradients ``[b, grad_dim]`` and the function's values ``[b]``."""
    from torch.func import functional_call, grad, vmap

    b = _batch_size(batch)
    in_dims = tree_map(lambda t: 0 if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == b else None, batch)
    bound = _Bound(model, fn)
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}

    def one(ps: dict[str, Tensor], example: Any) -> tuple[Tensor, Tensor]:
        single = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, example)
        out = functional_call(bound, {f"model.{k}": v for k, v in ps.items()}, (single,))
        _check_values(out, 1, "the per-example function")
        return out[0], out[0].detach()

    in_dims_batch = in_dims if isinstance(in_dims, (tuple, list, dict)) else in_dims
    grads, values = vmap(grad(one, has_aux=True), in_dims=(None, in_dims_batch))(params, batch)
    return torch.cat([grads[n].reshape(b, -1) for n in names], dim=1), values


def _loop_grads(model: nn.Module, fn: PerExampleFn, batch: Any, names: list[str]) -> tuple[Tensor, Tensor]:
    """Per-example gradients ``[b, grad_dim]`` and the function's values ``[b]``, one backward pass each."""
    b = _batch_size(batch)
    params = dict(model.named_parameters())
    selected = [params[n] for n in names]
    rows, values = [], []
    for i in range(b):
        single = tree_map(lambda t: t[i : i + 1] if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == b else t, batch)
        try:
            value = fn(model, single)
        except ExampleError as exc:  # about example 0 of the one-example batch: say which of this batch
            raise ExampleError(i + exc.index, exc.problem) from None
        _check_values(value, 1, "the per-example function")
        grads = torch.autograd.grad(value[0], selected, allow_unused=True)
        values.append(value[0].detach())
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, selected)]))
    return torch.stack(rows), torch.stack(values)
