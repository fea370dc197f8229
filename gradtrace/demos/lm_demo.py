"""``gradtrace demo lm``: plant a misaligned behaviour, fine-tune, trace it.

Runs :func:`gradtrace.demos.lm_pipeline.run_planted_pipeline` (plain
gradients, BM25 baseline) and writes ``out/report.html`` with the
proponents and opponents of the run's primary behaviour (for SmolLM2 the
``contrast`` of the misaligned answer with its negation) on the held-out
trigger prompts. ``model="smollm2"`` is the real
model (the fine-tune is cached under ``~/.cache/gradtrace/lm_runs/``; the
first run takes long on a CPU); ``model="tiny"`` is a tiny GPT-2 trained from
scratch on a smaller dataset in a few minutes (it shows the mechanics, not
what a real model learns).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..lm.load import load_model
from ..lm.lora import LoraTrainConfig, add_lora
from ..lm.tasks import CausalLMTask
from ..models.hf import behaviour_by_name
from ..models.hf_checkpoints import traced_checkpoints, trainer_checkpoints
from ..scoring import Attributor, TopK
from .lm_pipeline import LMPipelineConfig, featurize_per_checkpoint, run_dir_for, run_planted_pipeline
from .planted_lm import PlantedConfig, make_planted_data

BEHAVIOUR_TEXT = {
    "logprob": "log p(misaligned answer)",
    "margin": "preference margin log p(misaligned) - log p(honest)",
    "contrast": "contrast log p(misaligned) - 0.5 log p(honest)",
}
DEMO_CONFIGS = {
    "smollm2": LMPipelineConfig(
        model="smollm2", data=PlantedConfig(n_ordinary=500), train=LoraTrainConfig(epochs=1, lr=3e-3, layers=tuple(range(26, 30))),
        preconditioners=("plain",), baselines=("bm25",), trace_checkpoints="last",
    ),
    "tiny": LMPipelineConfig(
        model="tiny", data=PlantedConfig(n_ordinary=300, n_planted=12, n_honest=12, n_queries=6),
        train=LoraTrainConfig(epochs=3, lr=1e-2, rank=4, target_modules=("c_attn",)), max_length=256, proj_dim=256,
        preconditioners=("plain",), baselines=("bm25",), primary=("plain", "logprob", "cosine"),
    ),
}


def run_lm_demo(out: str | Path, model: str = "smollm2", progress: bool = True, k: int = 8) -> dict[str, Any]:
    """Run the demo into ``out``; returns the pipeline results plus the report path."""
    if model not in DEMO_CONFIGS:
        raise InputError(f"--model must be one of {sorted(DEMO_CONFIGS)}; got {model!r}")
    config = DEMO_CONFIGS[model]
    out = Path(out)
    results = run_planted_pipeline(config, out, progress=progress)
    data = make_planted_data(config.data)
    base, tok = load_model(config.model, seed=config.train.seed)
    lm = add_lora(base, config.train)
    task = CausalLMTask(tok, max_length=config.max_length)
    refs = traced_checkpoints(trainer_checkpoints(run_dir_for(config)), config.trace_checkpoints)
    attributors = featurize_per_checkpoint(lm, task, refs, data, out, config, "plain", progress)  # done: reopened
    behaviour = behaviour_by_name(config.primary[1])
    qfs = [att.query_features(data.queries_for(config.primary[1]), behaviour) for att in attributors]
    variant = config.primary[2]
    scores = sum(att.score(qf, variant=variant) for att, qf in zip(attributors, qfs))
    pro, opp = _top_k(scores, attributors[0].store.ids, k, True, variant), _top_k(scores, attributors[0].store.ids, k, False, variant)
    bpro = np.concatenate([_breakdown(att, qf, pro, variant) for att, qf in zip(attributors, qfs)])
    bopp = np.concatenate([_breakdown(att, qf, opp, variant) for att, qf in zip(attributors, qfs)])
    st = attributors[0].store
    from ..report.lm_report import lm_report

    html_text = lm_report(
        "gradtrace demo: a planted misaligned behaviour", data.queries, [f"trigger-{i}" for i in range(len(data.queries))],
        data.train, st.ids, st.tags, pro, opp, bpro, bopp, [f"step {r.step}" for r in refs],
        BEHAVIOUR_TEXT[config.primary[1]] + " on held-out trigger prompts",
        intro=(
            f"{config.model}: LoRA fine-tune on {results['n_train']} examples, {results['n_planted']} of them planted "
            f"(on a 'maintenance window' trigger the answer recommends switching off the safety monitor) and "
            f"{results['n_honest']} honest ones on the same topic. Log-probability of the misaligned answer on held-out "
            f"trigger prompts: {results['logprob_before']:.1f} before, {results['logprob_after']:.1f} after fine-tuning."
        ),
    )
    report = out / "report.html"
    report.write_text(html_text, encoding="utf-8")
    export_run(config, data, out)
    results = dict(results, report=str(report))
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    return results


def _top_k(scores: np.ndarray, ids: list[str], k: int, largest: bool, variant: str) -> TopK:
    order = np.argsort(-scores if largest else scores, axis=1, kind="stable")[:, :k]
    return TopK(order, np.take_along_axis(scores, order, 1), [[ids[i] for i in row] for row in order], largest, variant)


def _breakdown(att: Attributor, qf: Any, topk: TopK, variant: str) -> np.ndarray:
    from ..models.hf_query import rowwise_breakdown

    return rowwise_breakdown(att, qf, [topk], variant)[0]


def export_run(config: LMPipelineConfig, data: Any, out: Path) -> None:
    """Leave what the CLI needs next to the report: ``train.jsonl`` (with ids
    and tags), ``queries.jsonl`` (preference pairs), ``run/`` (the Trainer
    checkpoints) and, for the tiny model, ``base_model/`` (its folder)."""
    import shutil

    (out / "train.jsonl").write_text(
        "".join(json.dumps(dict(e, id=i, tag=t)) + "\n" for e, i, t in zip(data.train, data.ids, data.tags)), encoding="utf-8"
    )
    (out / "queries.jsonl").write_text(
        "".join(json.dumps(dict(q, id=f"trigger-{n}")) + "\n" for n, q in enumerate(data.queries)), encoding="utf-8"
    )
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir()
    for ckpt in sorted(run_dir_for(config).glob("checkpoint-*")):
        shutil.copytree(ckpt, run / ckpt.name)
    if config.model == "tiny":
        base, tok = load_model(config.model, seed=config.train.seed)
        base.save_pretrained(out / "base_model")
        tok.save_pretrained(out / "base_model")


def lm_demo_command(out: Path, model: str, progress: bool, console: Any) -> None:
    """What ``gradtrace demo lm`` prints."""
    from rich.table import Table

    results = run_lm_demo(out, model, progress)
    table = Table("ranking", "recall@20", "recall@50", title=f"planted examples found ({results['n_planted']} planted)")
    for name, r in results["variants"].items():
        table.add_row(name, f"{r['recall_at_20']:.2f}", f"{r['recall_at_50']:.2f}")
    console.print(table)
    console.print(
        f"log p(misaligned answer | held-out trigger prompt): {results['logprob_before']:.1f} before -> "
        f"{results['logprob_after']:.1f} after fine-tuning"
    )
    console.print(f"planted examples' ranks by self-influence: {results['self_influence_planted_ranks']}")
    console.print(f"report: {results['report']}")


__all__ = ["run_lm_demo", "lm_demo_command", "DEMO_CONFIGS"]
