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

Run: python benchmarks/drift_loop.py  (20 to 40 minutes on 2 CPU cores;
``python benchmarks/drift_loop.py a`` or ``b`` runs one part and only prints)
"""

from __future__ import annotations

import json
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


def main() -> None:
    only = sys.argv[1] if len(sys.argv) > 1 else None  # "a" or "b": one part, printed, not recorded
    work = Path(tempfile.mkdtemp(prefix="drift_loop_"))
    results: dict = {"rounds": ROUNDS, "tail_margin_nats": MARGIN}
    timings: dict = {}
    if only in (None, "a"):
        part_a(work, results, timings)
    if only in (None, "b"):
        part_b(work, results, timings)
    if only is not None:
        print(json.dumps(results, indent=1))
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
