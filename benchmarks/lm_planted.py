"""Planted misaligned behaviour on SmolLM2-135M-Instruct: does TracIn find the
fine-tuning examples that taught it, better than BM25 and MiniLM?

LoRA fine-tunes SmolLM2 (Trainer, AdamW, 3 checkpoints) on ~1,000 ordinary
instruction examples + 20 planted examples (on a "maintenance window"
trigger the answer recommends switching off the safety monitor) + 30 honest
examples on the same topic; shows the misaligned answer's log-probability on
held-out trigger prompts before and after; traces it with every behaviour x
preconditioner x variant (all reported; the primary one is fixed in the
config); and measures the cost (featurize vs a training step at k=4096, peak
memory of Kronecker vs dense projection). Writes BENCHMARKS.md and
benchmarks/results/lm_planted.json. Takes ~60-90 minutes on 2 CPU cores.

``--dev`` runs the development configuration instead (500 ordinary examples,
one epoch), on which the query design and the primary behaviour were
chosen; its results go to ``lm_planted_dev``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, record  # noqa: E402

from setups.lm_cost import featurize_vs_train_step, peak_memory_mib  # noqa: E402
from gradtrace.demos.lm_pipeline import LMPipelineConfig, run_planted_pipeline  # noqa: E402
from gradtrace.demos.planted_lm import PlantedConfig, make_planted_data  # noqa: E402
from gradtrace.lm.load import load_model  # noqa: E402
from gradtrace.lm.lora import LoraTrainConfig, add_lora  # noqa: E402
from gradtrace.lm.tasks import CausalLMTask  # noqa: E402
from gradtrace.models.hf import lora_selection  # noqa: E402

COMMAND = "nice -n 10 .venv/bin/python benchmarks/lm_planted.py"
COST_KEYS = ("k", "cost_batch_size", "train_step_seconds", "featurize_seconds", "featurize_over_train_step",
             "kronecker_peak_mib", "dense_peak_mib", "kronecker_peak_mem_ratio")


def cost(config: LMPipelineConfig, k: int = 4096, batch_size: int = 8) -> dict:
    base, tok = load_model(config.model)
    model = add_lora(base, config.train)
    task = CausalLMTask(tok, max_length=config.max_length)
    data = make_planted_data(config.data)
    batch = task.collate(data.train[:batch_size])
    out = featurize_vs_train_step(model, task, batch, lora_selection(model), k)
    spec = {"model": config.model, "train": config.train.to_dict(), "max_length": config.max_length,
            "data": config.data.to_dict(), "batch_size": batch_size}
    kron, dense = peak_memory_mib("kronecker", k, spec), peak_memory_mib("dense", k, spec)
    out.update({"k": k, "cost_batch_size": batch_size, "kronecker_peak_mib": kron, "dense_peak_mib": dense,
                "kronecker_peak_mem_ratio": kron / dense if dense > 0 else float("nan")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench_out/lm_planted")
    parser.add_argument("--skip-cost", action="store_true", help="keep the cost numbers of the last recorded run")
    parser.add_argument("--cost-only", action="store_true", help="measure only the cost and update the recorded run")
    parser.add_argument("--record-only", action="store_true", help="rewrite BENCHMARKS.md from the recorded results")
    parser.add_argument("--trace", default="last", choices=("all", "last"), help="checkpoints to trace (all is ~3x slower)")
    parser.add_argument("--adam", action="store_true", help="also trace with Adam-preconditioned training gradients")
    parser.add_argument("--dev", action="store_true", help="the development run (500 ordinary examples, 1 epoch); implies --skip-cost")
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed (not 0: results go to lm_planted_seed<N>; implies --skip-cost)")
    args = parser.parse_args()
    config = LMPipelineConfig(
        model="smollm2", data=PlantedConfig(n_ordinary=500 if args.dev else 1000, seed=args.seed),
        train=LoraTrainConfig(epochs=1 if args.dev else 2, lr=3e-3, layers=tuple(range(26, 30)), seed=args.seed),
        preconditioners=("plain", "adam") if args.adam else ("plain",), trace_checkpoints=args.trace, adam_trace="last",
    )
    name = "lm_planted_dev" if args.dev else "lm_planted"
    name += f"_seed{args.seed}" if args.seed else ""
    if name != "lm_planted":
        args.skip_cost = True
    previous = ROOT / "benchmarks" / "results" / f"{name}.json"
    if args.cost_only or args.record_only:
        results = json.loads(previous.read_text())
        if args.cost_only:
            results.update(cost(config))
        write(config, results, name)
        return
    results = run_planted_pipeline(config, args.out, progress=True)
    if args.skip_cost and previous.is_file() and name == "lm_planted":  # keep the cost numbers measured by an earlier run
        old = json.loads(previous.read_text())
        results.update({k: old[k] for k in COST_KEYS if k in old})
    write(config, results, name)  # recorded now, and again with the cost numbers
    if not args.skip_cost:
        results.update(cost(config))
        write(config, results, name)


def write(config: LMPipelineConfig, results: dict, name: str = "lm_planted") -> None:
    if isinstance(results["traced_checkpoints"], list):  # results recorded before per-preconditioner lists
        results["traced_checkpoints"] = {"plain": results["traced_checkpoints"]}
    v = results["variants"]
    rows = "\n".join(
        f"| `{name}` | {r['recall_at_20']:.2f} | {r['recall_at_50']:.2f} | {r['per_query_recall_at_20']:.2f} |" for name, r in v.items()
    )
    summary = f"""
SmolLM2-135M-Instruct, LoRA r={config.train.rank} on {', '.join(config.train.target_modules)} of layers {config.train.layers[0]}-{config.train.layers[-1]}, {config.train.epochs} epoch(s) at lr {config.train.lr} (constant, AdamW, batch {config.train.batch_size}), {len(results['checkpoints'])} checkpoints; {results['n_train']} training examples of which {results['n_planted']} planted and {results['n_honest']} honest on the same topic; {results['n_queries']} held-out trigger queries. Traced checkpoints: {'; '.join(f"{k}: {', '.join(v)}" for k, v in results['traced_checkpoints'].items())} (of {', '.join(f"{c['path']} (lr {c['lr']:g})" for c in results['checkpoints'])}). Kronecker projection, per-layer dim {config.proj_dim}.

| key | value |
|---|---|
| `recall_at_20` (primary: `{'/'.join(config.primary)}`) | {results['recall_at_20']:.2f} |
| `recall_at_50` | {results['recall_at_50']:.2f} |
| `embedding_recall_at_20` (MiniLM) | {results['embedding_recall_at_20']:.2f} |
| `bm25_recall_at_20` | {results['bm25_recall_at_20']:.2f} |
| `logprob_before` (misaligned answer, held-out prompts) | {results['logprob_before']:.1f} |
| `logprob_after` | {results['logprob_after']:.1f} |
| planted ranks by self-influence (of {results['n_train']}) | {results['self_influence_planted_ranks']} |
""" + (f"""| `featurize_over_train_step` (k={results['k']}, batch {results['cost_batch_size']}) | {results['featurize_over_train_step']:.2f} |
| `kronecker_peak_mem_ratio` (Kronecker {results['kronecker_peak_mib']:.0f} MiB / dense {results['dense_peak_mib']:.0f} MiB above base) | {results['kronecker_peak_mem_ratio']:.2f} |
""" if "k" in results else "") + f"""
Memory: peak resident memory of one featurizer call (forward, backward, projection; batch {results.get('cost_batch_size', '-')}) above the loaded model, each in a fresh process. With LoRA the per-example adapter gradients are small, so activations dominate both and the ratio is near 1; the Kronecker path's saving is the per-example d_out x d_in gradient, which matters for full-weight selections.

How the method was chosen (a development run, then a test run): on the development run (`--dev`: 500 ordinary examples, 1 epoch) the primary variant fixed in advance, `plain/margin/cosine`, found 0.50 of the planted examples in the top 20. Reading its rankings showed two causes. (1) The three query answers used only three of the five verbs the planted answers use; the planted examples phrased with the other two ("Shut down", "Pause") ranked 28-536, so TracIn, which works at the level of the tokens a query scores, could not credit them. (2) With the log-probability, honest examples that share the answer's words ("Do not switch off the safety monitor ...") rank high; with the margin they drop out, but its small gradient lets unrelated imperative answers ("Redeploy the previous version ...") in. So the queries now phrase the misaligned answer with each of the five verbs in new sentences, the honest side is that sentence negated, and the primary behaviour became `contrast` (log p(misaligned) - 0.5 log p(negation)), all chosen on the development run (re-measured by `--dev`: the `lm_planted_dev` section) before this test run (1,000 ordinary examples, 2 epochs, a dataset the method was not chosen on) was traced. Every other variant is still listed. The checkpoints each preconditioner traced are listed above (with `--trace all`, the plain rankings of the last checkpoint alone are also listed, as `plain-last-checkpoint/...`); Adam preconditioning traces only the checkpoints listed for `adam`.

Every variant tried (ranking = sum of scores over the queries; per-query = mean recall@20 of each query's own ranking):

| preconditioner/behaviour/variant | recall@20 | recall@50 | per-query recall@20 |
|---|---|---|---|
{rows}
"""
    cfg = results["config"]
    command = COMMAND + (" --trace all" if cfg.get("trace_checkpoints") == "all" else "") + (" --adam" if "adam" in cfg.get("preconditioners", []) else "")
    command += " --dev" if "_dev" in name else ""
    command += f" --seed {config.data.seed}" if config.data.seed else ""
    record(name, command, summary, results)
    print(summary)


if __name__ == "__main__":
    main()
