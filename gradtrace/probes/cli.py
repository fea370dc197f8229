"""``gradtrace probes generate | validate | run | compare | against-seeds``: stable-reflectivity probe suites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..cli_common import console, json_option, output_file, positive_option, print_json, progress_option, run_or_exit, table
from ..errors import InputError

probes_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Stable-reflectivity probe suites: generate, validate, run on a model, compare two runs or a run with its recipe's seeds.")


def register(app: typer.Typer) -> None:
    app.add_typer(probes_app, name="probes")


def _embedder(name: str) -> Any:
    from ..lm.embed import make_embedder

    return make_embedder(name, analyzer="word")


@probes_app.command("generate")
def generate_cmd(
    out: Path = typer.Option(..., help="the suite file to write (.jsonl)"),
    templates: int = typer.Option(300, help="template items per subtask (0: none)"),
    lm: int = typer.Option(0, help="few-shot LM generation attempts per subtask (0: none); kept only if the verifier recovers the key"),
    model: str = typer.Option("smollm2", help="the generating model: smollm2 or a local Hugging Face folder"),
    endpoint: Optional[str] = typer.Option(None, help="generate with an OpenAI-compatible endpoint instead: http(s)://HOST/v1#MODEL"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the endpoint's API key (never logged)"),
    verifier: str = typer.Option("smollm2", help="the model that must recover each LM item's key (smollm2, tiny or a folder)"),
    include_seeds: bool = typer.Option(True, help="put the shipped seed set in the suite too"),
    seed: int = typer.Option(0, help="seed of every random choice"),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Write a suite: seeds, template items (keys right by construction), verified LM items."""
    import time

    from .generate import endpoint_completer, generate_lm_items, local_completer, make_verifier
    from .items import SUBTASKS, save_suite, seed_items
    from .templates import generate_template_items

    def go() -> None:
        output_file(out, "--out", (".jsonl",))
        if templates < 0 or lm < 0:
            raise InputError(f"--templates and --lm must be >= 0; got {templates} and {lm}")
        seeds = seed_items()
        items = list(seeds) if include_seeds else []
        summary: dict[str, Any] = {"seeds": len(items)}
        t0 = time.perf_counter()
        if templates:
            tpl = generate_template_items(templates, seed=seed)
            items += tpl
            summary["templates"] = len(tpl)
        summary["template_seconds"] = time.perf_counter() - t0
        if lm:
            from ..lm.load import load_model

            t1 = time.perf_counter()
            if endpoint is not None:
                from ..http import timeouts_from_options

                complete = endpoint_completer(endpoint, api_key_env, timeouts_from_options("10,60", 300.0))
                name = endpoint.split("#", 1)[-1]
            else:
                gm, gt = load_model(model, what="--model")
                complete, name = local_completer(gm, gt), model
            made, counts = generate_lm_items(complete, seeds, lm, generator=name, seed=seed, progress=progress)
            vm, vt = load_model(verifier, what="--verifier")
            ok = make_verifier(vm, vt)(made)
            kept = [it for it, good in zip(made, ok) if good]
            for sub in SUBTASKS:
                counts.setdefault(sub, {"attempts": 0, "parsed": 0})["verified"] = sum(it.subtask == sub for it in kept)
            items += kept
            summary.update(lm=counts, lm_seconds=time.perf_counter() - t1, verifier=verifier)
            summary["lm_verdict"] = lm_verdict(counts, verifier, name)
        save_suite(out, items)
        summary.update(out=out, items=len(items))
        if as_json:
            print_json(summary)
            return
        console.print(f"wrote {len(items)} items to {out}")
        if lm:
            from .generate import FAILURES

            console.print(table("LM generation", ["subtask", "attempts", "parsed", "verified", *FAILURES],
                                ((s, c["attempts"], c["parsed"], c["verified"], *(c[r] for r in FAILURES)) for s, c in summary["lm"].items())))
            console.print(summary["lm_verdict"])

    run_or_exit(go)


@probes_app.command("validate")
def validate_cmd(
    suite: Path = typer.Argument(..., help="a suite file (.jsonl)"),
    out: Path = typer.Option(..., help="the validated suite to write (.jsonl)"),
    report: Optional[Path] = typer.Option(None, help="write the validation report here (.json)"),
    embedder: str = typer.Option("minilm", help="minilm (offline MiniLM) | hashing"),
    verifier: str = typer.Option("smollm2", help="model recovering the keys of generator items (loaded only if there are any)"),
    dedupe_threshold: float = typer.Option(0.95, help="cosine similarity at or above which an item is a near-duplicate"),
    surface_max_accuracy: float = typer.Option(0.6, help="the surface classifier must stay at or below this accuracy"),
    seed: int = typer.Option(0),
    as_json: bool = json_option(),
) -> None:
    """Check a suite (format, answerability, duplicates, diversity, phrasing bias, subtask validity); keep what passes."""
    from ..fileio import atomic_write_bytes, json_bytes
    from .items import load_suite, save_suite
    from .validate import ValidationConfig, validate_suite

    def go() -> None:
        output_file(out, "--out", (".jsonl",))
        output_file(report, "--report", (".json",))
        config = ValidationConfig(dedupe_threshold=dedupe_threshold, surface_max_accuracy=surface_max_accuracy, seed=seed)
        items = load_suite(suite)
        check = None
        if any(it.source == "generator" for it in items):
            from ..lm.load import load_model
            from .generate import make_verifier

            vm, vt = load_model(verifier, what="--verifier")
            check = make_verifier(vm, vt)
        result = validate_suite(items, _embedder(embedder), config, verifier=check, verifier_name=verifier)
        save_suite(out, result.items)
        if report is not None:
            atomic_write_bytes(report, json_bytes(_clean(result.report)))
        if as_json:
            print_json({"out": out, "report": result.report, "passed": result.passed})
            return
        r = result.report
        console.print(table(f"validation of {suite}", ["check", "result"], [
            ("format", f"{r['format']['failed']} of {r['format']['checked']} failed"),
            *((f"answerability ({src})", f"{v['kept']} of {v['checked']} kept: {v['how']}") for src, v in r["answerability"].items()),
            ("de-duplication", f"{r['dedupe']['removed']} of {r['dedupe']['checked']} removed (cosine >= {r['dedupe']['threshold']})"),
            ("subtask validity", f"accuracy {r['subtask_validity']['accuracy']:.3f}, {r['subtask_validity']['removed']} removed"),
            ("surface classifier", f"accuracy {r['phrasing_bias']['surface']['accuracy']:.3f} (chance 0.5, max {surface_max_accuracy})"),
            ("answer positions", "balanced" if r["phrasing_bias"]["positions_passed"] else "unbalanced"),
        ]))
        console.print(table("kept per subtask", ["subtask", "items", "diversity (1 - mean cos)", "Vendi"], (
            (s, n, f"{r['diversity'].get(s, {}).get('mean_pairwise_distance', float('nan')):.3f}",
             f"{r['diversity'].get(s, {}).get('vendi', float('nan')):.1f}") for s, n in r["kept"].items())))
        console.print(f"wrote {len(result.items)} items to {out}" + ("" if result.passed else " (the phrasing-bias checks FAILED)"))

    run_or_exit(go)


def lm_verdict(counts: dict[str, dict[str, int]], verifier: str, generator: str) -> str:
    """One sentence on what LM generation gave, saying plainly when it gave nothing usable
    and when the verifier is the generating model (then the check is one of consistency only)."""
    from .generate import FAILURES

    attempts = sum(c["attempts"] for c in counts.values())
    parsed = sum(c["parsed"] for c in counts.values())
    verified = sum(c.get("verified", 0) for c in counts.values())
    reasons = ", ".join(f"{r} {n}" for r in FAILURES if (n := sum(c[r] for c in counts.values())))
    if parsed == 0:
        return f"LM generation gave NO usable item: none of {attempts} attempts parsed ({reasons})"
    if verified == 0:
        return f"LM generation gave NO usable item: {parsed} of {attempts} attempts parsed, and the verifier {verifier} recovered none of their keys"
    same = (" WARNING: the verifier is the generating model, so the kept items are only consistent with it, not checked; "
            "read them, or verify with another model (--verifier)") if verifier == generator else ""
    return (f"LM generation: {parsed} of {attempts} attempts parsed" + (f" (failed: {reasons})" if reasons else "")
            + f"; {verified} kept after the verifier {verifier}." + same)


def _clean(value: Any) -> Any:
    from .score import finite_json

    return finite_json(json.loads(json.dumps(value, default=float)))


@probes_app.command("run")
def run_cmd(
    model: str = typer.Option(..., help="smollm2, tiny, a local Hugging Face folder, or NAME+lora:ADAPTER_DIR"),
    suite: str = typer.Option("seeds", help="'seeds' (the shipped seed set) or a suite file"),
    out: Optional[Path] = typer.Option(None, help="write per-item results and the summary here (.json; what compare reads)"),
    report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
    limit_per_subtask: Optional[int] = typer.Option(None, help="score only the first N items of each subtask"),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Score a suite under a model: per-subtask accuracy (95% CI) and consistency across paraphrases."""
    from ..lm.load import load_model
    from .items import first_per_subtask, resolve_suite
    from .score import run_record, score_items, write_run

    def go() -> None:
        positive_option(limit_per_subtask, "--limit-per-subtask")
        output_file(out, "--out", (".json",))
        output_file(report, "--report", (".html",))
        items = first_per_subtask(resolve_suite(suite), limit_per_subtask)
        m, tok = load_model(model, what="--model")
        scores = score_items(m, tok, items, progress=progress)
        record = run_record(scores, model, str(suite), items)
        if out is not None:
            write_run(out, record)
        if report is not None:
            from .report import write_run_report

            write_run_report(report, record, items)
        if as_json:
            print_json({k: v for k, v in record.items() if k != "items"} | {"out": out, "report": report})
            return
        console.print(table(f"probes: {model} on {suite}", ["subtask", "n", "accuracy", "95% CI", "paraphrase consistency"], (
            (s, v["n"], f"{v['accuracy']:.3f}", f"{v['ci_low']:.3f}-{v['ci_high']:.3f}",
             "-" if v["paraphrase_groups"] == 0 else f"{v['consistency']:.3f} ({v['paraphrase_groups']} groups)")
            for s, v in record["summary"].items())))
        for path in (out, report):
            if path is not None:
                console.print(f"wrote {path}")

    run_or_exit(go)


@probes_app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="run A (from 'gradtrace probes run --out')"),
    b: Path = typer.Argument(..., help="run B, on the same items"),
    correction: str = typer.Option("holm", help="holm (family-wise) | bh (false discovery rate)"),
    alpha: float = typer.Option(0.05, help="significance level of the corrected p-values"),
    out: Optional[Path] = typer.Option(None, help="write the comparison here (.json; what gradtrace serve shows)"),
    as_json: bool = json_option(),
) -> None:
    """Per subtask: accuracy of A and B, the paired difference, exact McNemar p, corrected over subtasks."""
    from .score import compare_correct, comparison_record, read_run, write_run

    def go() -> None:
        if not 0 < alpha < 1:
            raise InputError(f"--alpha must be in (0, 1); got {alpha!r}")
        output_file(out, "--out", (".json",))
        result = compare_correct(read_run(a), read_run(b), correction, alpha)
        record = comparison_record(a, b, correction, alpha, result)
        if out is not None:
            write_run(out, record)
        if as_json:
            print_json(record | {"out": out})
            return
        console.print(table(f"probes: {b} against {a} ({correction}-corrected exact McNemar)",
                            ["subtask", "n", "A", "B", "B - A", "right only in A", "right only in B", "p", "p corrected", "significant"], (
            (s, v["n"], f"{v['accuracy_a']:.3f}", f"{v['accuracy_b']:.3f}", f"{v['difference']:+.3f}", v["a_only"], v["b_only"],
             f"{v['p']:.3g}", f"{v['p_corrected']:.3g}", "yes" if v["significant"] else "no") for s, v in result.items())))
        if out is not None:
            console.print(f"wrote {out}")

    run_or_exit(go)


@probes_app.command("against-seeds")
def against_seeds_cmd(
    run: Path = typer.Argument(..., help="the run to judge (from 'gradtrace probes run --out'), e.g. a fine-tune on the data in question"),
    reference: list[Path] = typer.Argument(..., help="3 or more runs of models trained by one recipe with different seeds (e.g. fine-tunes on neutral data)"),
    correction: str = typer.Option("holm", help="holm (family-wise) | bh (false discovery rate)"),
    alpha: float = typer.Option(0.05, help="significance level of the corrected p-values"),
    as_json: bool = json_option(),
) -> None:
    """Per subtask: is RUN's accuracy outside the spread of the reference seeds? (Student's t prediction interval, corrected
    over subtasks.) Two seeds of one recipe can differ significantly under 'compare'; this asks whether RUN differs more."""
    from .score import compare_to_seeds, read_run

    def go() -> None:
        if not 0 < alpha < 1:
            raise InputError(f"--alpha must be in (0, 1); got {alpha!r}")
        result = compare_to_seeds([read_run(r) for r in reference], read_run(run), correction, alpha)
        if as_json:
            print_json({"run": str(run), "reference": [str(r) for r in reference], "correction": correction, "alpha": alpha,
                        "subtasks": result})
            return
        console.print(table(f"probes: {run} against {len(reference)} reference seeds ({correction}-corrected t, {len(reference) - 1} df)",
                            ["subtask", "n", "seeds' mean", "seeds' sd", "run", "run - mean", "t", "p", "p corrected", "significant"], (
            (s, v["n"], f"{v['reference_mean']:.3f}", f"{v['reference_sd']:.3f}" + (" (floored at 1/n)" if v["sd_floored"] else ""),
             f"{v['accuracy_b']:.3f}", f"{v['difference']:+.3f}", f"{v['t']:.2f}", f"{v['p']:.3g}", f"{v['p_corrected']:.3g}",
             "yes" if v["significant"] else "no") for s, v in result.items())))

    run_or_exit(go)
