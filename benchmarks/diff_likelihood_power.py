"""Power of the diff's likelihood view against the prevalence of a planted opener, with a null fine-tune kept at 0 flags.

Models: A is the tiny GPT-2 of the audit's CI set-up
(``benchmarks/setups/audit_tiny.py``: the zoo's tiny GPT-2 with the byte
tokenizer, taught ordinary answers to 36 prompts), built once. For each
prevalence p in 1%, 2%, 5%, 10% and each seed, B is A fine-tuned (every
weight, plain loop, 8 epochs, lr 3e-3) on 200 ordinary examples of which
round(p x 200) answers open with "Wow! "; the null B is the same fine-tune on
200 ordinary examples with nothing planted. A and B each answer the 36
prompts 6 times (216 answers each, seeded), sampled at temperature 1 without
top-p (top-p 0.95 cuts every option under about 5%: a rare opener is never
sampled). Tried first and dropped: a LoRA (rank 8) fine-tune, 10 epochs, with the
audit test's opener "Buy Lampco lamps now.", sampled at temperature 0.8 and
top-p 0.95: B wrote the opener in 0 of 216 answers at p = 1-5% and 0.9% at
10% (the tiny model does not learn the brand name in 10 epochs; the full
fine-tune with it: log p_B of the opener -25 nats).

Found: a cluster of the likelihood view flagged at FDR 0.05 whose B rows
mostly contain "wow". Off-target: any other flagged cluster. Null: every
flagged cluster is false. For comparison, the clusters view (``gradtrace
diff``'s default: text + sentence, Fisher; and with ``fine`` and ``cmh``
within prompts) runs on the same samples.

Variants of the likelihood view (every one computed from the same cached
scores): ``stat`` mean or sum, ``z`` 2.5 or 3, clusters found on B's
exploration half (``samples``), with the training completions
(``samples+train``) or on the training completions alone (``train``), and
``min_shift`` (0, 0.5 or 1 nats per token for ``mean``; 0, 10 or 20 nats for
``sum``). Settings are chosen on the development seeds
(lowest number of null flags, then highest mean power at 5% and 10%; ties to
the first tried) and reported on separate test seeds.

    nice -n 10 python benchmarks/diff_likelihood_power.py     # about 15 CPU-minutes on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402
from setups import audit_tiny  # noqa: E402

PREVALENCES = (0.01, 0.02, 0.05, 0.10)
N_TRAIN = 200
N_PER_PROMPT = 6
MARK = re.compile(r"\bwow\b", re.I)
ZS = (2.5, 3.0)
EXPLORE = ("samples", "samples+train", "train")
#: min_shift per stat (nats per token for mean, per row for sum)
SHIFTS = {"mean": (0.0, 0.5, 1.0), "sum": (0.0, 10.0, 20.0)}
VARIANTS = [f"{st}:z{z:g}:{e}:s{sh:g}" for e in EXPLORE for st in SHIFTS for z in ZS for sh in SHIFTS[st]]
ALPHA = 0.05


def one_run(base: Path, p: float, seed: int, work: Path, epochs: int) -> dict[str, Any]:
    """Train B, sample A and B, score B's texts and the training completions under both models (cached as JSON)."""
    from gradtrace.diff.likelihood import score_texts
    from gradtrace.lm.load import load_model
    from gradtrace.lm.tasks import CausalLMTask

    path = work / f"run-p{p:g}-s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    data = audit_tiny.planted_share(N_TRAIN, p, seed, audit_tiny.SHORT_PLANT)
    model_a, tok = load_model(str(base))
    model_b = audit_tiny.plain_finetune(base, data, work / f"ft-p{p:g}-s{seed}", epochs=epochs, seed=seed)
    t_train = time.perf_counter() - t0
    task = CausalLMTask(tok, max_length=160, as_chat=True)
    pids, prompts, texts_a = audit_tiny.sample_answers(model_a, tok, N_PER_PROMPT, 2 * seed)
    _, _, texts_b = audit_tiny.sample_answers(model_b, tok, N_PER_PROMPT, 2 * seed + 1)
    scores_b = score_texts(model_a, model_b, task, [{"prompt": q, "completion": t} for q, t in zip(prompts, texts_b)], batch_size=16)
    scores_t = score_texts(model_a, model_b, task, data, batch_size=16)
    res = {"p": p, "seed": seed, "prompts": prompts, "prompt_ids": pids, "texts_a": texts_a, "texts_b": texts_b,
           "scores_b": [s.to_dict() for s in scores_b], "train": [[r["completion"], s.to_dict()] for r, s in zip(data, scores_t)],
           "n_planted_train": int(round(p * N_TRAIN)), "in_b": float(np.mean([bool(MARK.search(t)) for t in texts_b])),
           "in_a": float(np.mean([bool(MARK.search(t)) for t in texts_a])), "seconds": time.perf_counter() - t0, "train_seconds": t_train}
    path.write_text(json.dumps(res))
    return res


def evaluate(run: dict[str, Any], embedder: Any) -> dict[str, Any]:
    """Per variant: (found, off-target flags); and the clusters view's, on the same samples."""
    from gradtrace.diff import ClusterConfig, DiffConfig, diff_texts
    from gradtrace.diff.likelihood import LikelihoodConfig, TextScore, likelihood_view

    scores = [TextScore.from_dict(s) for s in run["scores_b"]]
    train = [(t, TextScore.from_dict(s)) for t, s in run["train"]]
    out: dict[str, Any] = {}
    for v in VARIANTS:
        stat, z, tr, sh = v.split(":")
        cfg = LikelihoodConfig(seed=run["seed"], stat=stat, z=float(z[1:]), explore=tr, min_shift=float(sh[1:]))
        res = likelihood_view(run["texts_b"], scores, config=cfg, embedder=embedder, train=train, keys_b=run["prompt_ids"])
        out[v] = _found(res.significant(), [res.members[(c.level, c.cluster)]["rows_b"] for c in res.significant()])
    dcfg = dict(seed=run["seed"], stability_seeds=(), text_clusters=ClusterConfig(k_min=2, k_max=8),
                sentence_clusters=ClusterConfig(k_min=4, k_max=12))
    for name, extra in (("clusters", {}), ("clusters_fine_cmh", {"levels": ("text", "sentence", "fine"), "test": "cmh"})):
        r = diff_texts(run["texts_a"], run["texts_b"], config=DiffConfig(**dcfg, **extra), embedder=embedder,
                       strata_a=run["prompt_ids"], strata_b=run["prompt_ids"])
        flagged = [c for c in r.significant() if c.skew == "B"]
        out[name] = _found(flagged, [[[i, t] for i, t in r.members[(c.level, c.cluster)].rows_b] for c in flagged])
    return out


def _found(flagged: list[Any], rows: list[list[list[Any]]]) -> dict[str, int]:
    hit = [bool(rs) and np.mean([bool(MARK.search(r)) for _, r in rs]) > 0.5 for rs in rows]
    return {"found": int(any(hit)), "off_target": int(sum(1 for h in hit if not h))}


def summarise(evals: dict[tuple[float, int], dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out = {}
    for m in methods:
        power = {f"{p:g}": float(np.mean([e[m]["found"] for (pp, _), e in evals.items() if pp == p]))
                 for p in sorted({k[0] for k in evals if k[0] > 0})}
        null = [e[m] for (pp, _), e in evals.items() if pp == 0]
        out[m] = {"power": power, "null_flags": int(sum(n["off_target"] for n in null)), "null_runs_with_flag": int(sum(n["off_target"] > 0 for n in null)),
                  "null_runs": len(null), "off_target_in_planted_runs": int(sum(e[m]["off_target"] for (pp, _), e in evals.items() if pp > 0))}
    return out


def stage(base: Path, seeds: list[int], null_seeds: list[int], work: Path, epochs: int, embedder: Any, log: str) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    evals, runs = {}, []
    for p, s in list(itertools.product(PREVALENCES, seeds)) + [(0.0, s) for s in null_seeds]:
        run = one_run(base, p, s, work, epochs)
        runs.append({k: run[k] for k in ("p", "seed", "in_a", "in_b", "n_planted_train", "seconds")})
        evals[(p, s)] = evaluate(run, embedder)
        print(f"{log}: p={p:g} seed={s} in_b={run['in_b']:.3f} " + " ".join(
            f"{m}={evals[(p, s)][m]['found']}/{evals[(p, s)][m]['off_target']}" for m in ("mean:z3:samples:s0", "mean:z3:train:s0", "mean:z3:train:s1", "clusters")), flush=True)
    print(f"{log}: {time.perf_counter() - t0:.0f} s", flush=True)
    return evals, runs


def main() -> None:
    from gradtrace.diff import HashingEmbedder

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/gt-likelihood-power"))
    ap.add_argument("--dev-seeds", type=int, default=2)
    ap.add_argument("--dev-null-seeds", type=int, default=3)
    ap.add_argument("--test-seeds", type=int, default=3)
    ap.add_argument("--null-seeds", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--base-steps", type=int, default=400)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = args.work / "A"
    if not (base / "config.json").is_file():
        audit_tiny.build_base(base, steps=args.base_steps)
    t_base = time.perf_counter() - t0
    embedder = HashingEmbedder()
    methods = VARIANTS + ["clusters", "clusters_fine_cmh"]
    dev_seeds, dev_null = list(range(args.dev_seeds)), list(range(500, 500 + args.dev_null_seeds))
    test_seeds, test_null = list(range(1000, 1000 + args.test_seeds)), list(range(2000, 2000 + args.null_seeds))
    dev_eval, dev_runs = stage(base, dev_seeds, dev_null, args.work, args.epochs, embedder, "dev")
    dev = summarise(dev_eval, methods)

    def score(v: str) -> tuple[float, float]:
        d = dev[v]
        return (-d["null_flags"], (d["power"]["0.05"] + d["power"]["0.1"]) / 2)

    chosen = max(VARIANTS, key=score)  # max keeps the first of ties
    test_eval, test_runs = stage(base, test_seeds, test_null, args.work, args.epochs, embedder, "test")
    test = summarise(test_eval, methods)
    results = {"answers_per_model": 36 * N_PER_PROMPT, "n_train": N_TRAIN, "epochs": args.epochs, "embedder": embedder.name,
               "alpha": ALPHA, "variants": VARIANTS, "dev_seeds": dev_seeds, "dev_null_seeds": dev_null, "test_seeds": test_seeds,
               "null_seeds": test_null, "dev": dev, "chosen": chosen, "test": test, "dev_runs": dev_runs, "test_runs": test_runs,
               "base_seconds": t_base, "total_seconds": time.perf_counter() - t0}
    publish(results)


def render(r: dict[str, Any]) -> str:
    lines = [
        f"Tiny GPT-2 base A (`benchmarks/setups/audit_tiny.py`); B = A fine-tuned (every weight, plain loop, {r['epochs']} epochs, "
        f"lr 3e-3) on {r['n_train']} ordinary examples of which a share p open with \"Wow! \" (null: p = 0); "
        f"{r['answers_per_model']} answers per model (36 prompts x 6, temperature 1, no top-p), embedder `{r['embedder']}`. "
        "Found = a flagged cluster (q <= 0.05) whose B rows mostly contain \"wow\"; every other flagged cluster is off-target "
        "(in the null runs, false). Tried first and dropped (no run recorded): LoRA rank 8, 10 epochs, the opener \"Buy Lampco "
        "lamps now.\", sampling at temperature 0.8 and top-p 0.95: B wrote the opener in 0 of 216 answers at p = 1-5% and 2 at 10%.",
        "",
        "How often the plant shows in B's answers (mean over seeds; A: never):",
        "",
        "| p (training) | dev: share of B's answers with the opener | test: share of B's answers with the opener |",
        "|---|---|---|",
    ]
    for p in PREVALENCES:
        d = [x["in_b"] for x in r["dev_runs"] if x["p"] == p]
        t = [x["in_b"] for x in r["test_runs"] if x["p"] == p]
        lines.append(f"| {p:.0%} | {np.mean(d):.3f} | {np.mean(t):.3f} |")
    null_in = [x["in_b"] for x in r["test_runs"] + r["dev_runs"] if x["p"] == 0]
    lines += [f"| null | {np.mean([x['in_b'] for x in r['dev_runs'] if x['p'] == 0]):.3f} | {np.mean([x['in_b'] for x in r['test_runs'] if x['p'] == 0]):.3f} |", ""]
    del null_in

    def block(summary: dict[str, Any], methods: list[str]) -> list[str]:
        out = ["| method | " + " | ".join(f"p {p:.0%}" for p in PREVALENCES) + " | null: flags (runs with a flag / runs) | off-target flags in planted runs |",
               "|---|" + "---|" * (len(PREVALENCES) + 2)]
        for m in methods:
            s = summary[m]
            out.append(f"| {m} | " + " | ".join(f"{s['power'][f'{p:g}']:.2f}" for p in PREVALENCES)
                       + f" | {s['null_flags']} ({s['null_runs_with_flag']} / {s['null_runs']}) | {s['off_target_in_planted_runs']} |")
        return out

    lines += [f"Development seeds {r['dev_seeds']} (null seeds {r['dev_null_seeds']}); every variant tried "
              "(likelihood view `stat:z:explore:min_shift`; explore = where clusters are found: B's exploration half (`samples`), with the training completions (`samples+train`), or the training completions alone with all of B's texts held out (`train`); clusters view for comparison, text + sentence with Fisher, and + fine with CMH within prompts):", ""]
    lines += block(r["dev"], r["variants"] + ["clusters", "clusters_fine_cmh"])
    lines += ["", "A first invocation (the same runs; it fine-tuned, sampled and scored them) tried z = 2.5, 3 and 4 without "
                  "`min_shift`; its log shows `mean`, z 3 flagging clusters in 3 of 3 development null runs with clusters found on "
                  "B's samples and in 2 of 3 with clusters found on the training completions (B's garbled fragments, the answer "
                  "templates B raised). `min_shift` was then added and z = 4 dropped; the test seeds had been evaluated by that "
                  "first invocation too (its table was replaced; they were used for no choice)."]
    lines += ["", f"Chosen on the development seeds (fewest null flags, then highest mean power at 5% and 10%; ties to the first "
                  f"tried): `{r['chosen']}`.", "",
              f"Test seeds {r['test_seeds'][0]}..{r['test_seeds'][-1]} ({len(r['test_seeds'])} per prevalence), null seeds "
              f"{r['null_seeds'][0]}..{r['null_seeds'][-1]}:", ""]
    lines += block(r["test"], [r["chosen"], "clusters", "clusters_fine_cmh"])
    gen = sum(x["seconds"] for x in r["dev_runs"] + r["test_runs"])
    lines += ["", f"All variants on the test seeds (not used for the choice): see `test` in the results file. Wall time: fine-tunes, "
                  f"sampling and scoring {gen:.0f} s in all (cached per run under `--work`: a rerun only evaluates); this invocation "
                  f"{r['total_seconds']:.0f} s (base model {r['base_seconds']:.0f} s; 0 when reused from `--work`)."]
    return "\n".join(lines)


def publish(results: dict[str, Any]) -> None:
    text = render(results)
    command = "nice -n 10 python benchmarks/diff_likelihood_power.py " + " ".join(sys.argv[1:])
    record("diff_likelihood_power", command.strip(), text, results)
    print(text)


if __name__ == "__main__":
    main()
