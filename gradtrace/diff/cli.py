"""``gradtrace diff``: sample two models on one prompt set and show what changed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_common import console, json_option, output_dir, print_json, progress_option, run_or_exit, table
from ..http import Timeouts


def register(app: typer.Typer) -> None:
    app.command("diff")(diff_command)


def diff_command(
    a: str = typer.Option(..., "--a", help="model A: smollm2 | smollm2+lora:DIR | hf:DIR[+lora:DIR] | jsonl:FILE | http(s)://URL/v1#MODEL"),
    b: str = typer.Option(..., "--b", help="model B, same forms as --a"),
    prompts: Optional[Path] = typer.Option(None, help="JSONL prompts ({\"id\", \"prompt\"} per line); not needed for jsonl sources"),
    out: Path = typer.Option(Path("diff_out"), help="output folder: diff.json, report.html, samples"),
    intended: Optional[str] = typer.Option(None, help="the change the fine-tuning was meant to make (for the judge)"),
    n_per_prompt: int = typer.Option(4, help="samples per prompt and model"),
    seed: int = typer.Option(0, help="seed of sampling, the split and the clusterer"),
    max_new_tokens: int = typer.Option(96),
    temperature: float = typer.Option(0.8),
    top_p: float = typer.Option(0.95, "--top-p", help="nucleus sampling; 1 samples every option (0.95 never samples one of under ~5%)"),
    batch_size: int = typer.Option(16),
    levels: str = typer.Option("text,sentence", help="comma-separated: text, sentence, fine (fine: small regions of sentences few texts show)"),
    clusterer: str = typer.Option("kmeans", help="kmeans | hdbscan"),
    k_max: int = typer.Option(24, help="largest k tried for text clusters (KMeans)"),
    alpha: float = typer.Option(0.05, help="false discovery rate"),
    test: str = typer.Option("fisher", help="fisher | binomial | cmh (exact test within prompts; needs prompt ids)"),
    validation_fraction: float = typer.Option(0.5, help="share of each model's texts held out to test the clusters"),
    fine_size: int = typer.Option(8, help="fine level: neighbours each sentence looks at"),
    fine_tests: int = typer.Option(5, help="fine level: regions tested (the most skewed on the exploration half)"),
    view: str = typer.Option("clusters", "--view", help="comma-separated: clusters (embedding clusters of both models' texts), "
                             "likelihood (B's texts and sentences B finds far likelier than A; local models only)"),
    likelihood_stat: str = typer.Option("mean", help="likelihood view: d per token (mean) or summed (sum)"),
    likelihood_min_shift: float = typer.Option(0.5, help="likelihood view: how much a cluster's d must exceed B's other texts' (unit of the stat)"),
    likelihood_z: float = typer.Option(2.5, help="likelihood view: robust z-score of d from which an exploration row is outlying"),
    max_length: int = typer.Option(256, help="likelihood view: token cap of prompt + text when scoring"),
    group_jaccard: float = typer.Option(0.5, help="behaviours: merge flagged clusters whose text sets overlap this much (Jaccard)"),
    group_cosine: float = typer.Option(0.4, help="behaviours: ... or whose centred centroids have at least this cosine"),
    embedder: str = typer.Option("minilm", help="minilm | hashing (also spelled hashed)"),
    judge: Optional[str] = typer.Option(None, help="LLM for labels and the judge: smollm2 | hf:DIR | http(s)://URL/v1#MODEL"),
    cache_dir: Optional[Path] = typer.Option(None, help="cache sampled texts here (resumable)"),
    endpoint_timeout: str = typer.Option(
        f"{Timeouts.connect:g},{Timeouts.read:g}", help="http(s) sources and judge: CONNECT,READ timeouts in seconds (READ: each wait for data)",
    ),
    endpoint_deadline: float = typer.Option(
        Timeouts.deadline, help="http(s) sources and judge: seconds one request may take in all, retries included",
    ),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Diff two models' behaviour: clusters whose share of texts comes mostly from one model."""
    from ..errors import InputError
    from ..http import timeouts_from_options
    from .cluster import ClusterConfig
    from ..lm.embed import NAMES as EMBEDDERS
    from ..lm.embed import CachedEmbedder, make_embedder
    from ..lm.sample import SamplingConfig
    from .judge import chat_for
    from .likelihood import LikelihoodConfig
    from .pipeline import DiffConfig
    from .run import run_diff
    from .sources import parse_source

    def go() -> None:
        output_dir(out, "--out")
        if cache_dir is not None:
            output_dir(cache_dir, "--cache-dir")
        timeouts = timeouts_from_options(endpoint_timeout, endpoint_deadline)
        gen = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size)
        src_a, src_b = parse_source(a, gen, cache_dir, timeouts), parse_source(b, gen, cache_dir, timeouts)
        if embedder not in EMBEDDERS:
            raise InputError(f"--embedder must be one of {sorted(EMBEDDERS)}; got {embedder!r}")
        emb = CachedEmbedder(make_embedder(embedder, progress=progress), out / "embeddings")
        config = DiffConfig(seed=seed, levels=tuple(x.strip() for x in levels.split(",") if x.strip()), alpha=alpha, test=test,
                            validation_fraction=validation_fraction, fine_size=fine_size, fine_tests=fine_tests,
                            text_clusters=ClusterConfig(method=clusterer, k_max=k_max, seed=seed),
                            sentence_clusters=ClusterConfig(method=clusterer, k_min=6, k_max=max(k_max, 30), seed=seed))
        views = tuple(x.strip() for x in view.split(",") if x.strip())
        lcfg = LikelihoodConfig(seed=seed, stat=likelihood_stat, z=likelihood_z, alpha=alpha, validation_fraction=validation_fraction,
                                min_shift=likelihood_min_shift)
        chat = chat_for(judge, "--judge", timeouts) if judge is not None else None
        run = run_diff(src_a, src_b, prompts, out, n_per_prompt=n_per_prompt, seed=seed, config=config, embedder=emb,
                       intended=intended, judge_chat=chat, labeller=chat, names=(a, b), progress=progress,
                       group_jaccard=group_jaccard, group_cosine=group_cosine, views=views, likelihood=lcfg, max_length=max_length)
        res, lik = run.result, run.likelihood
        flagged = res.significant() if res is not None else []
        lik_flagged = lik.significant() if lik is not None else []
        if as_json:
            print_json({"clusters": len(res.clusters) if res is not None else 0, "flagged": [c.to_dict() for c in flagged], "alpha": alpha,
                        "behaviours": [bh.to_dict() for bh in run.behaviours],
                        **({"likelihood_flagged": [c.to_dict() for c in lik_flagged]} if lik is not None else {}),
                        "json": run.json_path, "report": run.report_path})
            return
        if lik is not None:
            console.print(table(
                f"likelihood view: {len(lik_flagged)} of {len(lik.clusters)} clusters flagged at FDR {alpha}",
                ["rank", "level", "label", "valid in/out", "median d in", "median d out", "q"],
                ((c.rank, c.level, c.label, f"{c.valid_in}/{c.valid_out}", f"{c.d_in:.3g}", f"{c.d_out:.3g}", f"{c.q_value:.2g}")
                 for c in lik_flagged[:15]),
            ))
        if res is None:
            console.print(f"wrote {run.json_path} and {run.report_path}")
            return
        judged = chat is not None
        console.print(table(
            f"{len(flagged)} of {len(res.clusters)} clusters flagged at FDR {alpha}",
            ["rank", "level", "label", "share B", "A/B (valid)", "q", "log OR", *(["judge"] if judged else [])],
            ((c.rank, c.level, c.llm_label or c.label, f"{c.share_b:.2f}", f"{c.valid_a}/{c.valid_b}", f"{c.q_value:.2g}",
              f"{c.log_odds:+.2f}", *([c.judgement or ""] if judged else [])) for c in flagged[:15]),
        ))
        if run.behaviours:
            console.print(table(
                f"{len(run.behaviours)} behaviours (flagged clusters grouped)",
                ["behaviour", "skew", "label", "members (rank)", "A/B (valid)", "q"],
                ((bh.rank, bh.skew, bh.label, ", ".join(f"#{m.rank}" for m in bh.members), f"{bh.valid_a}/{bh.valid_b}",
                  f"{bh.q_value:.2g}") for bh in run.behaviours[:15]),
            ))
        console.print(f"wrote {run.json_path} and {run.report_path}")

    run_or_exit(go)
