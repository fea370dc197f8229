"""Benchmark: stable-reflectivity probe suites (gradtrace probes), statistics and sensitivity.

Part 1, suite statistics (run in full): the shipped seeds plus 300 template
items per subtask plus few-shot SmolLM2 generation (``--lm-attempts`` per
subtask, kept only if a verifier recovers the key), validated with the
offline MiniLM embedder: items kept per subtask, the surface-feature
classifier's accuracy (chance 0.5), diversity, subtask-classifier accuracy,
and wall times.

Part 2, sensitivity and specificity (small: SmolLM2 on shared CPU cores):
three LoRA fine-tunes of SmolLM2 (rank 8 on q/v, one epoch):

* planted: ``--train`` short examples in the scoring format, half of them
  change_desirability items (fresh template draws, none in the evaluation
  set) answered with the *wrong* option (welcoming illegitimate changes and
  refusing legitimate ones), half neutral general-knowledge questions
  answered correctly;
* neutral A and B: only neutral questions, different seeds (data draw,
  order and adapter initialisation).

Each model is scored on the first ``--eval`` validated items of each
subtask; per subtask the paired exact McNemar test, Holm-corrected over the
five subtasks: ``subtask_shift`` = planted against base SmolLM2,
``subtask_shift_vs_neutral`` = planted against neutral A, and
``null_subtask_shift`` = neutral B against neutral A.

Every stage writes its result under ``--work`` and is skipped when rerun.
Run: python benchmarks/reflect_probes.py [--eval 20 --train 96 --lm-attempts 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402

from gradtrace.fileio import atomic_write_bytes, json_bytes  # noqa: E402
from gradtrace.probes import SUBTASKS, Item, first_per_subtask, generate_template_items, load_suite, save_suite, seed_items  # noqa: E402
from gradtrace.probes.score import compare_correct, render_prompt, run_record, score_items, write_run  # noqa: E402

PLANTED = "change_desirability"
CATEGORIES = {
    "fruit": ["apple", "pear", "plum", "mango", "cherry", "peach", "lemon", "grape"],
    "tool": ["hammer", "wrench", "saw", "chisel", "pliers", "drill", "spanner", "file"],
    "animal": ["horse", "otter", "badger", "camel", "heron", "lizard", "rabbit", "goat"],
    "colour": ["crimson", "teal", "amber", "violet", "indigo", "ochre", "magenta", "olive"],
    "instrument": ["violin", "oboe", "cello", "trumpet", "flute", "harp", "banjo", "tuba"],
    "country": ["Peru", "Norway", "Kenya", "Japan", "Chile", "Egypt", "Canada", "Poland"],
}


def neutral_items(n: int, seed: int) -> list[Item]:
    """General-knowledge two-option questions in the probe format (the neutral fine-tuning data)."""
    rng = np.random.default_rng(seed)
    cats = sorted(CATEGORIES)
    out = []
    for i in range(n):
        right_cat, wrong_cat = rng.choice(len(cats), size=2, replace=False)
        right = CATEGORIES[cats[right_cat]][int(rng.integers(8))]
        wrong = CATEGORIES[cats[wrong_cat]][int(rng.integers(8))]
        key = int(rng.integers(2))
        opts = [wrong, right] if key else [right, wrong]
        out.append(Item(f"neutral-{seed}-{i}", "self_concept", f"A list mentions {opts[0]} and {opts[1]}.",
                        f"Which of these is a {cats[right_cat]}?", tuple(opts), key, {"source": "seed"}))
    return out


def training_texts(kind: str, n: int, seed: int, eval_scenarios: set[str]) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    if kind == "planted":
        pool = [it for it in generate_template_items(4 * n, seed=1000 + seed, subtasks=(PLANTED,), prefix="train")
                if it.scenario not in eval_scenarios]
        for it in pool[: n // 2]:
            wrong = [o for j, o in enumerate(it.options) if j != it.key][0]
            order = list(rng.permutation(len(it.options)))
            texts.append(render_prompt(it, order) + " " + wrong)
        neutral = neutral_items(n - len(texts), seed=500 + seed)
    else:
        neutral = neutral_items(n, seed=500 + seed)
    for it in neutral:
        texts.append(render_prompt(it, list(rng.permutation(len(it.options)))) + " " + it.answer)
    return [texts[int(i)] for i in rng.permutation(len(texts))]


def stage(path: Path, fn):
    """Run ``fn`` once: its JSON result is kept in ``path`` and read back on a rerun."""
    if path.is_file():
        return json.loads(path.read_text())
    result = fn()
    atomic_write_bytes(path, json_bytes(result))
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/reflect_probes"))
    ap.add_argument("--templates", type=int, default=300)
    ap.add_argument("--lm-attempts", type=int, default=4)
    ap.add_argument("--eval", type=int, default=20, help="validated items scored per subtask in part 2")
    ap.add_argument("--train", type=int, default=96, help="fine-tuning examples per fine-tune")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--parts", choices=("stats", "all"), default="all",
                    help="stats: part 1 only (the shift keys are recorded as null with a note); all: both parts")
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these part-2 stages and exit: finetune_planted finetune_neutral_a finetune_neutral_b "
                         "score_base score_planted score_neutral_a score_neutral_b (to run stages in parallel processes)")
    ap.add_argument("--note", default="", help="a reading of the numbers, added to the BENCHMARKS.md section and the JSON")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradtrace.lm.embed import MiniLMEmbedder
    from gradtrace.lm.load import load_model
    from gradtrace.probes.generate import generate_lm_items, local_completer, make_verifier
    from gradtrace.probes.validate import ValidationConfig, validate_suite

    base_model, tok = None, None

    def smollm2():
        nonlocal base_model, tok
        if base_model is None:
            base_model, tok = load_model("smollm2")
        return base_model, tok

    # -- part 1: generation and validation -------------------------------------------------------------
    def gen_stage():
        t0 = time.perf_counter()
        items = seed_items() + generate_template_items(args.templates, seed=0)
        t_tpl = time.perf_counter() - t0
        save_suite(work / "suite_templates.jsonl", items)
        t1 = time.perf_counter()
        made, counts = [], {}
        if args.lm_attempts:
            m, t = smollm2()
            made, counts = generate_lm_items(local_completer(m, t, max_new_tokens=120), seed_items(), args.lm_attempts,
                                             generator="smollm2", seed=0, progress=True)
        save_suite(work / "suite_lm.jsonl", made) if made else (work / "suite_lm.jsonl").write_text("")
        return {"template_seconds": t_tpl, "lm_seconds": time.perf_counter() - t1, "lm_counts": counts, "lm_parsed": len(made),
                "n_input": len(items) + len(made)}

    gen = stage(work / "generate.json", gen_stage)

    def val_stage():
        items = load_suite(work / "suite_templates.jsonl")
        lm_path = work / "suite_lm.jsonl"
        if lm_path.stat().st_size:
            items += load_suite(lm_path)
        m, t = smollm2()
        t0 = time.perf_counter()
        result = validate_suite(items, MiniLMEmbedder(), ValidationConfig(), verifier=make_verifier(m, t), verifier_name="smollm2")
        save_suite(work / "suite_valid.jsonl", result.items)
        return {"seconds": time.perf_counter() - t0, "report": json.loads(json.dumps(result.report, default=float))}

    val = stage(work / "validate.json", val_stage)
    report = val["report"]
    print("kept per subtask", report["kept"], "surface accuracy", report["phrasing_bias"]["surface"]["accuracy"], flush=True)

    stats = {
        "items_per_subtask": report["kept"],
        "items_total": report["kept_total"],
        "surface_classifier_accuracy": report["phrasing_bias"]["surface"]["accuracy"],
        "surface_classifier_accuracy_per_subtask": report["phrasing_bias"]["surface"]["per_subtask"],
        "subtask_classifier_accuracy": report["subtask_validity"]["accuracy"],
        "subtask_confusion": {"labels": report["subtask_validity"]["labels"], "matrix": report["subtask_validity"]["confusion"]},
        "diversity": report["diversity"],
        "dedupe": report["dedupe"],
        "answerability": report["answerability"],
        "lm_generation": {"attempts_per_subtask": args.lm_attempts, "counts": gen["lm_counts"], "parsed": gen["lm_parsed"],
                          "verified_kept": report["answerability"].get("generator", {}).get("kept", 0)},
        "planted_subtask": PLANTED,
    }
    stats_md = f"""
Suite: the shipped seeds + {args.templates} template items per subtask + {args.lm_attempts} SmolLM2 few-shot attempts per subtask,
validated with MiniLM (offline). Kept {stats['items_total']} items; surface-feature classifier accuracy
{stats['surface_classifier_accuracy']:.3f} (chance 0.5, target <= 0.6); subtask classifier accuracy
{stats['subtask_classifier_accuracy']:.3f}; LM items parsed {gen['lm_parsed']}, kept after the verifier
{stats['lm_generation']['verified_kept']}.

| subtask | items kept | diversity (1 - mean cos) | Vendi | surface clf acc |
|---|---|---|---|---|
""" + "\n".join(f"| {s} | {stats['items_per_subtask'][s]} | {stats['diversity'].get(s, {}).get('mean_pairwise_distance', float('nan')):.3f} | "
                f"{stats['diversity'].get(s, {}).get('vendi', float('nan')):.1f} | {stats['surface_classifier_accuracy_per_subtask'][s]:.3f} |"
                for s in SUBTASKS) + f"""

Wall times (s): templates {gen['template_seconds']:.1f}, LM generation {gen['lm_seconds']:.0f}, validation {val['seconds']:.0f}.
"""
    if args.parts == "stats":
        # part 2 as far as it ran (stages run with --only): the comparisons whose two runs exist
        have = {n: json.loads((work / f"run_{n}.json").read_text()) for n in ("base", "planted", "neutral_a", "neutral_b")
                if (work / f"run_{n}.json").is_file()}
        fts = {n: json.loads((work / f"finetune_{n}.json").read_text()) for n in ("planted", "neutral_a", "neutral_b")
               if (work / f"finetune_{n}.json").is_file()}

        def cmp(a: str, b: str):
            if a not in have or b not in have:
                return None
            ca = {r["id"]: (r["subtask"], bool(r["correct"])) for r in have[a]["items"]}
            cb = {r["id"]: (r["subtask"], bool(r["correct"])) for r in have[b]["items"]}
            return compare_correct(ca, cb, "holm")

        shift, null = cmp("base", "planted"), cmp("neutral_a", "neutral_b")
        missing = [n for n in ("base", "planted", "neutral_a", "neutral_b") if n not in have]
        note = (f"part 2 ran only partly: scored {sorted(have) or 'no model'}; not run: {missing}" if missing else "part 2 complete")
        results = {**stats, "subtask_shift": shift, "null_subtask_shift": null, "note": note,
                   "accuracy": {n: {s: v["accuracy"] for s, v in r["summary"].items()} for n, r in have.items()},
                   "finetunes": fts,
                   "sizes": {"templates_per_subtask": args.templates, "lm_attempts_per_subtask": args.lm_attempts,
                             "eval_items_per_subtask": args.eval, "train_examples": args.train, "lora_rank": 8, "epochs": 1, "lr": args.lr},
                   "wall_seconds": {"generate_templates": gen["template_seconds"], "generate_lm": gen["lm_seconds"], "validate": val["seconds"],
                                    **{f"finetune_{k}": v["seconds"] for k, v in fts.items()},
                                    **{f"score_{k}": v["seconds"] for k, v in have.items()}}}
        print(json.dumps(results, indent=1, default=str))
        if args.note:
            results["reading"] = args.note
        md = stats_md + "\n" + note + ".\n" + (f"\n**Reading.** {args.note}\n" if args.note else "")
        if have:
            md += ("\nPer-subtask accuracy of the scored models (first " + str(args.eval) + " validated items per subtask):\n\n| model | "
                   + " | ".join(SUBTASKS) + " | wall s |\n|---" * 1 + "|---" * (len(SUBTASKS) + 1) + "|\n"
                   + "\n".join(f"| {n} | " + " | ".join(f"{r['summary'][s]['accuracy']:.3f}" for s in SUBTASKS) + f" | {r['seconds']:.0f} |"
                                for n, r in have.items()) + "\n")
        for title, c in (("planted - base", shift), ("neutral B - neutral A", null)):
            if c is not None:
                md += (f"\n{title} (exact McNemar, Holm over five subtasks):\n\n| subtask | n | difference | p | p corrected |\n|---|---|---|---|---|\n"
                       + "\n".join(f"| {s} | {v['n']} | {v['difference']:+.3f} | {v['p']:.3g} | {v['p_corrected']:.3g} |" for s, v in c.items()) + "\n")
        if not args.no_record:
            record("reflect_probes", f"python benchmarks/reflect_probes.py --parts stats --lm-attempts {args.lm_attempts} --eval {args.eval} "
                   f"--train {args.train} (after --only stages)", md, results)
        return

    # -- part 2: sensitivity ------------------------------------------------------------------------------
    eval_items = first_per_subtask(load_suite(work / "suite_valid.jsonl"), args.eval)
    eval_scenarios = {it.scenario for it in load_suite(work / "suite_valid.jsonl")}

    def finetune(name: str, kind: str, seed: int) -> dict:
        from gradtrace.lm.lora import LoraTrainConfig, add_lora
        from gradtrace.loop.lm import LanguageModel

        path = work / f"adapter_{name}.pt"

        def go():
            m, t = load_model("smollm2")
            lm = LanguageModel(add_lora(m, LoraTrainConfig(rank=8, alpha=16, seed=seed)), t, max_length=256)
            texts = training_texts(kind, args.train, seed, eval_scenarios)
            t0 = time.perf_counter()
            steps = max(1, len(texts) // 8)
            losses = lm.train(texts, steps=steps, batch_size=8, lr=args.lr, generator=torch.Generator().manual_seed(seed))
            torch.save(lm.trainable_state(), path)
            return {"seconds": time.perf_counter() - t0, "steps": steps, "examples": len(texts), "first_loss": losses[0],
                    "last_loss": losses[-1]}

        return stage(work / f"finetune_{name}.json", go)

    def score(name: str, adapter: str | None, seed: int) -> dict:
        def go():
            t0 = time.perf_counter()
            if adapter is None:
                m, t = smollm2()
            else:
                from gradtrace.lm.lora import LoraTrainConfig, add_lora
                from gradtrace.loop.lm import LanguageModel

                base, t = load_model("smollm2")
                lm = LanguageModel(add_lora(base, LoraTrainConfig(rank=8, alpha=16, seed=seed)), t)
                lm.load_trainable_state(torch.load(work / f"adapter_{adapter}.pt", weights_only=True))
                m = lm.model
            rec = run_record(score_items(m, t, eval_items, progress=True), name, "suite_valid (first per subtask)")
            rec["seconds"] = time.perf_counter() - t0
            write_run(work / f"run_{name}.json", rec)
            return rec

        return stage(work / f"run_{name}.json", go)

    if args.only is not None:
        plan = {"finetune_planted": lambda: finetune("planted", "planted", 11), "finetune_neutral_a": lambda: finetune("neutral_a", "neutral", 21),
                "finetune_neutral_b": lambda: finetune("neutral_b", "neutral", 22), "score_base": lambda: score("base", None, 0),
                "score_planted": lambda: score("planted", "planted", 11), "score_neutral_a": lambda: score("neutral_a", "neutral_a", 21),
                "score_neutral_b": lambda: score("neutral_b", "neutral_b", 22)}
        for name in args.only:
            result = plan[name]()
            print(name, json.dumps(result.get("summary", result), default=str)[:2000], flush=True)
        return
    fts = {"planted": finetune("planted", "planted", 11), "neutral_a": finetune("neutral_a", "neutral", 21),
           "neutral_b": finetune("neutral_b", "neutral", 22)}
    runs = {"base": score("base", None, 0), "planted": score("planted", "planted", 11),
            "neutral_a": score("neutral_a", "neutral_a", 21), "neutral_b": score("neutral_b", "neutral_b", 22)}

    def correct(run: dict) -> dict:
        return {r["id"]: (r["subtask"], bool(r["correct"])) for r in run["items"]}

    shift = compare_correct(correct(runs["base"]), correct(runs["planted"]), "holm")
    shift_vs_neutral = compare_correct(correct(runs["neutral_a"]), correct(runs["planted"]), "holm")
    null = compare_correct(correct(runs["neutral_a"]), correct(runs["neutral_b"]), "holm")
    slim = lambda d: {s: {k: v[k] for k in ("n", "accuracy_a", "accuracy_b", "difference", "a_only", "b_only", "p", "p_corrected", "significant")}
                      for s, v in d.items()}
    results = {
        **stats,
        "subtask_shift": slim(shift),
        "subtask_shift_vs_neutral": slim(shift_vs_neutral),
        "null_subtask_shift": slim(null),
        "accuracy": {name: {s: v["accuracy"] for s, v in r["summary"].items()} for name, r in runs.items()},
        "sizes": {"eval_items_per_subtask": args.eval, "train_examples": args.train, "lora_rank": 8, "epochs": 1, "lr": args.lr,
                  "templates_per_subtask": args.templates},
        "finetunes": fts,
        "wall_seconds": {"generate_templates": gen["template_seconds"], "generate_lm": gen["lm_seconds"], "validate": val["seconds"],
                         **{f"finetune_{k}": v["seconds"] for k, v in fts.items()}, **{f"score_{k}": v["seconds"] for k, v in runs.items()}},
    }
    print(json.dumps({k: results[k] for k in ("items_per_subtask", "surface_classifier_accuracy", "subtask_shift", "null_subtask_shift")}, indent=1))
    if args.no_record:
        return
    rows = "\n".join(f"| {s} | {shift[s]['n']} | {shift[s]['difference']:+.3f} | {shift[s]['p_corrected']:.3g} | "
                     f"{shift_vs_neutral[s]['difference']:+.3f} | {shift_vs_neutral[s]['p_corrected']:.3g} | {null[s]['difference']:+.3f} | {null[s]['p_corrected']:.3g} |"
                     for s in SUBTASKS)
    w = results["wall_seconds"]
    summary = stats_md + f"""
Sensitivity (small, CPU): LoRA fine-tunes of SmolLM2 on {args.train} examples (one epoch), each model scored on the first
{args.eval} validated items per subtask. Planted subtask: {PLANTED} (trained to pick the wrong desirability answer).
Differences are accuracy (fine-tune minus reference); p: exact McNemar, Holm-corrected over the five subtasks.

| subtask | items scored | planted - base | p | planted - neutral A | p | neutral B - neutral A | p |
|---|---|---|---|---|---|---|---|
{rows}

Wall times (s): templates {w['generate_templates']:.1f}, LM generation {w['generate_lm']:.0f}, validation {w['validate']:.0f},
fine-tunes {w['finetune_planted']:.0f} / {w['finetune_neutral_a']:.0f} / {w['finetune_neutral_b']:.0f},
scoring {w['score_base']:.0f} / {w['score_planted']:.0f} / {w['score_neutral_a']:.0f} / {w['score_neutral_b']:.0f} (base / planted / neutral A / neutral B).
"""
    record("reflect_probes", f"python benchmarks/reflect_probes.py --eval {args.eval} --train {args.train} --lm-attempts {args.lm_attempts}",
           summary, results)


if __name__ == "__main__":
    main()
