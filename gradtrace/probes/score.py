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
from torch import Tensor

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


def _keeps_logits(model: Any) -> bool:
    """Whether ``model(...)`` takes ``logits_to_keep`` (then the prompt's
    forward passes skip the output layer for every position but the last)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


@dataclasses.dataclass
class _Tree:
    """One batch entry: prompts sharing ``prefix``; ``rest[r]`` is prompt ``r``
    after the prefix without its last token ``last[r]``; ``conts`` are token ids."""

    prefix: list[int]
    rest: list[list[int]]
    last: list[int]
    conts: list[list[int]]
    out: int  # index of the result this tree fills
    rows: list[int]  # which rows of that result (prompts)


def _trees(tokenizer: Any, groups: Sequence[tuple[Sequence[str], Sequence[str]]], limit: int) -> list[_Tree]:
    trees = []
    for g, (prompts, conts) in enumerate(groups):
        c_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
        if any(not c for c in c_ids):
            raise InputError(f"a continuation of {list(conts)!r} has no tokens")
        longest = max(len(c) for c in c_ids)
        if longest >= limit - 1:
            raise InputError(f"an option of {longest} tokens does not fit the context of {limit} tokens")
        p_ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"])[-(limit - longest):] for p in prompts]
        if any(len(p) < 2 for p in p_ids):
            raise InputError(f"a prompt of {[len(p) for p in p_ids]} tokens: scoring needs at least 2 prompt tokens")
        n0 = min(_common_prefix(p_ids), min(len(p) for p in p_ids) - 1)
        parts = [list(range(len(p_ids)))] if n0 >= 1 else [[r] for r in range(len(p_ids))]  # no shared first token: one tree each
        for rows in parts:
            ps = [p_ids[r] for r in rows]
            n = n0 if n0 >= 1 else len(ps[0]) - 1
            trees.append(_Tree(ps[0][:n], [p[n:-1] for p in ps], [p[-1] for p in ps], c_ids, g, rows))
    return trees


def _forward(model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any, keep_last: bool, keeps: bool) -> Any:
    kw = {"logits_to_keep": 1} if (keep_last and keeps) else {}
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, **kw)


def _score_trees(model: Any, trees: Sequence[_Tree], pad: int, device: Any, keeps: bool) -> list[np.ndarray]:
    """Mean log-probability per token of each continuation after each prompt of each tree, ``[prompts, conts]``.

    Three forward passes over the batch, each extending the key/value cache
    of the one before: the shared prefixes (right-padded, one row per tree),
    the rest of each prompt but its last token (left-padded, one row per
    prompt), then, one row per (prompt, continuation), the prompt's last
    token followed by the continuation but its last token (right-padded),
    whose logits predict the continuation's tokens. Padding sits between
    real tokens and is masked; position ids count real tokens only."""
    lens = [len(t.prefix) for t in trees]
    w1 = max(lens)
    ids1 = torch.full((len(trees), w1), pad, dtype=torch.long)
    mask1 = torch.zeros((len(trees), w1), dtype=torch.long)
    for i, t in enumerate(trees):
        ids1[i, : lens[i]] = torch.tensor(t.prefix)
        mask1[i, : lens[i]] = 1
    pos1 = torch.arange(w1).expand(len(trees), -1) * mask1
    cache = _forward(model, ids1.to(device), mask1.to(device), pos1.to(device), None, True, keeps).past_key_values
    # level 2: the rest of each prompt, left-padded so each row ends at the same slot
    p_tree = [i for i, t in enumerate(trees) for _ in t.rest]
    rests = [r for t in trees for r in t.rest]
    w2 = max(len(r) for r in rests)
    mask = mask1[p_tree]
    cache.batch_select_indices(torch.tensor(p_tree, device=device))
    if w2:
        ids2 = torch.full((len(rests), w2), pad, dtype=torch.long)
        mask2 = torch.zeros((len(rests), w2), dtype=torch.long)
        pos2 = torch.zeros((len(rests), w2), dtype=torch.long)
        for j, (i, r) in enumerate(zip(p_tree, rests)):
            if r:
                ids2[j, w2 - len(r):] = torch.tensor(r)
                mask2[j, w2 - len(r):] = 1
                pos2[j, w2 - len(r):] = lens[i] + torch.arange(len(r))
        mask = torch.cat([mask, mask2], dim=1)
        cache = _forward(model, ids2.to(device), mask.to(device), pos2.to(device), cache, True, keeps).past_key_values
    # level 3: the last prompt token, then each continuation but its last token
    rows3, seqs3, start3 = [], [], []
    for j, i in enumerate(p_tree):
        t = trees[i]
        r = j - p_tree.index(i)
        for c in t.conts:
            rows3.append(j)
            seqs3.append([t.last[r]] + c[:-1])
            start3.append(lens[i] + len(t.rest[r]))
    ids3, mask3 = pad_right(seqs3, pad)
    pos3 = (torch.tensor(start3)[:, None] + torch.arange(ids3.shape[1])[None, :]) * mask3  # padding: position 0
    cache.batch_select_indices(torch.tensor(rows3, device=device))
    full = torch.cat([mask[rows3], mask3], dim=1)
    logits = _forward(model, ids3.to(device), full.to(device), pos3.to(device), cache, False, keeps).logits
    out, row = [], 0
    for t in trees:
        values = np.zeros((len(t.rest), len(t.conts)))
        for r in range(len(t.rest)):
            for o, c in enumerate(t.conts):
                logp = torch.log_softmax(logits[row, : len(c)].double(), dim=-1)
                values[r, o] = float(logp[torch.arange(len(c), device=logp.device), torch.tensor(c, device=logp.device)].sum()) / len(c)
                row += 1
        out.append(values)
    return out


@torch.no_grad()
def option_logprobs(model: Any, tokenizer: Any, groups: Sequence[tuple[Sequence[str], Sequence[str]]], *, max_length: int = 512,
                    batch_tokens: int = 2048, bar: Any = None) -> list[np.ndarray]:
    """For each ``(prompts, continuations)``: ``[len(prompts), len(continuations)]``,
    the mean log-probability per token (nats, float64) of each continuation
    after each prompt.

    Each prompt and continuation is tokenized on its own (no special tokens)
    and the two joined; a prompt too long for ``max_length`` (or the model's
    context window, if shorter) loses its first tokens. Work is shared where
    the tokens are: the leading tokens the prompts of a group have in common
    (the scenario and question, for the option orders of an item) run once,
    each prompt's remaining tokens once, and the continuations after them;
    groups are batched up to about ``batch_tokens`` tokens per forward pass
    (see :func:`_score_trees`). The result equals one forward pass per
    continuation token up to float rounding."""
    limit = _window(model, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    keeps = _keeps_logits(model)
    trees = _trees(tokenizer, groups, limit)
    results = [np.zeros((len(p), len(c))) for p, c in groups]
    order = sorted(range(len(trees)), key=lambda i: (len(trees[i].prefix), i))  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    try:
        left = [0] * len(groups)
        for t in trees:
            left[t.out] += 1
        a = 0
        while a < len(order):
            b, cost = a, 0
            while b < len(order):
                t = trees[order[b]]
                size = len(t.prefix) + sum(len(r) + 1 for r in t.rest) + len(t.rest) * sum(len(c) for c in t.conts)
                if b > a and cost + size > batch_tokens:
                    break
                cost += size
                b += 1
            chunk = [trees[i] for i in order[a:b]]
            for t, values in zip(chunk, _score_trees(model, chunk, int(pad), device, keeps)):
                results[t.out][t.rows] = values
                left[t.out] -= 1
                if bar is not None and left[t.out] == 0:
                    bar.advance(1)
            a = b
    finally:
        model.train(was_training)
    return results


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


def score_items(model: Any, tokenizer: Any, items: Sequence[Item], *, max_length: int = 512, batch_tokens: int = 2048,
                progress: bool = False) -> list[ItemScore]:
    """Every item scored (see the module docstring): its option orders share
    the scenario's forward pass, and items are batched (:func:`option_logprobs`)."""
    groups = [([render_prompt(item, order) for order in option_orders(len(item.options))], [continuation(o) for o in item.options])
              for item in items]
    with progress_bar("probes: score", len(groups), progress) as bar:
        lp = option_logprobs(model, tokenizer, groups, max_length=max_length, batch_tokens=batch_tokens, bar=bar)
    return [ItemScore(it.id, it.subtask, it.key, tuple(float(x) for x in values.mean(axis=0)), it.paraphrase_of)
            for it, values in zip(items, lp)]


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
    out: dict[str, dict[str, Any]] = {}
    for sub, ids in _shared_ids([a, b], "compare").items():
        ca = np.array([a[i][1] for i in ids], dtype=bool)
        cb = np.array([b[i][1] for i in ids], dtype=bool)
        a_only, b_only = int((ca & ~cb).sum()), int((cb & ~ca).sum())
        out[sub] = {"n": len(ids), "accuracy_a": float(ca.mean()), "accuracy_b": float(cb.mean()),
                    "difference": float(cb.mean() - ca.mean()), "a_only": a_only, "b_only": b_only, "p": mcnemar_exact(a_only, b_only)}
    return _corrected(out, correction, alpha)


def _shared_ids(runs: Sequence[Mapping[str, tuple[str, bool]]], who: str) -> dict[str, list[str]]:
    """``{subtask: item ids}`` of the ids every run has (in the first run's order); errors name ``who``."""
    common = [i for i in runs[0] if all(i in r for r in runs[1:])]
    if not common:
        raise InputError(f"{who}: the runs share no item id")
    clash = [i for i in common if any(r[i][0] != runs[0][i][0] for r in runs[1:])]
    if clash:
        raise InputError(f"{who}: items {clash[:5]} have different subtasks in the runs")
    by_sub = {sub: [i for i in common if runs[0][i][0] == sub] for sub in SUBTASKS}
    return {sub: ids for sub, ids in by_sub.items() if ids}


def _corrected(out: dict[str, dict[str, Any]], correction: str, alpha: float) -> dict[str, dict[str, Any]]:
    """``out`` with p_corrected (over its subtasks) and significant (p_corrected <= alpha) added to each entry's p."""
    adjusted = correct_p([v["p"] for v in out.values()], correction)
    for v, q in zip(out.values(), adjusted):
        v["p_corrected"] = float(q)
        v["significant"] = bool(q <= alpha)
    return out


def compare_to_seeds(reference: Sequence[Mapping[str, tuple[str, bool]]], b: Mapping[str, tuple[str, bool]], correction: str = "holm",
                     alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """Is run B outside what its recipe's seeds score? ``reference``: runs of
    models trained by one recipe with different seeds (``{id: (subtask,
    correct)}`` each); ``b``: the run to judge. Per subtask, on the item ids
    that every run has: the reference accuracies, their mean and standard
    deviation s, B's accuracy, difference (B - mean), t = difference /
    (s * sqrt(1 + 1/k)) and its two-sided p from Student's t with k - 1
    degrees of freedom (B against a prediction interval for one more seed of
    the reference recipe; it assumes accuracies across seeds roughly
    normal), then p_corrected and significant.

    :func:`compare_correct` (exact McNemar) asks whether two given models
    differ on these items; two seeds of one recipe can, so a fine-tune's
    shift there is not yet the data's doing. This test asks whether B lies
    outside the seeds' own spread. It needs at least 3 reference runs. An
    accuracy on n items moves in steps of 1/n, so s is taken as at least 1/n
    (``sd_floored`` says when it was): seeds that happen to agree exactly
    do not make a one-item difference significant."""
    from scipy import stats

    if correction not in CORRECTIONS:
        raise InputError(f"correction must be one of {CORRECTIONS}; got {correction!r}")
    k = len(reference)
    if k < 3:
        raise InputError(f"compare_to_seeds needs at least 3 reference runs (seeds of one recipe); got {k}")
    out: dict[str, dict[str, Any]] = {}
    for sub, ids in _shared_ids([b, *reference], "compare_to_seeds").items():
        ref = np.array([np.mean([r[i][1] for i in ids]) for r in reference])
        acc_b = float(np.mean([b[i][1] for i in ids]))
        mean, sd = float(ref.mean()), float(ref.std(ddof=1))
        used = max(sd, 1 / len(ids))
        diff = acc_b - mean
        t = diff / (used * math.sqrt(1 + 1 / k))
        out[sub] = {"n": len(ids), "reference_accuracies": [float(x) for x in ref], "reference_mean": mean, "reference_sd": sd,
                    "sd_floored": used > sd, "accuracy_b": acc_b, "difference": diff, "t": float(t), "df": k - 1,
                    "p": float(2 * stats.t.sf(abs(t), df=k - 1))}
    return _corrected(out, correction, alpha)


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
