"""The audit, end to end: sample A and B, diff, group into behaviours, build
an attribution target per behaviour skewed to B, featurize B's run once,
trace, verify by removal and retraining, and write ``audit.json`` and
``report.html``. Every stage is cached (see :mod:`gradtrace.audit.stages`).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..devices import resolve_device
from ..diff.likelihood import LikelihoodAssigner, LikelihoodResult, run_likelihood
from ..diff.pipeline import ClusterMembers, ClusterRecord, DiffConfig, DiffResult, LevelSummary, diff_texts
from ..diff.sources import HFSource, JsonlSource, Prompt, Sample, check_pairing, read_prompts
from ..errors import InputError
from ..fileio import atomic_write_bytes
from ..lm.embed import Embedder, text_hash
from ..progress import progress_bar
from ..textsafe import for_terminal
from ..unlearn.cache import fingerprint
from .behaviours import (Assigner, BehaviourGroup, BehaviourGrouper, CombinedAssigner, as_behaviour_groups, describe_grouper,
                         group_flagged, member_rows, share, two_proportion_p)
from .config import AuditConfig
from .inputs import RunInfo, check_data_count, check_tokenizers, read_run, train_settings
from .stages import StageCache

#: ``train_fn(examples, out_dir) -> model``: trains B again on ``examples``
#: (the training JSONL's dicts, ids dropped) from model A, writing what it
#: likes under ``out_dir``; returns the trained model (sampled with A's tokenizer).
TrainFn = Callable[[list[dict[str, Any]], Path], Any]
STAGES = ("sample", "diff", "likelihood", "behaviours", "targets", "featurize", "trace", "verify")


@dataclasses.dataclass
class AuditResult:
    """``audit`` (what ``audit.json`` holds), where the files are, and per
    stage how often this call computed it and read it back from the cache."""

    audit: dict[str, Any]
    json_path: Path
    report_path: Path
    computed: dict[str, int]
    reused: dict[str, int]
    timings: dict[str, float]


class _ModelSource(HFSource):
    """A model sampled like :class:`HFSource` (batch cache, resume), loaded by ``loader`` only when a batch needs it."""

    def __init__(self, key: dict[str, Any], loader: Callable[[], tuple[Any, Any]], generation: Any, cache_dir: Path):
        super().__init__("audit", None, generation, cache_dir)
        self.key, self.loader = key, loader

    def describe(self) -> dict[str, Any]:
        return {"kind": "audit", **self.key, "generation": self.generation.to_dict()}

    def load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            model, tok = self.loader()
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            model.eval()
            self._loaded = (model, tok)
        return self._loaded


def _say(progress: bool, text: str) -> None:
    if progress:
        sys.stderr.write(for_terminal(text, keep_newlines=True) + "\n")
        sys.stderr.flush()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _model_key(name: str) -> Any:
    from ..fingerprint import checkpoint_fingerprint

    p = Path(name)
    if p.is_dir():
        fp = checkpoint_fingerprint(p)
        return {"folder": p.name, "sha256": fp["sha256"] if fp else None}
    return {"name": name}


def _samples_records(samples: Sequence[Sample]) -> list[dict[str, str]]:
    return [{"prompt_id": s.prompt_id, "prompt": s.prompt, "text": s.text} for s in samples]


def _diff_to_dict(res: DiffResult) -> dict[str, Any]:
    """What the diff stage caches: ``diff.json``'s content, the centroids, and what grouping needs
    (each cluster's member texts and centroid, the validation ids and strata, the levels' row means)."""
    d = res.to_dict()
    d["centroids"] = {k: _nan_to_none(np.asarray(v, dtype=np.float64).tolist()) for k, v in res.centroids.items()}
    d["members"] = [{"level": k[0], "cluster": k[1], "ids_a": list(m.ids_a), "ids_b": list(m.ids_b), "valid_ids_a": list(m.valid_ids_a),
                     "valid_ids_b": list(m.valid_ids_b), "rows_a": [list(r) for r in m.rows_a], "rows_b": [list(r) for r in m.rows_b],
                     "centroid": np.asarray(m.centroid, dtype=np.float64).tolist()} for k, m in sorted(res.members.items())]
    d["validation_ids"] = [list(v) for v in res.validation_ids]
    d["validation_strata"] = [list(v) for v in res.validation_strata] if res.validation_strata is not None else None
    d["row_means"] = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in res.row_means.items()}
    return _nan_to_none(d)


def _diff_from_dict(d: dict[str, Any], texts_a: list[str], texts_b: list[str]) -> DiffResult:
    """The :class:`DiffResult` of a cached diff stage, with what grouping needs (members, texts, row means)."""
    clusters = [ClusterRecord(**{k: (float("nan") if v is None and k in ("label_accuracy", "share_b", "overall_share_b",
                                                                          "log_odds", "log_odds_low", "log_odds_high") else v)
                                 for k, v in c.items()}) for c in d["clusters"]]
    levels = [LevelSummary(**{**s, "silhouette": {int(k): v for k, v in s["silhouette"].items()}}) for s in d["levels"]]
    members = {(m["level"], int(m["cluster"])): ClusterMembers(
        tuple(m["ids_a"]), tuple(m["ids_b"]), tuple(m["valid_ids_a"]), tuple(m["valid_ids_b"]), tuple((int(i), r) for i, r in m["rows_a"]),
        tuple((int(i), r) for i, r in m["rows_b"]), np.asarray(m["centroid"], dtype=np.float32)) for m in d["members"]}
    strata = d["validation_strata"]
    return DiffResult(clusters, DiffConfig.from_dict(d["config"]), d["embedder"], d["n_a"], d["n_b"], levels, d["timings"],
                      d["points"], members, (tuple(d["validation_ids"][0]), tuple(d["validation_ids"][1])),
                      (tuple(strata[0]), tuple(strata[1])) if strata is not None else None, list(texts_a), list(texts_b),
                      {k: np.asarray(v, dtype=np.float32) for k, v in d["row_means"].items()},
                      {k: np.asarray(v, dtype=np.float64) for k, v in d["centroids"].items()})


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def run_audit(
    model_a: str, run_dir: str | Path, data: str | Path, out: str | Path, *, prompts: str | Path | None = None,
    samples_a: str | Path | None = None, samples_b: str | Path | None = None, config: AuditConfig | None = None,
    embedder: Embedder | None = None, grouper: BehaviourGrouper = group_flagged, train_fn: TrainFn | None = None,
    train_fn_name: str | None = None, train_config: dict[str, Any] | None = None, intended: str | None = None,
    judge_chat: Any = None, judge_name: str | None = None, progress: bool = True,
    on_stage_done: Callable[[str], None] | None = None, device: str | Any = "auto",
) -> AuditResult:
    """Audit the fine-tune of ``model_a`` (``smollm2`` or a local Hugging Face
    folder) recorded in the Trainer run ``run_dir`` on the training JSONL
    ``data`` (prompt/completion or messages, optional ``id``); see ``docs/audit.md``.

    ``prompts``: a JSONL prompt set (or ``samples_a``/``samples_b``: JSONL
    texts already sampled, ``{"prompt_id", "prompt", "text"}``). ``grouper``:
    the behaviour grouping (:mod:`gradtrace.audit.behaviours`).
    ``train_fn`` (with ``train_fn_name``, part of the cache key): retrains B
    for the verification; default: the run's recorded settings (``train_config``
    overrides them, as ``--train-config``). ``on_stage_done(name)`` is called
    after each stage is done (computed or read back). ``device``
    (``"auto" | "cpu" | "cuda" | "cuda:N"``): where sampling, the likelihood
    view, the default MiniLM embedder, featurize, the trace and the default
    retraining run (retraining through the ``Trainer`` takes ``cuda:0``
    only). It is not part of any stage's cache key: stages computed on one
    device are reused on another (their numbers differ by float rounding).
    """
    from ..lm.embed import CachedEmbedder, MiniLMEmbedder
    from ..lm.load import load_model
    from ..lm.tasks import CausalLMTask
    from ..models.hf_spec import COMPLETION_FIELDS, read_jsonl

    config = config or AuditConfig()
    dev = resolve_device(device, "--device") or torch.device("cpu")
    out = Path(out)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    done = on_stage_done or (lambda name: None)

    # -- inputs, checked before any work ------------------------------------------------
    run = read_run(run_dir)
    if not Path(data).is_file():
        raise InputError(f"--data {str(data)!r} does not exist")
    train_rows, ids, _ = read_jsonl(data, "--data", COMPLETION_FIELDS, "each training example needs")
    ids = ids or [str(i) for i in range(len(train_rows))]
    check_data_count(run, len(train_rows), data)
    if (samples_a is None) != (samples_b is None):
        raise InputError("--samples-a and --samples-b go together: give both (texts already sampled) or neither")
    prompt_list = read_prompts(prompts) if prompts is not None else []
    if not prompt_list and samples_a is None:
        raise InputError("--prompts is required: the audit samples A and B on a prompt set (or give --samples-a and --samples-b)")
    if config.verify_k and not prompt_list:
        raise InputError("--verify needs --prompts: every retrained B is sampled again on the prompt set")
    if config.verify_k and config.verify_k >= len(train_rows):
        raise InputError(f"--verify {config.verify_k}: must be smaller than the {len(train_rows)} training examples")
    settings, settings_source = (None, {})
    if config.verify_k and train_fn is None:
        settings, settings_source = train_settings(run, train_config)
    model, tok = load_model(model_a, what="--a")
    model.to(dev)
    check_tokenizers(tok, model_a, run)
    task = CausalLMTask(tok, max_length=config.max_length, as_chat=config.as_chat)
    for i, e in enumerate(train_rows):
        task.encode(e, i)

    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out)
    if embedder is None:
        embedder = MiniLMEmbedder(progress=progress, device=str(dev))
    emb = CachedEmbedder(embedder, out / "cache" / "embeddings")
    a_key = _model_key(model_a)
    ckpt_keys = [{"step": r.step, "lr": r.lr, **(_model_key(r.path) or {})} for r in run.refs]
    data_key = fingerprint(train_rows, ids)
    b_last = str(run.last)
    gen = config.generation

    def load_b() -> tuple[Any, Any]:
        if run.kind == "lora":
            m, t = load_model(model_a, adapter=b_last, what="--a")
            return m.to(dev), t
        if not (Path(b_last) / "config.json").is_file():
            raise InputError(f"--run: the full checkpoint {b_last!r} has no config.json")
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(b_last, local_files_only=True).to(dev), tok

    _estimate(config, run, len(train_rows), len(prompt_list), model, progress, dev)

    # -- sample --------------------------------------------------------------------------
    t0 = time.perf_counter()

    def sample() -> dict[str, Any]:
        if samples_a is not None:
            sa = JsonlSource(samples_a).sample(prompt_list)
            sb = JsonlSource(samples_b).sample(prompt_list)
        else:
            src_a = _ModelSource({"model": a_key}, lambda: (model, tok), gen, out / "cache" / "samples")
            src_b = _ModelSource({"model": a_key, "run": ckpt_keys[-1]}, load_b, gen, out / "cache" / "samples")
            sa = src_a.sample(prompt_list, config.n_per_prompt, config.seed, progress)
            sb = src_b.sample(prompt_list, config.n_per_prompt, config.seed + 1, progress)
        for name, s in (("A", sa), ("B", sb)):
            if not s:
                raise InputError(f"model {name} gave no texts")
        check_pairing(sa, sb)
        return {"a": _samples_records(sa), "b": _samples_records(sb)}

    sample_parts = {"a": a_key, "b": ckpt_keys[-1], "prompts": [[p.id, p.text] for p in prompt_list], "n": config.n_per_prompt,
                    "seed": config.seed, "gen": gen.to_dict(),
                    "given": [fingerprint(Path(p).read_bytes()) if p else None for p in (samples_a, samples_b)]}
    samples = cache.run("sample", sample_parts, sample)
    texts_a, texts_b = [s["text"] for s in samples["a"]], [s["text"] for s in samples["b"]]
    from ..fileio import write_jsonl

    write_jsonl(out / "samples_a.jsonl", samples["a"])
    write_jsonl(out / "samples_b.jsonl", samples["b"])
    timings["sample"] = time.perf_counter() - t0
    done("sample")

    # -- diff ----------------------------------------------------------------------------
    t0 = time.perf_counter()

    def diff() -> dict[str, Any]:
        from ..diff.judge import label_and_judge

        res = diff_texts(texts_a, texts_b, config=config.diff, embedder=emb)
        if judge_chat is not None:
            label_and_judge(res, judge_chat, intended, judge_chat)
        return _diff_to_dict(res)

    diff_parts = {"samples": fingerprint(samples), "diff": config.diff.to_dict(), "embedder": emb.name,
                  "judge": judge_name if judge_chat is not None else None, "intended": intended, "format": 2}
    diff_dict = cache.run("diff", diff_parts, diff)
    diff_dict["centroids"] = {k: [[np.nan if x is None else x for x in row] for row in v] for k, v in diff_dict["centroids"].items()}
    result = _diff_from_dict(diff_dict, texts_a, texts_b)
    timings["diff"] = time.perf_counter() - t0
    done("diff")

    # -- likelihood view -----------------------------------------------------------------
    t0 = time.perf_counter()
    lik: LikelihoodResult | None = None
    if "likelihood" in config.views:
        lcfg = config.likelihood
        lik_train = [{"prompt": r["prompt"], "completion": r["completion"]} for r in train_rows
                     if isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str)]

        def likelihood() -> dict[str, Any]:
            model_b, _ = load_b()
            res = run_likelihood(model, model_b.eval(), tok, [s["prompt"] for s in samples["b"]], texts_b, config=lcfg, embedder=emb,
                                 train=lik_train, max_length=config.max_length, as_chat=config.as_chat, batch_size=config.likelihood_batch,
                                 progress=progress, cache_dir=out / "cache" / "logprobs", model_keys=(a_key, ckpt_keys[-1]),
                                 keys_b=[s["prompt_id"] for s in samples["b"]])
            return _nan_to_none(res.to_dict())

        lik_parts = {"samples": fingerprint(samples), "a": a_key, "b": ckpt_keys[-1], "likelihood": lcfg.to_dict(), "embedder": emb.name,
                     "max_length": config.max_length, "as_chat": config.as_chat,
                     "train": data_key if lcfg.explore != "samples" else None}
        lik = LikelihoodResult.from_dict(cache.run("likelihood", lik_parts, likelihood))
    timings["likelihood"] = time.perf_counter() - t0
    done("likelihood")

    # -- behaviours ----------------------------------------------------------------------
    t0 = time.perf_counter()
    assigner = CombinedAssigner(Assigner(result.centroids, emb, result.config.min_words, result.config.max_units),
                                LikelihoodAssigner(lik, emb) if lik is not None else None)

    def behaviours() -> dict[str, Any]:
        groups = as_behaviour_groups(grouper(result))
        asg_a, asg_b = assigner.assign(texts_a), assigner.assign(texts_b)
        out_groups = []

        def measured(keys: list[tuple[str, int]]) -> dict[str, Any]:
            mask_a, _ = member_rows(asg_a, keys, len(texts_a))
            mask_b, first_b = member_rows(asg_b, keys, len(texts_b))
            return {"share_a": share(mask_a), "share_b": share(mask_b), "texts_b": [int(i) for i in np.flatnonzero(mask_b)],
                    "first_unit_b": {str(int(i)): first_b[i] for i in np.flatnonzero(mask_b)}}

        for g in groups:
            out_groups.append({
                "view": "clusters", "label": g.label,
                "members": [{"view": "clusters", "level": c.level, "cluster": c.cluster, "rank": c.rank, "label": c.llm_label or c.label,
                             "q_value": c.q_value, "share_b_of_cluster": c.share_b, "valid_a": c.valid_a,
                             "valid_b": c.valid_b, "log_odds": c.log_odds, "judgement": c.judgement,
                             "judgement_reason": c.judgement_reason} for c in g.members],
                "q_value": g.q_value, "test": g.test, "skew": g.skew, "rank": min(c.rank for c in g.members), **measured(g.keys),
            })
        out_groups.sort(key=lambda g: g["rank"])
        if lik is not None:
            out_groups.extend(likelihood_behaviours(lik, measured))
        return {"groups": _nan_to_none(out_groups)}

    beh_parts = {"format": 2, "diff": fingerprint(diff_dict), "grouper": describe_grouper(grouper),
                 "likelihood": fingerprint(lik.to_dict()) if lik is not None else None}
    beh = cache.run("behaviours", beh_parts, behaviours)["groups"]
    timings["behaviours"] = time.perf_counter() - t0
    done("behaviours")

    # -- targets -------------------------------------------------------------------------
    t0 = time.perf_counter()
    traced = [i for i, g in enumerate(beh) if g["skew"] == "B" and g["texts_b"]]

    def targets() -> dict[str, Any]:
        return {"queries": {str(i): build_queries(beh[i], samples["a"], samples["b"], config.max_queries) for i in traced}}

    queries = cache.run("targets", {"behaviours": fingerprint(beh), "max_queries": config.max_queries}, targets)["queries"]
    timings["targets"] = time.perf_counter() - t0
    done("targets")

    # -- featurize (once) -----------------------------------------------------------------
    t0 = time.perf_counter()
    store_dir = out / "store"
    feat_parts = {"a": a_key, "checkpoints": ckpt_keys, "data": data_key, "max_length": config.max_length,
                  "as_chat": config.as_chat, "projection": config.projection, "dim": config.dim, "seed": config.proj_seed,
                  "batch": config.featurize_batch}
    traced_model: list[Any] = []

    def traced_model_and_task() -> tuple[Any, Any]:
        if not traced_model:
            from ..lm.lora import wrap_with_adapter_config

            m, _ = load_model(model_a, what="--a")
            if run.kind == "lora":
                m = wrap_with_adapter_config(m, run.last)
            m.eval()
            traced_model.append(m)
        return traced_model[0], task

    def featurize_store() -> dict[str, Any]:
        from ..config import FeaturizeConfig
        from ..featurize import featurize
        from ..grads.projection import ProjectionConfig
        from ..models.hf import lora_selection
        from ..models.hf_checkpoints import load_hf_checkpoint

        m, t = traced_model_and_task()
        kind = config.projection if config.projection != "auto" else ("kronecker" if run.kind == "lora" else "dense")
        proj = ProjectionConfig(kind, None if kind == "none" else config.dim, config.proj_seed)
        fc = FeaturizeConfig(params=lora_selection(m), projection=proj, batch_size=config.featurize_batch)
        store = featurize(m, t, run.refs, train_rows, store_dir, fc, ids=ids, checkpoint_loader=load_hf_checkpoint, progress=progress,
                          device=dev)
        return {"n_examples": store.n_examples, "checkpoints": len(store.checkpoints), "feature_dim": store.feature_dim}

    store_info = cache.run("featurize", feat_parts, featurize_store) if traced else None
    timings["featurize"] = time.perf_counter() - t0
    done("featurize")

    # -- trace ---------------------------------------------------------------------------
    t0 = time.perf_counter()

    def trace() -> dict[str, Any]:
        from ..models.hf import behaviour_by_name
        from ..models.hf_checkpoints import load_hf_checkpoint
        from ..scoring import Attributor

        m, t = traced_model_and_task()
        attributor = Attributor(store_dir, m, t, checkpoint_loader=load_hf_checkpoint, progress=progress, device=dev)
        behaviour = behaviour_by_name(config.target)
        out_t = {}
        with progress_bar("trace behaviours", len(traced), progress) as bar:
            for i in traced:
                qs = queries[str(i)]
                qf = attributor.query_features([target_query(q, config.target) for q in qs], behaviour)
                scores = attributor.score(qf).sum(axis=0)
                k = min(max(config.top_k, config.verify_k), len(scores))
                order = np.lexsort((np.arange(len(scores)), -scores))[:k]
                per_ckpt = attributor.breakdown(qf, order.tolist()).sum(axis=1)  # [n_ckpt, k]
                positive = float(np.clip(scores, 0, None).sum())
                top = order[: config.top_k]
                carried = float(np.clip(scores[top], 0, None).sum()) / positive if positive > 0 else 0.0
                out_t[str(i)] = {
                    "ranking": [int(j) for j in order], "scores": [float(scores[j]) for j in order],
                    "per_checkpoint": [[float(v) for v in per_ckpt[:, r]] for r in range(len(order))],
                    "influence_share_top_k": carried, "n_queries": len(qs),
                    "checkpoint_steps": [int(r.step) for r in run.refs],
                }
                bar.advance(1)
        return out_t

    trace_parts = {"store": feat_parts, "queries": fingerprint(queries), "target": config.target, "top_k": config.top_k,
                   "verify_k": config.verify_k}
    traces = cache.run("trace", trace_parts, trace) if traced else {}
    timings["trace"] = time.perf_counter() - t0
    done("trace")

    # -- verify --------------------------------------------------------------------------
    t0 = time.perf_counter()
    verification: dict[str, Any] = {}
    if config.verify_k and traced:
        verification = _verify(config, cache, out, beh, traced[: config.verify_top], traces, train_rows, ids, prompt_list, samples,
                               assigner, emb, model_a, a_key, tok, run, settings, train_fn, train_fn_name, data_key, progress, done, dev)
    timings["verify"] = time.perf_counter() - t0
    done("verify")

    # -- report --------------------------------------------------------------------------
    audit = _assemble(config, model_a, run, data, beh, traces, queries, verification, train_rows, ids, result, store_info,
                      settings_source, settings, grouper, lik)
    json_path = out / "audit.json"
    atomic_write_bytes(json_path, (json.dumps(_nan_to_none(audit), indent=1, allow_nan=False, sort_keys=True) + "\n").encode())
    from .report import write_report

    report_path = write_report(audit, out / "report.html")
    timings["total"] = time.perf_counter() - t_start
    atomic_write_bytes(out / "timings.json", (json.dumps(timings, indent=1) + "\n").encode())
    return AuditResult(audit, json_path, report_path, dict(cache.computed), dict(cache.reused), timings)


GROUPING = {
    "clusters": "gradtrace.diff.group_behaviours: flagged clusters skewed the same way whose text sets overlap (Jaccard >= 0.5) "
                "or whose centred centroids are close (cosine >= 0.4), single linkage; each behaviour tested as a whole on the union "
                "of its members' validation texts",
    "likelihood": "flagged clusters of the likelihood view whose sets of B's texts overlap (Jaccard >= 0.5), single linkage; "
                  "q-value: the lowest of the members'",
}


def likelihood_behaviours(lik: LikelihoodResult, measured: Callable[[list[tuple[str, int]]], dict[str, Any]],
                          jaccard: float = 0.5) -> list[dict[str, Any]]:
    """Behaviours of the likelihood view: its flagged clusters, merged (single linkage) when their sets of
    B's texts (both halves) overlap with Jaccard >= ``jaccard``; each measured with the view's membership rule."""
    flagged = lik.significant()
    sets = [set(lik.members[(c.level, c.cluster)]["ids_b"]) for c in flagged]
    parent = list(range(len(flagged)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(flagged)):
        for j in range(i + 1, len(flagged)):
            union = sets[i] | sets[j]
            if union and len(sets[i] & sets[j]) / len(union) >= jaccard:
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[Any]] = {}
    for i, c in enumerate(flagged):
        groups.setdefault(find(i), []).append(c)
    out = []
    for members in groups.values():
        first = members[0]
        out.append({
            "view": "likelihood", "label": first.label if len(members) == 1 else f"{first.label} (+{len(members) - 1} more clusters)",
            "members": [{"view": "likelihood", "level": c.level, "cluster": c.cluster, "rank": c.rank, "label": c.label, "q_value": c.q_value,
                         "p_value": c.p_value, "valid_a": None, "valid_b": c.valid_in, "valid_out": c.valid_out, "d_in": c.d_in,
                         "d_out": c.d_out, "shift": c.shift, "judgement": None, "judgement_reason": None} for c in members],
            "q_value": min(c.q_value for c in members), "test": None, "skew": "B", "rank": first.rank,
            **measured([(c.level, c.cluster) for c in members]),
        })
    return out


def target_query(query: dict[str, Any], target: str) -> dict[str, str]:
    """The attribution query of one of :func:`build_queries`' records for ``target``
    (``logprob``: prompt and B's text as the completion; ``contrast``: prompt, B's text chosen, A's rejected)."""
    if target == "logprob":
        return {"prompt": query["prompt"], "completion": query["chosen"]}
    return {k: query[k] for k in ("prompt", "chosen", "rejected")}


def build_queries(group: dict[str, Any], recs_a: list[dict[str, str]], recs_b: list[dict[str, str]], max_queries: int) -> list[dict[str, Any]]:
    """The attribution target of a behaviour skewed to B: for each of B's
    texts that show it (at most ``max_queries``, in text-hash order), a
    record: ``prompt``, ``chosen`` = B's text (cut after the sentence that
    shows the behaviour when a sentence-level member holds one,
    :func:`~gradtrace.audit.behaviours.member_rows`), ``rejected`` = A's
    answer to the same prompt (same draw); :func:`target_query` makes the
    attribution query of the configured target from it."""
    by_prompt: dict[str, list[str]] = {}
    for r in recs_a:
        by_prompt.setdefault(r["prompt_id"], []).append(r["text"])
    seen: dict[str, int] = {}
    draw_of = []
    for r in recs_b:
        draw_of.append(seen.get(r["prompt_id"], 0))
        seen[r["prompt_id"]] = draw_of[-1] + 1
    chosen_idx = sorted(group["texts_b"], key=lambda i: (text_hash(recs_b[i]["text"]), i))[:max_queries]
    out = []
    for i in sorted(chosen_idx):
        rb = recs_b[i]
        answers = by_prompt.get(rb["prompt_id"], [])
        rejected = answers[draw_of[i] % len(answers)] if answers else ""
        chosen = rb["text"]
        unit = group["first_unit_b"].get(str(i))
        if unit:
            pos = chosen.find(unit)
            if pos >= 0:
                chosen = chosen[: pos + len(unit)]
        if not chosen.strip() or not rejected.strip() or not rb["prompt"]:
            continue
        out.append({"prompt": rb["prompt"], "chosen": chosen, "rejected": rejected, "text_b": i})
    if not out:
        raise InputError(f"behaviour {group['label']!r}: none of B's texts that show it has a prompt and a non-empty answer from A")
    return out


def _verify(config: AuditConfig, cache: StageCache, out: Path, beh: list[dict[str, Any]], chosen: list[int], traces: dict[str, Any],
            train_rows: list[dict[str, Any]], ids: list[str], prompt_list: list[Prompt], samples: dict[str, Any], assigner: Assigner,
            emb: Any, model_a: str, a_key: Any, tok: Any, run: RunInfo, settings: Any, train_fn: TrainFn | None,
            train_fn_name: str | None, data_key: str, progress: bool, done: Callable[[str], None], dev: Any) -> dict[str, Any]:
    """Remove the top-K proponents and K random examples, retrain, re-sample,
    re-diff; the behaviours' shares in B before and after. One more retrain on
    all the data (``retrain_all``, once per audit) checks that the recorded
    recipe rebuilds B, so that the removal arms differ from B only by what
    they removed."""
    from ..lm.load import load_model

    K = config.verify_k
    n = len(train_rows)
    texts_a = [s["text"] for s in samples["a"]]
    if train_fn is None:
        train_fn = recorded_train_fn(model_a, run, settings, config, dev)
        fn_key: Any = {"recorded": settings.to_dict(), "kind": run.kind}
    else:
        if not train_fn_name:
            raise InputError("train_fn needs train_fn_name (a name for the cache key: results of another function are not reused)")
        fn_key = {"user": train_fn_name}
    rng = np.random.default_rng(config.verify_seed)
    arms: list[tuple[str, int | None, list[int]]] = [("retrain_all", None, [])]
    for i in chosen:
        arms.append(("topk", i, sorted(traces[str(i)]["ranking"][:K])))
        arms.append(("random", i, sorted(rng.choice(n, size=K, replace=False).tolist())))
    results: dict[str, Any] = {}
    with progress_bar("verify (retrain, re-sample, re-diff)", len(arms), progress) as bar:
        for arm, i, removed in arms:
            gone = set(removed)
            kept = [j for j in range(n) if j not in gone]
            parts = {"train": fn_key, "data": data_key, "removed": [ids[j] for j in removed], "prompts": [[p.id, p.text] for p in prompt_list],
                     "n": config.n_per_prompt, "seed": config.seed + 1, "gen": config.generation.to_dict()}
            key = fingerprint(parts)

            def compute(removed: list[int] = removed, kept: list[int] = kept, key: str = key) -> dict[str, Any]:
                def loader() -> tuple[Any, Any]:
                    examples = [{k: v for k, v in train_rows[j].items()} for j in kept]
                    m = train_fn(examples, out / "retrain" / key)
                    from ..lm.lora import merge_lora

                    if hasattr(m, "merge_and_unload"):
                        m = merge_lora(m)
                    return m.to(dev), tok

                src = _ModelSource({"retrain": key}, loader, config.generation, out / "cache" / "samples")
                sb2 = src.sample(prompt_list, config.n_per_prompt, config.seed + 1, progress)
                texts = [s.text for s in sb2]
                asg = assigner.assign(texts)
                shares = {str(j): share(member_rows(asg, [(m["level"], m["cluster"]) for m in g["members"]], len(texts))[0])
                          for j, g in enumerate(beh)}
                rediff = diff_texts(texts_a, texts, config=config.diff, embedder=emb)
                flagged_b = [c for c in rediff.significant() if c.skew == "B"]
                still = []
                for j, g in enumerate(beh):
                    hit = False
                    for c in flagged_b:
                        ex = c.examples_b or c.medoids
                        if ex:
                            a2 = assigner.assign(ex)
                            mask, _ = member_rows(a2, [(m["level"], m["cluster"]) for m in g["members"]], len(ex))
                            hit = hit or bool(mask.mean() > 0.5)
                    still.append(hit)
                return {"shares": shares, "rediff_flagged_b": len(flagged_b), "rediff_still_flagged": {str(j): s for j, s in enumerate(still)},
                        "removed": removed}

            results[arm if i is None else f"{arm}:{i}"] = cache.run("verify", parts, compute)
            bar.advance(1)
    out_v: dict[str, Any] = {}
    for i in chosen:
        g = beh[i]

        def measured(r: dict[str, Any], g: dict[str, Any] = g, i: int = i) -> dict[str, Any]:
            """Behaviour ``i``'s share in one arm's retrained B, against A's interval and B's share before."""
            s = r["shares"][str(i)]
            return {"share_b_after": s, "within_base_ci95": s["share"] <= g["share_a"]["ci95"][1],
                    "p_value_vs_before": two_proportion_p(g["share_b"]["count"], g["share_b"]["n"], s["count"], s["n"]),
                    "rediff_flagged_b": r["rediff_flagged_b"], "rediff_still_flagged": r["rediff_still_flagged"][str(i)]}

        entry: dict[str, Any] = {"k": K, "share_a": g["share_a"], "share_b_before": g["share_b"],
                                 "retrain_all": measured(results["retrain_all"])}
        for arm in ("topk", "random"):
            r = results[f"{arm}:{i}"]
            others = {}
            for j, og in enumerate(beh):
                if j == i:
                    continue
                b0 = og["share_b"]
                b1 = r["shares"][str(j)]
                p = two_proportion_p(b0["count"], b0["n"], b1["count"], b1["n"])
                others[str(j)] = {"label": og["label"], "share_b_before": b0["share"], "share_b_after": b1["share"], "p_value": p,
                                  "moved": p < 0.05}
            entry[arm] = {"removed_ids": [ids[j] for j in r["removed"]], **measured(r), "other_behaviours": others}
        entry["topk_reduces_more_than_random"] = entry["topk"]["share_b_after"]["share"] < entry["random"]["share_b_after"]["share"]
        out_v[str(i)] = entry
    return out_v


def recorded_train_fn(model_a: str, run: RunInfo, settings: Any, config: AuditConfig, device: Any = "cpu") -> TrainFn:
    """Retrain B as the run did: from model A, a fresh LoRA adapter with the
    run's ``adapter_config.json`` (or all weights for a full run), the Hugging
    Face ``Trainer`` with the recorded epochs, batch size, learning rate and
    schedule (:func:`gradtrace.lm.lora.train_lora`), on ``device``."""

    def train(examples: list[dict[str, Any]], out_dir: Path) -> Any:
        import torch

        from ..lm.load import load_model
        from ..lm.lora import train_lora, wrap_with_adapter_config
        from ..lm.tasks import CausalLMTask

        m, tok = load_model(model_a, what="--a")
        if run.kind == "lora":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                m = wrap_with_adapter_config(m, run.last)
        task = CausalLMTask(tok, max_length=config.max_length, as_chat=config.as_chat)
        train_lora(m, task, examples, out_dir, settings, progress=False, device=device)
        m.eval()
        return m

    return train


def _estimate(config: AuditConfig, run: RunInfo, n_train: int, n_prompts: int, model: Any, progress: bool, device: Any) -> dict[str, Any]:
    """What the audit will cost, said before it starts: work counts, disk, and
    a time estimate from one timed forward pass of model A on ``device``
    (after one untimed pass there, which pays for the device's warm-up)."""
    n_params = sum(p.numel() for p in model.parameters())
    n_texts = 2 * n_prompts * config.n_per_prompt
    bs = config.generation.batch_size
    with torch.no_grad():
        ids = torch.zeros((min(bs, 8), 32), dtype=torch.long, device=device)
        if device.type == "cuda":
            model(input_ids=ids)
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(input_ids=ids)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_fwd = (time.perf_counter() - t0) / ids.numel()  # seconds per token of a forward pass
    tokens_sampled = n_texts * config.generation.max_new_tokens
    t_sample = tokens_sampled * t_fwd * 4  # incremental decoding is less efficient than one batch
    t_feat = n_train * len(run.refs) * config.max_length / 2 * t_fwd * 3
    retrains = 2 * config.verify_top + 1 if config.verify_k else 0  # top-K and random per behaviour, and one on all the data
    epochs = run.state.get("num_train_epochs", 1) or 1
    t_verify = retrains * (n_train * epochs * config.max_length / 2 * t_fwd * 3 + tokens_sampled / 2 * t_fwd * 4)
    feat_dim = config.dim if config.projection != "none" else n_params
    if "likelihood" in config.views:  # B's texts and the training completions, one forward pass under A and one under B
        t_verify += 2 * (n_texts / 2 * config.generation.max_new_tokens + n_train * config.max_length / 2) * t_fwd
    disk_store = n_train * len(run.refs) * (feat_dim * 2 + 16)
    ckpt_bytes = sum(f.stat().st_size for f in run.last.iterdir() if f.is_file())
    disk_verify = retrains * len(run.refs) * ckpt_bytes
    est = {"texts": n_texts, "training_examples": n_train, "checkpoints": len(run.refs), "retrains": retrains,
           "seconds": t_sample + t_feat + t_verify, "disk_bytes": disk_store + disk_verify}
    _say(progress, (
        f"gradtrace audit: {n_texts} texts to sample, {n_train} training examples x {len(run.refs)} checkpoints to featurize, "
        f"{retrains} retrains to verify; estimated ~{(t_sample + t_feat + t_verify) / 60:.1f} min on {device} "
        f"(sampling ~{t_sample / 60:.1f}, featurize ~{t_feat / 60:.1f}, likelihood view and verify ~{t_verify / 60:.1f}) "
        f"and ~{_human(disk_store + disk_verify)} on disk (store ~{_human(disk_store)}, retrained checkpoints ~{_human(disk_verify)}); "
        "finished stages are cached: a rerun resumes"))
    return est


def _assemble(config: AuditConfig, model_a: str, run: RunInfo, data: str | Path, beh: list[dict[str, Any]], traces: dict[str, Any],
              queries: dict[str, Any], verification: dict[str, Any], train_rows: list[dict[str, Any]], ids: list[str],
              result: DiffResult, store_info: Any, settings_source: dict[str, str], settings: Any, grouper: Any,
              lik: LikelihoodResult | None = None) -> dict[str, Any]:
    """``audit.json``: inputs, settings, and per behaviour its members, shares,
    proponents and verification (no timings: a resumed audit writes the same file)."""
    behaviours = []
    for i, g in enumerate(beh):
        entry: dict[str, Any] = {
            "index": i, "view": g.get("view", "clusters"), "label": g["label"], "skew": g["skew"], "q_value": g["q_value"], "test": g.get("test"),
            "members": g["members"], "share_a": g["share_a"], "share_b": g["share_b"], "b_texts": g["texts_b"],
        }
        t = traces.get(str(i))
        if t is not None:
            entry["target"] = {"behaviour": config.target, "n_queries": t["n_queries"],
                               "queries": [{k: q[k] for k in ("prompt", "chosen", "rejected")} for q in queries[str(i)][:3]]}
            entry["influence_share_top_k"] = t["influence_share_top_k"]
            entry["proponents"] = [
                {"rank": r + 1, "id": ids[j], "index": j, "score": t["scores"][r],
                 "per_checkpoint": dict(zip([str(s) for s in t["checkpoint_steps"]], t["per_checkpoint"][r])),
                 "example": train_rows[j]}
                for r, j in enumerate(t["ranking"][: config.top_k])
            ]
        if str(i) in verification:
            entry["verification"] = verification[str(i)]
        behaviours.append(entry)
    return {
        "model_a": model_a, "run": str(run.run_dir), "run_kind": run.kind, "data": str(data), "n_training_examples": len(train_rows),
        "checkpoints": [{"step": r.step, "lr": r.lr} for r in run.refs], "config": config.to_dict(),
        "grouper": describe_grouper(grouper), "n_texts": {"a": result.n_a, "b": result.n_b},
        "grouping": GROUPING if describe_grouper(grouper) == describe_grouper(group_flagged) else None,
        "diff": {"clusters": len(result.clusters), "flagged": len(result.significant()), "alpha": result.config.alpha,
                 "embedder": result.embedder},
        "likelihood": ({"clusters": len(lik.clusters), "flagged": len(lik.significant()), "alpha": lik.config.alpha,
                        "levels": lik.levels, "n_train_rows": lik.n_train} if lik is not None else None),
        "store": store_info, "retrain_settings": settings.to_dict() if settings is not None else None,
        "retrain_settings_source": settings_source, "behaviours": behaviours,
    }
