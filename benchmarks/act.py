"""Act on attribution: backdoor removal, LDS per score variant, ERA vs
unlearning baselines with the relearning attack (digits and a tiny LM).

    python benchmarks/act.py                      # every part (about 55 min on 2 busy cores)
    python benchmarks/act.py --parts backdoor lds # some parts; the others are kept from act.json

Parts may run as separate processes at once: each merges its own results
into act.json under a file lock when it finishes. The ERA parts keep each
finished method under ``--cache`` (default: a folder in the temp dir), so a
killed run continues where it stopped.

Writes benchmarks/results/act.json and the ``unlearn`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, machine  # noqa: E402

PARTS = ("backdoor", "lds", "era_digits", "era_lm_100", "era_lm_50")
RESULTS = ROOT / "benchmarks" / "results" / "act.json"


CACHE = Path(tempfile.gettempdir()) / "gradtrace-act-cache"
LM_SEEDS = (0, 1, 2)


def run_part(part: str, cache: Path = CACHE) -> dict[str, Any]:
    """The results of one part, as ``{top-level key: value}`` to merge."""
    if part == "backdoor":
        from setups.backdoor import run_backdoor

        return {"backdoor": run_backdoor()}
    if part == "lds":
        from setups.backdoor import run_lds

        return {"lds": run_lds()}
    if part == "era_digits":
        from setups.era import run_era_digits

        return {"era_digits": run_era_digits(seeds=(0, 1, 2), cache_dir=str(cache))}
    from setups.era import run_era_lm

    frac = int(part.rsplit("_", 1)[1]) / 100
    return {"era_lm": run_era_lm(label_fractions=(frac,), seeds=LM_SEEDS, cache_dir=str(cache))}


def run(parts: list[str], cache: Path = CACHE) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for part in parts:
        start = time.perf_counter()
        new = run_part(part, cache)
        seconds, where = time.perf_counter() - start, machine()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            for key, value in new.items():
                if key == "era_lm":  # label fractions may come from separate runs
                    results.setdefault("era_lm", {}).update(value)
                else:
                    results[key] = value
            results.setdefault("seconds", {})[part] = seconds
            results.setdefault("machine", {})[part] = where
            results["targets"] = targets(results)
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            write_section(results)
    return results


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target of the issue: the measured values and whether it is met."""
    out: dict[str, Any] = {}
    if "backdoor" in r:
        b = r["backdoor"]
        out["asr_after_topk <= 0.5 * asr_base"] = b["asr_after_topk"] <= 0.5 * b["asr_base"]
        out["|asr_after_random - asr_base| <= 0.05"] = abs(b["asr_after_random"] - b["asr_base"]) <= 0.05
        out["clean_acc_drop <= 1.5 points"] = b["clean_acc_drop"] <= 1.5
    if "lds" in r:
        lds = r["lds"]["lds_by_variant"]
        out["best LDS variant beats raw"] = max(lds.values()) > lds["raw"]
    for bench in ("era_digits", "era_lm"):
        if bench not in r or not {"labels_100", "labels_50"} <= set(r[bench]):
            continue
        full, half = r[bench]["labels_100"], r[bench]["labels_50"]
        # distance in the attacker's favour: for accuracies higher is worse; for losses (both benchmarks now) lower is worse
        sign = 1.0 if r[bench].get("forget_metric", "accuracy") == "accuracy" else -1.0
        era, filt = full["era"]["relearn_k16"], full["filter"]["relearn_k16"]
        out[f"{bench}: ERA within 0.1 of filtering at k=16"] = sign * (era - filt) <= 0.1
        for other in ("graddiff", "rmu"):
            out[f"{bench}: ERA >= 0.25 better than {other} at k=16"] = sign * (full[other]["relearn_k16"] - era) >= 0.25
        out[f"{bench}: with 50% labels ERA beats filtering at k=16"] = sign * (half["filter"]["relearn_k16"] - half["era"]["relearn_k16"]) > 0
    return out


def _table(block: dict[str, Any], higher_is_worse: bool) -> str:
    extra = "forget_accuracy" in next(iter(block.values()))
    head = "| method | forget | retain | relearn k=4 | relearn k=16 | relearn k=64 |" + (" forget acc. |" if extra else "") + " selected (lr, steps) per seed |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = ("base", "filter", "ga", "graddiff", "npo", "rmu", "era")
    for m, row in sorted(block.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        sel = ", ".join(f"({p['lr']:g}, {p['steps']}){'' if p['admissible'] else ' **not admissible**'}" for p in row.get("selected", [])) or "fixed"
        acc = f" {row['forget_accuracy']:.3f} |" if extra else ""
        lines.append(f"| {m} | {row['forget']:.3f} | {row['retain']:.3f} | {row['relearn_k4']:.3f} | **{row['relearn_k16']:.3f}** | "
                     f"{row['relearn_k64']:.3f} |{acc} {sel} |")
    return "\n".join(lines)


def _ablation_text(block: dict[str, Any], what: str) -> str:
    """What ERA's ablation alone costs, before the coherence fine-tune (validation data)."""
    a = block.get("era", {}).get("after_ablation")
    if a is None:
        return ""
    return (f"\n\nERA right after the ablation, before the coherence fine-tune (validation data, mean of seeds): retain "
            f"{what} {a['retain']:.3f} (base model: {block['era']['base_retain_validation']:.3f}), forget {a['forget']:.3f}.")


def _selection_text(e: dict[str, Any], what: str) -> str:
    c = e["config"]
    if "rule" not in c:  # results of an older run, before settings were selected
        return "Settings fixed by hand (results from before the selection rule; re-run this part)."
    rule = c["rule"]
    tol = f"{rule['retain_tolerance']:g} x the base value" if rule["relative"] else f"{rule['retain_tolerance']:g}"
    grid = c["select"]
    base_grid = next((g for m, g in grid.items() if m != "era"), None)
    return (
        f"Settings chosen by one rule for every method, on validation data separate from the evaluation and attack data: "
        f"the best forget {what} among grid points whose retain metric is within {tol} of the base model's "
        f"({'higher' if rule['retain_higher_is_better'] else 'lower'} is better); if none is, the best retain point, marked "
        f"not admissible. Grid for GA/GradDiff/NPO/RMU: lr {base_grid['lrs']} x steps {base_grid['steps']}; ERA: coherence "
        f"fine-tune steps {grid['era']['steps']} (lr {c['coherence']['lr']:g}). Base and filter have nothing to choose."
    )


def write_section(r: dict[str, Any]) -> None:
    md = []
    if "backdoor" in r:
        b = r["backdoor"]
        md.append(
            f"### Backdoor removal on digits\n\n{b['n_poison']} training images get a 3-pixel corner trigger and label 0. "
            f"Raw TracIn (exact, factored store, 5 checkpoints of the seed-0 run) of the loss of label 0 on 50 triggered test "
            f"images ranks the training set; remove the top k = {b['k']} (of them {b['poisons_in_topk']} are poisons) or k random "
            f"examples, retrain from scratch; mean over seeds {b['config']['seeds']}. Iterative: 2 rounds of remove 40, retrain, re-attribute.\n\n"
            f"| asr_base | asr_after_topk | asr_after_random | asr_iterative | clean_acc_drop (points) |\n|---|---|---|---|---|\n"
            f"| {b['asr_base']:.3f} | **{b['asr_after_topk']:.3f}** | {b['asr_after_random']:.3f} | {b['asr_iterative']:.3f} | {b['clean_acc_drop']:.2f} |"
        )
    if "lds" in r:
        lds = r["lds"]["lds_by_variant"]
        c = r["lds"]["config"]
        md.append(
            f"### LDS on digits per score variant\n\n{c['lds']['n_subsets']} random subsets at alpha = {c['lds']['alpha']}, each retrained "
            f"(Adam, {c['train']['steps']} steps, fixed seed); behaviour: the loss on {c['n_queries']} test images; features: dense "
            f"projection to {c['projection_dim']} dims of all 26,122 parameters, 5 checkpoints. Fisher damping {c['variants']['fisher_damping']} x mean eigenvalue.\n\n"
            "| variant | LDS |\n|---|---|\n" + "\n".join(f"| {v} | {x:.3f} |" for v, x in lds.items())
        )
    if "era_digits" in r:
        e = r["era_digits"]
        md.append(
            f"### ERA vs baselines on digits (forget classes 5-9)\n\nForget: mean cross-entropy in nats on held-out images of "
            f"classes 5-9 (higher is better forgotten; the attacker minimises it); retain: accuracy on classes 0-4; forget acc.: "
            f"accuracy on classes 5-9 before the attack. Relearning: the lowest forget loss over lr {e['config']['relearn']['lrs']} x "
            f"{e['config']['relearn']['steps']} Adam steps (evaluated every {e['config']['relearn']['eval_every']}) on k held-out forget "
            f"images; the same protocol for every method. Mean of seeds {e['seeds']}. {_selection_text(e, 'loss')}\n\n"
            f"100% of the forget set labelled:\n\n{_table(e['labels_100'], False)}{_ablation_text(e['labels_100'], 'accuracy')}\n\n"
            f"50% labelled:\n\n{_table(e['labels_50'], False)}{_ablation_text(e['labels_50'], 'accuracy')}"
        )
    if "era_lm" in r and {"labels_100", "labels_50"} <= set(r["era_lm"]):
        e = r["era_lm"]
        md.append(
            f"### ERA vs baselines on a tiny GPT-2 (forget the dragon topic)\n\nPer-token NLL on held-out stories (forget: higher is "
            f"better; the attacker minimises it). Per-token labels on the topic's words. Relearning: lowest forget NLL over lr "
            f"{e['config']['relearn']['lrs']} x {e['config']['relearn']['steps']} steps. Mean of seeds {e['seeds']}. "
            f"{_selection_text(e, 'NLL')}\n\n100% labelled:\n\n"
            f"{_table(e['labels_100'], False)}{_ablation_text(e['labels_100'], 'NLL')}\n\n50% labelled:\n\n"
            f"{_table(e['labels_50'], False)}{_ablation_text(e['labels_50'], 'NLL')}"
        )
    if "targets" in r:
        md.append("### Targets\n\n| target | met |\n|---|---|\n" + "\n".join(f"| {k} | {'yes' if v else '**no**'} |" for k, v in r["targets"].items()))
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in r.get("seconds", {}).items())
    machines = sorted(set(r.get("machine", {}).values()))
    section = (
        "<!-- unlearn:start -->\n## unlearn (act on attribution)\n\nCommand: `python benchmarks/act.py` "
        f"(parts: {', '.join(PARTS)})  \nMachine: {'; '.join(machines)}  \nWall time per part, of its latest run (methods "
        f"that run read back from `--cache` cost it nothing): {secs}\n\n"
        + "\n\n".join(md) + "\n\nRaw results: `benchmarks/results/act.json`\n<!-- unlearn:end -->"
    )
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    pattern = re.compile(r"<!-- unlearn:start -->.*?<!-- unlearn:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--cache", type=Path, default=CACHE, help="where finished ERA methods are kept (resume)")
    args = parser.parse_args()
    out = run(args.parts, args.cache)
    print(json.dumps(out["targets"], indent=1))
