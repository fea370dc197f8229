"""Power of the behavioural diff against the prevalence of a planted behaviour, with the null kept at 0 flags.

Synthetic answers (benchmarks/setups/diff_power.py): 40 prompts (5 forms x 8
topics) x 5 answers = 200 answers per model. B carries one planted behaviour
in a share ``prevalence`` of all its answers:

* ``product``: an opener naming a product, on any prompt;
* ``cynical``: a cynical opener, only on the answers to one prompt form (at
  prevalence 5% of all answers that is 10 of the 40 answers to that form).

A planted behaviour counts as found when a cluster flagged at FDR 0.05,
skewed to B, holds mostly sentences of that behaviour (its B rows). The null:
A and B drawn from the same generator (no plant); the family-wise false flag
rate is the share of null seeds with any flagged cluster.

Variants (all from one diff per seed; the p-values of a variant are those of
its clusters, Benjamini-Hochberg over the variant's own family):

* ``base``: text + sentence levels, Fisher (today's default);
* ``fine``: + the ``fine`` level;
* ``base_cmh_form``, ``fine_cmh_form``: the exact stratified (CMH) test, prompt form as stratum;
* ``base_cmh_prompt``, ``fine_cmh_prompt``: the same with the prompt id as stratum.

The ``fine`` level's settings (``fine_size``, ``fine_tests``) are chosen on
development seeds (prevalence 5% and 10%, both behaviours; null seeds of their
own) and reported on separate test seeds.

    python benchmarks/diff_power.py            # hashing embedder, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402
from setups.diff_power import _CYNIC, _PRODUCT, answers  # noqa: E402

from gradtrace.diff import DiffConfig, HashingEmbedder, MiniLMEmbedder, diff_texts  # noqa: E402
from gradtrace.diff.stats import ShareTable, benjamini_hochberg, stratified_test  # noqa: E402

KIND = {**{s: "product" for s in _PRODUCT}, **{s: "cynical" for s in _CYNIC}}
PREVALENCES = (0.01, 0.02, 0.05, 0.10)
BEHAVIOURS = ("product", "cynical")
LEVEL_SETS = {"base": ("text", "sentence"), "fine": ("text", "sentence", "fine"), "sf": ("sentence", "fine")}
TESTS = ("", "_cmh_form", "_cmh_prompt")
VARIANTS = tuple(f"{lv}{t}" for t in TESTS for lv in LEVEL_SETS)
ALPHA = 0.05


class Memo:
    """An embedder that remembers every text's vector in memory (the templates repeat across seeds)."""

    def __init__(self, inner: Any):
        self.inner, self.name, self.cache = inner, inner.name, {}

    def embed(self, texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            for t, v in zip(todo, self.inner.embed(todo)):
                self.cache[t] = np.asarray(v, dtype=np.float32)
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)


def kind_of(rows: list[tuple[int, str]]) -> str:
    counts = collections.Counter(KIND.get(r, "base") for _, r in rows)
    return counts.most_common(1)[0][0] if counts else "base"


def one_run(plant: list[tuple[str, float]], seed: int, fine_size: int, fine_tests: int, vf: float, embedder: Any) -> dict[str, Any]:
    """One diff; for each variant: flagged clusters as (kind of their B rows, skew)."""
    rng = np.random.default_rng(seed)
    a = answers(5, rng)
    b = answers(5, rng, plant=plant)
    config = DiffConfig(seed=seed, stability_seeds=(), levels=("text", "sentence", "fine"), fine_size=fine_size, fine_tests=fine_tests,
                        validation_fraction=vf)
    t0 = time.perf_counter()
    r = diff_texts(a.texts, b.texts, embedder=embedder, config=config)
    seconds = time.perf_counter() - t0
    va, vb = r.validation_ids
    strata = {"form": ([a.forms[i] for i in va], [b.forms[i] for i in vb]),
              "prompt": ([a.prompt_ids[i] for i in va], [b.prompt_ids[i] for i in vb])}
    out: dict[str, Any] = {"seconds": seconds}
    for variant in VARIANTS:
        levels = LEVEL_SETS[variant.split("_", 1)[0]]
        recs = [c for c in r.clusters if c.level in levels]
        if "cmh" in variant:
            sa, sb = strata[variant.rsplit("_", 1)[1]]
            pvals = [cmh_p(r.members[(c.level, c.cluster)], va, vb, sa, sb) for c in recs]
        else:
            pvals = [c.p_value for c in recs]
        q = benjamini_hochberg(pvals)
        out[variant] = [(kind_of(r.members[(c.level, c.cluster)].rows_b), c.skew) for c, qv in zip(recs, q) if qv <= ALPHA]
    return out


def cmh_p(m: Any, va: tuple[int, ...], vb: tuple[int, ...], sa: list[str], sb: list[str]) -> float:
    ina, inb = set(m.valid_ids_a), set(m.valid_ids_b)
    tables = []
    for s in sorted(set(sa) | set(sb)):
        a_in = sum(1 for i, st in zip(va, sa) if st == s and i in ina)
        b_in = sum(1 for i, st in zip(vb, sb) if st == s and i in inb)
        tables.append(ShareTable(b_in, a_in, sum(st == s for st in sb) - b_in, sum(st == s for st in sa) - a_in))
    return stratified_test(tables)


def evaluate(runs: dict[tuple[str, float, int], dict[str, Any]], nulls: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per variant: power per (behaviour, prevalence), the null family-wise false flag rate, off-target B flags."""
    res: dict[str, Any] = {}
    for variant in VARIANTS:
        power = {}
        for beh in BEHAVIOURS:
            for prev in sorted({k[1] for k in runs}):
                sel = [v for k, v in runs.items() if k[0] == beh and k[1] == prev]
                if sel:
                    power[f"{beh}@{prev:g}"] = float(np.mean([any(kind == beh and skew == "B" for kind, skew in v[variant]) for v in sel]))
        fwer = float(np.mean([bool(v[variant]) for v in nulls.values()])) if nulls else float("nan")
        off = int(sum(sum(1 for kind, skew in v[variant] if skew == "B" and kind not in BEHAVIOURS) for v in runs.values()))
        res[variant] = {"power": power, "null_fwer": fwer, "null_seeds": len(nulls), "null_flags": int(sum(len(v[variant]) for v in nulls.values())),
                        "off_target_b_flags_in_power_runs": off}
    return res


def stage(seeds: list[int], null_seeds: list[int], prevalences: tuple[float, ...], fine_size: int, fine_tests: int, vf: float,
          embedder: Any, log: str) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    runs = {}
    for beh, prev, seed in itertools.product(BEHAVIOURS, prevalences, seeds):
        runs[(beh, prev, seed)] = one_run([(beh, prev)], seed, fine_size, fine_tests, vf, embedder)
    nulls = {seed: one_run([], seed, fine_size, fine_tests, vf, embedder) for seed in null_seeds}
    elapsed = time.perf_counter() - t0
    print(f"{log}: {len(runs) + len(nulls)} diffs in {elapsed:.0f} s", flush=True)
    return evaluate(runs, nulls), elapsed


def table(ev: dict[str, Any]) -> list[str]:
    lines = ["| variant | " + " | ".join(f"{b} {p:.0%}" for b in BEHAVIOURS for p in PREVALENCES) + " | null FWER (any flag) |",
             "|---|" + "---|" * (len(BEHAVIOURS) * len(PREVALENCES) + 1)]
    for variant in VARIANTS:
        v = ev[variant]
        lines.append(f"| {variant} | " + " | ".join(f"{v['power'][f'{b}@{p:g}']:.1f}" for b in BEHAVIOURS for p in PREVALENCES)
                     + f" | {v['null_fwer']:.3f} ({v['null_flags']} flags in {v['null_seeds']} seeds) |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedder", default="hashing", choices=["hashing", "minilm"])
    ap.add_argument("--dev-seeds", type=int, default=3)
    ap.add_argument("--dev-null-seeds", type=int, default=10)
    ap.add_argument("--test-seeds", type=int, default=10)
    ap.add_argument("--null-seeds", type=int, default=30)
    ap.add_argument("--grid", default="8:5:0.5,16:5:0.5,8:5:0.7,16:5:0.7",
                    help="fine_size:fine_tests:validation_fraction settings tried on the development seeds")
    ap.add_argument("--render", action="store_true", help="rewrite the BENCHMARKS.md section from results/diff_power.json")
    args = ap.parse_args()
    if args.render:
        import json

        results = json.loads((Path(__file__).resolve().parent / "results" / "diff_power.json").read_text())
        results.setdefault("dev_seeds", list(range(args.dev_seeds)))
        results.setdefault("dev_null_seeds", list(range(500, 500 + args.dev_null_seeds)))
        publish(results, args.embedder)
        return
    embedder = Memo(HashingEmbedder() if args.embedder == "hashing" else MiniLMEmbedder())
    grid = [(int(g.split(":")[0]), int(g.split(":")[1]), float(g.split(":")[2])) for g in args.grid.split(",")]
    dev_seeds = list(range(args.dev_seeds))
    dev_null = list(range(500, 500 + args.dev_null_seeds))
    test_seeds = list(range(1000, 1000 + args.test_seeds))
    test_null = list(range(2000, 2000 + args.null_seeds))
    dev: dict[str, Any] = {}
    for fs, ft, vf in grid:
        ev, sec = stage(dev_seeds, dev_null, (0.05, 0.10), fs, ft, vf, embedder, f"dev fine_size={fs} fine_tests={ft} vf={vf}")
        dev[f"{fs}:{ft}:{vf}"] = {"fine_size": fs, "fine_tests": ft, "validation_fraction": vf, "seconds": sec, "variants": ev}

    def score(d: dict[str, Any]) -> tuple[float, float]:
        v = d["variants"]["fine"]
        return (-v["null_fwer"], float(np.mean(list(v["power"].values()))))

    chosen = max(dev.values(), key=score)
    fs, ft, vf = chosen["fine_size"], chosen["fine_tests"], chosen["validation_fraction"]
    test: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for v in sorted({0.5, vf}):
        test[str(v)], seconds[str(v)] = stage(test_seeds, test_null, PREVALENCES, fs, ft, v, embedder,
                                             f"test fine_size={fs} fine_tests={ft} vf={v}")
    results = {"embedder": embedder.name, "answers_per_model": 200, "alpha": ALPHA, "dev": dev, "dev_seeds": dev_seeds,
               "dev_null_seeds": dev_null, "chosen": {"fine_size": fs, "fine_tests": ft, "validation_fraction": vf},
               "test_seeds": test_seeds, "null_seeds": test_null, "test": test, "test_seconds": seconds, "variants": list(VARIANTS)}
    publish(results, args.embedder)


def render(results: dict[str, Any]) -> str:
    dev, test, seconds = results["dev"], results["test"], results["test_seconds"]
    dev_seeds, dev_null = results["dev_seeds"], results["dev_null_seeds"]
    test_seeds, test_null = results["test_seeds"], results["null_seeds"]
    ch = results["chosen"]
    n_diffs = len(test_seeds) * len(PREVALENCES) * len(BEHAVIOURS) + len(test_null)
    lines = [
        f"Synthetic answers (`benchmarks/setups/diff_power.py`): 40 prompts (5 forms x 8 topics) x 5 = 200 answers per model, "
        f"embedder `{results['embedder']}`. B carries one planted opener in a share of all its answers: `product` (any prompt) or "
        "`cynical` (one prompt form only: at 5% that is 10 of the 40 answers to that form). Found = a cluster flagged at FDR 0.05, "
        "skewed to B, whose B rows are mostly the planted sentences. Null: A and B from the same generator; FWER = share of "
        "null seeds with any flagged cluster.",
        "",
        "Variants (one diff per seed gives all): levels `base` = text + sentence (today's default), `fine` = + the fine level, "
        "`sf` = sentence + fine; test Fisher (no suffix) or the exact stratified test with the prompt form (`_cmh_form`) "
        "or the prompt id (`_cmh_prompt`) as stratum; Benjamini-Hochberg over each variant's own clusters.",
        "",
        f"Development seeds {dev_seeds} (prevalence 5% and 10%, both behaviours; null seeds {dev_null[0]}..{dev_null[-1]}), "
        "every setting tried (fine_size:fine_tests:validation_fraction):",
        "",
        "| setting | fine: null FWER | fine: mean power | base: null FWER | base: mean power |",
        "|---|---|---|---|---|",
    ]
    for key, d in dev.items():
        f, bs = d["variants"]["fine"], d["variants"]["base"]
        lines.append(f"| {key} | {f['null_fwer']:.2f} | {np.mean(list(f['power'].values())):.2f} | {bs['null_fwer']:.2f} | "
                     f"{np.mean(list(bs['power'].values())):.2f} |")
    lines += ["", f"Chosen (lowest null FWER of `fine`, then its highest mean power; ties to the first tried): "
                  f"fine_size={ch['fine_size']}, fine_tests={ch['fine_tests']}, validation_fraction={ch['validation_fraction']}. "
                  "The test seeds are run at the default validation_fraction 0.5 and at the chosen one.", ""]
    for v in sorted(test, key=float):
        lines += [f"Test seeds {test_seeds[0]}..{test_seeds[-1]} ({len(test_seeds)} per cell), null seeds "
                  f"{test_null[0]}..{test_null[-1]}, validation_fraction={v} ({seconds[v]:.0f} s for {n_diffs} diffs):", ""]
        lines += table(test[v]) + [""]
    return "\n".join(lines)


def publish(results: dict[str, Any], embedder: str) -> None:
    cmd = "python benchmarks/diff_power.py" + ("" if embedder == "hashing" else f" --embedder {embedder}")
    text = render(results)
    record("diff_power", cmd, text, results)
    print(text)


if __name__ == "__main__":
    main()
