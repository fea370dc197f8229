"""Development experiment behind the audit's default target (docs/audit.md,
"How the target is built"): on a cached development run of
``benchmarks/audit_planted.py`` (its store, samples and diff), the recall of
each planted behaviour's examples in the top k (k = number planted) for
every target variant: query text (B's whole text, or cut after the
sentence that shows the behaviour), behaviour (``contrast`` or
``logprob``) and score (``raw`` or ``cosine`` TracIn over every checkpoint).

A behaviour is given as the diff clusters whose B texts make its queries
(``--behaviour name=level:cluster,level:cluster``); the planted examples
are found by the benchmark's markers. Nothing is recorded: the numbers are
copied into docs/audit.md by hand, with this command.

    python benchmarks/audit_target_dev.py --work ~/.cache/gradtrace/audit_planted/smollm2-full-0 \\
        --stage-suffix-sample 414df7941b8706733562 --stage-suffix-diff 3febc5c8f17f42b449d1 \\
        --behaviour product=text:1,sentence:1 --behaviour flattery=sentence:23,sentence:24
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_planted import MARKERS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the audit_planted work folder of a development seed")
    parser.add_argument("--stage-suffix-sample", required=True, help="the cached sample stage (stages/sample-SUFFIX.json)")
    parser.add_argument("--stage-suffix-diff", required=True, help="the cached diff stage (stages/diff-SUFFIX.json)")
    parser.add_argument("--behaviour", action="append", required=True, help="name=level:cluster[,level:cluster...]")
    parser.add_argument("--max-queries", type=int, default=16)
    args = parser.parse_args()
    import torch

    from gradtrace.audit.behaviours import Assigner, member_rows
    from gradtrace.audit.run import build_queries, target_query
    from gradtrace.lm.embed import CachedEmbedder, MiniLMEmbedder
    from gradtrace.lm.load import load_model
    from gradtrace.lm.lora import wrap_with_adapter_config
    from gradtrace.lm.tasks import CausalLMTask
    from gradtrace.models.hf import behaviour_by_name
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint, trainer_checkpoints
    from gradtrace.scoring import Attributor

    audit = args.work / "audit_planted"
    samples = json.loads((audit / "stages" / f"sample-{args.stage_suffix_sample}.json").read_text())
    sa, sb = samples["a"], samples["b"]
    rows = [json.loads(line) for line in (args.work / "train_planted.jsonl").read_text().splitlines()]
    planted = {k: {i for i, r in enumerate(rows) if m.search(r["completion"])} for k, m in MARKERS.items()}
    diff = json.loads((audit / "stages" / f"diff-{args.stage_suffix_diff}.json").read_text())
    centroids = {k: [[np.nan if x is None else x for x in r] for r in v] for k, v in diff["centroids"].items()}
    emb = CachedEmbedder(MiniLMEmbedder(), audit / "cache" / "embeddings")
    asg = Assigner(centroids, emb, diff["config"]["min_words"], diff["config"]["max_units"]).assign([s["text"] for s in sb])
    last = trainer_checkpoints(args.work / "run_planted")[-1].path
    model, tok = load_model("smollm2")
    model = wrap_with_adapter_config(model, last).eval()
    task = CausalLMTask(tok, max_length=128, as_chat=True)
    att = Attributor(audit / "store", model, task, checkpoint_loader=load_hf_checkpoint, progress=False)
    torch.set_num_threads(2)
    for spec in args.behaviour:
        name, keys_text = spec.split("=", 1)
        keys = [(k.split(":")[0], int(k.split(":")[1])) for k in keys_text.split(",")]
        mask, first = member_rows(asg, keys, len(sb))  # the audit's own membership: texts, and the sentence that shows it
        ids = [int(i) for i in np.flatnonzero(mask)]
        k = len(planted[name])
        other = [n for n in planted if n != name][0]
        for cut in ("whole", "sentence"):
            # the audit's own query builder: B's texts in text-hash order, A's answer of the same draw, cut after the sentence
            units = {str(i): first[i] for i in ids} if cut == "sentence" else {}
            recs = build_queries({"label": name, "texts_b": ids, "first_unit_b": units}, sa, sb, args.max_queries)
            if cut == "whole":
                print(f"== {name}: {len(ids)} B texts, {len(recs)} queries "
                      f"({sum(bool(MARKERS[name].search(sb[r['text_b']]['text'])) for r in recs)} carry the marker), k={k}", flush=True)
            for beh in ("contrast", "logprob"):
                b = behaviour_by_name(beh)
                qs = [target_query(r, beh) for r in recs]
                for variant in ("raw", "cosine"):
                    t0 = time.perf_counter()
                    total = att.score(qs, b, variant=variant).sum(axis=0)
                    top = set(np.lexsort((np.arange(len(total)), -total))[:k].tolist())
                    print(f"   {cut:8s} {beh:8s} {variant:6s} recall@{k} {len(top & planted[name]) / k:.2f}  "
                          f"{other} examples in the top k: {len(top & planted[other])}  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
