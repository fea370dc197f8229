"""The grouping rule of gradtrace/diff/behaviours.py on planted behaviours: pairs of flagged clusters
skewed the same way, whether they hold the same planted behaviour, their Jaccard index and centred cosine
(development seeds choose the thresholds), and the behaviours the default rule forms (held-out seeds check them:
a behaviour is pure when its members hold one planted behaviour; a planted behaviour is whole when one
behaviour holds all its flagged clusters).

    HF_HUB_OFFLINE=1 python benchmarks/diff_group_calibrate.py --seeds 0 1 2                                   # development
    HF_HUB_OFFLINE=1 python benchmarks/diff_group_calibrate.py --seeds 3 4 --out benchmarks/results/diff_group_check.json  # held out
    python benchmarks/diff_group_calibrate.py --render       # the BENCHMARKS.md section `diff_group` from both files
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


def summary(pairs: list[dict], partitions: list[dict], embedder: str) -> dict:
    same = [p for p in pairs if p["embedder"] == embedder and p["same"]]
    diff = [p for p in pairs if p["embedder"] == embedder and not p["same"]]
    parts = [p for p in partitions if p["embedder"] == embedder]
    return {"same_pairs": len(same), "same_cosine_min": min((p["cosine"] for p in same), default=None),
            "different_pairs": len(diff), "different_cosine_max": max((p["cosine"] for p in diff), default=None),
            "different_jaccard_max": max((p["jaccard"] for p in diff), default=None), "runs": len(parts),
            "pure": sum(p["pure"] for p in parts), "whole": sum(p["whole"] for p in parts)}


def render() -> None:
    from _record import record

    root = Path(__file__).resolve().parent / "results"
    out = {}
    lines = ["Planted behaviours with varied wording (`benchmarks/setups/diff_power.py`: flattery 40% + disclaimer 20%, and "
             "flattery + product opener + disclaimer 20% each; 200 answers per model; levels text, sentence, fine). For every pair "
             "of flagged clusters skewed the same way: do they hold the same planted behaviour, their centred centroid cosine and "
             "text-set Jaccard index. Behaviours formed by `group_behaviours` are *pure* when all members hold one planted "
             "behaviour; a run is *whole* when each planted behaviour lies in one behaviour. Development runs formed behaviours "
             "with cosine 0.2 (then raised to 0.4, see docs/diff.md); held-out runs with 0.4.", "",
             "| seeds | embedder | same: pairs, cosine min | different: pairs, cosine max, Jaccard max | pure / whole of runs |",
             "|---|---|---|---|---|"]
    for name, file, seeds in (("development", "diff_group_calibrate.json", "0-2"), ("held out", "diff_group_check.json", "3-4")):
        d = json.loads((root / file).read_text())
        for emb in ("minilm", "hashing"):
            s = summary(d["pairs"], d["partitions"], emb)
            out[f"{name}/{emb}"] = s
            lines.append(f"| {seeds} ({name}) | {emb} | {s['same_pairs']}, {s['same_cosine_min']:.2f} | {s['different_pairs']}, "
                         f"{s['different_cosine_max']:.2f}, {s['different_jaccard_max']:.2f} | {s['pure']} / {s['whole']} of {s['runs']} |")
    cmd = ("HF_HUB_OFFLINE=1 python benchmarks/diff_group_calibrate.py --seeds 0 1 2 && HF_HUB_OFFLINE=1 python "
           "benchmarks/diff_group_calibrate.py --seeds 3 4 --out benchmarks/results/diff_group_check.json && "
           "python benchmarks/diff_group_calibrate.py --render")
    record("diff_group", cmd, "\n".join(lines), out)
    print("\n".join(lines))


def main() -> None:
    if "--render" in sys.argv:
        render()
        return
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
