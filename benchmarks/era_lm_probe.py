"""Probe ERA's routing settings on the tiny-GPT-2 forget benchmark.

ERA misses its LM targets in ``benchmarks/act.py`` (see BENCHMARKS.md,
section "unlearn"). This script measures, for a few routing settings on
development seeds that ``act.py`` does not report, what the ablation alone
costs (validation retain NLL right after the ablation, before the coherence
fine-tune), what the selection rule then picks, and the relearning attack at
k = 16 against data filtering on the same seed. It is a diagnostic, not a
tuning loop: ``act.py`` keeps its settings.

    python benchmarks/era_lm_probe.py                 # every variant, seeds 5 and 6 (one process; see BENCHMARKS.md for times)
    python benchmarks/era_lm_probe.py --variants default expand_8 --seeds 5

Writes benchmarks/results/era_lm_probe.json and the ``era_lm_probe`` section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402

#: the LM routing setting act.py used until 2026-11-23 19:30; every variant below is stated in full from it, so a
#: change to act.py's setting does not change what a variant means
EARLIER = {"expand": 64, "forget_original": -1.0, "retain_expanded": 1.0, "l1_coef": 1e-2}
#: routing fields (``RoutingConfig``) and whether whole stories are routed instead of the topic's words
VARIANTS: dict[str, dict[str, Any]] = {
    "earlier_act_setting": EARLIER,
    "forget_original_0": {**EARLIER, "forget_original": 0.0},
    "paper_l1_1e-4_fo_-0.75": {**EARLIER, "l1_coef": 1e-4, "forget_original": -0.75},
    "expand_8": {**EARLIER, "expand": 8},
    "retain_expanded_0_l1_0.1_fo_0": {**EARLIER, "retain_expanded": 0.0, "l1_coef": 0.1, "forget_original": 0.0},
    "retain_expanded_0.1_l1_0.03_fo_0": {**EARLIER, "retain_expanded": 0.1, "l1_coef": 0.03, "forget_original": 0.0},
    "retain_expanded_0.3_l1_0.1_fo_0": {**EARLIER, "retain_expanded": 0.3, "l1_coef": 0.1, "forget_original": 0.0},
    "whole_story_fo_0": {**EARLIER, "forget_original": 0.0, "_whole_story": True},
}


def run_variant(name: str, seed: int, cache: str) -> dict[str, Any]:
    from gradtrace.demos.era_lm import lm_compare_config, lm_forget_spec
    from gradtrace.unlearn.compare import compare_methods

    over = dict(VARIANTS[name])
    whole_story = over.pop("_whole_story", False)
    spec = lm_forget_spec(1.0, seed)
    if whole_story:
        spec = dataclasses.replace(spec, forget_weights=(spec.forget_weights.sum(1) > 0).double())
    cfg = lm_compare_config(seed)
    cfg = dataclasses.replace(cfg, methods=("base", "filter", "era"), routing=dataclasses.replace(cfg.routing, **over),
                              relearn=dataclasses.replace(cfg.relearn, ks=(16,)))
    res = compare_methods(spec, cfg, cache_dir=cache)
    era = res.results["era"]
    sel = era.selection or {}
    return {
        "after_ablation_retain": sel["after_ablation"]["retain"], "after_ablation_forget": sel["after_ablation"]["forget"],
        "base_retain_validation": sel["base_retain"], "selected_steps": sel["selected"]["steps"], "admissible": sel["admissible"],
        "selected_forget_validation": sel["selected"]["forget"], "selected_retain_validation": sel["selected"]["retain"],
        "era_forget": era.forget, "era_retain": era.retain, "era_relearn_k16": era.relearn["best"]["16"],
        "filter_relearn_k16": res.results["filter"].relearn["best"]["16"], "base_relearn_k16": res.results["base"].relearn["best"]["16"],
    }


def summary(out: dict[str, Any]) -> str:
    rows = []
    for name, per_seed in out["variants"].items():
        mean = {k: float(np.mean([r[k] for r in per_seed.values()])) for k in next(iter(per_seed.values())) if k != "admissible"}
        adm = sum(r["admissible"] for r in per_seed.values())
        rows.append(f"| {name} | {mean['base_retain_validation']:.3f} | {mean['after_ablation_retain']:.3f} | "
                    f"{mean['after_ablation_forget']:.3f} | {mean['selected_forget_validation']:.3f} | "
                    f"{mean['selected_retain_validation']:.3f} | {adm}/{len(per_seed)} | "
                    f"**{mean['era_relearn_k16']:.3f}** | {mean['filter_relearn_k16']:.3f} | {mean['base_relearn_k16']:.3f} |")
    return (
        f"ERA's routing settings on the tiny GPT-2, a diagnostic. Wall time of this invocation {out['seconds']:.0f} s "
        "(pieces finished by an earlier invocation are read back from `--cache`; on 2026-11-23 one seed of the first "
        "six variants, with base and filter, took about 7 minutes on one of 2 busy cores). "
        f"Development seeds {out['seeds']} (not the seeds `act.py` reports), 100% of the topic labelled, otherwise the "
        "`act.py` LM setting. After ablation: validation NLL right after the new units are cut, before the coherence "
        "fine-tune; the rule then picks the coherence length (grid up to 320 steps). Relearning: the attacker's best "
        "forget NLL at k = 16 (higher is better). Mean over the seeds. `act.py`'s LM setting is "
        "`retain_expanded_0.3_l1_0.1_fo_0`, chosen here by the selection rule's own criterion (the highest validation "
        "forget NLL among settings whose validation retain NLL is admissible, on the seeds it is admissible on), "
        "not by the relearning columns; before 2026-11-23 19:30 it was `earlier_act_setting`.\n\n"
        "| routing variant | base retain (val.) | retain after ablation | forget after ablation | forget (val.), selected "
        "| retain (val.), selected | admissible seeds | ERA relearn k=16 | filter relearn k=16 | base relearn k=16 |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[5, 6])
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "gradtrace-era-lm-probe"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    variants: dict[str, dict[str, Any]] = {}
    for name in args.variants:
        variants[name] = {str(s): run_variant(name, s, args.cache) for s in args.seeds}
        print(name, json.dumps(variants[name]), flush=True)
    out = {"variants": variants, "seeds": args.seeds, "seconds": time.time() - t0}
    record("era_lm_probe", "python benchmarks/era_lm_probe.py", summary(out), out)


if __name__ == "__main__":
    main()
