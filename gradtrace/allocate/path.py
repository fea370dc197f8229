"""Loss-change allocation: a behaviour's change between two checkpoints,
split over the parameters that moved (Lan et al., 2019, "LCA").

For a scalar behaviour ``B(θ)`` and two checkpoints ``θ_k``, ``θ_{k+1}``
with ``Δ = θ_{k+1} − θ_k``, the fundamental theorem of calculus along the
straight line ``θ(t) = θ_k + tΔ`` gives

    B(θ_{k+1}) − B(θ_k) = Σ_j Δ_j ∫_0^1 ∂_j B(θ(t)) dt

so each parameter element ``j`` gets the allocation
``A_j = Δ_j ∫_0^1 ∂_j B(θ(t)) dt``. The integral is taken with a
quadrature rule (:func:`quadrature`); the **completeness error** is
``Σ_j A_j − (B(θ_{k+1}) − B(θ_k))``, zero up to rounding for an exact rule.

``B`` is the mean of the behaviour over a set of queries (one scalar).
Allocations are accumulated in float64 whatever the model's dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointRef
from ..configbase import positive_int
from ..data import as_source
from ..errors import InputError
from ..grads.compute import resolve_loader, restored
from ..grads.selection import select_parameters
from ..progress import progress_bar
from ..task import describe, resolve_behaviour

#: Quadrature rules over [0, 1]. ``left`` is the first-order baseline (the
#: gradient at the start of each sub-interval), not exact even for a
#: quadratic behaviour.
RULES = ("gauss", "trapezoid", "simpson", "left")
#: The defaults, chosen on the benchmark's dev seed (BENCHMARKS.md, allocate):
#: the fewest Gauss points whose completeness error stays below 1% of every
#: interval's change.
DEFAULT_RULE = "gauss"
DEFAULT_POINTS = 8


def default_points(rule: str) -> int:
    """Points used when none are given: :data:`DEFAULT_POINTS` for ``gauss``,
    ``2 * DEFAULT_POINTS + 1`` for ``trapezoid`` and ``simpson``, 1 for ``left``."""
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    return {"gauss": DEFAULT_POINTS, "left": 1}.get(rule, 2 * DEFAULT_POINTS + 1)


def quadrature(rule: str, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [0, 1] and weights (summing to 1) of ``rule`` with ``points`` evaluations.

    * ``gauss``: Gauss–Legendre, ``points >= 1``; exact for polynomial
      integrands of degree ``2 * points - 1`` (1 point, the midpoint, is
      exact for a quadratic behaviour, whose gradient is linear along the path).
    * ``trapezoid``: composite trapezoid on ``points >= 2`` equally spaced nodes
      (both ends included); exact for a linear gradient.
    * ``simpson``: composite Simpson on an odd ``points >= 3``; exact for a cubic gradient.
    * ``left``: left Riemann sum on ``points >= 1`` nodes ``i / points``;
      ``points=1`` is the first-order allocation ``∇B(θ_k) · Δ``.
    """
    if rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    positive_int(points, "points")
    if rule == "gauss":
        x, w = np.polynomial.legendre.leggauss(points)
        return (x + 1.0) / 2.0, w / 2.0
    if rule == "trapezoid":
        if points < 2:
            raise InputError(f"points: the trapezoid rule needs at least 2 points (both ends); got {points}")
        t = np.linspace(0.0, 1.0, points)
        w = np.full(points, 1.0 / (points - 1))
        w[[0, -1]] /= 2.0
        return t, w
    if rule == "simpson":
        if points < 3 or points % 2 == 0:
            raise InputError(f"points: Simpson's rule needs an odd number of points >= 3; got {points}")
        t = np.linspace(0.0, 1.0, points)
        h = 1.0 / (points - 1)
        w = np.where(np.arange(points) % 2 == 1, 4.0, 2.0) * h / 3.0
        w[[0, -1]] = h / 3.0
        return t, w
    return np.arange(points) / points, np.full(points, 1.0 / points)


@dataclasses.dataclass(frozen=True)
class IntervalAllocation:
    """The allocation of one interval between two checkpoints.

    ``per_tensor`` maps each allocated parameter name to the sum of its
    elements' allocations; ``elements`` (only when asked for) holds the
    per-element allocations (float64 tensors shaped like the parameters)."""

    start: str
    end: str
    start_step: int | None
    end_step: int | None
    value_start: float
    value_end: float
    per_tensor: dict[str, float]
    elements: dict[str, Tensor] | None = None

    @property
    def measured_change(self) -> float:
        """``B(θ_end) − B(θ_start)``, both evaluated directly."""
        return self.value_end - self.value_start

    @property
    def allocated(self) -> float:
        """The sum of all allocations."""
        return float(math.fsum(self.per_tensor.values()))

    @property
    def completeness_error(self) -> float:
        """``allocated − measured_change``."""
        return self.allocated - self.measured_change

    @property
    def relative_error(self) -> float:
        """``|completeness_error| / |measured_change|`` (inf when the
        behaviour did not change but the allocations do not sum to 0; 0 when both are 0)."""
        err, change = abs(self.completeness_error), abs(self.measured_change)
        if change == 0.0:
            return 0.0 if err == 0.0 else math.inf
        return err / change

    def label(self) -> str:
        return f"{self.start} -> {self.end}"

    @classmethod
    def from_dict(cls, d: Any, where: str = "interval") -> "IntervalAllocation":
        """The interval :meth:`to_dict` wrote (the derived fields are recomputed); errors name ``where``."""
        try:
            per_tensor = {str(k): float(v) for k, v in d["per_tensor"].items()}
            steps = [None if d.get(k) is None else int(d[k]) for k in ("start_step", "end_step")]
            return cls(str(d["start"]), str(d["end"]), steps[0], steps[1], float(d["value_start"]), float(d["value_end"]), per_tensor)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}: not an interval of an allocation ({type(exc).__name__}: {exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start, "end": self.end, "start_step": self.start_step, "end_step": self.end_step,
            "value_start": self.value_start, "value_end": self.value_end, "measured_change": self.measured_change,
            "allocated": self.allocated, "completeness_error": self.completeness_error,
            "relative_error": self.relative_error, "per_tensor": dict(self.per_tensor),
        }


@dataclasses.dataclass(frozen=True)
class RunAllocation:
    """Allocations of every interval of a run (see :func:`allocate_run`).

    ``params``: the parameters allocated to; ``unallocated``: parameters that
    moved in some interval but were left out by the selection (their share of
    the change shows up as completeness error)."""

    intervals: list[IntervalAllocation]
    behaviour: str
    direction: str
    rule: str
    points: int
    n_queries: int
    params: list[str]
    unallocated: list[str]

    def by(self, level: str) -> dict[str, np.ndarray]:
        """``{group: [allocation per interval]}`` at ``level`` (``tensor``,
        ``module``, ``block`` or ``layer``; see :mod:`gradtrace.allocate.groups`),
        groups in the order their first parameter appears."""
        from .groups import group_names

        groups = group_names(self.params, level)
        out: dict[str, np.ndarray] = {}
        for name in self.params:
            g = groups[name]
            if g not in out:
                out[g] = np.zeros(len(self.intervals), dtype=np.float64)
            for i, iv in enumerate(self.intervals):
                out[g][i] += iv.per_tensor.get(name, 0.0)
        return out

    def total(self, level: str) -> dict[str, float]:
        """``{group: allocation summed over the whole run}``."""
        return {g: float(v.sum()) for g, v in self.by(level).items()}

    @property
    def measured_change(self) -> float:
        return float(sum(iv.measured_change for iv in self.intervals))

    @property
    def max_relative_error(self) -> float:
        return max((iv.relative_error for iv in self.intervals), default=0.0)

    @classmethod
    def from_dict(cls, d: Any, where: str = "allocation") -> "RunAllocation":
        """The run :meth:`to_dict` wrote (``gradtrace allocate --out``); the groups and totals are recomputed
        from ``params`` and the per-tensor allocations. Errors name ``where``."""
        if not isinstance(d, dict) or not isinstance(d.get("intervals"), list) or not isinstance(d.get("params"), list):
            raise InputError(f"{where}: not an allocation (needs 'intervals' and 'params' lists)")
        intervals = [IntervalAllocation.from_dict(iv, f"{where}: intervals[{i}]") for i, iv in enumerate(d["intervals"])]
        try:
            return cls(intervals, str(d["behaviour"]), str(d["direction"]), str(d["rule"]), int(d["points"]), int(d["n_queries"]),
                       [str(p) for p in d["params"]], [str(p) for p in d.get("unallocated") or []])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: not an allocation ({type(exc).__name__}: {exc})") from None

    def to_dict(self, levels: Sequence[str] = ("module", "block", "layer")) -> dict[str, Any]:
        return {
            "behaviour": self.behaviour, "direction": self.direction, "rule": self.rule, "points": self.points,
            "n_queries": self.n_queries, "params": list(self.params), "unallocated": list(self.unallocated),
            "measured_change": self.measured_change, "max_relative_error": self.max_relative_error,
            "intervals": [iv.to_dict() for iv in self.intervals],
            "by": {lv: {g: v.tolist() for g, v in self.by(lv).items()} for lv in levels},
            "total": {lv: self.total(lv) for lv in levels},
        }


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the model's parameters and floating-point buffers, by name."""
    out = {n: p.detach().clone() for n, p in model.named_parameters()}
    out.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()})
    return out


def moved_parameters(model: nn.Module, start: Mapping[str, Tensor], end: Mapping[str, Tensor]) -> list[str]:
    """Names of the parameters whose values differ between two snapshots, in model order."""
    return [n for n, _ in model.named_parameters() if not torch.equal(start[n], end[n])]


class _Evaluator:
    """``B(θ)`` (mean behaviour over the queries) and its gradient at a point of the path."""

    def __init__(self, model: nn.Module, behaviour: Callable[..., Tensor], source: Any, batch_size: int):
        self.model, self.behaviour, self.source, self.batch_size = model, behaviour, source, batch_size
        self.n = len(source)

    def _batches(self) -> Any:
        for a in range(0, self.n, self.batch_size):
            b = min(a + self.batch_size, self.n)
            yield a, b, self.source.batch(a, b)

    def _values(self, batch: Any, a: int, b: int, where: str) -> Tensor:
        values = self.behaviour(self.model, batch)
        if not isinstance(values, Tensor) or values.ndim != 1 or values.shape[0] != b - a:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise InputError(f"behaviour must return a 1-D tensor with one value per query ({b - a}); got {got}")
        finite = torch.isfinite(values.detach())
        if not bool(finite.all()):
            q = a + int((~finite).nonzero()[0, 0])
            raise InputError(f"queries: query {q} has a non-finite behaviour value at {where}; allocation needs finite values")
        return values

    def value(self, where: str) -> float:
        total = 0.0
        with torch.no_grad():
            for a, b, batch in self._batches():
                total += float(self._values(batch, a, b, where).double().sum())
        return total / self.n

    def gradient(self, params: list[Tensor], where: str) -> list[Tensor]:
        grads = [torch.zeros(p.shape, dtype=torch.float64) for p in params]
        for a, b, batch in self._batches():
            value = self._values(batch, a, b, where).sum() / self.n
            parts = torch.autograd.grad(value, params, allow_unused=True)
            for g, part in zip(grads, parts):
                if part is not None:
                    g.add_(part.detach().to(torch.float64, copy=False).cpu())
        return grads


def _set_point(model: nn.Module, start: Mapping[str, Tensor], end: Mapping[str, Tensor], t: float,
               only: set[str] | None = None) -> None:
    """Put the model at ``θ(t) = lerp(θ_start, θ_end, t)`` (exactly θ_start at 0 and θ_end at 1);
    ``only``: the parameter names to set (those that move; the others stay as they are)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if only is None or n in only:
                p.copy_(start[n] if t == 0.0 else end[n] if t == 1.0 else torch.lerp(start[n], end[n], t))
        for n, b in model.named_buffers():
            key = f"buffer:{n}"
            if key in start:
                b.copy_(start[key] if t == 0.0 else end[key] if t == 1.0 else torch.lerp(start[key], end[key], t))


def allocate_interval(
    model: nn.Module, evaluator: _Evaluator, start: Mapping[str, Tensor], end: Mapping[str, Tensor], names: list[str],
    rule: str, points: int, labels: tuple[str, str], steps: tuple[int | None, int | None], *,
    keep_elements: bool = False, advance: Callable[[int], None] = lambda n: None,
) -> IntervalAllocation:
    """Allocate ``B(end) − B(start)`` to the parameters ``names`` (see the module docstring)."""
    nodes, weights = quadrature(rule, points)
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    flags = {n: p.requires_grad for n, p in params.items()}
    where = f"interval {labels[0]} -> {labels[1]}"
    wanted = set(names)
    moving = set(moved_parameters(model, start, end))
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
        _set_point(model, start, end, 0.0)
        value_start = evaluator.value(f"{where}, t=0")
        _set_point(model, start, end, 1.0, moving)
        value_end = evaluator.value(f"{where}, t=1")
        advance(2)
        integral = [torch.zeros(p.shape, dtype=torch.float64) for p in chosen]
        if chosen:
            for t, w in zip(nodes, weights):
                _set_point(model, start, end, float(t), moving)
                for acc, g in zip(integral, evaluator.gradient(chosen, f"{where}, t={float(t):.4g}")):
                    acc.add_(g, alpha=float(w))
                advance(1)
        else:
            advance(len(nodes))
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    per_tensor, elements = {}, {}
    for n, acc in zip(names, integral):
        alloc = (end[n].to(torch.float64) - start[n].to(torch.float64)).cpu() * acc
        per_tensor[n] = float(alloc.sum())
        if keep_elements:
            elements[n] = alloc
    return IntervalAllocation(labels[0], labels[1], steps[0], steps[1], value_start, value_end, per_tensor,
                              elements if keep_elements else None)


def _label(ref: CheckpointRef) -> str:
    return f"step {ref.step}" if ref.step is not None else str(ref.path)


def allocate_run(
    model: nn.Module, behaviour: Any, queries: Any, checkpoints: Sequence[CheckpointRef], *, task: Any = None,
    rule: str = DEFAULT_RULE, points: int | None = None, params: str | Sequence[str] = "moved",
    checkpoint_loader: Callable[[nn.Module, CheckpointRef], Any] | None = None, weights_only: bool = True,
    include_initial: bool = False, batch_size: int = 64, keep_elements: bool = False, progress: bool = False,
) -> RunAllocation:
    """Allocate a behaviour's change over every interval between consecutive checkpoints.

    ``behaviour``: any :class:`~gradtrace.task.Behaviour` (None: the loss of
    ``task``); ``B`` is its mean over ``queries`` (batched with
    ``task.collate`` when the task has one). ``checkpoints`` are loaded in
    order with ``checkpoint_loader`` (default: strict state dicts with
    ``torch.load(weights_only=weights_only)``; for Trainer ``checkpoint-N``
    folders and adapters pass :func:`gradtrace.models.hf_checkpoints.load_hf_checkpoint`).
    ``include_initial``: the model's own weights as given are the first point
    of the run (its initialisation), before ``checkpoints[0]``.

    ``params``: ``"moved"`` (every parameter that changes in the interval:
    for a LoRA run only the adapter tensors) or a selection as in
    :func:`gradtrace.grads.selection.select_parameters` (patterns, ``"all"``).
    Floating-point buffers move along the same line but get no allocation.
    ``points``: None gives :func:`default_points` of the rule.
    The model is given back with the weights and mode it came with.
    """
    points = default_points(rule) if points is None else points
    quadrature(rule, points)  # check early
    positive_int(batch_size, "batch_size")
    if not isinstance(include_initial, bool):
        raise InputError(f"include_initial must be True or False; got {include_initial!r}")
    refs = list(checkpoints)
    if len(refs) + int(include_initial) < 2:
        raise InputError(
            f"checkpoints: allocation needs at least two points of the run; got {len(refs)} checkpoint(s)"
            + ("" if include_initial else " (include_initial=True adds the model's initial weights)")
        )
    b = resolve_behaviour(behaviour, task) if task is not None else behaviour
    if b is None or not callable(b):
        raise InputError("behaviour must be callable as f(model, batch) -> Tensor[b] (or pass task= to use its loss)")
    source = as_source(queries, collate=getattr(task, "collate", None), what="queries")
    if len(source) == 0:
        raise InputError("queries: the query set is empty")
    selected = None if params == "moved" else set(select_parameters(model, params))
    loader = resolve_loader(checkpoint_loader, weights_only)
    n_intervals = len(refs) + int(include_initial) - 1
    n_nodes = len(quadrature(rule, points)[0])
    intervals: list[IntervalAllocation] = []
    allocated: list[str] = []
    unallocated: list[str] = []
    order = [n for n, _ in model.named_parameters()]
    with restored(model), progress_bar(f"allocate ({rule}, {points} points)", n_intervals * (n_nodes + 2), progress) as bar:
        model.eval()
        evaluator = _Evaluator(model, b, source, batch_size)
        if include_initial:
            prev, prev_label, prev_step = snapshot(model), "initial", 0
            todo = refs
        else:
            loader(model, refs[0])
            prev, prev_label, prev_step = snapshot(model), _label(refs[0]), refs[0].step
            todo = refs[1:]
        for ref in todo:
            loader(model, ref)
            cur = snapshot(model)
            moved = moved_parameters(model, prev, cur)
            names = moved if selected is None else [n for n in moved if n in selected]
            unallocated += [n for n in moved if selected is not None and n not in selected and n not in unallocated]
            allocated += [n for n in names if n not in allocated]
            intervals.append(allocate_interval(
                model, evaluator, prev, cur, names, rule, points, (prev_label, _label(ref)), (prev_step, ref.step),
                keep_elements=keep_elements, advance=bar.advance,
            ))
            prev, prev_label, prev_step = cur, _label(ref), ref.step
    allocated.sort(key=order.index)
    return RunAllocation(intervals, describe(b), getattr(b, "direction", "increase"), rule, points, len(source),
                         allocated, sorted(unallocated, key=order.index))
