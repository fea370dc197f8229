"""The probe format: one multiple-choice item per JSONL line.

An :class:`Item` has an ``id``, a ``subtask`` (one of :data:`SUBTASKS`), a
``scenario``, a ``question``, two or more ``options``, the ``key`` (index of
the right option) and its ``provenance``: ``{"source": "seed" | "template" |
"generator", ...}`` with ``template`` (template id) and ``structure`` (the
causal structure the key follows from) for template items, ``generator``
(the model or endpoint) for LM items, and ``paraphrase_of`` (an item id)
for a rewording of another item.

:func:`load_suite` is strict: a malformed line raises
:class:`~gradtrace.errors.InputError` naming the file, the line number and
the broken rule. :func:`seed_items` reads the hand-written seed set shipped
in the package (``gradtrace/probes/data/seeds.jsonl``).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data import numbered_jsonl_objects
from ..errors import InputError
from ..fileio import write_jsonl

#: The five subtasks of stable reflectivity, in report order.
SUBTASKS = ("self_concept", "temporal_change", "external_influence", "impact_prediction", "change_desirability")
SUBTASK_MEANING = {
    "self_concept": "tell one's own values apart from the values of others",
    "temporal_change": "tell one's current values apart from one's future values",
    "external_influence": "identify events that could influence one's own or others' values",
    "impact_prediction": "predict how a given event would change one's values",
    "change_desirability": "judge whether a specific influence on one's values is desirable",
}
SOURCES = ("seed", "template", "generator")
FIELDS = ("id", "subtask", "scenario", "question", "options", "key", "provenance")
SEEDS_FILE = "seeds.jsonl"


@dataclasses.dataclass(frozen=True)
class Item:
    """One probe item (see the module docstring)."""

    id: str
    subtask: str
    scenario: str
    question: str
    options: tuple[str, ...]
    key: int
    provenance: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        problem = item_problem(self)
        if problem is not None:
            raise InputError(f"probe item {self.id!r}: {problem}")

    @property
    def source(self) -> str:
        return str(self.provenance["source"])

    @property
    def answer(self) -> str:
        return self.options[self.key]

    @property
    def paraphrase_of(self) -> str | None:
        value = self.provenance.get("paraphrase_of")
        return None if value is None else str(value)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "subtask": self.subtask, "scenario": self.scenario, "question": self.question,
                "options": list(self.options), "key": self.key, "provenance": dict(self.provenance)}

    def text(self) -> str:
        """Scenario, question and options as one string (what embedders see)."""
        return f"{self.scenario} {self.question} " + " | ".join(self.options)

    def with_options(self, options: Sequence[str], key: int, **provenance: Any) -> "Item":
        return Item(self.id, self.subtask, self.scenario, self.question, tuple(options), key, {**self.provenance, **provenance})


def item_problem(item: Any) -> str | None:
    """What is wrong with an item's fields (``None``: nothing)."""
    if not isinstance(item.id, str) or not item.id.strip():
        return f"id must be a non-empty string; got {item.id!r}"
    if item.subtask not in SUBTASKS:
        return f"subtask must be one of {SUBTASKS}; got {item.subtask!r}"
    for name in ("scenario", "question"):
        value = getattr(item, name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be a non-empty string; got {value!r}"
    opts = item.options
    if len(opts) < 2 or not all(isinstance(o, str) and o.strip() for o in opts):
        return f"options must be two or more non-empty strings; got {list(opts)!r}"
    if len({o.strip().lower() for o in opts}) != len(opts):
        return f"options must differ from each other; got {list(opts)!r}"
    if isinstance(item.key, bool) or not isinstance(item.key, int) or not 0 <= item.key < len(opts):
        return f"key must be an option index in 0..{len(opts) - 1}; got {item.key!r}"
    prov = item.provenance
    if not isinstance(prov, Mapping) or prov.get("source") not in SOURCES:
        return f"provenance must be an object with source one of {SOURCES}; got {prov!r}"
    if prov["source"] == "template" and not isinstance(prov.get("template"), str):
        return f"a template item's provenance must name its template; got {dict(prov)!r}"
    if prov["source"] == "generator" and not isinstance(prov.get("generator"), str):
        return f"a generated item's provenance must name its generator; got {dict(prov)!r}"
    if prov.get("paraphrase_of") is not None and not isinstance(prov.get("paraphrase_of"), str):
        return f"provenance.paraphrase_of must be an item id; got {prov.get('paraphrase_of')!r}"
    return None


def item_from_dict(d: Mapping[str, Any], where: str) -> Item:
    """An item from one JSON object; errors start with ``where``."""
    unknown = sorted(set(d) - set(FIELDS))
    missing = [f for f in FIELDS if f not in d]
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown}; an item has {list(FIELDS)}")
    if missing:
        raise InputError(f"{where}: missing field(s) {missing}; an item has {list(FIELDS)}")
    if not isinstance(d["options"], list):
        raise InputError(f"{where}: options must be a list of strings; got {d['options']!r}")
    try:
        return Item(d["id"], d["subtask"], d["scenario"], d["question"], tuple(d["options"]), d["key"], d["provenance"])
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def load_suite(path: str | Path) -> list[Item]:
    """Every item of a suite file (JSONL). A malformed line (not JSON, a
    missing or unknown field, a bad value, a repeated id) raises InputError
    naming the file and the line."""
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, rec in numbered_jsonl_objects(path, f"probe suite {str(path)!r}"):
        where = f"probe suite {str(path)!r} line {n}"
        item = item_from_dict(rec, where)
        if item.id in seen:
            raise InputError(f"{where}: id {item.id!r} repeats line {seen[item.id]}; ids must be unique")
        seen[item.id] = n
        items.append(item)
    if not items:
        raise InputError(f"probe suite {str(path)!r} holds no item")
    return items


def save_suite(path: str | Path, items: Sequence[Item]) -> None:
    """Write items as JSONL, atomically (one line each, keys sorted)."""
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InputError(f"probe suite: ids must be unique; repeated {dup}")
    write_jsonl(path, [it.to_dict() for it in items])


def seeds_path() -> Path:
    """Where the shipped seed set lies."""
    return Path(str(resources.files("gradtrace.probes") / "data" / SEEDS_FILE))


def seed_items() -> list[Item]:
    """The hand-written seed set shipped with gradtrace (20+ items per subtask)."""
    return load_suite(seeds_path())


def resolve_suite(spec: str | Path) -> list[Item]:
    """``"seeds"`` (the shipped seed set) or a suite file."""
    return seed_items() if str(spec) == "seeds" else load_suite(spec)


def by_subtask(items: Sequence[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {s: [] for s in SUBTASKS}
    for it in items:
        out[it.subtask].append(it)
    return out


def first_per_subtask(items: Sequence[Item], limit: int | None) -> list[Item]:
    """The first ``limit`` items of each subtask, in suite order (all when ``None``)."""
    if limit is None:
        return list(items)
    counts: dict[str, int] = {}
    out = []
    for it in items:
        if counts.get(it.subtask, 0) < limit:
            counts[it.subtask] = counts.get(it.subtask, 0) + 1
            out.append(it)
    return out
