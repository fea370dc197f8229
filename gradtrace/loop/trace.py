"""Trace a behaviour of a loop back through the rounds' data with TracIn.

:func:`loop_task_spec` turns a run folder into a
:class:`~gradtrace.spec.TaskSpec`: the round-0 architecture, a causal-LM
task (mean next-token NLL per text), every round's checkpoints with their
learning rates in training order, and every round's training texts (ids
``r<round>-<n>``, tagged with the round they were trained in). So

    gradtrace featurize --task examples/loop_task.py:make_task --out loop_store --projection dense --dim 256

featurizes the whole loop, and a query scores each text of each round. LoRA
runs store only adapters in their checkpoints; the spec's checkpoint loader
loads them into the adapted model.

:func:`trace_stop` is what the loop runs when a stop rule fires (the stop
trace, docs/loop.md): :func:`stop_target` turns the fired metric into a
weighted sum of texts' log-probabilities, and each round's training texts are
scored against it with TracIn at that round's own weights only
(:func:`round_checkpoints`), through one gradient store per round; the
result is ``stop.json``'s ``attribution``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoints import CheckpointRef
from ..data import read_jsonl_objects
from ..errors import InputError
from ..fileio import atomic_write_bytes, write_jsonl
from ..lm.tasks import TextNLLTask, pad_right
from ..progress import human_bytes
from ..spec import TaskSpec
from ..textsafe import for_terminal
from .config import LoopConfig
from .lm import load_state
from .runner import CONFIG_FILE, SelfTrainingLoop, read_texts, round_dir


def loop_checkpoints(out: str | Path) -> list[CheckpointRef]:
    """Every finished round's checkpoints, in training order, with absolute paths."""
    out = Path(out)
    refs = []
    for t in SelfTrainingLoop.resume(out).finished_rounds():
        for c in json.loads((round_dir(out, t) / "checkpoints.json").read_text(encoding="utf-8")):
            refs.append(CheckpointRef(path=str((out / c["path"]).resolve()), lr=float(c["lr"]), step=c["step"]))
    if not refs:
        raise InputError(f"{str(out)!r}: no finished round has checkpoints")
    return refs


def loop_task_spec(out: str | Path, rounds: Sequence[int] | None = None, max_per_round: int | None = None) -> TaskSpec:
    """A TaskSpec over the run in ``out`` (see the module docstring).

    ``rounds`` limits the training texts to those rounds; ``max_per_round``
    keeps the first texts of each round (a quick look)."""
    from .models import build_lm

    out = Path(out)
    if not (out / CONFIG_FILE).is_file():
        raise InputError(f"{str(out)!r} holds no loop run (no {CONFIG_FILE})")
    config = LoopConfig.from_dict(json.loads((out / CONFIG_FILE).read_text(encoding="utf-8")))
    lm = build_lm(config.model)
    done = SelfTrainingLoop(config, out).finished_rounds()
    texts, ids, tags = [], [], []
    for t in (done if rounds is None else [r for r in rounds if r in done]):
        records = [json.loads(x) for x in (round_dir(out, t) / "train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        for n, r in enumerate(records[:max_per_round]):
            texts.append(r["text"])
            ids.append(f"r{t}-{n}")
            tags.append(f"round {t} ({r.get('source', '?')})")
    train = [torch.tensor(x, dtype=torch.long) for x in lm.encode(texts)]
    task = TextNLLTask(pad_id=lm.pad_id)

    def model() -> nn.Module:
        return build_lm(config.model).model

    def loader(m: nn.Module, ref: CheckpointRef) -> None:
        load_state(m, torch.load(ref.path, map_location="cpu", weights_only=True))

    return TaskSpec(model=model, task=task, checkpoints=loop_checkpoints(out), train=train, train_ids=ids, train_tags=tags,
                    checkpoint_loader=loader)


# -- the stop trace: which rounds' data drove the monitor that fired ------------------------------------------

STOP_TRACE_DIR = "stop_trace"
SCORES_FILE = "scores.jsonl"
DTYPE_BYTES = {"float16": 2, "float32": 4, "float64": 8}

#: How each metric moves with the target's raw quantity R (+1: the metric rises when R rises; -1: it falls).
#: R is the mean NLL of held-out texts for ``nll``, the log-probability contrast of the texts that show the
#: attribute against those that do not for ``attribute``, and that of the stop round's generations against
#: round 0's for ``diversity`` and ``clusters`` (the model concentrating on what it now generates).
METRIC_SIGNS: dict[str, dict[str, float]] = {
    "nll": {"mean": 1.0, "p90": 1.0, "mean_change": 1.0, "tail_share": 1.0},
    "attribute": {"rate": 1.0, "count": 1.0, "trend_z": 1.0, "trend_p": -1.0},
    "diversity": {"distinct_1": -1.0, "distinct_2": -1.0, "distinct_3": -1.0, "vendi": -1.0, "effective_rank": -1.0,
                  "self_bleu": 1.0, "compression_ratio": 1.0},
    "clusters": {"js": 1.0, "skewed_clusters": 1.0},
}


def rule_direction(rules: Sequence[Any], event: Any) -> float:
    """+1 when the fired rule watches for a rise of its metric, -1 for a fall."""
    for rule in rules:
        if rule.metric == event.metric and rule.describe() == event.rule:
            if rule.kind == "threshold":
                return 1.0 if rule.above is not None else -1.0
            return 1.0 if rule.direction == "up" else -1.0
    raise InputError(f"stop event: no stop rule of the config is {event.rule!r} on {event.metric!r} (was the config changed?)")


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items``, evenly spaced, in order."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def _generations(out: Path, t: int) -> list[str]:
    return [str(r["text"]) for r in read_jsonl_objects(round_dir(out, t) / "generations.jsonl")]


def stop_target(config: LoopConfig, out: str | Path, event: Any, classifiers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The attribution target of a stop event: texts with weights whose
    weighted log-probability under the model rises when the fired metric
    moves toward its breach. ``{"supported": False, "reason"}`` for a metric
    with no such target (``cka``, ``probes``, ``curated``, ``train``).

    ``queries``: ``[{"text", "weight", "side"}]``; the target is
    ``T = sum_q weight_q log p(text_q)`` (log p: minus the mean next-token
    NLL per text, as the loop trains), so a training example's TracIn score
    on ``T`` is the sum of its scores on each text times the text's weight.
    """
    from .monitors import AttributeRates, HeldoutNLL, Observation, build_monitors

    out = Path(out)
    monitor, _, stat = event.metric.partition(".")
    n = config.stop_trace.max_queries
    if monitor == "attribute":
        name, _, stat = stat.rpartition(".")
    sign = METRIC_SIGNS.get(monitor, {}).get(stat)
    if sign is None:
        return {"supported": False, "reason": f"no attribution target for the metric {event.metric!r} (the stop trace covers "
                                               f"{', '.join(f'{m}.*' for m in METRIC_SIGNS)})"}
    if event.round < 1:
        return {"supported": False, "reason": "the rule fired at round 0: no later round's data moved the metric"}
    direction = rule_direction(config.stop, event)
    d = direction * sign
    t = event.round
    if monitor == "nll":
        texts = read_texts(config.data.heldout)
        margin = next(m.margin for m in build_monitors({"nll": config.monitors.get("nll", {})}) if isinstance(m, HeldoutNLL))
        now, base = Observation.load(round_dir(out, t)).heldout_nll, Observation.load(round_dir(out, 0)).heldout_nll
        if stat == "tail_share":
            rise = now - base
            idx = [int(i) for i in np.argsort(-rise, kind="stable") if rise[i] > margin] or [int(i) for i in np.argsort(-rise, kind="stable")]
            chosen = idx[:n]
            what = f"mean NLL of the held-out texts whose NLL rose most since round 0 (by more than {margin:g} nats/token where any did)"
        elif stat == "p90":
            cut = np.quantile(now, 0.9)
            chosen = _spread([i for i in range(len(texts)) if now[i] >= cut], n)
            what = "mean NLL of the held-out texts at or above the 90th percentile of NLL at the stop round"
        else:
            chosen = _spread(list(range(len(texts))), n)
            what = "mean NLL of the held-out texts"
        queries = [{"text": texts[i], "weight": -d / len(chosen), "side": "heldout"} for i in chosen]
        kind = "heldout_nll"
    elif monitor == "attribute":
        clfs: dict[str, Any] = {}
        for m in build_monitors({"attribute": config.monitors.get("attribute", {})} if "attribute" in config.monitors else {}, None, classifiers):
            if isinstance(m, AttributeRates):
                clfs = m.classifiers
        if name not in clfs:
            return {"supported": False, "reason": f"the classifier {name!r} of {event.metric!r} is not available (pass it with classifiers=)"}
        if config.stop_trace.attribute_target == "rate_gradient":
            return _rate_gradient_target(out, t, n, clfs[name], name, d, event.metric, direction)
        sides = []
        for r in (t, 0):  # the stop round's generations; round 0's for a side the stop round has none of
            gens = _generations(out, r)
            hits = np.asarray(clfs[name](gens), dtype=bool)
            sides.append(([g for g, h in zip(gens, hits) if h], [g for g, h in zip(gens, hits) if not h]))
        pos, pos_from = (sides[0][0], t) if sides[0][0] else (sides[1][0], 0)
        neg, neg_from = (sides[0][1], t) if sides[0][1] else (sides[1][1], 0)
        pos, neg = _spread(pos, n), _spread(neg, n)
        queries = [{"text": x, "weight": d / len(pos), "side": f"shows (round {pos_from})"} for x in pos]
        queries += [{"text": x, "weight": -d / len(neg), "side": f"lacks (round {neg_from})"} for x in neg]
        what = (f"mean log-probability per token of generations that show {name!r} minus that of generations that do not "
                "(each side's mean; the stop round's generations, or round 0's for a side the stop round has none of)")
        kind = "attribute_contrast"
    else:
        now_g, ref_g = _spread(_generations(out, t), n), _spread(_generations(out, 0), n)
        queries = [{"text": x, "weight": d / len(now_g), "side": f"round {t}"} for x in now_g]
        queries += [{"text": x, "weight": -d / len(ref_g), "side": "round 0"} for x in ref_g]
        what = (f"mean log-probability per token of round {t}'s generations minus that of round 0's (the model concentrating "
                "on what it now samples)")
        kind = "generation_contrast"
    queries = [q for q in queries if q["weight"] != 0]
    if not queries:
        return {"supported": False, "reason": f"no text to build the target of {event.metric!r} from (no generation, or every weight 0)"}
    toward = "rise" if direction > 0 else "fall"
    return {"supported": True, "kind": kind, "metric": event.metric, "direction": toward, "queries": queries,
            "description": f"{what}; signed so that a positive score pushed {event.metric} to {toward} (as the rule watches)"}


def _rate_gradient_target(out: Path, t: int, n: int, clf: Any, name: str, d: float, metric: str, direction: float) -> dict[str, Any]:
    """``sum_x (h(x) - rate) log p(x) / N`` over the stop round's generations
    ``x`` (at most ``n``), ``h`` the classifier, ``log p`` the whole text's
    log-probability: its gradient at the stop round's model is the
    score-function estimate of the gradient of the rate. A saturated rate (0
    or 1) pools round 0's generations in."""
    gens = _spread(_generations(out, t), n)
    hits = np.asarray(clf(gens), dtype=bool)
    pooled = ""
    if hits.all() or not hits.any():
        ref = _spread(_generations(out, 0), n)
        gens, hits = gens + ref, np.concatenate([hits, np.asarray(clf(ref), dtype=bool)])
        pooled = " pooled with round 0's"
    rate = float(hits.mean())
    queries = [{"text": x, "weight": d * (float(h) - rate) / len(gens), "side": "shows" if h else "lacks", "sum_tokens": True}
               for x, h in zip(gens, hits)]
    queries = [q for q in queries if q["weight"] != 0]
    if not queries:
        return {"supported": False, "reason": f"no generation to build the target of {metric!r} from (the rate is 0 or 1 in round 0 too)"}
    toward = "rise" if direction > 0 else "fall"
    return {"supported": True, "kind": "attribute_rate_gradient", "metric": metric, "direction": toward, "queries": queries,
            "description": (f"sum over the stop round's generations{pooled} of (shows {name!r} - the rate) x the text's "
                            f"log-probability / their number (the score-function gradient of the rate); signed so that a positive "
                            f"score pushed {metric} to {toward} (as the rule watches)")}


def round_checkpoints(out: str | Path, config: LoopConfig, t: int) -> list[CheckpointRef]:
    """Round ``t``'s weights to score at, with TracIn weights: the round's
    start (round ``t-1``'s final weights, round 0's with ``train.init =
    "base"``, the untrained model for round 0: ``out/stop_trace/init.pt``)
    and each of its checkpoints. Between two of them the round took ``k``
    steps at learning rate ``lr``; the trapezoid rule gives each end half of
    ``lr x k``, and every weight is divided by the size ``n`` of the round's
    training set (a mean-loss step visits an example ``batch / n`` times), so
    an example's score estimates how much training on it in that round moved
    the target."""
    out = Path(out)
    n = len(read_jsonl_objects(round_dir(out, t) / "train.jsonl"))
    start = SelfTrainingLoop(config, out).global_step(t)
    if t == 0:
        start_path = _initial_weights(out, config)
    else:
        start_path = round_dir(out, 0 if config.train.init == "base" else t - 1) / "model.pt"
    tc = config.train
    steps, rate = (tc.base_steps, tc.base_lr or tc.lr) if t == 0 else (tc.steps, tc.lr)

    def lr_at(j: int) -> float:  # the learning rate of the round's step j (1-based), as LanguageModel.train sets it
        return rate if tc.schedule == "constant" else rate * (steps - j + 1) / steps

    points = [(start_path, start)]
    for c in json.loads((round_dir(out, t) / "checkpoints.json").read_text(encoding="utf-8")):
        points.append((out / c["path"], int(c["step"])))
    weights = [0.0] * len(points)
    for i in range(1, len(points)):
        # the sum of the learning rates of the interval's steps (lr x steps at a constant rate), over n
        area = sum(lr_at(j) for j in range(points[i - 1][1] - start + 1, points[i][1] - start + 1)) / n
        weights[i - 1] += area / 2
        weights[i] += area / 2
    return [CheckpointRef(path=str(Path(p).resolve()), lr=w, step=step) for (p, step), w in zip(points, weights)]


def _initial_weights(out: Path, config: LoopConfig) -> Path:
    """The untrained round-0 model (the start of round 0), saved once under ``out/stop_trace/``."""
    from .lm import checkpoint_state
    from .models import build_lm

    path = out / STOP_TRACE_DIR / "init.pt"
    if not path.is_file():
        import io

        buf = io.BytesIO()
        torch.save(checkpoint_state(build_lm(config.model)), buf)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    return path


def _say(progress: bool, text: str) -> None:
    if progress:
        sys.stderr.write(for_terminal(text) + "\n")
        sys.stderr.flush()


def trace_stop(config: LoopConfig, out: str | Path, event: Any, classifiers: Mapping[str, Any] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Attribute the fired monitor's quantity to the training data of rounds
    1..``event.round`` (0.. with ``stop_trace.include_base``): TracIn (raw)
    over each round's own checkpoints (:func:`round_checkpoints`), one
    gradient store per round under ``out/stop_trace/`` (featurized once,
    resumed at its first missing shard), each round's scores cached by the
    store, the checkpoints and the target. Returns the stop report's
    ``attribution`` (docs/loop.md: what the numbers mean) and writes every
    example's score to ``out/stop_trace/scores.jsonl``."""
    from ..audit.stages import StageCache
    from ..config import FeaturizeConfig
    from ..featurize import featurize
    from ..fingerprint import checkpoint_fingerprint
    from ..grads.per_example import GradientFeaturizer
    from ..grads.projection import ProjectionConfig
    from ..grads.selection import select_parameters
    from ..scoring import Attributor
    from ..unlearn.cache import fingerprint
    from .models import build_lm

    out = Path(out)
    st = config.stop_trace
    target = stop_target(config, out, event, classifiers)
    if not target["supported"]:
        return {"traced": False, "metric": event.metric, "stop_round": event.round, "reason": target["reason"]}
    rounds = list(range(0 if st.include_base else 1, event.round + 1))
    rounds = [t for t in rounds if json.loads((round_dir(out, t) / "checkpoints.json").read_text(encoding="utf-8"))]  # round 0 of 0 steps has none
    if not rounds:
        return {"traced": False, "metric": event.metric, "stop_round": event.round, "reason": "no traced round has checkpoints"}
    kind = st.projection if st.projection != "auto" else ("dense" if config.model.kind == "tiny_gpt2" else "kronecker")
    fc = FeaturizeConfig(params="all", projection=ProjectionConfig(kind, None if kind == "none" else st.dim, st.seed),
                         batch_size=st.batch_size, dtype=st.dtype)
    lm = build_lm(config.model)
    task = TextNLLTask(pad_id=lm.pad_id)
    queries = target["queries"]
    encoded = lm.encode([q["text"] for q in queries])
    # the task's loss is a text's mean NLL per token; a whole text's log-probability is that times its predicted tokens
    weights = np.array([q["weight"] * (max(len(x) - 1, 1) if q.get("sum_tokens") else 1) for q, x in zip(queries, encoded)], dtype=np.float64)
    query_ids = [torch.tensor(x, dtype=torch.long) for x in encoded]

    def loader(m: nn.Module, ref: CheckpointRef) -> None:
        load_state(m, torch.load(ref.path, map_location="cpu", weights_only=True))

    cache = StageCache(out / STOP_TRACE_DIR)
    query_key = fingerprint([[q["text"], q["weight"]] for q in queries])
    plan = []
    for t in rounds:
        records = read_jsonl_objects(round_dir(out, t) / "train.jsonl")[: st.max_per_round]
        refs = round_checkpoints(out, config, t)
        ckpt_keys = [{"step": r.step, "lr": r.lr, "sha256": (checkpoint_fingerprint(r.path) or {}).get("sha256")} for r in refs]
        texts = [str(r["text"]) for r in records]
        store_parts = {"featurize": fc.to_dict(), "model": config.model.to_dict(), "checkpoints": ckpt_keys, "texts": fingerprint(texts)}
        parts = {"round": t, "store": store_parts, "queries": query_key}
        plan.append((t, records, texts, refs, store_parts, parts))
    todo = [p for p in plan if not cache.done("round", p[5])]
    if progress and todo:
        width = GradientFeaturizer(select_parameters(lm.model, fc.params), fc.projection, fc.method).feature_dim(lm.model)
        n_rows = sum(len(p[2]) * len(p[3]) for p in todo)
        n_ckpt = sum(len(p[3]) for p in todo)
        secs = _seconds_per_text(lm, todo[0][2][:8])
        _say(progress, (f"stop trace: {event.metric} fired at round {event.round}; scoring the training data of round(s) "
                        f"{', '.join(str(p[0]) for p in todo)} ({sum(len(p[2]) for p in todo)} texts, {n_rows} text x checkpoint "
                        f"gradients) against {len(queries)} target texts; ~{human_bytes(n_rows * width * DTYPE_BYTES[st.dtype])} "
                        f"of gradient stores under {out / STOP_TRACE_DIR}; estimated ~{secs * 1.5 * (n_rows + len(queries) * n_ckpt):.0f} s "
                        "on this machine (each finished round is cached: a rerun reads it back)"))
    per_round: list[tuple[int, list[dict[str, Any]], np.ndarray, float]] = []
    for t, records, texts, refs, store_parts, parts in plan:

        def compute(t: int = t, texts: list[str] = texts, refs: list[CheckpointRef] = refs, store_parts: dict = store_parts) -> dict[str, Any]:
            _say(progress, f"stop trace: round {t} ({len(texts)} texts x {len(refs)} checkpoints)")
            # the store's manifest names the checkpoints by path: a run folder moved since gets a store of its own
            store_dir = out / STOP_TRACE_DIR / "stores" / f"round_{t:03d}-{fingerprint(store_parts, [r.path for r in refs])[:12]}"
            train = [torch.tensor(x, dtype=torch.long) for x in lm.encode(texts)]
            ids = [f"r{t}-{j}" for j in range(len(texts))]
            featurize(lm.model, task, refs, train, store_dir, fc, ids=ids, checkpoint_loader=loader, progress=progress)
            scores = Attributor(store_dir, lm.model, task, checkpoint_loader=loader, progress=progress).score(query_ids)
            exact = round_influence(lm.model, task, refs, train, query_ids, weights, loader, st.batch_size)
            return {"scores": [float(v) for v in weights @ scores], "influence": exact}

        got = cache.run("round", parts, compute)
        per_round.append((t, records, np.asarray(got["scores"], dtype=np.float64), float(got["influence"])))
    return _attribution(config, event, target, per_round, out, fc)


def round_influence(model: nn.Module, task: Any, refs: Sequence[CheckpointRef], train: Sequence[torch.Tensor],
                    queries: Sequence[torch.Tensor], weights: np.ndarray, loader: Any, batch_size: int) -> float:
    """The exact sum of a round's TracIn scores on the target, with no
    projection: at each point ``c`` (weight ``w_c``), ``w_c`` times the inner
    product of the target's gradient ``sum_q weight_q grad loss_q`` with the
    gradient of the round's summed loss ``sum_z grad loss_z`` (TracIn is
    linear in both, so this equals the sum of the per-example scores an
    unprojected store gives). Leaves the model holding the last point's weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    w = torch.as_tensor(weights, dtype=torch.float64)
    total = 0.0
    model.eval()

    def summed_grad(items: Sequence[torch.Tensor], coef: torch.Tensor | None) -> list[torch.Tensor]:
        acc = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        for a in range(0, len(items), batch_size):
            loss = task.per_example_loss(model, task.collate(list(items[a : a + batch_size])))
            value = (loss.double() * coef[a : a + len(loss)]).sum() if coef is not None else loss.double().sum()
            for g_acc, g in zip(acc, torch.autograd.grad(value, params, allow_unused=True)):
                if g is not None:
                    g_acc += g.double()
        return acc

    for ref in refs:
        loader(model, ref)
        g_target = summed_grad(queries, w)
        g_data = summed_grad(train, None)
        total += ref.lr * float(sum((a * b).sum() for a, b in zip(g_target, g_data)))
    return total


def _seconds_per_text(lm: Any, texts: list[str]) -> float:
    """Seconds for one text's forward and backward pass on this machine (a timed batch)."""
    import time

    if not texts:
        return 0.0
    ids, mask = pad_right(lm.encode(texts), lm.pad_id)
    t0 = time.perf_counter()
    lm.model.zero_grad(set_to_none=True)
    lm.token_nll(ids.to(lm.device), mask.to(lm.device)).sum().backward()
    lm.model.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / len(texts)


def toward_breach_round(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """The round whose data carried the largest influence toward the breach
    (ties: the earliest); None when no round's influence is positive (to
    first order, no round's data pushed the metric the way the rule watches)."""
    best = max(rows, key=lambda r: r["influence"], default=None)
    return None if best is None or not best["influence"] > 0 else int(best["round"])


def _attribution(config: LoopConfig, event: Any, target: dict[str, Any], per_round: list[tuple[int, list[dict[str, Any]], np.ndarray, float]],
                 out: Path, fc: Any) -> dict[str, Any]:
    st = config.stop_trace
    total = float(sum(x for *_, x in per_round))
    absolute = float(sum(abs(x) for *_, x in per_round))
    positive_total = float(sum(np.clip(s, 0, None).sum() for _, _, s, _ in per_round))
    rows, every = [], []
    for t, records, s, infl in per_round:
        pos = float(np.clip(s, 0, None).sum())
        rows.append({"round": t, "n_examples": len(read_jsonl_objects(round_dir(out, t) / "train.jsonl")), "n_scored": len(records),
                     "influence": infl, "influence_from_scores": float(s.sum()), "share": infl / absolute if absolute > 0 else None,
                     "positive_influence": pos, "positive_share": pos / positive_total if positive_total > 0 else None})
        for j, (r, v) in enumerate(zip(records, s)):
            every.append({"id": f"r{t}-{j}", "round": t, "source": r.get("source"), "text": str(r["text"]), "score": float(v)})
    write_jsonl(out / STOP_TRACE_DIR / SCORES_FILE, [{k: e[k] for k in ("id", "round", "source", "score")} for e in every])
    order = sorted(range(len(every)), key=lambda i: (-every[i]["score"], i))[: st.top_k]
    top = [{"rank": r + 1, **every[i]} for r, i in enumerate(order)]
    largest = toward_breach_round(rows)
    sides: dict[str, int] = {}
    for q in target["queries"]:
        sides[q["side"]] = sides.get(q["side"], 0) + 1
    return {
        "traced": True, "metric": event.metric, "stop_round": event.round,
        "target": {"kind": target["kind"], "description": target["description"], "direction": target["direction"], "n_queries": sides},
        "method": ("TracIn (raw) over each round's start and checkpoints (trapezoid rule: each point weighted by half the "
                   "learning rate x steps of the intervals it ends or starts, over the round's training-set size); a round's "
                   "influence exact (unprojected gradients of the round's summed loss), the examples' scores through the "
                   "projected store"),
        "projection": fc.projection.to_dict(),
        "rounds": rows, "total_influence": total, "largest_share_round": largest, "top_examples": top,
        "scores_file": f"{STOP_TRACE_DIR}/{SCORES_FILE}", "settings": st.to_dict(),
    }
