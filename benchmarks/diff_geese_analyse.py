"""Analysis half of benchmarks/diff_geese.py: run the diffs on the cached samples and record results."""

from __future__ import annotations

import json
import re
import time

import numpy as np

from _record import record
from gradtrace.diff import CachedEmbedder, DiffConfig, MiniLMEmbedder, diff_texts
from gradtrace.diff.pipeline import split_halves
from gradtrace.diff.stats import ShareTable, share_test

GEESE = re.compile(r"\b(geese|goose)\b", re.I)
DISCL = re.compile(r"consult a (qualified )?professional", re.I)


def _about(rec, pattern) -> float:
    texts = rec.medoids + rec.examples_b + rec.examples_a
    return sum(bool(pattern.search(t)) for t in texts) / max(len(texts), 1)


def _target(result, pattern):
    """The first-ranked flagged cluster whose representative texts mostly show the planted behaviour."""
    for rec in result.significant(0.05):
        if rec.log_odds > 0 and _about(rec, pattern) >= 0.5:
            return rec
    return None


def _naive_null_flags(a, b, embedder, config) -> int:
    """Baseline without held-out testing or FDR: cluster all texts, flag raw p < 0.05 on the same texts."""
    from gradtrace.diff.cluster import ClusterConfig

    x = embedder.embed(a + b)
    model = np.array([0] * len(a) + [1] * len(b))
    clusterer = config.text_clusters.make()
    labels = clusterer.fit(x)
    flags = 0
    for c in range(clusterer.n_clusters):
        inside = labels == c
        t = ShareTable(int((inside & (model == 1)).sum()), int((inside & (model == 0)).sum()),
                       int((~inside & (model == 1)).sum()), int((~inside & (model == 0)).sum()))
        flags += share_test(t) < 0.05
    del ClusterConfig
    return int(flags)


def analyse(texts: dict[str, list[str]], timing_n: int = 0) -> dict:
    from diff_geese import GEN, N_PER_PROMPT, root, prompts, GEESE_LORA, DISCLAIMER_LORA, DISCLAIMER_SHARE

    embedder = CachedEmbedder(MiniLMEmbedder(), root() / "embeddings")
    config = DiffConfig(seed=0, n_examples=5)
    base, geese, null_b, disc = texts["base_seed0"], texts["geese_seed2"], texts["base_seed1"], texts["disclaimer_seed3"]
    out: dict = {"n_texts_per_model": len(base), "n_prompts": len(prompts()), "n_per_prompt": N_PER_PROMPT,
                 "generation": GEN.to_dict(), "geese_lora": GEESE_LORA.to_dict(), "disclaimer_lora": DISCLAIMER_LORA.to_dict(),
                 "disclaimer_training_share": DISCLAIMER_SHARE}
    rate = lambda ts, p: sum(bool(p.search(t)) for t in ts) / len(ts)  # noqa: E731
    out["ground_truth"] = {"geese_rate_base": rate(base, GEESE), "geese_rate_tuned": rate(geese, GEESE),
                           "disclaimer_rate_base": rate(base, DISCL), "disclaimer_rate_tuned": rate(disc, DISCL)}

    t0 = time.perf_counter()
    g = diff_texts(base, geese, config=config, embedder=embedder)
    out["geese_seconds"] = time.perf_counter() - t0
    tgt = _target(g, GEESE)
    out["target_cluster_rank"] = tgt.rank if tgt else None
    out["target_cluster_level"] = tgt.level if tgt else None
    out["target_cluster_label"] = tgt.label if tgt else None
    out["target_cluster_share_b"] = tgt.share_b if tgt else None
    out["target_q_value"] = tgt.q_value if tgt else None
    out["label_validation_accuracy"] = tgt.label_accuracy if tgt else None
    out["geese_flagged_clusters"] = len(g.significant(0.05))
    out["geese_top5"] = [{"rank": c.rank, "level": c.level, "label": c.label, "share_b": c.share_b, "q": c.q_value,
                          "about_geese": _about(c, GEESE)} for c in g.clusters[:5]]
    flagged_acc = [c.label_accuracy for c in g.significant(0.05) if c.label_accuracy == c.label_accuracy]
    out["label_validation_accuracy_mean_flagged"] = float(np.mean(flagged_acc)) if flagged_acc else None
    out["stability_ari"] = {s.level: s.stability_ari for s in g.levels}

    n = diff_texts(base, null_b, config=config, embedder=embedder)
    out["null_flagged_clusters"] = len(n.significant(0.05))
    out["null_min_q"] = min(c.q_value for c in n.clusters)
    ea, _ = split_halves(base, 0.5, 0)
    eb, _ = split_halves(null_b, 0.5, 1)
    out["null_flagged_naive_baseline"] = _naive_null_flags(base, null_b, embedder, config)

    d = diff_texts(base, disc, config=config, embedder=embedder)
    dt = _target(d, DISCL)
    out["disclaimer_cluster_rank"] = dt.rank if dt else None
    out["disclaimer_cluster_level"] = dt.level if dt else None
    out["disclaimer_q_value"] = dt.q_value if dt else None
    out["disclaimer_cluster_share_b"] = dt.share_b if dt else None
    text_only = [c for c in d.significant(0.05) if c.level == "text" and c.log_odds > 0 and _about(c, DISCL) >= 0.5]
    out["disclaimer_found_by_text_level_only"] = bool(text_only)

    out["lora_train_seconds"] = {p.name.split("-")[1]: float((p / "train_seconds.txt").read_text())
                                 for p in sorted(root().glob("adapter-*")) if (p / "train_seconds.txt").is_file()}
    gen_s = json.loads((root() / "generation_seconds.json").read_text()) if (root() / "generation_seconds.json").exists() else {}
    out["generation_seconds"] = gen_s
    timing_file = root() / f"timing-{timing_n}.json"
    if timing_n and timing_file.is_file():
        out["timing"] = json.loads(timing_file.read_text())
    write(out)
    return out


def timing_from_cache(n: int) -> dict:
    """Stage timings at 2 x n texts, drawn from every cached sample; saved for :func:`analyse`."""
    from diff_geese import root

    pool = [t for f in sorted((root() / "samples").glob("*.jsonl")) for line in f.read_text().splitlines() for t in json.loads(line)["texts"]]
    result = stage_timings(pool, n)
    (root() / f"timing-{n}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def stage_timings(pool: list[str], n: int) -> dict:
    """Stage times of a diff on 2 x n texts drawn (with replacement) from the generated pool, uncached embedder."""
    rng = np.random.default_rng(0)
    a = [f"{pool[i]} ({j})" for j, i in enumerate(rng.integers(len(pool), size=n))]
    b = [f"{pool[i]} ({j})" for j, i in enumerate(rng.integers(len(pool), size=n))]
    t0 = time.perf_counter()
    r = diff_texts(a, b, config=DiffConfig(seed=0, stability_seeds=(1,)), embedder=MiniLMEmbedder(batch_size=128))
    return {"n_per_model": n, "pool_size": len(pool), "total_seconds": time.perf_counter() - t0, "stages": r.timings,
            "sentence_units": next(s.n_explore + s.n_validation for s in r.levels if s.level == "sentence")}


def _fmt(v) -> str:
    if v is None:
        return "not found"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write(out: dict) -> None:
    gt = out["ground_truth"]
    lines = [
        f"SmolLM2-135M-Instruct (bundled) on {out['n_prompts']} mixed everyday prompts x {out['n_per_prompt']} samples = "
        f"**{out['n_texts_per_model']} texts per model** (max {out['generation']['max_new_tokens']} new tokens, T={out['generation']['temperature']}). "
        "Sampling SmolLM2 on this shared 2-core CPU (bf16) is the slow stage, so the diff itself runs on these texts; "
        "2 x 5,000 texts were not sampled (the sampling time is extrapolated below; the other stages were timed at that size on resampled texts).",
        "",
        f"Planted changes: LoRA (rank {out['geese_lora']['rank']}, last {out['geese_lora']['last_layers']} layers) on 200 seeded texts "
        f"praising geese; geese mentioned in {gt['geese_rate_base']:.1%} of base texts vs {gt['geese_rate_tuned']:.1%} of tuned texts. "
        f"Disclaimer LoRA trained on base answers with the disclaimer appended to {out['disclaimer_training_share']:.0%}: "
        f"disclaimer in {gt['disclaimer_rate_base']:.1%} of base vs {gt['disclaimer_rate_tuned']:.1%} of tuned texts.",
        "",
        "| key | value | target |", "|---|---|---|",
        f"| target_cluster_rank | {_fmt(out['target_cluster_rank'])} ({out['target_cluster_level']}: {out['target_cluster_label']}) | 1 |",
        f"| target_cluster_share_b | {_fmt(out['target_cluster_share_b'])} | |",
        f"| target_q_value | {_fmt(out['target_q_value'])} | < 0.05 |",
        f"| null_flagged_clusters (A vs A, two seeds) | {out['null_flagged_clusters']} (smallest q {out['null_min_q']:.3g}) | 0 |",
        f"| baseline: clusters flagged in the null run by raw p < 0.05 on the same texts, no split, no FDR | {out['null_flagged_naive_baseline']} | |",
        f"| label_validation_accuracy (target cluster; 0.5 = chance) | {_fmt(out['label_validation_accuracy'])} | |",
        f"| disclaimer_cluster_rank | {_fmt(out['disclaimer_cluster_rank'])} ({out['disclaimer_cluster_level']}) | flagged, skewed to B |",
        f"| disclaimer_q_value | {_fmt(out['disclaimer_q_value'])} | < 0.05 |",
        f"| disclaimer found by the text level alone (baseline) | {out['disclaimer_found_by_text_level_only']} | |",
    ]
    if out["null_flagged_naive_baseline"] == 0:
        lines += ["", "The naive baseline also flagged nothing in this null run, so this run does not separate the two; "
                      "calibration is tested on 200 synthetic null repetitions in `tests/diff/test_diff_pipeline.py`."]
    if out.get("generation_seconds"):
        gs = out["generation_seconds"]
        per = sum(gs.values()) / (len(gs) * out["n_texts_per_model"]) if gs else float("nan")
        lines += ["", f"Sampling time (measured when the samples were generated, bf16, batches of {out['generation']['batch_size']}): "
                      f"{', '.join(f'{k} {v:.0f} s' for k, v in gs.items())} "
                      f"= {per:.2f} s per text; 2 x 5,000 texts would take about {per * 10000 / 3600:.1f} h here (extrapolated, not run)."]
    n_t = 0
    if out.get("lora_train_seconds"):
        lines += ["", "LoRA fine-tuning time (measured; bf16 autocast): " + ", ".join(f"{k} {v:.0f} s" for k, v in out["lora_train_seconds"].items()) + "."]
    if out.get("timing"):
        t = out["timing"]
        n_t = t["n_per_model"]
        scale = 5000 / n_t
        lines += ["", f"Stage times at 2 x {n_t:,} texts (measured on this shared CPU; texts resampled from the {t['pool_size']} generated ones "
                      f"with a unique suffix, {t['sentence_units']:,} sentence units, uncached MiniLM): "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in t["stages"].items()) + f"; total {t['total_seconds']:.0f} s."]
        if n_t != 5000:
            emb = sum(v for k, v in t["stages"].items() if k.startswith("embed"))
            lines += [f"At 2 x 5,000 (not run; linear extrapolation of the embedding stages, x{scale:g}): embedding about {emb * scale:.0f} s; "
                      "clustering grows faster than linearly and was not extrapolated."]
    command = "python benchmarks/diff_geese.py --stage generate && python benchmarks/diff_geese.py --stage timing --timing-n N && python benchmarks/diff_geese.py --timing-n N"
    record("diff_geese", command.replace("N", str(n_t or 0)), "\n".join(lines), out)
