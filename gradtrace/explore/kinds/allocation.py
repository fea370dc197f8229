"""A loss-change allocation (the JSON of ``gradtrace allocate --out``) in the
explorer: the group × interval heatmap (by layer, block or module, the same
figure as the allocation report), the intervals with their completeness
error, and per cell (a click on the heatmap, or a link in the table under it)
the group's parameters: each tensor's allocation in that interval and over
the whole run.

The JSON is read back with :meth:`gradtrace.allocate.path.RunAllocation.from_dict`
and grouped with :meth:`~gradtrace.allocate.path.RunAllocation.by` (one home
for the grouping rules, :mod:`gradtrace.allocate.groups`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import InputError
from ...report import figures
from ..artefacts import Artefact, BadRequest, NotFound, ServeOptions

#: The levels shown (coarsest first); each is also the name of its cell pages (``p/<level>/<cell>``).
LEVELS = ("layer", "block", "module")
REQUIRED = ("intervals", "params", "rule", "behaviour")


def _looks_like_allocation(path: Path) -> bool:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(d, dict) and all(k in d for k in REQUIRED)


class AllocationArtefact(Artefact):
    kind = "allocation"

    def __init__(self, id: str, path: Path):
        from ...allocate.groups import group_names
        from ...allocate.path import RunAllocation

        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"serve: cannot read {str(path)!r} as an allocation: {exc}") from None
        self.run = RunAllocation.from_dict(d, f"serve: {str(path)!r}")
        super().__init__(id, path.stem)
        self.labels = [iv.label() for iv in self.run.intervals]
        self.by = {level: self.run.by(level) for level in LEVELS}
        self.members = {level: group_names(self.run.params, level) for level in LEVELS}

    def summary(self) -> str:
        return (f"loss-change allocation of {self.run.behaviour}: {len(self.run.intervals)} intervals, "
                f"{len(self.run.params)} parameter tensors, largest relative completeness error {self.run.max_relative_error:.2g}")

    def _level(self, args: dict[str, str]) -> str:
        level = args.get("level", LEVELS[0])
        if level not in LEVELS:
            raise BadRequest(f"level must be one of {', '.join(LEVELS)}")
        return level

    def page(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> tuple[str, dict[str, Any]]:
        if name == "" and not path_args:
            return "allocation.html", self._main(self._level(args))
        if name in LEVELS and len(path_args) == 1:
            return "allocation_cell.html", self.cell(name, path_args[0])
        raise NotFound(f"allocation has no page {name!r}")

    def _main(self, level: str) -> dict[str, Any]:
        by = self.by[level]
        groups = list(by)
        n = len(self.labels)
        matrix = np.array([by[g] for g in groups]) if groups else np.zeros((0, n))
        fig = figures.heatmap(matrix, groups, self.labels, f"allocation by {level} and interval", cell_ids=True)
        rows = [{"group": g, "cells": [{"value": float(by[g][j]), "cell": i * n + j} for j in range(n)], "total": float(by[g].sum())}
                for i, g in enumerate(groups)]
        intervals = [{"label": iv.label(), "value_start": iv.value_start, "value_end": iv.value_end, "measured": iv.measured_change,
                      "allocated": iv.allocated, "error": iv.completeness_error, "relative": iv.relative_error}
                     for iv in self.run.intervals]
        return {"r": self.run, "level": level, "levels": LEVELS, "labels": self.labels, "intervals": intervals, "rows": rows,
                "figure": figures.embed(fig, click="link", base=f"/a/{self.id}/p/{level}/")}

    def cell(self, level: str, cell: int) -> dict[str, Any]:
        """The parameters of one group in one interval (``cell`` = group position × intervals + interval)."""
        groups = list(self.by[level])
        n = len(self.labels)
        if n == 0 or not 0 <= cell < len(groups) * n:
            raise NotFound(f"no cell {cell} at level {level}")
        g, j = groups[cell // n], cell % n
        iv = self.run.intervals[j]
        names = [p for p in self.run.params if self.members[level][p] == g]
        tensors = [{"name": p, "value": iv.per_tensor.get(p, 0.0), "per_interval": [x.per_tensor.get(p, 0.0) for x in self.run.intervals]}
                   for p in names]
        tensors.sort(key=lambda t: -abs(t["value"]))
        return {"level": level, "group": g, "interval": j, "label": self.labels[j], "labels": self.labels, "value": float(self.by[level][g][j]),
                "measured": iv.measured_change, "tensors": tensors, "cell": cell, "n_intervals": n,
                "row_cells": [(cell // n) * n + k for k in range(n)]}


class AllocationLoader:
    kind = "allocation"

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".json" and _looks_like_allocation(path)

    def load(self, path: Path, options: ServeOptions, new_id: Callable[[str], str]) -> list[Artefact]:
        return [AllocationArtefact(new_id(self.kind), path)]
