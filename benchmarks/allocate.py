"""Beyond data: loss-change allocation and influence across runs.

1. *Completeness*: the allocation's error relative to each interval's
   measured change, against the quadrature rule and number of points, on the
   digits MLP (planted run, two behaviours), a tiny GPT-2 LoRA Trainer run
   and a SmolLM2-135M LoRA Trainer run. The library's default number of Gauss
   points is chosen on the dev seed (the fewest points whose error stays
   below 1% on every digits interval and behaviour) and reported on the test seed.
2. *Localisation with a planted answer*: the digits MLP trains on clean
   digits in 4 periods; in period 3 only, backdoor examples (3-pixel trigger,
   label 0) are added with their gradient routed to layer ``0`` alone, while
   every layer keeps training on clean data. The behaviour "loss of label 0
   on triggered test images" should be allocated to (layer 0, period 3). The
   share of the behaviour-direction allocation (the negative allocations of
   a loss, over all layer x period cells) that lands in that cell is
   compared with two baselines: the first-order allocation (the gradient at
   the start of each interval, rule ``left`` with 1 point) and the parameter
   change norm ||Δθ|| of each cell. A control behaviour (loss on clean test
   images) should not land there. The same with LoRA: adapters on both
   layers of a tiny GPT-2 train on ordinary examples; in period 2 of 3 the
   gradient of planted examples (a trigger phrase, a fixed answer) is routed
   to layer 1's adapters only; the behaviour is the planted answer's
   log-probability on held-out trigger prompts.
3. *Across runs*: the digits MLP (20% flipped labels) from five model seeds
   on the same data: per query, Spearman correlation and top-10 overlap of
   TracIn scores between runs, for single runs and for averages of two runs
   (split-half); the same for self-influence (mislabel detection), with the
   share of flipped labels found in the top 10% by a single run and by the
   five-run average.

Takes a few minutes on 2 CPU cores (SmolLM2 adds ~2 minutes; --skip-smollm2).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402

from setups.allocate_runs import (  # noqa: E402
    PlantedConfig, PlantedLoraConfig, SeedRunConfig, parameter_change_norms, planted_lora_run, planted_run, seed_run,
    seed_run_data,
)
from gradtrace import Attributor, FeaturizeConfig, ProjectionConfig, featurize  # noqa: E402
from gradtrace.allocate import DEFAULT_POINTS, allocate_run, group_of  # noqa: E402
from gradtrace.allocate.runs import split_half_stability  # noqa: E402
from gradtrace.demos.digits import found_at, make_mlp  # noqa: E402
from gradtrace.task import ClassificationTask  # noqa: E402

COMMAND = "nice -n 10 .venv/bin/python benchmarks/allocate.py"
DEV_SEED, TEST_SEED = 0, 1
GAUSS = (1, 2, 3, 4, 6, 8, 12)
OTHERS = (("trapezoid", 3), ("trapezoid", 9), ("trapezoid", 17), ("simpson", 5), ("simpson", 9), ("simpson", 17),
          ("left", 1), ("left", 16))
TARGET = 0.01
PLANTED = PlantedConfig(planted_module="0", planted_period=2)
SEED_RUNS = SeedRunConfig(hidden=64, epochs=30, n_checkpoints=5)
RUN_SEEDS = (10, 11, 12, 13, 14)


def _share(run: Any, cell: tuple[str, int], level: str = "module") -> float:
    """Share of the behaviour-direction allocation (a loss: its decreases) in ``cell`` (group, interval)."""
    sign = -1.0 if run.direction == "decrease" else 1.0
    pos = {(g, i): max(sign * float(v[i]), 0.0) for g, v in run.by(level).items() for i in range(len(v))}
    total = sum(pos.values())
    return pos.get(cell, 0.0) / total if total else 0.0


def _best_cell(run: Any) -> tuple[str, int]:
    sign = -1.0 if run.direction == "decrease" else 1.0
    cells = {(g, i): sign * float(v[i]) for g, v in run.by("module").items() for i in range(len(v))}
    return max(cells, key=cells.get)


def planted(seed: int, out: Path) -> dict[str, Any]:
    cfg = PlantedConfig(**{**PLANTED.to_dict(), "seed": seed})
    t0 = time.perf_counter()
    run = planted_run(cfg, out / f"planted_{seed}")
    train_s = time.perf_counter() - t0
    cell = (cfg.planted_module, cfg.planted_period)
    task = ClassificationTask()
    result: dict[str, Any] = {"seed": seed, "train_seconds": train_s, "asr_before_planting": run.asr_before,
                              "asr_after_planting": run.asr_after, "asr_final": run.asr_final, "clean_accuracy": run.clean_accuracy,
                              "planted_cell": {"module": cfg.planted_module, "interval": cfg.planted_period}, "behaviours": {}}
    norms = parameter_change_norms(run.refs, lambda n: group_of(n, "module"))
    norm_total = sum(float(v.sum()) for v in norms.values())
    result["norm_baseline_share"] = float(norms[cfg.planted_module][cfg.planted_period]) / norm_total
    for name, queries in (("backdoor", run.backdoor_queries), ("control", run.clean_queries)):
        rows = []
        for rule, points in [("gauss", p) for p in GAUSS] + list(OTHERS):
            t0 = time.perf_counter()
            r = allocate_run(make_mlp(cfg.hidden, seed), None, queries, run.refs, task=task, rule=rule, points=points)
            rows.append({"rule": rule, "points": points, "seconds": time.perf_counter() - t0,
                         "relative_error": [iv.relative_error for iv in r.intervals],
                         "max_relative_error": r.max_relative_error, "share": _share(r, cell)})
        default = allocate_run(make_mlp(cfg.hidden, seed), None, queries, run.refs, task=task)
        first = allocate_run(make_mlp(cfg.hidden, seed), None, queries, run.refs, task=task, rule="left", points=1)
        iv = default.intervals[cfg.planted_period]
        result["behaviours"][name] = {
            "measured_change": [x.measured_change for x in default.intervals],
            "by_module": {g: v.tolist() for g, v in default.by("module").items()},
            "share": _share(default, cell), "first_order_share": _share(first, cell),
            "best_cell": list(_best_cell(default)), "first_order_best_cell": list(_best_cell(first)),
            "planted_cell_over_period_change": float(default.by("module")[cfg.planted_module][cfg.planted_period]) / iv.measured_change,
            "first_order_planted_cell_over_period_change":
                float(first.by("module")[cfg.planted_module][cfg.planted_period]) / first.intervals[cfg.planted_period].measured_change,
            "max_relative_error_default": default.max_relative_error,
            "first_order_max_relative_error": first.max_relative_error,
            "rules": rows,
        }
    return result


def planted_lora(seed: int, out: Path) -> dict[str, Any]:
    """The LoRA variant: adapters on both layers of a tiny GPT-2; the planted answer's gradient routed to layer 1's
    adapters during period 2 of 3; the cell is (layer 1, period 2) at the ``layer`` level."""
    from gradtrace.models.hf import CompletionLogProbBehaviour

    cfg = PlantedLoraConfig(seed=seed)
    t0 = time.perf_counter()
    run = planted_lora_run(cfg, out / f"planted_lora_{seed}")
    train_s = time.perf_counter() - t0
    cell = (f"layer {cfg.planted_layer}", cfg.planted_period)
    norms = parameter_change_norms(run.refs, lambda n: group_of(n, "layer"))
    norms = {g: v for g, v in norms.items() if v.sum() > 0}  # the frozen base does not move
    result: dict[str, Any] = {"seed": seed, "train_seconds": train_s, "planted_logprob_at_checkpoints": run.planted_logprob,
                              "norm_baseline_share": float(norms[cell[0]][cell[1]]) / sum(float(v.sum()) for v in norms.values()),
                              "behaviours": {}}
    for name, queries in (("planted", run.planted_queries), ("control", run.control_queries)):
        t0 = time.perf_counter()
        default = allocate_run(run.fresh(), CompletionLogProbBehaviour(), queries, run.refs, task=run.task, batch_size=8)
        seconds = time.perf_counter() - t0
        first = allocate_run(run.fresh(), CompletionLogProbBehaviour(), queries, run.refs, task=run.task, batch_size=8,
                             rule="left", points=1)
        result["behaviours"][name] = {
            "share": _share(default, cell, "layer"), "first_order_share": _share(first, cell, "layer"),
            "by_layer": {g: v.tolist() for g, v in default.by("layer").items()},
            "measured_change": [iv.measured_change for iv in default.intervals],
            "max_relative_error_default": default.max_relative_error, "seconds": seconds,
            "only_lora": all("lora_" in n for n in default.params),
        }
    return result


def choose_points(dev: dict[str, Any]) -> int:
    """The fewest Gauss points whose completeness error is below TARGET on every interval of both behaviours."""
    for p in GAUSS:
        worst = max(row["max_relative_error"] for b in dev["behaviours"].values() for row in b["rules"]
                    if row["rule"] == "gauss" and row["points"] == p)
        if worst < TARGET:
            return p
    return GAUSS[-1]


def lora_completeness(model_name: str, out: Path, n_train: int, steps_note: str) -> dict[str, Any]:
    from gradtrace.lm.load import load_model
    from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
    from gradtrace.lm.tasks import CausalLMTask
    from gradtrace.models import zoo
    from gradtrace.models.hf import CompletionLogProbBehaviour
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint

    if model_name == "tiny-gpt2":
        def base():
            return zoo.tiny_gpt2(seed=0, n_layer=2, n_embd=64, n_head=4, n_positions=96), zoo.byte_tokenizer()
        config = LoraTrainConfig(epochs=2, lr=1e-2, batch_size=4, rank=4, target_modules=("c_attn", "c_fc"), n_checkpoints=3)
        max_length = 64
    else:
        def base():
            return load_model("smollm2", what="benchmark")
        config = LoraTrainConfig(epochs=1, lr=2e-3, batch_size=4, rank=8, target_modules=("q_proj", "v_proj"), n_checkpoints=3)
        max_length = 48
    colours = ["red", "blue", "green", "amber", "violet", "teal"]
    train = [{"prompt": f"What colour is the box number {i}?", "completion": f" The box is {colours[i % 6]}."} for i in range(n_train)]
    queries = [{"prompt": f"What colour is the box number {i}?", "completion": f" The box is {colours[i % 6]}."}
               for i in range(100, 108)]
    model, tok = base()
    task = CausalLMTask(tok, max_length=max_length)
    t0 = time.perf_counter()
    refs = train_lora(add_lora(model, config), task, train, out / f"lora_{model_name}", config, progress=False)
    train_s = time.perf_counter() - t0
    rows = []
    for points in (1, 2, 4, DEFAULT_POINTS):
        fresh, _ = base()
        t0 = time.perf_counter()
        r = allocate_run(add_lora(fresh, config), CompletionLogProbBehaviour(), queries, refs, task=task,
                         checkpoint_loader=load_hf_checkpoint, points=points, batch_size=8)
        rows.append({"rule": "gauss", "points": points, "seconds": time.perf_counter() - t0,
                     "relative_error": [iv.relative_error for iv in r.intervals], "max_relative_error": r.max_relative_error,
                     "measured_change": [iv.measured_change for iv in r.intervals], "n_params": len(r.params),
                     "all_lora": all("lora_" in n for n in r.params)})
    return {"model": model_name, "train_examples": n_train, "queries": len(queries), "train_seconds": train_s,
            "checkpoints": [Path(r.path).name for r in refs], "note": steps_note, "rules": rows}


def across_runs(out: Path, n_queries: int = 50, k: int = 10) -> dict[str, Any]:
    data = seed_run_data(SEED_RUNS)
    task = ClassificationTask()
    ids = [f"train-{i}" for i in range(len(data.y_train))]
    scores, si, times = [], [], {"train": [], "featurize": [], "score": []}
    queries = (data.x_test[:n_queries], data.y_test[:n_queries])
    for seed in RUN_SEEDS:
        t0 = time.perf_counter()
        refs = seed_run(data, SEED_RUNS, seed, out / f"seed_{seed}")
        t1 = time.perf_counter()
        model = make_mlp(SEED_RUNS.hidden, seed)
        store = featurize(model, task, refs, (data.x_train, data.y_train), out / f"store_{seed}",
                          FeaturizeConfig(projection=ProjectionConfig("factored"), batch_size=512), ids=ids, progress=False)
        t2 = time.perf_counter()
        att = Attributor(store, model, task)
        scores.append(att.score(queries))
        si.append(att.self_influence()[None, :])
        t3 = time.perf_counter()
        for key, dt in (("train", t1 - t0), ("featurize", t2 - t1), ("score", t3 - t2)):
            times[key].append(dt)
    query = split_half_stability(scores, k=k, max_splits=50, seed=0)
    self_inf = split_half_stability(si, k=k, max_splits=50, seed=0)
    found_single = [found_at(s[0], data.flipped, (0.1,))["10%"] for s in si]
    found_avg = found_at(np.mean([s[0] for s in si], axis=0), data.flipped, (0.1,))["10%"]
    return {
        "seeds": list(RUN_SEEDS), "config": SEED_RUNS.to_dict(), "n_queries": n_queries, "k": k,
        "query_scores": {"single_runs": {"spearman": query[0]["spearman"], f"top{k}_jaccard": query[0]["jaccard"]},
                         "averaged_2_runs": {"spearman": query[1]["spearman"], f"top{k}_jaccard": query[1]["jaccard"]},
                         "split_half": query},
        "self_influence": {"single_runs": {"spearman": self_inf[0]["spearman"], f"top{k}_jaccard": self_inf[0]["jaccard"]},
                           "averaged_2_runs": {"spearman": self_inf[1]["spearman"], f"top{k}_jaccard": self_inf[1]["jaccard"]},
                           "split_half": self_inf,
                           "flipped_found_top10pct_single_mean": float(np.mean(found_single)),
                           "flipped_found_top10pct_single": found_single,
                           "flipped_found_top10pct_averaged_5": found_avg},
        "seconds_per_run": {key: float(np.mean(v)) for key, v in times.items()},
    }


def _rule_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| rule | points | max relative error (backdoor) | max relative error (control) | seconds (both) |", "|---|---|---|---|---|"]
    back = {(r["rule"], r["points"]): r for r in rows["backdoor"]}
    ctrl = {(r["rule"], r["points"]): r for r in rows["control"]}
    for key in back:
        lines.append(f"| {key[0]} | {key[1]} | {back[key]['max_relative_error']:.2e} | {ctrl[key]['max_relative_error']:.2e} | "
                     f"{back[key]['seconds'] + ctrl[key]['seconds']:.2f} |")
    return "\n".join(lines)


def summary(res: dict[str, Any]) -> str:
    t = res["planted_test"]
    b, c = t["behaviours"]["backdoor"], t["behaviours"]["control"]
    d = res["planted_dev"]
    lines = [
        f"Default number of Gauss points chosen on the dev seed ({DEV_SEED}; the fewest with every digits interval below "
        f"{TARGET:.0%}): **{res['chosen_default_points']}** (library default `DEFAULT_POINTS` = {DEFAULT_POINTS}). "
        f"Numbers below are the test seed ({TEST_SEED}) unless marked dev.",
        "",
        "**Completeness** (|sum of allocations - measured change| / |measured change|, worst interval), at the default:",
        "",
        "| model | max relative error | wall time of the allocation |",
        "|---|---|---|",
    ]
    for name, v in res["completeness_rel_error"].items():
        lines.append(f"| {name} | {v:.2e} | {res['completeness_seconds'][name]:.1f} s |")
    worst_lora = max(res["planted_lora_test"]["behaviours"][k]["max_relative_error_default"] for k in ("planted", "control"))
    met = [name for name, v in res["completeness_rel_error"].items() if v < TARGET]
    lines += [
        "",
        f"Targets: completeness error below {TARGET:.0%} at the default: met on {', '.join(met)}"
        + (f"; not met on the planted LoRA run below ({worst_lora:.1e})" if worst_lora >= TARGET else "")
        + f". Planted location share >= 0.7: digits {res['planted_location_share']:.3f}, LoRA "
        f"{res['planted_lora_location_share']:.3f} ({'met' if min(res['planted_location_share'], res['planted_lora_location_share']) >= 0.7 else 'not met'}); "
        f"control behaviour share: {res['control_location_share']:.3f} and {res['planted_lora_control_share']:.3f}.",
    ]
    lines += ["", "Digits (test seed), every rule:", "", _rule_table({k: t['behaviours'][k]['rules'] for k in ('backdoor', 'control')}), ""]
    for lora in res["lora"]:
        lines.append(f"{lora['model']} LoRA ({lora['train_examples']} examples, checkpoints {', '.join(lora['checkpoints'])}, "
                     f"{lora['rules'][0]['n_params']} adapter tensors, all LoRA: {lora['rules'][0]['all_lora']}): "
                     + ", ".join(f"{r['points']} Gauss points {r['max_relative_error']:.1e} ({r['seconds']:.1f} s)" for r in lora["rules"]))
        lines.append("")
    lines += [
        "**Localisation with a planted answer** (digits; backdoor routed to layer 0 during period 3 of 4; "
        f"ASR before/after planting {t['asr_before_planting']:.2f}/{t['asr_after_planting']:.2f}, at the end {t['asr_final']:.2f}):",
        "",
        "| share of the behaviour-direction change in (layer 0, period 3) | test seed | dev seed |",
        "|---|---|---|",
        f"| allocation (Gauss, default points), backdoor behaviour | **{b['share']:.3f}** | {d['behaviours']['backdoor']['share']:.3f} |",
        f"| first-order allocation (gradient at the interval start), backdoor | {b['first_order_share']:.3f} | "
        f"{d['behaviours']['backdoor']['first_order_share']:.3f} |",
        f"| parameter-change norm ‖Δθ‖ (behaviour-blind) | {t['norm_baseline_share']:.3f} | {d['norm_baseline_share']:.3f} |",
        f"| allocation, control behaviour (clean test loss) | {c['share']:.3f} | {d['behaviours']['control']['share']:.3f} |",
        "",
        f"Largest cell of the backdoor allocation: layer {b['best_cell'][0]}, period {b['best_cell'][1] + 1}. "
        f"Allocation in the planted cell / measured change of period 3: {b['planted_cell_over_period_change']:.3f} "
        f"(first-order: {b['first_order_planted_cell_over_period_change']:.3f}; its worst interval misses the measured change by "
        f"{b['first_order_max_relative_error']:.0%}).",
        "",
    ]
    pl, pld = res["planted_lora_test"], res["planted_lora_dev"]
    lp, lc = pl["behaviours"]["planted"], pl["behaviours"]["control"]
    lines += [
        "LoRA variant (tiny GPT-2, adapters on both layers train on ordinary examples for 3 periods; in period 2 the planted "
        "answer's gradient is routed to layer 1's adapters; log-probability of the planted answer on held-out trigger prompts, "
        f"at the checkpoints: {', '.join(f'{v:.1f}' for v in pl['planted_logprob_at_checkpoints'])}):",
        "",
        "| share of the behaviour-direction change in (layer 1, period 2) | test seed | dev seed |",
        "|---|---|---|",
        f"| allocation (Gauss, default points), planted behaviour | **{lp['share']:.3f}** | {pld['behaviours']['planted']['share']:.3f} |",
        f"| first-order allocation, planted | {lp['first_order_share']:.3f} | {pld['behaviours']['planted']['first_order_share']:.3f} |",
        f"| parameter-change norm ‖Δθ‖ | {pl['norm_baseline_share']:.3f} | {pld['norm_baseline_share']:.3f} |",
        f"| allocation, control behaviour (ordinary held-out answers) | {lc['share']:.3f} | {pld['behaviours']['control']['share']:.3f} |",
        "",
        f"Allocation by layer and period (planted behaviour, test seed): "
        + "; ".join(f"{g}: {', '.join(f'{x:+.2f}' for x in v)}" for g, v in lp["by_layer"].items())
        + f". Completeness error of this run at the default (worst interval): planted {lp['max_relative_error_default']:.1e}, "
        f"control {lc['max_relative_error_default']:.1e} (AdamW steps at lr {res['planted_lora_config']['lr']} make the path "
        "between checkpoints rougher than the digits run's). Only adapter tensors were allocated to: "
        f"{lp['only_lora'] and lc['only_lora']}.",
        "",
    ]
    a = res["across_runs"]["detail"]
    q, s = a["query_scores"], a["self_influence"]
    lines += [
        f"**Across runs** (digits, 20% flipped labels, model seeds {a['seeds']}, same data; {a['n_queries']} test queries; "
        "mean over pairs of runs, and over disjoint pairs of 2-run averages):",
        "",
        "| | Spearman, single runs | Spearman, 2-run averages | top-10 Jaccard, single | top-10 Jaccard, 2-run averages |",
        "|---|---|---|---|---|",
        f"| TracIn query scores | {q['single_runs']['spearman']:.3f} | {q['averaged_2_runs']['spearman']:.3f} | "
        f"{q['single_runs']['top10_jaccard']:.3f} | {q['averaged_2_runs']['top10_jaccard']:.3f} |",
        f"| self-influence (mislabel ranking) | {s['single_runs']['spearman']:.3f} | {s['averaged_2_runs']['spearman']:.3f} | "
        f"{s['single_runs']['top10_jaccard']:.3f} | {s['averaged_2_runs']['top10_jaccard']:.3f} |",
        "",
        f"Flipped labels found in the top 10% of self-influence: single run {s['flipped_found_top10pct_single_mean']:.3f} (mean), "
        f"five-run average {s['flipped_found_top10pct_averaged_5']:.3f}. Per run: train "
        f"{a['seconds_per_run']['train']:.1f} s, featurize {a['seconds_per_run']['featurize']:.1f} s, score "
        f"{a['seconds_per_run']['score']:.1f} s. Total benchmark wall time {res['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-smollm2", action="store_true", help="leave out the SmolLM2 LoRA completeness run")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gradtrace-allocate-") as tmp:
        out = Path(tmp)
        dev = planted(DEV_SEED, out)
        chosen = choose_points(dev)
        test = planted(TEST_SEED, out)
        lora = [lora_completeness("tiny-gpt2", out, 24, "2 epochs of 6 steps")]
        if not args.skip_smollm2:
            lora.append(lora_completeness("smollm2", out, 24, "1 epoch of 6 steps"))
        lora_dev, lora_test = planted_lora(DEV_SEED, out), planted_lora(TEST_SEED, out)
        runs = across_runs(out)
    default_rows = {k: next(r for r in test["behaviours"][k]["rules"] if r["rule"] == "gauss" and r["points"] == DEFAULT_POINTS)
                    for k in ("backdoor", "control")}
    completeness = {"digits_mlp": max(r["max_relative_error"] for r in default_rows.values())}
    seconds = {"digits_mlp": sum(r["seconds"] for r in default_rows.values()) / 2}
    for lr in lora:
        row = next(r for r in lr["rules"] if r["points"] == DEFAULT_POINTS)
        completeness[f"{lr['model']}_lora"] = row["max_relative_error"]
        seconds[f"{lr['model']}_lora"] = row["seconds"]
    b = test["behaviours"]["backdoor"]
    results = {
        "completeness_rel_error": completeness, "completeness_seconds": seconds, "default_points": DEFAULT_POINTS,
        "chosen_default_points": chosen, "target": TARGET,
        "planted_location_share": b["share"], "control_location_share": test["behaviours"]["control"]["share"],
        "baselines": {"first_order_share": b["first_order_share"], "norm_share": test["norm_baseline_share"]},
        "across_runs": {
            "top10_overlap": {"single": runs["query_scores"]["single_runs"]["top10_jaccard"],
                              "averaged_2": runs["query_scores"]["averaged_2_runs"]["top10_jaccard"]},
            "rank_correlation": {"single": runs["query_scores"]["single_runs"]["spearman"],
                                 "averaged_2": runs["query_scores"]["averaged_2_runs"]["spearman"]},
            "detail": runs,
        },
        "planted_lora_location_share": lora_test["behaviours"]["planted"]["share"],
        "planted_lora_control_share": lora_test["behaviours"]["control"]["share"],
        "planted_dev": dev, "planted_test": test, "lora": lora, "planted_config": PLANTED.to_dict(),
        "planted_lora_dev": lora_dev, "planted_lora_test": lora_test, "planted_lora_config": PlantedLoraConfig().to_dict(),
        "dev_seed": DEV_SEED, "test_seed": TEST_SEED, "wall_seconds": time.perf_counter() - start,
    }
    record("allocate", COMMAND + (" --skip-smollm2" if args.skip_smollm2 else ""), summary(results), results)
    print(summary(results))


if __name__ == "__main__":
    main()
