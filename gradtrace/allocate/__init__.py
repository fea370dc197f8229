"""Beyond data: which parameters learned a behaviour and when (loss-change
allocation, :mod:`.path`), which training periods carried an example's
influence (:mod:`.timeline`), and how influence differs across runs
(:mod:`.runs`). See docs/allocate.md."""

from .groups import LEVELS, group_names, group_of
from .path import DEFAULT_POINTS, DEFAULT_RULE, RULES, IntervalAllocation, RunAllocation, allocate_run, default_points, quadrature

__all__ = [
    "DEFAULT_POINTS", "DEFAULT_RULE", "LEVELS", "RULES", "IntervalAllocation", "RunAllocation", "allocate_run", "default_points",
    "group_names", "group_of", "quadrature",
]
