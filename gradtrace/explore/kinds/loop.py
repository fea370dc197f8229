"""A self-training loop run folder in the explorer: the monitors' curves per
round with the stop rules' thresholds and the stop round; clicking a round
opens its page (its metrics, its diff against round 0 when the round has a
``diff.json``: the map and the most skewed clusters, each a click away from
its texts; and its data: what it trained on, generated and kept). A loop
that ran the ``probes`` monitor also yields a probes artefact
(``<loop id>.probes``, :mod:`.probes`): per-subtask accuracy per round, the
shifts against round 0 and the items with each round's choice.

Reads the folder as :mod:`gradtrace.loop.runner` writes it: ``loop.json``
(the config; its ``stop`` rules), ``round_NNN/`` with ``metrics.json``
(``row``), ``DONE``, ``train.jsonl``, ``generations.jsonl``,
``curated.jsonl`` and maybe ``diff.json``, and ``stop.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ...data import read_jsonl_objects
from ...errors import GradtraceError, InputError
from ...report import figures
from ..artefacts import Artefact, NotFound, ServeOptions
from . import probes as probes_kind
from .diff import DIFF_FILE, DiffArtefact

DATA_FILES = ("train.jsonl", "generations.jsonl", "curated.jsonl")
MAX_ROWS = 200
MAX_CLUSTERS = 20


class LoopArtefact(Artefact):
    kind = "loop"

    def __init__(self, id: str, path: Path):
        from ...loop.runner import CONFIG_FILE, STOP_FILE, round_dir
        from ...loop.stop import StopEvent, StopRule

        super().__init__(id, path.name)
        self.path = path
        try:
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            self.rules = [StopRule.from_dict(r, f"stop[{i}]") for i, r in enumerate(config.get("stop") or [])]
            self.rows: list[dict[str, float]] = []
            self.rounds: list[int] = []
            while (round_dir(path, len(self.rounds)) / "DONE").is_file():
                t = len(self.rounds)
                self.rows.append(json.loads((round_dir(path, t) / "metrics.json").read_text(encoding="utf-8"))["row"])
                self.rounds.append(t)
            stop_file = path / STOP_FILE
            self.stop = StopEvent.from_dict(json.loads(stop_file.read_text(encoding="utf-8"))) if stop_file.is_file() else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"serve: cannot read the loop run {str(path)!r}: {exc}") from None
        self.round_dir = lambda t: round_dir(path, t)
        self.diffs: dict[int, DiffArtefact] = {}
        for t in self.rounds:
            if (self.round_dir(t) / DIFF_FILE).is_file():
                self.diffs[t] = DiffArtefact(f"{id}.round-{t}", self.round_dir(t) / DIFF_FILE, f"{path.name}, round {t} against round 0")
        monitors = config.get("monitors") if isinstance(config, dict) else None
        settings = monitors.get("probes") if isinstance(monitors, dict) else None
        self.probes = probes_kind.loop_artefact(f"{id}.probes", self, settings) if isinstance(settings, dict) and self.rounds else None

    def summary(self) -> str:
        stop = f"; {self.stop.message()}" if self.stop is not None else "; no stop rule fired"
        return f"self-training loop: {len(self.rounds)} finished rounds{stop}"

    def page(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> tuple[str, dict[str, Any]]:
        if name == "" and not path_args:
            return "loop.html", self._main()
        if name == "round" and len(path_args) == 1:
            return "loop_round.html", self._round(path_args[0])
        raise NotFound(f"loop has no page {name!r}")

    def _main(self) -> dict[str, Any]:
        from ...loop.dashboard import rule_bounds

        metrics = [k for k in (self.rows[0] if self.rows else {}) if k != "round"]
        groups: dict[str, list[str]] = {}
        for m in metrics:
            groups.setdefault(m.split(".", 1)[0], []).append(m)
        stop_round = self.stop.round if self.stop is not None else None
        panels = []
        for monitor, names in groups.items():
            fig = figures.metric_panels(
                self.rounds, {n: [r.get(n, float("nan")) for r in self.rows] for n in names}, monitor, stop_round,
                {n: rule_bounds(self.rules, n) for n in names},
            )
            panels.append({"monitor": monitor, "figure": figures.embed(fig, click="link", base=f"/a/{self.id}/p/round/")})
        table = [{"round": t, "cells": [r.get(m) for m in metrics], "diff": self.diffs[t].id if t in self.diffs else None}
                 for t, r in zip(self.rounds, self.rows)]
        return {"panels": panels, "metrics": metrics, "table": table, "stop": self.stop.message() if self.stop else None,
                "rules": [r.describe() for r in self.rules], "probes": self.probes.id if self.probes is not None else None}

    def _round(self, t: int) -> dict[str, Any]:
        if t not in self.rounds:
            raise NotFound(f"no finished round {t}")
        row = self.rows[t]
        data = []
        for name in DATA_FILES:
            path = self.round_dir(t) / name
            if not path.is_file():
                continue
            try:
                records = read_jsonl_objects(path, name)
            except GradtraceError as exc:
                data.append({"name": name, "error": str(exc), "rows": [], "total": 0})
                continue
            rows = [{"id": r.get("id", ""), "source": r.get("source", ""), "prompt": r.get("prompt"),
                     "text": r["text"] if isinstance(r.get("text"), str) else json.dumps(r, ensure_ascii=False)}
                    for r in records[:MAX_ROWS]]
            data.append({"name": name, "rows": rows, "total": len(records), "error": None})
        diff = self.diffs.get(t)
        return {"round": t, "metrics": sorted((k, v) for k, v in row.items() if k != "round"), "data": data,
                "diff": diff.id if diff is not None else None, "rounds": self.rounds,
                "map": diff.map_markup() if diff is not None else None,
                "clusters": [diff.row(i) for i in range(min(len(diff.clusters), MAX_CLUSTERS))] if diff is not None else [],
                "n_clusters": len(diff.clusters) if diff is not None else 0,
                "probes": self.probes.id if self.probes is not None else None,
                "stopped_here": self.stop is not None and self.stop.round == t}


class LoopLoader:
    kind = "loop"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "loop.json").is_file() and (path / "round_000").is_dir()

    def load(self, path: Path, options: ServeOptions, new_id: Callable[[str], str]) -> list[Artefact]:
        loop = LoopArtefact(new_id(self.kind), path)
        return [loop, *loop.diffs.values(), *([loop.probes] if loop.probes is not None else [])]
