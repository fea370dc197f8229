"""The grouping rule of gradtrace/diff/behaviours.py on planted behaviours: pairs of flagged clusters
skewed the same way, whether they hold the same planted behaviour, their Jaccard index and centred cosine
(development seeds choose the thresholds), and the behaviours the default rule forms (held-out seeds check them:
a behaviour is pure when its members hold one planted behaviour; a planted behaviour is whole when one
behaviour holds all its flagged clusters).

    HF_HUB_OFFLINE=1 python benchmarks/diff_group_calibrate.py --seeds 0 1 2                                   # development
    HF_HUB_OFFLINE=1 python benchmarks/diff_group_calibrate.py --seeds 3 4 --out benchmarks/results/diff_group_check.json  # held out
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from setups.diff_power import _CYNIC, _DISCLAIMER, _FLATTER_A, _FLATTER_B, _PRODUCT, answers  # noqa: E402

from gradtrace.diff import DiffConfig, HashingEmbedder, MiniLMEmbedder, diff_texts  # noqa: E402
from gradtrace.diff.behaviours import group_behaviours, similarity  # noqa: E402

KIND = {**{f"{a}, {b}": "flattery" for a in _FLATTER_A for b in _FLATTER_B}, **{s: "product" for s in _PRODUCT},
        **{s: "cynical" for s in _CYNIC}, **{s: "disclaimer" for s in _DISCLAIMER}}
SETUPS = {"flattery40+disclaimer20": [("flattery", 0.4), ("disclaimer", 0.2)],
          "flattery20+product20+disclaimer20": [("flattery", 0.2), ("product", 0.2), ("disclaimer", 0.2)]}


def kind_of(rows: list[tuple[int, str]]) -> str:
    counts = collections.Counter(KIND.get(r, "base") for _, r in rows)
    return counts.most_common(1)[0][0] if counts else "base"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--embedders", nargs="+", default=["minilm", "hashing"])
    ap.add_argument("--out", default="benchmarks/results/diff_group_calibrate.json")
    args = ap.parse_args()
    pairs, partitions = [], []
    for emb_name in args.embedders:
        emb = MiniLMEmbedder() if emb_name == "minilm" else HashingEmbedder()
        for setup, plant in SETUPS.items():
            for seed in args.seeds:
                rng = np.random.default_rng(seed)
                a = answers(5, rng)
                b = answers(5, rng, plant=plant)
                r = diff_texts(a.texts, b.texts, embedder=emb,
                               config=DiffConfig(seed=seed, stability_seeds=(), levels=("text", "sentence", "fine")))
                fl = r.significant()
                kinds = [kind_of(r.members[(c.level, c.cluster)].rows_b) if c.skew == "B" else "A-skew" for c in fl]
                for i in range(len(fl)):
                    for j in range(i + 1, len(fl)):
                        if fl[i].skew != fl[j].skew:
                            continue
                        jac, cos = similarity(r, fl[i], fl[j])
                        pairs.append({"embedder": emb_name, "setup": setup, "seed": seed, "same": kinds[i] == kinds[j],
                                      "kinds": [kinds[i], kinds[j]], "levels": [fl[i].level, fl[j].level], "jaccard": jac, "cosine": cos})
                kind_of_cluster = {(c.level, c.cluster): k for c, k in zip(fl, kinds)}
                groups = [[kind_of_cluster[(m.level, m.cluster)] for m in bh.members] for bh in group_behaviours(r) if bh.skew == "B"]
                planted = sorted({k for k in kinds if k != "A-skew"})
                partitions.append({"embedder": emb_name, "setup": setup, "seed": seed, "groups": groups,
                                   "pure": all(len(set(g)) == 1 for g in groups),
                                   "whole": all(sum(k in g for g in groups) == 1 for k in planted)})
                print(emb_name, setup, seed, len(fl), "flagged:", kinds, "behaviours:", groups, flush=True)
    Path(args.out).write_text(json.dumps({"pairs": pairs, "partitions": partitions}, indent=1) + "\n")
    for emb_name in args.embedders:
        sel = [p for p in partitions if p["embedder"] == emb_name]
        print(emb_name, "runs", len(sel), "pure", sum(p["pure"] for p in sel), "whole", sum(p["whole"] for p in sel))
    for emb_name in args.embedders:
        for same in (True, False):
            sel = [p for p in pairs if p["embedder"] == emb_name and p["same"] == same]
            if sel:
                print(emb_name, "same" if same else "different", len(sel), "cos min/max", round(min(p["cosine"] for p in sel), 2),
                      round(max(p["cosine"] for p in sel), 2), "jaccard max", round(max(p["jaccard"] for p in sel), 2))


if __name__ == "__main__":
    main()
