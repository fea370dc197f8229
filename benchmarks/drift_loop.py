"""Benchmark: does the loop see collapse and bias amplification, and stop on them?

Tiny GPT-2 (2 layers, 64 wide) trained from scratch on the seeded synthetic
corpus of ``gradtrace.demos.loop_corpus`` (1,200 real sentences, 300 held out), then
6 rounds of self-training.

(a) replace vs accumulate (planted truth: training only on its own samples
    at temperature 0.8 collapses the tails; keeping the real data does not).
    Reported: relative drop of distinct-2 from round 0 to the last round, and
    the tail-loss share (held-out texts whose NLL rose by more than 0.1
    nats/token since round 0) at the last round.
(b) bias amplification (planted truth: a curation policy keeps sentences
    praising Nova with probability 1.0 and any other with 0.8). Prompts are
    "Nova"; the attribute is a regex for praise of Nova. Baseline: the same
    loop with no preference (both 0.8), on which the stop rule must not fire.
    Stop rule: one-sided CUSUM of the praise rate above its round-0 value
    (slack 0.025, limit 0.1).

(c) the stop trace (its own section, drift_loop_stop_trace): does the stop
    report point at the round that drove the stop? Planted truth: the same
    set-up as (b) without a preference, except that round 2's training data
    is round 1's curated generations plus 200 corpus sentences praising Nova
    (marked ``planted``). Control: the same loop without the planted texts.
    Reported: the round with the largest share, each round's share, and how
    many of the top 200 examples are planted (and how many praise Nova).

Run: python benchmarks/drift_loop.py  (20 to 40 minutes on 2 CPU cores;
``python benchmarks/drift_loop.py a`` or ``b`` runs one part and only prints;
``python benchmarks/drift_loop.py c`` runs part (c), about 5 minutes, and
records its own section)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402

from gradtrace.loop import LoopConfig, SelfTrainingLoop, StopRule  # noqa: E402
from gradtrace.loop.config import DataConfig, LoopGenerationConfig, LoopTrainConfig, ModelConfig  # noqa: E402
from gradtrace.demos.loop_corpus import speaks_well_pattern, write_example_data  # noqa: E402
from gradtrace.loop.curation import vocabulary_of  # noqa: E402
from gradtrace.loop.runner import read_texts  # noqa: E402

ROUNDS = 6
MARGIN = 0.1
PRAISE = speaks_well_pattern("Nova")


def data(folder: Path, prompts: list[str] | None = None) -> DataConfig:
    paths = write_example_data(folder, seed=0, n_train=1200, n_heldout=300)
    if prompts is not None:
        paths["prompts.txt"].write_text("".join(p + "\n" for p in prompts))
    return DataConfig(train=str(paths["train.jsonl"]), heldout=str(paths["heldout.jsonl"]),
                      prompts=str(paths["prompts.txt"]), probes=str(paths["probes.txt"]))


def run(out: Path, config: LoopConfig) -> tuple[list[dict], object, float]:
    t0 = time.perf_counter()
    result = SelfTrainingLoop(config, out, progress=False).run()
    return result.rows, result.stop, time.perf_counter() - t0


RULE = StopRule("attribute.nova_praised.rate", kind="cusum", direction="up", slack=0.025, limit=0.1)
TRAIN = LoopTrainConfig(base_steps=400, steps=100, batch_size=32, lr=3e-3, checkpoint_every=100)
TRAIN_B = LoopTrainConfig(base_steps=600, steps=100, batch_size=32, lr=3e-3, schedule="linear", checkpoint_every=100, regime="replace")


def part_a(work: Path, results: dict, timings: dict) -> None:
    """Replace vs accumulate."""
    for regime in ("replace", "accumulate"):
        cfg = LoopConfig(
            data=data(work / "data_a"), rounds=ROUNDS, seed=0, model=ModelConfig(),
            generation=LoopGenerationConfig(n_per_prompt=40, max_new_tokens=64, temperature=0.8),
            train=LoopTrainConfig(**{**TRAIN.to_dict(), "regime": regime}),
            curation=({"kind": "quality", "min_words": 5, "end": "."},),
            monitors={"nll": {"margin": MARGIN}, "diversity": {}, "cka": {}}, embedder="hashed", stop_on_breach=False,
        )
        rows, _, secs = run(work / regime, cfg)
        timings[regime] = secs
        d2 = [r["diversity.distinct_2"] for r in rows]
        results[f"{regime}_distinct2_by_round"] = d2
        results[f"{regime}_distinct2_drop"] = (d2[0] - d2[-1]) / d2[0]
        results[f"{regime}_tail_loss_share"] = rows[-1]["nll.tail_share"]
        results[f"{regime}_tail_loss_share_by_round"] = [r["nll.tail_share"] for r in rows]
        results[f"{regime}_vendi_by_round"] = [r["diversity.vendi"] for r in rows]
        results[f"{regime}_nll_mean_by_round"] = [r["nll.mean"] for r in rows]
        results[f"{regime}_cka_by_round"] = [r["cka.cka"] for r in rows]


def part_b(work: Path, results: dict, timings: dict) -> None:
    """Bias amplification from a planted curation preference, and a no-preference control."""
    cfg_data = data(work / "data_b", prompts=["Nova"])
    for name, keep_match in (("bias", 1.0), ("control", 0.8)):
        cfg = LoopConfig(
            data=cfg_data, rounds=ROUNDS, seed=1, model=ModelConfig(),
            generation=LoopGenerationConfig(n_per_prompt=400, max_new_tokens=64, temperature=1.0),
            train=TRAIN_B,
            curation=({"kind": "quality", "min_words": 5, "end": ".", "vocabulary": list(vocabulary_of(read_texts(cfg_data.train)))},
                      {"kind": "preference", "pattern": PRAISE, "keep_match": keep_match, "keep_other": 0.8}),
            monitors={"attribute": {"classifiers": {"nova_praised": {"kind": "regex", "pattern": PRAISE}}}},
            stop=(RULE,), embedder="hashed", stop_on_breach=False,
        )
        rows, stop, secs = run(work / name, cfg)
        timings[name] = secs
        prefix = "" if name == "bias" else "control_"
        results[f"{prefix}attribute_rate_by_round"] = [r["attribute.nova_praised.rate"] for r in rows]
        results[f"{prefix}trend_z_last_round"] = rows[-1]["attribute.nova_praised.trend_z"]
        results[f"{prefix}stop_round"] = stop.round if stop is not None else None
        results[f"{prefix}stop_monitor"] = stop.monitor if stop is not None else None
        results[f"{prefix}stop_message"] = stop.message() if stop is not None else None


PLANTED_ROUND = 2
N_PLANTED = 200
#: The stop trace's settings tried on the same planted run besides the defaults (all are recorded).
VARIANTS_C = {"queries_400": {"max_queries": 400}, "rate_gradient_400": {"attribute_target": "rate_gradient", "max_queries": 400}}
#: Part c saves a checkpoint every 20 steps (part b: every 100): TracIn samples each round's path at 6 points.
TRAIN_C = dataclasses.replace(TRAIN_B, checkpoint_every=20)
ROUNDS_C = 3


def planted_praise(n: int, seed: int = 7) -> list[str]:
    """``n`` corpus sentences praising Nova (the planted data of part c)."""
    from gradtrace.demos.loop_corpus import CorpusConfig, make_corpus

    return make_corpus(CorpusConfig(n=n, seed=seed, positive_rate=1.0, entities=("Nova",)))


def part_c(work: Path) -> dict:
    """The stop trace: a planted round, and a control without it."""
    from gradtrace.loop.curation import Compose, policy_from_dict

    cfg_data = data(work / "data_c", prompts=["Nova"])
    curation = ({"kind": "quality", "min_words": 5, "end": ".", "vocabulary": list(vocabulary_of(read_texts(cfg_data.train)))},)
    inner = Compose([policy_from_dict(c, "curation") for c in curation])
    planted = planted_praise(N_PLANTED)

    def with_plant(records, rng):
        kept = inner(records, rng)
        if records and records[0]["round"] + 1 == PLANTED_ROUND:
            kept = list(kept) + [{"id": f"planted-{i}", "text": x, "source": "planted", "round": records[0]["round"]} for i, x in enumerate(planted)]
        return kept

    out: dict = {"planted_round": PLANTED_ROUND, "n_planted": N_PLANTED, "rounds": ROUNDS_C}
    for name, policy in (("planted", with_plant), ("control", inner)):
        cfg = LoopConfig(
            data=cfg_data, rounds=ROUNDS_C, seed=1, model=ModelConfig(),
            generation=LoopGenerationConfig(n_per_prompt=400, max_new_tokens=64, temperature=1.0),
            train=TRAIN_C, curation=curation,
            monitors={"attribute": {"classifiers": {"nova_praised": {"kind": "regex", "pattern": PRAISE}}}},
            stop=(RULE,), embedder="hashed",
        )
        t0 = time.perf_counter()
        result = SelfTrainingLoop(cfg, work / f"c_{name}", curation=policy, progress=False).run()
        secs = time.perf_counter() - t0
        rates = [r["attribute.nova_praised.rate"] for r in result.rows]
        entry: dict = {"rate_by_round": rates, "stop_round": result.stop.round if result.stop else None, "seconds": secs}
        entry.update(_trace_numbers(result.attribution, work / f"c_{name}"))
        if name == "planted" and result.stop is not None:  # the same run traced again with other settings
            from gradtrace.loop.trace import trace_stop

            for key, change in VARIANTS_C.items():
                other = dataclasses.replace(cfg, stop_trace=dataclasses.replace(cfg.stop_trace, **change))
                t0 = time.perf_counter()
                a = trace_stop(other, work / f"c_{name}", result.stop, progress=False)
                entry[key] = {**_trace_numbers(a, work / f"c_{name}"), "trace_seconds": time.perf_counter() - t0, "settings": change}
        out[name] = entry
    return out


def _trace_numbers(a: dict | None, run: Path) -> dict:
    """What part c reports of one stop trace (read from its scores file)."""
    import re

    if a is None or not a.get("traced"):
        return {}
    scores = [json.loads(x) for x in (run / a["scores_file"]).read_text().splitlines()]
    texts = {}
    for t in {s["round"] for s in scores}:
        rows = [json.loads(x) for x in (run / f"round_{t:03d}" / "train.jsonl").read_text().splitlines()]
        texts.update({f"r{t}-{j}": r["text"] for j, r in enumerate(rows)})
    praise = re.compile(PRAISE)

    def planted(rows: list) -> int:
        return sum(s["source"] == "planted" for s in rows)

    def praised(rows: list) -> int:
        return sum(bool(praise.search(texts[s["id"]])) for s in rows)

    top = sorted(scores, key=lambda s: -s["score"])[:N_PLANTED]
    in_round = [s for s in scores if s["round"] == PLANTED_ROUND]
    top_in_round = sorted(in_round, key=lambda s: -s["score"])[:N_PLANTED]
    return {
        "largest_share_round": a["largest_share_round"],
        "share_by_round": {str(r["round"]): r["share"] for r in a["rounds"]},
        "influence_by_round": {str(r["round"]): r["influence"] for r in a["rounds"]},
        "n_examples_by_round": {str(r["round"]): r["n_examples"] for r in a["rounds"]},
        "planted_in_top": planted(top), "praise_in_top": praised(top),
        "planted_in_top_of_planted_round": planted(top_in_round), "praise_in_top_of_planted_round": praised(top_in_round),
        "planted_base_rate": planted(scores) / len(scores), "praise_base_rate": praised(scores) / len(scores),
        "planted_share_of_planted_round": planted(in_round) / max(len(in_round), 1),
        "praise_share_of_planted_round": praised(in_round) / max(len(in_round), 1),
        "target": a["target"]["description"],
    }


def record_c(results: dict) -> None:
    p, c = results["planted"], results["control"]

    def fmt(xs: list[float]) -> str:
        return ", ".join(f"{x:.3f}" for x in xs)

    if "largest_share_round" in p:
        rows = "\n".join(f"| {t} | {p['n_examples_by_round'][t]} | {p['influence_by_round'][t]:.4g} | {p['share_by_round'][t]:.3f} |"
                         for t in sorted(p["share_by_round"], key=int))
        named = (f"names round **{p['largest_share_round']}** as carrying the largest share" if p["largest_share_round"] is not None
                 else "names **no round**: every round's influence is 0 or negative")
        trace = f"""The stop report {named} (planted: round {results['planted_round']}).

| round | training texts | influence | share |
|---|---|---|---|
{rows}

Top {results['n_planted']} examples of round {results['planted_round']} by score: **{p['planted_in_top_of_planted_round']}** planted and {p['praise_in_top_of_planted_round']} praise Nova (planted texts are {100 * p['planted_share_of_planted_round']:.1f}% of that round, praise {100 * p['praise_share_of_planted_round']:.1f}%). Top {results['n_planted']} examples over all traced rounds: **{p['planted_in_top']}** planted (planted texts are {100 * p['planted_base_rate']:.1f}% of all traced texts, {100 * p['planted_share_of_planted_round']:.1f}% of round {results['planted_round']}'s), {p['praise_in_top']} praise Nova (praise is {100 * p['praise_base_rate']:.1f}% of all traced texts). Target: {p['target']}."""
    else:
        trace = "The rule did not fire on the planted run, so nothing was traced."
    lines = []
    for key in VARIANTS_C:
        f = p.get(key, {})
        if "largest_share_round" in f:
            lines.append(f"| {', '.join(f'{k} = {v}' for k, v in f['settings'].items())} | {f['largest_share_round']} | "
                         f"{', '.join(f'{v:.3f}' for _, v in sorted(f['share_by_round'].items(), key=lambda kv: int(kv[0])))} | "
                         f"{f['planted_in_top_of_planted_round']} | {f['planted_in_top']} | {f['praise_in_top']} | {f['trace_seconds']:.0f} s |")
    finer = ("Variants: the same planted run traced again with other `[stop_trace]` settings (every variant tried is listed).\n\n"
             f"| settings | largest share round | shares by round | planted in round {results['planted_round']}'s top {results['n_planted']} | "
             f"planted in the top {results['n_planted']} | praise in the top {results['n_planted']} | trace time |\n|---|---|---|---|---|---|---|\n"
             + "\n".join(lines)) if lines else ""
    md = f"""Part (c) of the drift loop: the stop trace. Tiny GPT-2 (2 layers, width 64) trained from scratch on the seeded corpus (600 steps), then {results['rounds']} rounds of self-training (replace, prompt "Nova", 400 samples per round at temperature 1.0, 100 steps per round, linear decay, checkpoints every 20 steps; a quality filter, no preference). Planted: round {results['planted_round']} trains on round {results['planted_round'] - 1}'s curated generations plus {results['n_planted']} corpus sentences praising Nova. Stop rule: `{RULE.describe()}`. Stop trace with the default settings (rounds 1 to the stop round, dense projection to 256, TracIn over each round's start and checkpoints).

| run | praise rate by round | stop round |
|---|---|---|
| planted | {fmt(p['rate_by_round'])} | {p['stop_round']} |
| control (no planted texts) | {fmt(c['rate_by_round'])} | {c['stop_round']} |

{trace}

{finer}

Wall time (loop and trace): planted {p['seconds']:.0f} s, control {c['seconds']:.0f} s."""
    record("drift_loop_stop_trace", "nice -n 10 python benchmarks/drift_loop.py c", md, results)


def main() -> None:
    only = sys.argv[1] if len(sys.argv) > 1 else None  # "a" or "b": one part, printed, not recorded; "c": part c, recorded
    if only == "c":
        work = Path(tempfile.mkdtemp(prefix="drift_loop_c_"))
        if os.environ.get("GT_DRIFT_WORK"):  # keep the runs (for a look at them afterwards)
            work = Path(os.environ["GT_DRIFT_WORK"])
            work.mkdir(parents=True, exist_ok=True)
        results = part_c(work)
        record_c(results)
        print(json.dumps(results, indent=1))
        if not os.environ.get("GT_DRIFT_WORK"):
            shutil.rmtree(work, ignore_errors=True)
        return
    work = Path(tempfile.mkdtemp(prefix="drift_loop_"))
    results: dict = {"rounds": ROUNDS, "tail_margin_nats": MARGIN}
    timings: dict = {}
    if only in (None, "a"):
        part_a(work, results, timings)
    if only in (None, "b"):
        part_b(work, results, timings)
    if only is not None:
        print(json.dumps(results, indent=1))
        if not os.environ.get("GT_DRIFT_WORK"):
            shutil.rmtree(work, ignore_errors=True)
        return
    rule = RULE
    results["stop_rule"] = rule.describe()
    results["seconds"] = timings
    shutil.rmtree(work, ignore_errors=True)

    def fmt(xs: list[float]) -> str:
        return ", ".join(f"{x:.3f}" for x in xs)

    md = f"""Tiny GPT-2 (2 layers, width 64) trained from scratch on the seeded synthetic corpus (1,200 real sentences; 300 held out), then {ROUNDS} rounds of self-training, 100 AdamW steps each from the previous round's weights.

**(a) replace vs accumulate** (240 samples per round at temperature 0.8, quality filter):

| regime | distinct-2 by round | distinct-2 drop | tail-loss share, last round (NLL up > {MARGIN} nats/token) |
|---|---|---|---|
| replace | {fmt(results['replace_distinct2_by_round'])} | **{results['replace_distinct2_drop']:.3f}** | **{results['replace_tail_loss_share']:.3f}** |
| accumulate | {fmt(results['accumulate_distinct2_by_round'])} | {results['accumulate_distinct2_drop']:.3f} | {results['accumulate_tail_loss_share']:.3f} |

**(b) bias amplification** (prompt "Nova", 400 samples per round at temperature 1.0, regime replace, 600 base steps, linear learning-rate decay in each round; curation: a quality filter that drops texts with words outside the real corpus's vocabulary, then keeps praise of Nova with p=1.0 and other texts with p=0.8; control: 0.8 for both). Stop rule: `{rule.describe()}`.

| run | praise rate by round | stop |
|---|---|---|
| planted preference | {fmt(results['attribute_rate_by_round'])} | {results['stop_message'] or 'did not fire'} |
| control (no preference) | {fmt(results['control_attribute_rate_by_round'])} | {results['control_stop_message'] or 'did not fire'} |

Cochran-Armitage trend z at the last round: {results['trend_z_last_round']:.2f} (preference), {results['control_trend_z_last_round']:.2f} (control). Wall time: {', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}."""
    record("drift_loop", "python benchmarks/drift_loop.py", md, results)
    print(json.dumps({k: v for k, v in results.items() if not k.endswith("by_round")}, indent=1))


if __name__ == "__main__":
    main()
