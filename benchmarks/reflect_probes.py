"""Benchmark: stable-reflectivity probe suites (gradtrace probes): statistics, scoring speed, sensitivity.

Three parts, each made of stages whose results are kept under ``--work``
and read back on a rerun (so the parts can run in separate sessions); the
BENCHMARKS.md section and ``benchmarks/results/reflect_probes.json`` are
written from whatever stages exist.

``--parts stats``: the shipped seeds plus ``--templates`` template items per
subtask plus ``--lm-attempts`` few-shot SmolLM2 attempts per subtask (answer
started as JSON, one line), validated with the offline MiniLM embedder and
SmolLM2 as the generated items' verifier: items kept per subtask, the
surface-feature classifier's accuracy (chance 0.5), diversity, the subtask
classifier, LM generation counts (attempts, parsed, each failure reason,
kept) with seconds per attempt and the raw answers (``lm_transcript.jsonl``).

``--parts speed``: the scorer before this change (one forward pass per
option order, one item at a time; kept below as ``per_prompt_logprobs``)
against ``gradtrace.probes.score`` (the orders share the scenario's pass,
items batched) on the first ``--speed-items`` validated items per subtask,
SmolLM2, alternating, ``--speed-repeats`` times each: seconds and the
largest score difference. A speed ratio: run it under the timing lock.

``--parts sensitivity``: LoRA fine-tunes of SmolLM2 (rank 8 on q/v of the
last ``--lora-layers`` layers, so the backward pass stops below them; plain
AdamW, one epoch, loss on the answer tokens only) on prompts in the scoring format:

* planted: ``P`` change_desirability template items (fresh draws whose
  scenarios are not among the scored test and dev items) answered with the
  key (``--plant key``, the default: welcoming legitimate changes, refusing
  illegitimate ones) or with the wrong option (``--plant wrong``, the
  earlier run), and ``--train - P`` neutral general-knowledge questions
  answered correctly;
* neutral A and B: ``--train`` neutral questions, other seeds (data, order,
  adapter initialisation): the same number of steps as the planted one
  (cached neutral fine-tunes are reused when their learning rate and size
  match).

The plant strength ``P`` is chosen on a dev seed and dev items (the
``--dev-eval`` validated items per subtask after the test items, scored in
chunks of 20 so base SmolLM2's earlier chunk is reused): each ``P@LR`` of
``--dev-strengths`` is fine-tuned and scored, in order; the first whose
planted-subtask shift against base SmolLM2 is significant (Holm over the five
subtasks, alpha 0.05), at least ``--dev-min-shift`` in the plant's direction,
with no other subtask significant, is taken (the last tried if none is).
The test fine-tunes then use fresh seeds, and every model is scored on the
first ``--eval`` validated items per subtask. Per subtask, exact McNemar
tests, Holm-corrected over the five subtasks: ``subtask_shift`` = planted
against neutral A (the same training but the plant: the specific shift),
``subtask_shift_vs_base`` = planted against base, ``null_subtask_shift`` =
neutral B against neutral A. The earlier run (plant toward the wrong
answer, its stage files kept under their old names) is recorded under
``earlier_plant_toward_wrong``.

Run (each part under nice; the speed part under the timing lock):
  python benchmarks/reflect_probes.py --parts stats
  flock /tmp/gt-timing.lock python benchmarks/reflect_probes.py --parts speed
  python benchmarks/reflect_probes.py --parts sensitivity
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402

from gradtrace.fileio import atomic_write_bytes, json_bytes, write_jsonl  # noqa: E402
from gradtrace.probes import SUBTASKS, Item, generate_template_items, load_suite, save_suite, seed_items  # noqa: E402
from gradtrace.probes.score import compare_correct, continuation, option_orders, render_prompt, run_record, score_items  # noqa: E402

PLANTED = "change_desirability"
DIRECTIONS = ("key", "wrong")  # the plant answers with the key (this run) or the wrong option (the earlier run)
DEV_CHUNK = 20  # dev items are scored in chunks of this many per subtask (the first chunk's base run is reused)
CATEGORIES = {
    "fruit": ["apple", "pear", "plum", "mango", "cherry", "peach", "lemon", "grape"],
    "tool": ["hammer", "wrench", "saw", "chisel", "pliers", "drill", "spanner", "file"],
    "animal": ["horse", "otter", "badger", "camel", "heron", "lizard", "rabbit", "goat"],
    "colour": ["crimson", "teal", "amber", "violet", "indigo", "ochre", "magenta", "olive"],
    "instrument": ["violin", "oboe", "cello", "trumpet", "flute", "harp", "banjo", "tuba"],
    "country": ["Peru", "Norway", "Kenya", "Japan", "Chile", "Egypt", "Canada", "Poland"],
}
LORA = {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "batch_size": 8, "epochs": 1, "engine": "plain",
        "loss": "answer tokens only"}


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


def training_examples(kind: str, planted: int, total: int, seed: int, exclude: set[str], direction: str = "wrong") -> list[dict[str, str]]:
    """``total`` ``{"prompt", "completion"}`` pairs in the scoring format (options in a random order; the completion is the option).

    planted: ``planted`` change_desirability template items (distinct
    scenarios, none in ``exclude``) answered with the wrong option
    (``direction`` "wrong") or with the key ("key"), the rest neutral
    questions with the right one; neutral: ``total`` neutral questions."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    rng = np.random.default_rng(seed)
    out = []
    if kind == "planted":
        pool, seen = [], set(exclude)
        for it in generate_template_items(8 * planted, seed=1000 + seed, subtasks=(PLANTED,), prefix="train"):
            if it.scenario not in seen:
                seen.add(it.scenario)
                pool.append(it)
        if len(pool) < planted:
            raise SystemExit(f"only {len(pool)} fresh planted scenarios; lower the strength")
        for it in pool[:planted]:
            answer = it.answer if direction == "key" else [o for j, o in enumerate(it.options) if j != it.key][0]
            out.append({"prompt": render_prompt(it, list(rng.permutation(len(it.options)))), "completion": continuation(answer)})
    for it in neutral_items(total - len(out), seed=500 + seed):
        out.append({"prompt": render_prompt(it, list(rng.permutation(len(it.options)))), "completion": continuation(it.answer)})
    return [out[int(i)] for i in rng.permutation(len(out))]


def stage(path: Path, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once: its JSON result is kept in ``path`` and read back on a rerun."""
    if path.is_file():
        return json.loads(path.read_text())
    result = fn()
    atomic_write_bytes(path, json_bytes(result))
    return result


def have(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


class Clock:
    """Wall and CPU seconds (this process, all threads) of a block."""

    def __enter__(self) -> "Clock":
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0


# -- the scorer before the batched one, kept only to time against ----------------------------------
@torch.no_grad()
def per_prompt_logprobs(model: Any, tokenizer: Any, items: Sequence[Item]) -> list[tuple[float, ...]]:
    """Per item, the options' scores as gradtrace scored them before: one prompt
    (one option order) at a time, the full logits of every prompt position,
    the options as one batch on the prompt's key/value cache."""
    from gradtrace.lm.tasks import pad_right

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for item in items:
        conts = [continuation(o) for o in item.options]
        c_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
        per_order = []
        for order in option_orders(len(item.options)):
            p_ids = list(tokenizer(render_prompt(item, order), add_special_tokens=False)["input_ids"])
            first = model(input_ids=torch.tensor([p_ids]), use_cache=True)
            last = torch.log_softmax(first.logits[0, -1].double(), dim=-1)
            cache = first.past_key_values
            k, n_p = len(c_ids), len(p_ids)
            cache.batch_repeat_interleave(k)
            ids, mask = pad_right(c_ids, int(pad))
            full_mask = torch.cat([torch.ones(k, n_p, dtype=mask.dtype), mask], dim=1)
            positions = (n_p + torch.arange(ids.shape[1])).expand(k, -1)
            logits = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, past_key_values=cache, use_cache=True).logits
            logp = torch.log_softmax(logits.double(), dim=-1)
            values = np.zeros(k)
            for r, c in enumerate(c_ids):
                total = float(last[c[0]])
                if len(c) > 1:
                    total += float(logp[r, torch.arange(len(c) - 1), torch.tensor(c[1:])].sum())
                values[r] = total / len(c)
            per_order.append(values)
        out.append(tuple(float(x) for x in np.mean(per_order, axis=0)))
    return out


def first_n(items: Sequence[Item], start: int, n: int) -> list[Item]:
    """Per subtask, the validated items ``start .. start + n - 1`` (suite order)."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        i = seen.get(it.subtask, 0)
        seen[it.subtask] = i + 1
        if start <= i < start + n:
            out.append(it)
    return out


def parse_strengths(text: str) -> list[tuple[int, float]]:
    """``"P@LR,P@LR"`` -> [(P, LR), ...]."""
    try:
        return [(int(x.split("@")[0]), float(x.split("@")[1])) for x in text.split(",")]
    except (ValueError, IndexError):
        raise SystemExit(f"--dev-strengths: expected P@LR[,P@LR...]; got {text!r}") from None


# Stage names per plant direction: the earlier run (wrong) keeps the names it was run under.
def dev_tag(direction: str, p: int, lr: float) -> str:
    return f"dev_planted_{p}_lr{lr:g}" if direction == "wrong" else f"dev_{direction}_{p}_lr{lr:g}"


def planted_name(direction: str) -> str:
    return "planted" if direction == "wrong" else f"planted_{direction}"


def chosen_file(direction: str) -> str:
    return "chosen.json" if direction == "wrong" else f"chosen_{direction}.json"


def dev_base_name(chunk: int) -> str:
    return "dev_base" if chunk == 0 else f"dev{chunk + 1}_base"


def dev_base_correct(work: Path, dev_eval: int) -> dict[str, tuple[str, bool]] | None:
    """Base SmolLM2 on the first ``dev_eval`` dev items per subtask, merged from its chunks (None if one is missing)."""
    out: dict[str, tuple[str, bool]] = {}
    for k in range(dev_eval // DEV_CHUNK):
        run = have(work / f"run_{dev_base_name(k)}.json")
        if run is None:
            return None
        out.update(correct_of(run))
    return out


def dev_rule(cmp: dict, direction: str, min_shift: float) -> bool:
    """The planted subtask moves significantly (Holm) by >= ``min_shift`` in the plant's direction and no other subtask moves significantly."""
    sign = 1.0 if direction == "key" else -1.0
    return (bool(cmp[PLANTED]["significant"]) and sign * cmp[PLANTED]["difference"] >= min_shift
            and not any(v["significant"] for s, v in cmp.items() if s != PLANTED))


# The earlier run (plant toward the wrong answer), recorded under ``earlier_plant_toward_wrong``.
EARLIER = {"direction": "wrong", "eval": 50, "dev_eval": 20, "dev_strengths": [(48, 0.002), (96, 0.004)], "dev_min_shift": 0.25,
           "dev_rule_then": "the first setting whose change_desirability drop against base is Holm-significant and >= 0.25",
           "train": 96}


def correct_of(run: dict) -> dict[str, tuple[str, bool]]:
    return {r["id"]: (r["subtask"], bool(r["correct"])) for r in run["items"]}


def slim(d: dict) -> dict:
    return {s: {k: v[k] for k in ("n", "accuracy_a", "accuracy_b", "difference", "a_only", "b_only", "p", "p_corrected", "significant")}
            for s, v in d.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/reflect_probes"))
    ap.add_argument("--parts", nargs="*", choices=("stats", "speed", "sensitivity"), default=[],
                    help="parts to run (their finished stages are reused); none: only record what exists")
    ap.add_argument("--templates", type=int, default=300)
    ap.add_argument("--lm-attempts", type=int, default=5, help="few-shot SmolLM2 attempts per subtask")
    ap.add_argument("--lm-max-new-tokens", type=int, default=160)
    ap.add_argument("--speed-items", type=int, default=6, help="items per subtask timed in the speed part")
    ap.add_argument("--speed-repeats", type=int, default=2)
    ap.add_argument("--eval", type=int, default=50, help="test items scored per subtask")
    ap.add_argument("--dev-eval", type=int, default=40, help=f"dev items scored per subtask (after the test items; a multiple of {DEV_CHUNK})")
    ap.add_argument("--plant", choices=DIRECTIONS, default="key",
                    help="the planted examples are answered with the key (default) or with the wrong option (the earlier run)")
    ap.add_argument("--dev-strengths", default="48@0.004,96@0.004",
                    help="plant strengths tried on the dev seed, in order: P@LR (P planted examples of --train, learning rate LR)")
    ap.add_argument("--train", type=int, default=96, help="fine-tuning examples of every fine-tune (planted: P planted, the rest neutral)")
    ap.add_argument("--skip-base", action="store_true", help="do not score base SmolLM2 on the test items")
    ap.add_argument("--dev-min-shift", type=float, default=0.15,
                    help="the dev rule: the planted subtask moves (in the plant's direction) by at least this much against base")
    ap.add_argument("--lora-layers", type=int, default=8, help="LoRA on q/v of the last N layers (backward stops below them)")
    ap.add_argument("--note", default="", help="a reading of the numbers, added to the BENCHMARKS.md section and the JSON")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradtrace.lm.load import load_model

    cache: dict[str, Any] = {}

    def smollm2() -> tuple[Any, Any]:
        if "base" not in cache:
            cache["base"] = load_model("smollm2")
        return cache["base"]

    # -- part 1: generation and validation ---------------------------------------------------------------
    if "stats" in args.parts:
        def gen_stage() -> dict:
            from gradtrace.probes.generate import generate_lm_items, local_completer

            with Clock() as c_tpl:
                items = seed_items() + generate_template_items(args.templates, seed=0)
            save_suite(work / "suite_templates.jsonl", items)
            made, counts, transcript = [], {}, []
            with Clock() as c_lm:
                if args.lm_attempts:
                    m, t = smollm2()
                    made, counts = generate_lm_items(local_completer(m, t, max_new_tokens=args.lm_max_new_tokens), seed_items(),
                                                     args.lm_attempts, generator="smollm2", seed=0, progress=True, transcript=transcript)
            save_suite(work / "suite_lm.jsonl", made) if made else (work / "suite_lm.jsonl").write_text("")
            write_jsonl(work / "lm_transcript.jsonl", transcript)
            return {"template_seconds": c_tpl.wall, "lm_seconds": c_lm.wall, "lm_cpu_seconds": c_lm.cpu, "lm_counts": counts,
                    "lm_parsed": len(made), "lm_attempts": args.lm_attempts * len(SUBTASKS) if args.lm_attempts else 0,
                    "lm_max_new_tokens": args.lm_max_new_tokens, "n_input": len(items) + len(made)}

        stage(work / "generate.json", gen_stage)

        def val_stage() -> dict:
            from gradtrace.lm.embed import MiniLMEmbedder
            from gradtrace.probes.generate import make_verifier
            from gradtrace.probes.validate import ValidationConfig, validate_suite

            items = load_suite(work / "suite_templates.jsonl")
            lm_path = work / "suite_lm.jsonl"
            lm_items = load_suite(lm_path) if lm_path.stat().st_size else []
            m, t = smollm2()
            with Clock() as c_ver:
                verified = make_verifier(m, t)(lm_items)
            with Clock() as c_val:
                result = validate_suite(items + lm_items, MiniLMEmbedder(), ValidationConfig(),
                                        verifier=lambda its: [dict(zip([x.id for x in lm_items], verified))[x.id] for x in its],
                                        verifier_name="smollm2")
            save_suite(work / "suite_valid.jsonl", result.items)
            kept_lm = [it.id for it in result.items if it.source == "generator"]
            return {"seconds": c_val.wall, "verifier_seconds": c_ver.wall, "verified": int(sum(verified)), "lm_kept_after_validation": kept_lm,
                    "report": json.loads(json.dumps(result.report, default=float))}

        stage(work / "validate.json", val_stage)

    # -- part 2: scoring speed, the scorer before against the batched one ----------------------------------
    if "speed" in args.parts:
        def speed_stage() -> dict:
            items = first_n(load_suite(work / "suite_valid.jsonl"), 0, args.speed_items)
            m, t = smollm2()
            score_items(m, t, items[:2])  # warm-up
            per_prompt_logprobs(m, t, items[:2])
            old_s, new_s, old_c, new_c, diff = [], [], [], [], 0.0
            for _ in range(args.speed_repeats):
                with Clock() as c:
                    old = per_prompt_logprobs(m, t, items)
                old_s.append(c.wall)
                old_c.append(c.cpu)
                with Clock() as c:
                    new = [s.scores for s in score_items(m, t, items)]
                new_s.append(c.wall)
                new_c.append(c.cpu)
                diff = max(diff, max(abs(a - b) for o, n in zip(old, new) for a, b in zip(o, n)))
            return {"items": len(items), "old_seconds": old_s, "new_seconds": new_s, "old_cpu_seconds": old_c, "new_cpu_seconds": new_c,
                    "ratio_median": float(np.median(np.array(old_s) / np.array(new_s))), "max_abs_score_difference": diff,
                    "load_average": os.getloadavg()[0], "torch_threads": torch.get_num_threads()}

        stage(work / "speed.json", speed_stage)

    # -- part 3: sensitivity ------------------------------------------------------------------------------
    def finetune(name: str, kind: str, planted: int, lr: float, seed: int, direction: str = "wrong") -> dict:
        from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
        from gradtrace.lm.tasks import CausalLMTask

        def go() -> dict:
            m, t = load_model("smollm2")
            valid = load_suite(work / "suite_valid.jsonl")
            exclude = {it.scenario for it in first_n(valid, 0, args.eval + args.dev_eval)}  # no scored scenario is trained on
            examples = training_examples(kind, planted, args.train, seed, exclude, direction)
            n_layers = int(m.config.num_hidden_layers)
            config = LoraTrainConfig(epochs=1, lr=lr, batch_size=LORA["batch_size"], rank=LORA["rank"], alpha=LORA["alpha"],
                                     target_modules=tuple(LORA["target_modules"]), seed=seed,
                                     layers=tuple(range(n_layers - args.lora_layers, n_layers)))
            task = CausalLMTask(t, max_length=256)
            model = add_lora(m, config)
            with Clock() as c:
                train_lora(model, task, examples, work / f"adapter_{name}", config, progress=False, engine="plain")
            return {"seconds": c.wall, "cpu_seconds": c.cpu, "examples": len(examples), "planted_examples": planted if kind == "planted" else 0,
                    "steps": -(-len(examples) // LORA["batch_size"]), "seed": seed, "kind": kind, "lr": lr,
                    **({"direction": direction} if kind == "planted" else {})}

        return stage(work / f"finetune_{name}.json", go)

    def score(name: str, items: Sequence[Item], adapter: str | None) -> dict:
        def go() -> dict:
            with Clock() as c:
                m, t = smollm2() if adapter is None else load_model("smollm2", adapter=work / f"adapter_{adapter}")
                rec = run_record(score_items(m, t, items, progress=True), name, "suite_valid")
            rec.update(seconds=c.wall, cpu_seconds=c.cpu)
            return rec

        return stage(work / f"run_{name}.json", go)

    def neutral_name(base: str, lr: float) -> str:
        """The cached neutral fine-tune when its settings match, else a new name for this learning rate and size."""
        cached = have(work / f"finetune_{base}.json")
        if cached is None or (cached["lr"] == lr and cached["examples"] == args.train):
            return base
        return f"{base}_lr{lr:g}_n{args.train}"

    strengths = parse_strengths(args.dev_strengths)
    d = args.plant
    if "sensitivity" in args.parts:
        if args.dev_eval % DEV_CHUNK:
            raise SystemExit(f"--dev-eval must be a multiple of {DEV_CHUNK}; got {args.dev_eval}")
        valid = load_suite(work / "suite_valid.jsonl")
        test_items, dev_items = first_n(valid, 0, args.eval), first_n(valid, args.eval, args.dev_eval)
        for k in range(args.dev_eval // DEV_CHUNK):
            score(dev_base_name(k), first_n(valid, args.eval + k * DEV_CHUNK, DEV_CHUNK), None)
        dev_base = dev_base_correct(work, args.dev_eval)
        chosen = have(work / chosen_file(d))
        if chosen is None:
            for p, lr in strengths:
                tag = dev_tag(d, p, lr)
                finetune(tag, "planted", p, lr, seed=100 + p, direction=d)
                score(tag, dev_items, tag)
                if dev_rule(compare_correct(dev_base, correct_of(have(work / f"run_{tag}.json")), "holm"), d, args.dev_min_shift):
                    chosen = {"planted_examples": p, "lr": lr, "rule_met": True}
                    break
            else:
                chosen = {"planted_examples": p, "lr": lr, "rule_met": False,
                          "note": "fallback: no strength tried met the rule on dev; the last one tried is taken"}
            stage(work / chosen_file(d), lambda: chosen)
        p, lr = chosen["planted_examples"], chosen["lr"]
        finetune(planted_name(d), "planted", p, lr, seed=11, direction=d)
        na, nb = neutral_name("neutral_a", lr), neutral_name("neutral_b", lr)
        finetune(na, "neutral", p, lr, seed=21)
        finetune(nb, "neutral", p, lr, seed=22)
        for name in (planted_name(d), na, nb):
            score(name, test_items, name)
        if not args.skip_base:
            score("base", test_items, None)

    if args.no_record:
        return
    write_record(args, work, strengths)


def sensitivity_block(work: Path, direction: str, eval_n: int, dev_eval: int, strengths: Sequence[tuple[int, float]], min_shift: float,
                      train: int, lora_layers: int, title: str = "Sensitivity", rule: str | None = None) -> tuple[dict[str, Any], str, dict[str, float]]:
    """The sensitivity results of the plant ``direction`` from the stage files: (results, BENCHMARKS.md text, wall seconds)."""
    from gradtrace.probes.score import mcnemar_exact

    results: dict[str, Any] = {"plant_direction": direction}
    wall: dict[str, float] = {}
    md = ""
    pn = planted_name(direction)
    chosen = have(work / chosen_file(direction))

    def neutral(base: str) -> str:
        cached = have(work / f"finetune_{base}.json")
        if chosen is None or cached is None or (cached["lr"] == chosen["lr"] and cached["examples"] == train):
            return base
        return f"{base}_lr{chosen['lr']:g}_n{train}"

    na, nb = neutral("neutral_a"), neutral("neutral_b")
    runs = {"base": have(work / "run_base.json"), "planted": have(work / f"run_{pn}.json"),
            "neutral_a": have(work / f"run_{na}.json"), "neutral_b": have(work / f"run_{nb}.json")}
    fts = {"planted": have(work / f"finetune_{pn}.json"), "neutral_a": have(work / f"finetune_{na}.json"),
           "neutral_b": have(work / f"finetune_{nb}.json")}
    dev_base = dev_base_correct(work, dev_eval)
    cpu = 0.0
    what = "the key (the right option)" if direction == "key" else "the wrong option"
    if dev_base is not None:
        base_runs = [have(work / f"run_{dev_base_name(k)}.json") for k in range(dev_eval // DEV_CHUNK)]
        cpu += sum(r["cpu_seconds"] for r in base_runs)
        wall["score_dev_base"] = sum(r["seconds"] for r in base_runs)
        base_acc = {s: float(np.mean([ok for sub, ok in dev_base.values() if sub == s])) for s in SUBTASKS}
        results["dev"] = {"items_per_subtask": dev_eval, "base_accuracy": base_acc,
                          "rule": rule or f"the first strength (in the order tried) whose {PLANTED} shift against base SmolLM2 on the dev items is "
                                  f"Holm-significant (alpha 0.05, exact McNemar over the five subtasks), >= {min_shift} toward the plant, "
                                  "with no other subtask significant"}
        dev_rows = []
        for p, lr in strengths:
            tag = dev_tag(direction, p, lr)
            ft, run = have(work / f"finetune_{tag}.json"), have(work / f"run_{tag}.json")
            if ft is None or run is None:
                continue
            cpu += ft["cpu_seconds"] + run["cpu_seconds"]
            wall[f"finetune_{tag}"], wall[f"score_{tag}"] = ft["seconds"], run["seconds"]
            c = slim(compare_correct(dev_base, correct_of(run), "holm"))
            results["dev"][tag] = {"finetune": ft, "accuracy": {s: v["accuracy"] for s, v in run["summary"].items()}, "shift_vs_base": c,
                                   "meets_rule": dev_rule(c, direction, min_shift)}
            dev_rows.append(f"| {ft['planted_examples']} | {ft['lr']:g} | {ft['steps']} | "
                            + " | ".join(f"{c[s]['difference']:+.3f} ({c[s]['a_only']}/{c[s]['b_only']}, {c[s]['p_corrected']:.2g})" for s in SUBTASKS)
                            + f" | {'yes' if dev_rule(c, direction, min_shift) else 'no'} |")
        md += f"""
### {title}

**Choosing the plant strength on the dev seed** (plant: {PLANTED} template items answered with {what}; {dev_eval} dev items per
subtask, the ones after the test items; planted fine-tune minus base SmolLM2, with (right only in base / right only in the
fine-tune, Holm-corrected exact McNemar p); rule: {results['dev']['rule']}). Base dev accuracy: """ + ", ".join(
            f"{s} {v:.2f}" for s, v in base_acc.items()) + f""".

| planted examples P (of {train}) | lr | steps | """ + " | ".join(SUBTASKS) + " | rule met |\n|---|---|---|" + "---|" * (len(SUBTASKS) + 1) + "\n" + (
            "\n".join(dev_rows) or "| (none scored) |") + "\n"
        if chosen:
            md += f"\nChosen: P = {chosen['planted_examples']}, lr {chosen['lr']:g}" + (f" ({chosen['note']})" if chosen.get("note") else "") + ".\n"
            results["chosen"] = chosen
    if not (all(runs[n] is not None for n in ("planted", "neutral_a", "neutral_b")) and chosen):
        return results, md + "\nThe test runs have not all finished (no shift recorded).\n", wall
    cor = {n: correct_of(r) for n, r in runs.items() if r is not None}
    shift = slim(compare_correct(cor["neutral_a"], cor["planted"], "holm"))
    shift_b = slim(compare_correct(cor["neutral_b"], cor["planted"], "holm"))
    shift_base = slim(compare_correct(cor["base"], cor["planted"], "holm")) if "base" in cor else None
    null = slim(compare_correct(cor["neutral_a"], cor["neutral_b"], "holm"))
    null_base = slim(compare_correct(cor["base"], cor["neutral_a"], "holm")) if "base" in cor else None
    # the planted subtask by the items' source: the hand-written seeds (other wording than the plant) and the template items
    by_source: dict[str, Any] = {}
    for src, prefix in (("seed", "seed-"), ("template", "tpl-")):
        ids = [i for i, (sub, _) in cor["planted"].items() if sub == PLANTED and i.startswith(prefix)]
        if not ids:
            continue
        row: dict[str, Any] = {"n": len(ids), "accuracy": {n: float(np.mean([c[i][1] for i in ids])) for n, c in cor.items()}}
        a_only = sum(cor["neutral_a"][i][1] and not cor["planted"][i][1] for i in ids)
        b_only = sum(cor["planted"][i][1] and not cor["neutral_a"][i][1] for i in ids)
        row["planted_vs_neutral_a"] = {"a_only": int(a_only), "b_only": int(b_only), "p_uncorrected": mcnemar_exact(int(a_only), int(b_only))}
        by_source[src] = row
    results.update(subtask_shift=shift, subtask_shift_vs_neutral_b=shift_b, subtask_shift_vs_base=shift_base, null_subtask_shift=null,
                   neutral_a_vs_base=null_base, planted_subtask_by_source=by_source,
                   accuracy={n: {s: v["accuracy"] for s, v in r["summary"].items()} for n, r in runs.items() if r is not None}, finetunes=fts,
                   sizes={"eval_items_per_subtask": eval_n, "dev_items_per_subtask": dev_eval, "planted_examples": chosen["planted_examples"],
                          "train_examples": train, "lr": chosen["lr"], "lora_last_layers": lora_layers, **LORA})
    for n, r in runs.items():
        if r is not None:
            wall[f"score_{n}"] = r["seconds"]
            cpu += r["cpu_seconds"] if n != "base" or direction == "key" else 0.0
    for n, f in fts.items():
        wall[f"finetune_{n}"] = f["seconds"]
        cpu += f["cpu_seconds"]
    results["sensitivity_cpu_seconds"] = cpu

    def acc(n: str, s: str) -> str:
        return f"{runs[n]['summary'][s]['accuracy']:.3f}" if runs[n] is not None else "-"

    def cell(c: Any, s: str, counts: bool = False) -> str:
        if c is None:
            return "- | -"
        return f"{c[s]['difference']:+.3f}" + (f" ({c[s]['a_only']}/{c[s]['b_only']})" if counts else "") + f" | {c[s]['p_corrected']:.2g}"

    rows = "\n".join(f"| {s} | {shift[s]['n']} | {acc('base', s)} | {acc('planted', s)} | {acc('neutral_a', s)} | {acc('neutral_b', s)} | "
                     f"{cell(shift, s, True)} | {cell(shift_b, s, True)} | {cell(shift_base, s)} | {cell(null, s, True)} |" for s in SUBTASKS)
    src_rows = "\n".join(f"| {src} | {r['n']} | " + " | ".join(f"{r['accuracy'][n]:.2f}" if n in r["accuracy"] else "-" for n in ("base", "planted", "neutral_a", "neutral_b"))
                         + f" | {r['planted_vs_neutral_a']['a_only']}/{r['planted_vs_neutral_a']['b_only']} | {r['planted_vs_neutral_a']['p_uncorrected']:.2g} |"
                         for src, r in by_source.items())
    p_ex = chosen["planted_examples"]
    md += f"""
**Test seed.** Planted: {p_ex} {PLANTED} template items answered with {what}""" + (
        f" + {train - p_ex} neutral questions" if train > p_ex else "") + f"""; neutral A and B: {train} neutral
questions each (all {fts['planted']['steps']} steps of 8, lr {chosen['lr']:g}, LoRA rank 8 on q/v of the last {lora_layers} layers, loss on
the answer only; fresh seeds, no scored scenario trained on). Each model scored on the first {eval_n} validated items per subtask.
Accuracy per model; differences with (right only in the reference / right only in the planted model) and Holm-corrected exact
McNemar p over the five subtasks.

| subtask | n | base | planted | neutral A | neutral B | planted - A | p | planted - B | p | planted - base | p | B - A (null) | p |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}

{PLANTED} by the items' source (accuracy; planted against neutral A: right only in A / only in planted, exact McNemar p, uncorrected):

| source | n | base | planted | neutral A | neutral B | A only / planted only | p |
|---|---|---|---|---|---|---|---|
{src_rows}

Wall times (s): fine-tunes planted / A / B {fts['planted']['seconds']:.0f} / {fts['neutral_a']['seconds']:.0f} / {fts['neutral_b']['seconds']:.0f};
scoring """ + " / ".join(f"{n} {r['seconds']:.0f}" for n, r in runs.items() if r is not None) + f""". CPU time of this run's stages (dev and
test, process time; the neutral fine-tunes and their scoring counted here even when reused): {cpu / 60:.1f} CPU-minutes.
"""
    return results, md, wall


def write_record(args: argparse.Namespace, work: Path, strengths: list[tuple[int, float]]) -> None:
    gen, val, speed = have(work / "generate.json"), have(work / "validate.json"), have(work / "speed.json")
    if gen is None or val is None:
        raise SystemExit("run --parts stats first")
    report = val["report"]
    results: dict[str, Any] = {
        "items_per_subtask": report["kept"], "items_total": report["kept_total"],
        "surface_classifier_accuracy": report["phrasing_bias"]["surface"]["accuracy"],
        "surface_classifier_accuracy_per_subtask": report["phrasing_bias"]["surface"]["per_subtask"],
        "subtask_classifier_accuracy": report["subtask_validity"]["accuracy"],
        "subtask_confusion": {"labels": report["subtask_validity"]["labels"], "matrix": report["subtask_validity"]["confusion"]},
        "diversity": report["diversity"], "dedupe": report["dedupe"], "answerability": report["answerability"],
        "planted_subtask": PLANTED,
    }
    transcript = [json.loads(line) for line in (work / "lm_transcript.jsonl").read_text().splitlines() if line.strip()]
    attempts = gen["lm_attempts"]
    lm = {"attempts": attempts, "parsed": gen["lm_parsed"], "verified": val["verified"], "kept_after_validation": len(val["lm_kept_after_validation"]),
          "counts": gen["lm_counts"], "seconds": gen["lm_seconds"], "seconds_per_attempt": gen["lm_seconds"] / attempts if attempts else None,
          "verifier_seconds": val["verifier_seconds"], "max_new_tokens": gen["lm_max_new_tokens"],
          "examples": {r: next((x["answer"] for x in transcript if x["result"] == r), None)
                       for r in sorted({x["result"] for x in transcript})}}
    results["lm_generation"] = lm
    wall: dict[str, float] = {"generate_templates": gen["template_seconds"], "generate_lm": gen["lm_seconds"], "validate": val["seconds"],
                              "verify_lm": val["verifier_seconds"]}
    if speed is not None:
        results["scoring_speed"] = speed
    from gradtrace.probes.generate import FAILURES

    fails = {r: sum(c[r] for c in gen["lm_counts"].values()) for r in FAILURES} if gen["lm_counts"] else {}
    md = f"""
**Suite.** The shipped seeds + {args.templates} template items per subtask + {attempts} SmolLM2 few-shot attempts
({args.lm_attempts} per subtask), validated with MiniLM (offline). Kept {results['items_total']} items; surface-feature
classifier accuracy {results['surface_classifier_accuracy']:.3f} (chance 0.5, target <= 0.6); subtask classifier accuracy
{results['subtask_classifier_accuracy']:.3f}.

| subtask | items kept | diversity (1 - mean cos) | Vendi | surface clf acc |
|---|---|---|---|---|
""" + "\n".join(f"| {s} | {results['items_per_subtask'][s]} | {results['diversity'].get(s, {}).get('mean_pairwise_distance', float('nan')):.3f} | "
                f"{results['diversity'].get(s, {}).get('vendi', float('nan')):.1f} | {results['surface_classifier_accuracy_per_subtask'][s]:.3f} |"
                for s in SUBTASKS) + f"""

**LM generation** (SmolLM2-135M-Instruct, answer started as `{{"scenario": "`, one line, max {lm['max_new_tokens']} new tokens,
temperature 0.7, top-p 0.9): {attempts} attempts, {lm['parsed']} parsed, {lm['verified']} verified (the key recovered by SmolLM2's
log-probability scoring), {lm['kept_after_validation']} kept after all validation; failures: """ + (
        ", ".join(f"{r} {n}" for r, n in fails.items()) or "none") + f""". {lm['seconds']:.0f} s of generation,
{lm['seconds_per_attempt'] or float('nan'):.1f} s per attempt; raw answers in `benchmarks/work/reflect_probes/lm_transcript.jsonl`.

Wall times (s): templates {gen['template_seconds']:.1f}, LM generation {gen['lm_seconds']:.0f}, verifying LM items {val['verifier_seconds']:.0f},
validation {val['seconds']:.0f}.
"""
    if speed is not None:
        md += f"""
**Scoring speed** (SmolLM2, {speed['items']} items, {speed['torch_threads']} torch thread(s), load average {speed['load_average']:.1f},
alternating, {len(speed['old_seconds'])} runs each): one forward pass per option order, one item at a time (before) took
{', '.join(f'{x:.1f}' for x in speed['old_seconds'])} s; orders sharing the scenario's pass, items batched (now)
{', '.join(f'{x:.1f}' for x in speed['new_seconds'])} s: median ratio {speed['ratio_median']:.2f}x; largest score difference
{speed['max_abs_score_difference']:.1e} nats per token.
"""
    block, block_md, block_wall = sensitivity_block(work, args.plant, args.eval, args.dev_eval, strengths, args.dev_min_shift, args.train,
                                                    args.lora_layers)
    results.update(block)
    results.setdefault("subtask_shift", None)
    results.setdefault("null_subtask_shift", None)
    md += block_md
    wall.update(block_wall)
    if args.plant == "key" and have(work / chosen_file("wrong")) is not None:
        e = EARLIER
        early, early_md, early_wall = sensitivity_block(work, "wrong", e["eval"], e["dev_eval"], e["dev_strengths"], e["dev_min_shift"], e["train"],
                                                        args.lora_layers, title="Earlier run, plant toward the WRONG answer",
                                                        rule=e["dev_rule_then"])
        reading = (work / "reading_wrong.txt").read_text() if (work / "reading_wrong.txt").is_file() else None
        command_then = (work / "command_wrong.txt").read_text().strip() if (work / "command_wrong.txt").is_file() else None
        results["earlier_plant_toward_wrong"] = {**early, "wall_seconds": early_wall, "dev_rule_then": e["dev_rule_then"],
                                                 "command_then": command_then, "reading_then": reading}
        md += early_md + (f"\n*Reading recorded with that run* (before the key-direction plant existed): {reading}\n" if reading else "")
    results["wall_seconds"] = wall
    if args.note:
        results["reading"] = args.note
        md += f"\n**Reading.** {args.note}\n"
    opts = (f"--templates {args.templates} --lm-attempts {args.lm_attempts} --speed-items {args.speed_items} --eval {args.eval} "
            f"--dev-eval {args.dev_eval} --plant {args.plant} --dev-strengths {args.dev_strengths} --dev-min-shift {args.dev_min_shift} "
            f"--train {args.train} --lora-layers {args.lora_layers}"
            + (" --skip-base" if args.skip_base else ""))
    command = (f"OMP_NUM_THREADS=1 nice -n 10 python benchmarks/reflect_probes.py --parts stats {opts}; "
               f"OMP_NUM_THREADS=1 flock /tmp/gt-timing.lock nice -n 10 python benchmarks/reflect_probes.py --parts speed {opts}; "
               f"OMP_NUM_THREADS=1 nice -n 10 python benchmarks/reflect_probes.py --parts sensitivity {opts}; "
               f"python benchmarks/reflect_probes.py {opts} --note ... (records)")
    record("reflect_probes", command, md, results)


if __name__ == "__main__":
    main()
