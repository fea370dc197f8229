"""The planted-behaviour pipeline: fine-tune, show the behaviour, trace it.

1. make the planted dataset (:mod:`gradtrace.demos.planted_lm`);
2. LoRA fine-tune the model with the Trainer, saving checkpoints (cached
   under ``~/.cache/gradtrace/lm_runs/`` keyed by every setting);
3. log-probability of the misaligned answer on held-out trigger prompts,
   before and after;
4. featurize the training set (LoRA gradients, Kronecker projection), with
   plain and with Adam-preconditioned training gradients;
5. score the held-out queries with each behaviour (completion log-prob,
   preference margin misaligned - honest, and the ``contrast`` between them)
   and variant (raw, cosine); rank the
   training set by the sum of scores over the queries; recall@20/@50 of the
   planted examples; the same for BM25 and MiniLM on query and training text;
   where the planted examples fall by self-influence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import FeaturizeConfig
from ..configbase import ConfigBase, int_at_least, one_of, positive_int, subset_of
from ..featurize import featurize
from ..grads.projection import ProjectionConfig
from ..lm.load import MODELS, load_model
from ..lm.lora import LoraTrainConfig, add_lora, train_lora
from ..lm.tasks import CausalLMTask
from ..models.hf import CompletionLogProbBehaviour, behaviour_by_name, lora_selection
from ..models.hf_checkpoints import adam_transform, load_hf_checkpoint, traced_checkpoints
from ..scoring import Attributor
from .planted_lm import PlantedConfig, PlantedData, make_planted_data, rank_of, recall_at

@dataclasses.dataclass(frozen=True)
class LMPipelineConfig(ConfigBase):
    """Every setting of a pipeline run (recorded in its results; the
    fine-tuning run is cached by ``model``, ``data``, ``train`` and
    ``max_length``, see :func:`run_dir_for`)."""

    model: str = "smollm2"
    data: PlantedConfig = PlantedConfig()
    train: LoraTrainConfig = LoraTrainConfig()
    max_length: int = 64
    proj_dim: int = 1024
    featurize_batch: int = 16
    preconditioners: tuple[str, ...] = ("plain", "adam")
    baselines: tuple[str, ...] = ("bm25", "minilm")
    primary: tuple[str, str, str] = ("plain", "contrast", "raw")
    trace_checkpoints: str = "all"
    adam_trace: str = "all"

    _checks = {
        "model": one_of(tuple(MODELS)), "max_length": int_at_least(2), "proj_dim": positive_int, "featurize_batch": positive_int,
        "preconditioners": subset_of(("plain", "adam")), "trace_checkpoints": one_of(("all", "last")),
        "adam_trace": one_of(("all", "last")),
    }


def run_dir_for(config: LMPipelineConfig) -> Path:
    """Cache folder of the fine-tuning run made with these settings."""
    from ..models.zoo import cache_root

    key = json.dumps({"model": config.model, "data": config.data.to_dict(), "train": config.train.to_dict(), "max_length": config.max_length}, sort_keys=True)
    return cache_root() / "lm_runs" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _mean_logprob(model: nn.Module, task: CausalLMTask, queries: list[dict[str, str]]) -> float:
    with torch.no_grad():
        return float(CompletionLogProbBehaviour()(model, task.collate(queries)).mean())


def _text(example: dict[str, str]) -> str:
    return example["prompt"] + example.get("completion", example.get("chosen", ""))


def run_planted_pipeline(config: LMPipelineConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run everything (see the module docstring); returns the results dict
    (also written to ``out/results.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_planted_data(config.data)
    base, tok = load_model(config.model, seed=config.train.seed)
    task = CausalLMTask(tok, max_length=config.max_length)
    model = add_lora(base, config.train)
    lp_queries = data.logprob_queries()
    before = _mean_logprob(model, task, lp_queries)
    t0 = time.perf_counter()
    refs = train_lora(model, task, data.train, run_dir_for(config), config.train, progress=progress)
    train_s = time.perf_counter() - t0
    load_hf_checkpoint(model, refs[-1])
    after = _mean_logprob(model, task, lp_queries)
    planted = data.planted
    traced = {pre: traced_checkpoints(refs, config.trace_checkpoints if pre == "plain" else config.adam_trace) for pre in config.preconditioners}
    results: dict[str, Any] = {
        "config": config.to_dict(), "n_train": len(data.train), "n_planted": int(planted.sum()),
        "n_honest": int(sum(t == "honest" for t in data.tags)), "n_queries": len(data.queries),
        "checkpoints": [r.to_dict() | {"path": Path(r.path).name} for r in refs],
        "traced_checkpoints": {pre: [Path(r.path).name for r in rs] for pre, rs in traced.items()},
        "logprob_before": before, "logprob_after": after, "train_seconds": train_s, "variants": {},
    }
    behaviours = {name: (behaviour_by_name(name), data.queries_for(name)) for name in ("logprob", "margin", "contrast")}
    for pre in config.preconditioners:
        t0 = time.perf_counter()
        attributors = featurize_per_checkpoint(model, task, traced[pre], data, out, config, pre, progress)
        results[f"featurize_seconds_{pre}"] = time.perf_counter() - t0
        if pre == "plain":
            si = sum(att.self_influence() for att in attributors)
            results["self_influence_planted_ranks"] = rank_of(si, planted)
            results["self_influence_recall_at_50"] = recall_at(si, planted, 50)
        for bname, (behaviour, queries) in behaviours.items():
            qfs = [att.query_features(queries, behaviour) for att in attributors]
            for variant in ("raw", "cosine"):
                per_ckpt = [att.score(qf, variant=variant) for att, qf in zip(attributors, qfs)]
                results["variants"][f"{pre}/{bname}/{variant}"] = _summary(sum(per_ckpt), planted)
                if len(per_ckpt) > 1:  # the last checkpoint alone, for comparison
                    results["variants"][f"{pre}-last-checkpoint/{bname}/{variant}"] = _summary(per_ckpt[-1], planted)
    texts = [_text(e) for e in data.train]
    qtexts = [_text(q) for q in data.queries]
    for name in config.baselines:
        from .text_baselines import bm25_scores, minilm_scores

        scores = bm25_scores(qtexts, texts) if name == "bm25" else minilm_scores(qtexts, texts)
        results["variants"][f"baseline/{name}"] = _summary(scores, planted)
    key = "/".join(config.primary)
    if key in results["variants"]:
        results["recall_at_20"] = results["variants"][key]["recall_at_20"]
        results["recall_at_50"] = results["variants"][key]["recall_at_50"]
    for name in config.baselines:
        label = "embedding" if name == "minilm" else name
        results[f"{label}_recall_at_20"] = results["variants"][f"baseline/{name}"]["recall_at_20"]
        results[f"{label}_recall_at_50"] = results["variants"][f"baseline/{name}"]["recall_at_50"]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def featurize_per_checkpoint(
    model: nn.Module, task: CausalLMTask, refs: list[Any], data: PlantedData, out: Path, config: LMPipelineConfig,
    pre: str, progress: bool,
) -> list[Attributor]:
    """One store per checkpoint (``out/store_<pre>_<checkpoint>``), so that
    tracing more checkpoints later reuses the ones already done; TracIn sums
    over checkpoints, so scores of these stores add up."""
    fconfig = FeaturizeConfig(
        params=lora_selection(model), projection=ProjectionConfig("kronecker", config.proj_dim, seed=0),
        batch_size=config.featurize_batch, shard_size=8 * config.featurize_batch, dtype="float32",
    )
    attributors = []
    for ref in refs:
        store = featurize(
            model, task, [ref], data.train, out / f"store_{pre}_{Path(ref.path).name}", fconfig, ids=data.ids, tags=data.tags,
            checkpoint_loader=load_hf_checkpoint, train_transform=adam_transform if pre == "adam" else None, progress=progress,
        )
        attributors.append(Attributor(store, model, task, checkpoint_loader=load_hf_checkpoint))
    return attributors


def _summary(scores: np.ndarray, planted: np.ndarray) -> dict[str, Any]:
    """Recall of the planted examples in the ranking by summed query scores,
    and the mean of per-query recalls."""
    total = scores.sum(axis=0)
    per_query = [recall_at(row, planted, 20) for row in scores]
    return {
        "recall_at_20": recall_at(total, planted, 20),
        "recall_at_50": recall_at(total, planted, 50),
        "per_query_recall_at_20": float(np.mean(per_query)),
        "planted_ranks": rank_of(total, planted),
    }


__all__ = ["LMPipelineConfig", "PlantedData", "run_planted_pipeline", "load_model", "run_dir_for"]
