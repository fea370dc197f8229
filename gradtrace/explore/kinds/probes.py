"""Probe results in the explorer: a run (``gradtrace probes run --out``), a
comparison (``gradtrace probes compare --out``) or the ``probes`` monitor of a
self-training loop (one run per round, each against round 0).

The page shows per-subtask accuracy per model or round (a plotly figure,
:func:`gradtrace.report.figures.probe_accuracy`; click a bar for that
subtask's items), the per-subtask summary, the shift table of a comparison
(accuracies, the difference, the items right in one run only, the exact
McNemar p-value and the p-value corrected over subtasks) and the items:
scenario, question, options, key and each run's choice. Every text is
untrusted (items may come from a language model) and is escaped.

Item texts come from the run file (``probes run`` writes them beside each
result), else from the suite the run names (``seeds``, or a suite file: the
path as written, then beside the run file). A comparison reads its two run
files (as written, then beside the comparison file) for the items; the
shift table comes from the comparison itself. A loop reads its
``loop.json`` (``monitors.probes``), each round's metrics and, for the
items, each round's ``observation.npz`` (``probes.correct``,
``probes.predicted``, ``probes.margin``); the shifts are
:func:`gradtrace.probes.score.compare_correct` of each round against round
0, as the monitor computes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...errors import GradtraceError, InputError
from ...probes.items import SUBTASK_MEANING, SUBTASKS
from ...report import figures
from ..artefacts import Artefact, BadRequest, NotFound, ServeOptions

PAGE_SIZE = 100
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
OBSERVATION = "observation.npz"
EXTRA = "extra:probes."


@dataclasses.dataclass
class ProbeRun:
    """One column of the page: a model's run, a side of a comparison, a loop round.
    ``summary[subtask]``: n, accuracy, ci_low, ci_high (and consistency,
    paraphrase_groups, mean_margin when known; None: unknown).
    ``items[id]``: subtask, key, predicted (None: unknown), correct, margin; None when the items are not known."""

    label: str
    summary: dict[str, dict[str, Any]]
    items: dict[str, dict[str, Any]] | None = None


@dataclasses.dataclass
class Shift:
    """A paired comparison: ``subtasks`` as :func:`gradtrace.probes.score.compare_correct` returns them (None: unknown)."""

    label: str
    subtasks: dict[str, dict[str, Any]]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _candidates(written: str, base: Path) -> list[Path]:
    """Where a file named in an artefact may be: as written (absolute, or from here), then beside the artefact."""
    p = Path(written)
    if p.is_absolute():
        return [p, base / p.name]
    return [p, base / p, base / p.name]


def resolve_suite_items(spec: Any, base: Path) -> tuple[list[Any] | None, str | None]:
    """The items of the suite ``spec`` (``"seeds"`` or a file, looked for as
    :func:`_candidates` says), or ``(None, why not)``."""
    from ...probes.items import load_suite, seed_items

    if not isinstance(spec, str):
        return None, f"the suite is not named ({spec!r})"
    if spec == "seeds":
        return seed_items(), None
    for path in _candidates(spec, base):
        if path.is_file():
            try:
                return load_suite(path), None
            except GradtraceError as exc:
                return None, str(exc)
    return None, f"the suite file {spec!r} was not found (as written, nor beside {str(base)!r})"


def summary_of(items: Mapping[str, Mapping[str, Any]], paraphrase_of: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    """Per subtask (in :data:`SUBTASKS` order): n, accuracy with its Wilson
    95% interval, paraphrase consistency and the mean margin, as
    :func:`gradtrace.probes.score.summarise` computes them."""
    from ...probes.score import paraphrase_consistency, wilson

    out: dict[str, dict[str, Any]] = {}
    for sub in SUBTASKS:
        mine = [(i, r) for i, r in items.items() if r["subtask"] == sub]
        if not mine:
            continue
        k = sum(bool(r["correct"]) for _, r in mine)
        lo, hi = wilson(k, len(mine))
        cons, groups = paraphrase_consistency([types.SimpleNamespace(id=i, correct=bool(r["correct"]), paraphrase_of=paraphrase_of.get(i))
                                               for i, r in mine])
        margins = [_num(r.get("margin")) for _, r in mine]
        margins = [m for m in margins if m is not None]
        out[sub] = {"n": len(mine), "accuracy": k / len(mine), "ci_low": lo, "ci_high": hi, "consistency": cons,
                    "paraphrase_groups": groups, "mean_margin": float(np.mean(margins)) if margins else None}
    return out


def _run_items(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): {"subtask": str(r["subtask"]), "key": r["key"], "predicted": r.get("predicted"), "correct": bool(r["correct"]),
                           "margin": _num(r.get("margin"))} for r in record["items"]}


def _texts_of_record(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in record["items"]:
        if isinstance(r.get("scenario"), str) and isinstance(r.get("question"), str) and isinstance(r.get("options"), list):
            out[str(r["id"])] = {"scenario": r["scenario"], "question": r["question"], "options": [str(o) for o in r["options"]],
                                 "paraphrase_of": r.get("paraphrase_of")}
    return out


def _texts_of_items(items: Sequence[Any]) -> dict[str, dict[str, Any]]:
    return {it.id: {"scenario": it.scenario, "question": it.question, "options": list(it.options), "paraphrase_of": it.paraphrase_of}
            for it in items}


class ProbesArtefact(Artefact):
    """Probe results of any origin (see the module docstring), as runs, shifts and item texts."""

    kind = "probes"

    def __init__(self, id: str, title: str, what: str, runs: Sequence[ProbeRun], texts: Mapping[str, Mapping[str, Any]],
                 shifts: Sequence[Shift] = (), correction: str | None = None, alpha: float | None = None,
                 notes: Sequence[str] = (), loop: str | None = None, summary_line: str = ""):
        super().__init__(id, title)
        self.what, self.runs, self.texts, self.shifts = what, list(runs), dict(texts), list(shifts)
        self.correction, self.alpha, self.notes, self.loop, self.summary_line = correction, alpha, list(notes), loop, summary_line
        order: dict[str, str] = {}
        for run in self.runs:
            for i, r in (run.items or {}).items():
                order.setdefault(i, r["subtask"])
        rank = {s: j for j, s in enumerate(SUBTASKS)}
        self.order = sorted(order, key=lambda i: rank.get(order[i], len(rank)))  # by subtask, suite order within
        self.subtask_of = order
        self.subtasks = [s for s in SUBTASKS if any(s in run.summary for run in self.runs) or any(s in sh.subtasks for sh in self.shifts)]

    def summary(self) -> str:
        return self.summary_line

    def page(self, name: str, args: dict[str, str], path_args: Sequence[int]) -> tuple[str, dict[str, Any]]:
        if name == "" and not path_args:
            return "probes.html", self._main(args)
        raise NotFound(f"probes has no page {name!r}")

    def figure(self) -> Any:
        """The accuracy figure: per subtask, one bar per run with its 95% interval."""
        series = {run.label: [(run.summary.get(s, {}).get("accuracy"), run.summary.get(s, {}).get("ci_low"),
                               run.summary.get(s, {}).get("ci_high")) for s in self.subtasks] for run in self.runs}
        return figures.probe_accuracy(self.subtasks, series, "accuracy per subtask (95% Wilson interval)")

    def _main(self, args: dict[str, str]) -> dict[str, Any]:
        subtask = args.get("subtask", "")
        if subtask and subtask not in SUBTASKS:
            raise BadRequest(f"subtask must be one of {', '.join(SUBTASKS)}")
        try:
            page = int(args.get("page", "0"))
        except ValueError:
            raise BadRequest("page must be a whole number") from None
        ids = [i for i in self.order if not subtask or self.subtask_of[i] == subtask]
        pages = max(1, math.ceil(len(ids) / PAGE_SIZE))
        if not 0 <= page < pages:
            raise NotFound(f"no page {page} of the items")
        with_items = [run for run in self.runs if run.items is not None]
        rows = []
        for i in ids[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]:
            t = self.texts.get(i)
            first = next(run.items[i] for run in with_items if i in run.items)  # type: ignore[index]
            key = first["key"]
            choices = []
            for run in with_items:
                r = run.items.get(i)  # type: ignore[union-attr]
                if r is None:
                    choices.append(None)
                    continue
                p = r["predicted"]
                choices.append({"letter": LETTERS[p] if isinstance(p, int) and 0 <= p < len(LETTERS) else None,
                                "correct": r["correct"], "margin": r["margin"]})
            options = [{"letter": LETTERS[j], "text": o, "key": j == key} for j, o in enumerate(t["options"])] if t else []
            rows.append({"id": i, "subtask": self.subtask_of[i], "scenario": t["scenario"] if t else None,
                         "question": t["question"] if t else None, "options": options,
                         "key": LETTERS[key] if isinstance(key, int) and 0 <= key < len(LETTERS) else str(key), "choices": choices})
        summary = [{"run": run.label, "subtask": s, **{k: run.summary[s].get(k) for k in
                    ("n", "accuracy", "ci_low", "ci_high", "consistency", "paraphrase_groups", "mean_margin")}}
                   for run in self.runs for s in self.subtasks if s in run.summary]
        shifts = [{"label": sh.label, "rows": [{"subtask": s, **sh.subtasks[s]} for s in self.subtasks if s in sh.subtasks]}
                  for sh in self.shifts]
        return {"what": self.what, "notes": self.notes, "loop_id": self.loop, "figure": figures.embed(self.figure(), click="link",
                base=f"/a/{self.id}/?subtask="), "summary_rows": summary, "shifts": shifts, "correction": self.correction,
                "alpha": self.alpha, "runs": [run.label for run in with_items], "rows": rows, "subtask": subtask,
                "subtasks": self.subtasks, "meaning": SUBTASK_MEANING, "n_items": len(ids), "page": page, "pages": pages,
                "texts_known": bool(self.texts)}


# -- the three origins ---------------------------------------------------------------------------
def run_artefact(id: str, path: Path) -> ProbesArtefact:
    """A run file of ``gradtrace probes run --out``."""
    from ...probes.score import read_run_record

    record = read_run_record(path)
    texts, notes = _texts_of_record(record), []
    items = _run_items(record)
    if len(texts) < len(items):
        suite, why = resolve_suite_items(record["suite"], path.parent)
        if suite is not None:
            texts = {**_texts_of_items(suite), **texts}
        else:
            notes.append(f"The run file holds no item texts and {why}: items shown without their texts.")
    run = ProbeRun(f"{record['model']}", {s: dict(v) for s, v in record["summary"].items() if s in SUBTASKS and isinstance(v, dict)},
                   items)
    what = f"Run of the model {record['model']} on the suite {record['suite']} ({len(items)} items)."
    return ProbesArtefact(id, path.stem, what, [run], texts, notes=notes,
                          summary_line=f"probe run: model {record['model']}, suite {record['suite']}, {len(items)} items")


def read_comparison(path: Path) -> dict[str, Any]:
    """A comparison file of ``gradtrace probes compare --out``, checked for the fields shown."""
    from ...probes.score import COMPARISON_FIELDS

    d = _read_json(path)
    if not isinstance(d, dict) or any(k not in d for k in COMPARISON_FIELDS) or not isinstance(d["subtasks"], dict):
        raise InputError(f"serve: {str(path)!r} is not a comparison of 'gradtrace probes compare --out' "
                         f"(it needs {', '.join(COMPARISON_FIELDS)})")
    for s, v in d["subtasks"].items():
        if s not in SUBTASKS or not isinstance(v, dict) or any(k not in v for k in ("n", "accuracy_a", "accuracy_b", "p_corrected")):
            raise InputError(f"serve: {str(path)!r}: subtasks.{s} is not a subtask's comparison (n, accuracy_a, accuracy_b, p_corrected, ...)")
    return d


def comparison_artefact(id: str, path: Path) -> ProbesArtefact:
    """A comparison file; its two runs are read for the items when they are found."""
    from ...probes.score import read_run_record, wilson

    d = read_comparison(path)
    notes, texts, runs = [], {}, []
    for side in ("a", "b"):
        record = None
        for p in _candidates(str(d[side]), path.parent):
            if p.is_file():
                try:
                    record = read_run_record(p)
                except GradtraceError as exc:
                    notes.append(str(exc))
                break
        else:
            notes.append(f"Run {side.upper()} ({d[side]!r}) was not found (as written, nor beside the comparison): its items are not shown.")
        summary = {}
        for s, v in d["subtasks"].items():
            n, acc = int(v["n"]), _num(v[f"accuracy_{side}"])
            lo, hi = wilson(round(acc * n), n) if acc is not None and n > 0 else (None, None)
            summary[s] = {"n": n, "accuracy": acc, "ci_low": lo, "ci_high": hi}
        label = f"{side.upper()}: " + (str(record["model"]) if record is not None else Path(str(d[side])).stem)
        items = None
        if record is not None:
            items = _run_items(record)
            texts = {**_texts_of_record(record), **texts}
            if not all(i in texts for i in items):
                suite, _ = resolve_suite_items(record["suite"], path.parent)
                texts = {**_texts_of_items(suite or []), **texts}
        runs.append(ProbeRun(label, summary, items))
    rows = {s: {k: d["subtasks"][s].get(k) for k in ("n", "accuracy_a", "accuracy_b", "difference", "a_only", "b_only", "p", "p_corrected",
                                                      "significant")} for s in SUBTASKS if s in d["subtasks"]}
    shift = Shift(f"{runs[1].label} against {runs[0].label}", rows)
    significant = sum(bool(v.get("significant")) for v in rows.values())
    what = (f"Comparison of two runs on the items they share (paired by item id): B = {d['b']} against A = {d['a']}; "
            f"exact McNemar per subtask, {d['correction']}-corrected over the subtasks, alpha {d['alpha']}.")
    return ProbesArtefact(id, path.stem, what, runs, texts, [shift], str(d["correction"]), _num(d["alpha"]), notes,
                          summary_line=f"probe comparison: {significant} of {len(rows)} subtasks shifted significantly "
                                       f"({d['correction']}, alpha {d['alpha']})")


def loop_artefact(id: str, loop: Any, settings: Mapping[str, Any]) -> ProbesArtefact:
    """The ``probes`` monitor of a loop run (``loop`` a :class:`~gradtrace.explore.kinds.loop.LoopArtefact`)."""
    from ...probes.items import first_per_subtask
    from ...probes.score import compare_correct

    alpha = float(settings.get("alpha", 0.05))
    correction = str(settings.get("correction", "holm"))
    suite_spec = settings.get("suite", "seeds")
    notes: list[str] = []
    suite, why = resolve_suite_items(suite_spec, loop.path)
    items = first_per_subtask(suite, settings.get("limit_per_subtask")) if suite is not None else None
    per_round: list[dict[str, dict[str, Any]]] | None = None
    if items is None:
        notes.append(f"{why}: per-item results are not shown; accuracies and shifts come from the rounds' metrics.")
    else:
        per_round = []
        for t in loop.rounds:
            got = _observed(loop.round_dir(t) / OBSERVATION, len(items))
            if isinstance(got, str):
                notes.append(f"round {t}: {got}; per-item results are not shown.")
                per_round = None
                break
            correct, predicted, margin = got
            per_round.append({it.id: {"subtask": it.subtask, "key": it.key, "predicted": None if predicted is None else int(predicted[j]),
                                      "correct": bool(correct[j]), "margin": None if margin is None else _num(margin[j])}
                              for j, it in enumerate(items)})
    runs, shifts = [], []
    paraphrase = {it.id: it.paraphrase_of for it in items} if items is not None else {}
    for pos, t in enumerate(loop.rounds):
        row = loop.rows[pos]
        if per_round is not None:
            runs.append(ProbeRun(f"round {t}", summary_of(per_round[pos], paraphrase), per_round[pos]))
        else:
            runs.append(ProbeRun(f"round {t}", {s: {"n": None, "accuracy": _num(row.get(f"probes.{s}.accuracy")), "ci_low": None,
                                                    "ci_high": None} for s in SUBTASKS if f"probes.{s}.accuracy" in row}))
    for pos, t in enumerate(loop.rounds[1:], start=1):
        if per_round is not None:
            a = {i: (r["subtask"], r["correct"]) for i, r in per_round[0].items()}
            b = {i: (r["subtask"], r["correct"]) for i, r in per_round[pos].items()}
            shifts.append(Shift(f"round {t} against round {loop.rounds[0]}", compare_correct(a, b, correction, alpha)))
        else:
            row, base = loop.rows[pos], loop.rows[0]
            shifts.append(Shift(f"round {t} against round {loop.rounds[0]}", {
                s: {"n": None, "accuracy_a": _num(base.get(f"probes.{s}.accuracy")), "accuracy_b": _num(row.get(f"probes.{s}.accuracy")),
                    "difference": _num(row.get(f"probes.{s}.change")), "a_only": None, "b_only": None, "p": None,
                    "p_corrected": _num(row.get(f"probes.{s}.p")),
                    "significant": _num(row.get(f"probes.{s}.p")) is not None and _num(row.get(f"probes.{s}.p")) <= alpha}  # type: ignore[operator]
                for s in SUBTASKS if f"probes.{s}.accuracy" in row}))
    what = (f"The loop's probes monitor: the suite {suite_spec} scored on every round's model; each round against round "
            f"{loop.rounds[0] if loop.rounds else 0} (exact McNemar per subtask, {correction}-corrected over the subtasks, alpha {alpha}).")
    return ProbesArtefact(id, f"{loop.title}, probes per round", what, runs, _texts_of_items(items or []), shifts, correction, alpha,
                          notes, loop=loop.id, summary_line=f"probes monitor of the loop {loop.title}: {len(runs)} rounds, suite {suite_spec}")


def _observed(path: Path, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | str:
    """A round's per-item probe results from its observation (correct; predicted and margin when saved), or why not."""
    if not path.is_file():
        return f"no {OBSERVATION}"
    try:
        with np.load(path, allow_pickle=False) as z:
            if f"{EXTRA}correct" not in z.files:
                return f"{OBSERVATION} holds no probes.correct"
            got = [np.asarray(z[f"{EXTRA}{k}"]) if f"{EXTRA}{k}" in z.files else None for k in ("correct", "predicted", "margin")]
    except (OSError, ValueError) as exc:
        return f"cannot read {OBSERVATION}: {exc}"
    if any(a is not None and a.shape != (n,) for a in got):
        return f"{OBSERVATION} scored another number of items than the suite's {n}"
    return got[0].astype(bool), got[1], got[2]  # type: ignore[union-attr]


class ProbesLoader:
    kind = "probes"

    def detect(self, path: Path) -> bool:
        from ...probes.score import COMPARISON_FIELDS, RUN_FIELDS

        if not (path.is_file() and path.suffix == ".json"):
            return False
        d = _read_json(path)
        return isinstance(d, dict) and (all(k in d for k in RUN_FIELDS) or all(k in d for k in COMPARISON_FIELDS))

    def load(self, path: Path, options: ServeOptions, new_id: Callable[[str], str]) -> list[Artefact]:
        from ...probes.score import RUN_FIELDS

        d = _read_json(path)
        if isinstance(d, dict) and all(k in d for k in RUN_FIELDS):
            return [run_artefact(new_id(self.kind), path)]
        return [comparison_artefact(new_id(self.kind), path)]
