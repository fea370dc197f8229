"""Hyper-parameter selection for unlearning methods, one rule for all.

Fine-tuning baselines are very sensitive to their learning rate and number
of steps: too little and nothing is forgotten, too much and the whole model
is destroyed (which then *looks* like robust forgetting under a relearning
attack). So settings are not hand-picked per method: each method gets a
small grid, and :class:`SelectionRule` picks, on validation data, the grid
point with the best forget metric among those whose retain metric stays
within a stated tolerance of the base model's. The same rule applies to
every method, ERA included (its grid is the length of the coherence
fine-tune). If no grid point keeps the retain metric within tolerance, the
point with the best retain metric is taken and the selection records
``admissible: false``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..configbase import ConfigBase, non_negative, positive_ints
from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class SelectionRule(ConfigBase):
    """``retain_tolerance``: how far the retain metric may fall behind the
    base model's: an absolute difference (``relative=False``, e.g. 0.02 =
    2 accuracy points) or a fraction of the base value (``relative=True``,
    e.g. 0.1: a retain loss at most 1.1 x the base loss).
    ``retain_higher_is_better``: True for accuracies, False for losses."""

    retain_tolerance: float = 0.02
    relative: bool = False
    retain_higher_is_better: bool = True

    _checks = {"retain_tolerance": non_negative}

    def limit(self, base_retain: float) -> float:
        """The worst admissible retain metric."""
        tol = self.retain_tolerance * abs(base_retain) if self.relative else self.retain_tolerance
        return base_retain - tol if self.retain_higher_is_better else base_retain + tol

    def admissible(self, retain: float, base_retain: float) -> bool:
        limit = self.limit(base_retain)
        return retain >= limit if self.retain_higher_is_better else retain <= limit


@dataclasses.dataclass(frozen=True)
class SelectionGrid(ConfigBase):
    """``lrs`` x ``steps`` for the fine-tuning baselines (the steps are read
    off one run per learning rate, which equals separate shorter runs: same
    seed, same batches, no schedule); ``steps`` alone for ERA, where it is
    the length of the coherence fine-tune (``lrs`` must then be empty)."""

    lrs: tuple[float, ...] = ()
    steps: tuple[int, ...] = ()

    _checks = {"steps": positive_ints}

    def _check(self) -> None:
        if any(not lr > 0 for lr in self.lrs):
            raise InputError(f"lrs must be positive learning rates; got {self.lrs!r}")
        object.__setattr__(self, "steps", tuple(sorted(set(self.steps))))


def choose(points: list[dict[str, Any]], rule: SelectionRule, base_retain: float, attacker_maximises: bool) -> dict[str, Any]:
    """Mark each point (``forget``, ``retain`` and its settings) admissible
    or not and return the selected one. The best forget metric is the
    lowest when the attacker maximises it (an accuracy), else the highest
    (a loss); ties go to the earlier point (smaller lr, fewer steps)."""
    if not points:
        raise InputError("selection grid is empty")
    for p in points:
        p["admissible"] = bool(rule.admissible(p["retain"], base_retain))
    ok = [p for p in points if p["admissible"]]
    if ok:
        sign = 1.0 if attacker_maximises else -1.0
        return min(ok, key=lambda p: sign * p["forget"])
    sign = -1.0 if rule.retain_higher_is_better else 1.0
    return min(points, key=lambda p: sign * p["retain"])
