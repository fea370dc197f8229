"""``gradtrace audit``: what did B's fine-tune change, which training examples
taught it, and does removing them undo it?"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_common import console, device_option, json_option, output_dir, print_json, progress_option, run_or_exit, table


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)


def audit_command(
    a: str = typer.Option(..., "--a", help="model A (the base): 'smollm2' or a local Hugging Face folder"),
    run: Path = typer.Option(..., "--run", help="model B: its Hugging Face Trainer run folder (checkpoint-N folders; LoRA or full)"),
    data: Path = typer.Option(..., "--data", help="B's training JSONL (prompt/completion or messages; optional id)"),
    prompts: Optional[Path] = typer.Option(None, help="JSONL prompt set ({\"id\", \"prompt\"} per line)"),
    samples_a: Optional[Path] = typer.Option(None, help="instead of sampling: A's texts, JSONL {prompt_id, prompt, text}"),
    samples_b: Optional[Path] = typer.Option(None, help="instead of sampling: B's texts, JSONL {prompt_id, prompt, text}"),
    out: Path = typer.Option(Path("audit_out"), help="output folder: audit.json, report.html, the store, caches"),
    verify: int = typer.Option(0, "--verify", help="K: remove the top-K proponents (and K random examples), retrain, re-sample, re-diff"),
    verify_top: int = typer.Option(2, help="how many behaviours skewed to B to verify"),
    train_config: Optional[Path] = typer.Option(None, help="JSON of LoRA training settings that override the run's recorded ones"),
    n_per_prompt: int = typer.Option(4, help="answers sampled per prompt and model"),
    seed: int = typer.Option(0, help="seed of sampling and of the diff"),
    max_new_tokens: int = typer.Option(96),
    temperature: float = typer.Option(0.8),
    top_p: float = typer.Option(0.95, "--top-p", help="nucleus sampling; 1 samples every option (0.95 never samples one of under ~5%)"),
    batch_size: int = typer.Option(16, help="prompts sampled together"),
    top_k: int = typer.Option(10, help="proponents listed per behaviour"),
    max_queries: int = typer.Option(16, help="B texts per behaviour in its attribution target"),
    target: str = typer.Option("logprob", help="attribution target: logprob (B's text up to the behaviour's sentence) | contrast "
                                               "(the same minus half of A's answer)"),
    max_length: int = typer.Option(256, help="token cap of prompt + completion (as in the run)"),
    as_chat: bool = typer.Option(True, help="render prompt/completion with the chat template (as in the run)"),
    dim: int = typer.Option(1024, help="projected gradient dimension of the store"),
    alpha: float = typer.Option(0.05, help="false discovery rate of the diff"),
    embedder: str = typer.Option("minilm", help="minilm | hashing"),
    view: str = typer.Option("clusters,likelihood", "--view",
                             help="comma-separated: clusters (always) and likelihood (B's texts B finds far likelier than A)"),
    intended: Optional[str] = typer.Option(None, help="the change the fine-tune was meant to make (for the judge)"),
    judge: Optional[str] = typer.Option(None, help="LLM for labels and the judge: smollm2 | hf:DIR | http(s)://URL/v1#MODEL"),
    device: str = device_option(),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Audit a fine-tune: diff A and B, trace each behaviour B gained to its training examples, verify by removal."""
    from ..diff.likelihood import LikelihoodConfig
    from ..diff.pipeline import DiffConfig
    from ..errors import InputError
    from ..lm.embed import NAMES as EMBEDDERS
    from ..lm.embed import make_embedder
    from ..lm.sample import SamplingConfig
    from .config import AuditConfig
    from .inputs import read_train_config
    from .run import run_audit

    def go() -> None:
        from ..devices import resolve_device

        output_dir(out, "--out")
        dev = resolve_device(device, "--device")
        if embedder not in EMBEDDERS:
            raise InputError(f"--embedder must be one of {sorted(EMBEDDERS)}; got {embedder!r}")
        overrides = read_train_config(train_config)
        config = AuditConfig(
            n_per_prompt=n_per_prompt, seed=seed,
            generation=SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size),
            diff=DiffConfig(seed=seed, alpha=alpha), max_queries=max_queries, target=target, top_k=top_k, verify_k=verify, verify_top=verify_top,
            max_length=max_length, as_chat=as_chat, dim=dim, views=tuple(x.strip() for x in view.split(",") if x.strip()),
            likelihood=LikelihoodConfig(seed=seed, alpha=alpha),
        )
        chat = None
        if judge is not None:
            from ..diff.judge import chat_for

            chat = chat_for(judge, "--judge")
        res = run_audit(a, run, data, out, prompts=prompts, samples_a=samples_a, samples_b=samples_b, config=config,
                        embedder=make_embedder(embedder, progress=progress, device=str(dev)), train_config=overrides, intended=intended,
                        judge_chat=chat, judge_name=judge, progress=progress, device=dev)
        beh = res.audit["behaviours"]
        if as_json:
            print_json({"behaviours": beh, "json": res.json_path, "report": res.report_path, "computed": res.computed,
                        "reused": res.reused})
            return
        rows = []
        for b in beh:
            v = b.get("verification")
            rows.append((b["index"] + 1, b.get("view", "clusters"), b["label"], len(b["members"]), b["skew"], f"{b['q_value']:.2g}", f"{b['share_a']['share']:.3f}",
                         f"{b['share_b']['share']:.3f}", ", ".join(p["id"] for p in b.get("proponents", [])[:3]),
                         f"{v['topk']['share_b_after']['share']:.3f} / {v['random']['share_b_after']['share']:.3f}" if v else ""))
        console.print(table(f"{len(beh)} behaviours flagged", ["#", "view", "label", "members", "skew", "q", "share A", "share B", "top proponents",
                                                              "share B after removing top-K / random"], rows))
        console.print(f"wrote {res.json_path} and {res.report_path}")

    run_or_exit(go)
