"""Score probe items under a causal LM, summarise per subtask, compare two runs.

**Scoring.** For an item with options ``o_1..o_k`` and each of the ``k``
cyclic orders of the options (so each option is listed once in each
position), the prompt is::

    {scenario}
    {question}
    Options:
    A. {first option in this order}
    B. ...
    Answer:

and the score of option ``o`` under that order is the mean log-probability
per token of ``" " + o`` after the prompt (length-normalised). An option's
score is the mean over the ``k`` orders, which cancels a preference for a
listed position; the prediction is the option with the highest score and the
item is right when that is the key. ``margin`` is the key's score minus the
best other option's.

**Summary.** Per subtask: accuracy with a Wilson 95% interval, and
consistency across paraphrases: among groups of items that are paraphrases
of one another (``provenance.paraphrase_of``), the share whose members are
all right or all wrong.

**Comparison.** Two runs (two models, or two rounds) scored on the same items
are paired by item id; per subtask an exact McNemar test on the discordant
items (right in one run only), p-values corrected over subtasks with Holm
(family-wise) or Benjamini-Hochberg (false discovery rate).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..configbase import positive_int
from ..errors import InputError
from ..fileio import atomic_write_bytes, json_bytes
from ..lm.tasks import pad_right
from ..progress import progress_bar
from .items import SUBTASKS, Item

LETTERS = "ABCDEFGHIJ"
CORRECTIONS = ("holm", "bh")


def option_orders(n: int) -> list[list[int]]:
    """The ``n`` cyclic orders of ``n`` options (each option once in each position)."""
    return [[(start + j) % n for j in range(n)] for start in range(n)]


def render_prompt(item: Item, order: Sequence[int]) -> str:
    """The prompt of ``item`` with its options listed in ``order``."""
    if len(item.options) > len(LETTERS):
        raise InputError(f"probe item {item.id!r}: at most {len(LETTERS)} options can be scored; got {len(item.options)}")
    lines = [item.scenario.strip(), item.question.strip(), "Options:"]
    lines += [f"{LETTERS[pos]}. {item.options[o]}" for pos, o in enumerate(order)]
    return "\n".join(lines) + "\nAnswer:"


def continuation(option: str) -> str:
    return " " + option.strip()


def _window(model: Any, max_length: int) -> int:
    config = getattr(model, "config", None)
    window = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return min(max_length, window) if isinstance(window, int) and window > 0 else max_length


@torch.no_grad()
def option_logprobs(model: Any, tokenizer: Any, groups: Sequence[tuple[str, Sequence[str]]], *, max_length: int = 512,
                    bar: Any = None) -> list[np.ndarray]:
    """For each ``(prompt, continuations)``: the mean log-probability per
    token (nats, float64) of each continuation after the prompt.

    Prompt and continuations are tokenized separately (no special tokens)
    and joined. The prompt runs once and its key/value cache is shared by
    the continuations (one forward pass over them, right-padded). A prompt
    too long for ``max_length`` (or the model's context window, if shorter)
    loses its first tokens."""
    limit = _window(model, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt, conts in groups:
            c_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
            if any(not c for c in c_ids):
                raise InputError(f"a continuation of {list(conts)!r} has no tokens")
            longest = max(len(c) for c in c_ids)
            if longest >= limit:
                raise InputError(f"an option of {longest} tokens does not fit the context of {limit} tokens")
            p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])[-(limit - longest):]
            if not p_ids:
                raise InputError("a prompt has no tokens")
            first = model(input_ids=torch.tensor([p_ids], device=device), use_cache=True)
            last = torch.log_softmax(first.logits[0, -1].double(), dim=-1)
            cache = first.past_key_values
            k, n_p = len(c_ids), len(p_ids)
            cache.batch_repeat_interleave(k)
            ids, mask = pad_right(c_ids, int(pad))
            ids, mask = ids.to(device), mask.to(device)
            full_mask = torch.cat([torch.ones(k, n_p, dtype=mask.dtype, device=device), mask], dim=1)
            positions = (n_p + torch.arange(ids.shape[1], device=device)).expand(k, -1)
            logits = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, past_key_values=cache, use_cache=True).logits
            logp = torch.log_softmax(logits.double(), dim=-1)
            values = np.zeros(k)
            for r, c in enumerate(c_ids):
                total = float(last[c[0]])
                if len(c) > 1:
                    total += float(logp[r, torch.arange(len(c) - 1, device=device), torch.tensor(c[1:], device=device)].sum())
                values[r] = total / len(c)
            out.append(values)
            if bar is not None:
                bar.advance(1)
    finally:
        model.train(was_training)
    return out


@dataclasses.dataclass(frozen=True)
class ItemScore:
    """One item's result: per-option scores (mean over orders), prediction, correctness."""

    id: str
    subtask: str
    key: int
    scores: tuple[float, ...]
    paraphrase_of: str | None = None

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def correct(self) -> bool:
        return self.predicted == self.key

    @property
    def margin(self) -> float:
        others = [s for i, s in enumerate(self.scores) if i != self.key]
        return float(self.scores[self.key] - max(others))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "subtask": self.subtask, "key": self.key, "scores": list(self.scores), "predicted": self.predicted,
                "correct": self.correct, "margin": self.margin, "paraphrase_of": self.paraphrase_of}


def score_items(model: Any, tokenizer: Any, items: Sequence[Item], *, max_length: int = 512, progress: bool = False) -> list[ItemScore]:
    """Every item scored (see the module docstring); each prompt runs once, its options as one batch."""
    groups: list[tuple[str, list[str]]] = []
    for item in items:
        for order in option_orders(len(item.options)):
            groups.append((render_prompt(item, order), [continuation(o) for o in item.options]))
    with progress_bar("probes: score", len(groups), progress) as bar:
        lp = option_logprobs(model, tokenizer, groups, max_length=max_length, bar=bar)
    out, g = [], 0
    for it in items:
        k = len(it.options)
        mean = np.mean(lp[g : g + k], axis=0)
        g += k
        out.append(ItemScore(it.id, it.subtask, it.key, tuple(float(x) for x in mean), it.paraphrase_of))
    return out


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% by default)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paraphrase_consistency(scores: Sequence[ItemScore]) -> tuple[float, int]:
    """(share of paraphrase groups whose members are all right or all wrong, number of groups of 2+)."""
    groups: dict[str, list[bool]] = {}
    for s in scores:
        groups.setdefault(s.paraphrase_of or s.id, []).append(s.correct)
    multi = [g for g in groups.values() if len(g) >= 2]
    if not multi:
        return (float("nan"), 0)
    return (float(np.mean([len(set(g)) == 1 for g in multi])), len(multi))


def summarise(scores: Sequence[ItemScore]) -> dict[str, dict[str, Any]]:
    """Per subtask (only those present): n, accuracy, ci_low, ci_high, consistency, paraphrase_groups."""
    out: dict[str, dict[str, Any]] = {}
    for sub in SUBTASKS:
        mine = [s for s in scores if s.subtask == sub]
        if not mine:
            continue
        k = sum(s.correct for s in mine)
        lo, hi = wilson(k, len(mine))
        cons, groups = paraphrase_consistency(mine)
        out[sub] = {"n": len(mine), "accuracy": k / len(mine), "ci_low": lo, "ci_high": hi, "consistency": cons,
                    "paraphrase_groups": groups, "mean_margin": float(np.mean([s.margin for s in mine]))}
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def correct_p(p_values: Sequence[float], correction: str) -> np.ndarray:
    from ..diff.stats import benjamini_hochberg, holm

    if correction not in CORRECTIONS:
        raise InputError(f"correction must be one of {CORRECTIONS}; got {correction!r}")
    return holm(p_values) if correction == "holm" else benjamini_hochberg(p_values)


def compare_correct(a: Mapping[str, tuple[str, bool]], b: Mapping[str, tuple[str, bool]], correction: str = "holm",
                    alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Per subtask, paired on item ids present in both: ``{id: (subtask, correct)}``
    of run A and of run B. Each subtask gets n, accuracy_a, accuracy_b,
    difference (B - A), a_only / b_only (right only in A / only in B),
    p (exact McNemar), p_corrected and significant (p_corrected <= alpha)."""
    if correction not in CORRECTIONS:
        raise InputError(f"correction must be one of {CORRECTIONS}; got {correction!r}")
    common = [i for i in a if i in b]
    if not common:
        raise InputError("compare: the two runs share no item id")
    clash = [i for i in common if a[i][0] != b[i][0]]
    if clash:
        raise InputError(f"compare: items {clash[:5]} have different subtasks in the two runs")
    out: dict[str, dict[str, Any]] = {}
    for sub in SUBTASKS:
        ids = [i for i in common if a[i][0] == sub]
        if not ids:
            continue
        ca = np.array([a[i][1] for i in ids], dtype=bool)
        cb = np.array([b[i][1] for i in ids], dtype=bool)
        a_only, b_only = int((ca & ~cb).sum()), int((cb & ~ca).sum())
        out[sub] = {"n": len(ids), "accuracy_a": float(ca.mean()), "accuracy_b": float(cb.mean()),
                    "difference": float(cb.mean() - ca.mean()), "a_only": a_only, "b_only": b_only, "p": mcnemar_exact(a_only, b_only)}
    adjusted = correct_p([v["p"] for v in out.values()], correction)
    for v, q in zip(out.values(), adjusted):
        v["p_corrected"] = float(q)
        v["significant"] = bool(q <= alpha)
    return out


# -- run files -------------------------------------------------------------------------------------
RUN_FIELDS = ("model", "suite", "summary", "items")
RUN_ITEM_FIELDS = ("id", "subtask", "key", "predicted", "correct", "margin")
COMPARISON_FIELDS = ("a", "b", "correction", "alpha", "subtasks")


def run_record(scores: Sequence[ItemScore], model: str, suite: str, items: Sequence[Item] = ()) -> dict[str, Any]:
    """What ``gradtrace probes run --out`` writes: the model, the suite, the
    per-subtask summary and one record per scored item; an item found in
    ``items`` (by id) also carries its scenario, question and options, so the
    file shows on its own (``gradtrace serve``)."""
    texts = {it.id: it for it in items}
    rows = []
    for s in scores:
        row = s.to_dict()
        it = texts.get(s.id)
        if it is not None:
            row.update(scenario=it.scenario, question=it.question, options=list(it.options))
        rows.append(row)
    return {"model": model, "suite": suite, "summary": summarise(scores), "items": rows}


def comparison_record(a: str | Path, b: str | Path, correction: str, alpha: float, subtasks: Mapping[str, Any]) -> dict[str, Any]:
    """What ``gradtrace probes compare --out`` writes (and ``--json`` prints): the two run files as given, the
    correction, alpha and :func:`compare_correct`'s per-subtask result."""
    return {"a": str(a), "b": str(b), "correction": correction, "alpha": alpha, "subtasks": dict(subtasks)}


def write_run(path: str | Path, record: Mapping[str, Any]) -> None:
    """A run (or comparison) record as JSON, atomically; non-finite floats as null."""
    atomic_write_bytes(Path(path), json_bytes(finite_json(record)))


def finite_json(value: Any) -> Any:
    """``value`` (dicts, lists, floats) with non-finite floats as None, for JSON."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_run_record(path: str | Path) -> dict[str, Any]:
    """A run file written by ``gradtrace probes run --out``, checked for the
    fields of :func:`run_record` (errors name the file and the field)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"probe run {str(path)!r} does not exist")

    def bad(what: str) -> InputError:
        return InputError(f"probe run {str(path)!r} is not a run file of 'gradtrace probes run --out' ({what})")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    missing = [f for f in RUN_FIELDS if f not in data]
    if missing:
        raise bad(f"no {', '.join(map(repr, missing))}")
    if not isinstance(data["items"], list) or not isinstance(data["summary"], dict):
        raise bad("'items' must be a list and 'summary' an object")
    for i, r in enumerate(data["items"]):
        if not isinstance(r, dict) or any(f not in r for f in RUN_ITEM_FIELDS):
            raise bad(f"items[{i}] needs {', '.join(RUN_ITEM_FIELDS)}")
    return data


def read_run(path: str | Path) -> dict[str, tuple[str, bool]]:
    """``{item id: (subtask, correct)}`` of a run file written by ``gradtrace probes run --out``."""
    return {str(r["id"]): (str(r["subtask"]), bool(r["correct"])) for r in read_run_record(path)["items"]}
