"""``gradtrace loop --config loop.toml`` and ``gradtrace loop --resume DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_common import console, json_option, output_dir, print_json, progress_option, run_or_exit, table
from ..errors import InputError

KEY_METRICS = ("nll.tail_share", "diversity.distinct_2", "clusters.js", "cka.cka")


def register(app: typer.Typer) -> None:
    app.command("loop")(loop)


def loop(
    config: Optional[Path] = typer.Option(None, help="a loop.toml (see examples/loop.toml)"),
    resume: Optional[Path] = typer.Option(None, help="a run folder to continue (its loop.json is the config)"),
    out: Optional[Path] = typer.Option(None, help="run folder (default: the config's 'out')"),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Run iterated self-training with drift monitors; halt when a stop rule fires."""
    from .config import read_toml
    from .runner import SelfTrainingLoop

    def go() -> None:
        if (config is None) == (resume is None):
            raise InputError("give exactly one of --config FILE and --resume DIR")
        if config is not None:
            cfg, cfg_out = read_toml(config)
            folder = out or cfg_out
            if folder is None:
                raise InputError("out: the config names no run folder; add out = \"...\" or pass --out")
            output_dir(folder, "--out" if out is not None else f"out (in {config})")
            runner = SelfTrainingLoop(cfg, folder, progress=progress)
        else:
            runner = SelfTrainingLoop.resume(resume, progress=progress)  # type: ignore[arg-type]
        result = runner.run()
        metrics = [m for m in KEY_METRICS if result.rows and m in result.rows[0]]
        metrics += [m for m in (result.rows[0] if result.rows else {}) if m.startswith("attribute.") and m.endswith(".rate")]
        stop = None if result.stop is None else result.stop.message()
        dashboard = result.out / "dashboard.html"
        if as_json:
            print_json({"out": result.out, "rounds": result.rows, "stop": stop, "attribution": result.attribution, "dashboard": dashboard})
            return
        console.print(table(f"loop {result.out}", ["round", *metrics], (
            (int(row["round"]), *(f"{row[m]:.4g}" for m in metrics)) for row in result.rows
        )))
        if stop is not None:
            console.print(stop, style="bold red")
            if result.attribution is not None:
                print_attribution(result.attribution)
        else:
            console.print(f"finished {len(result.rows) - 1} round(s) without a stop")
        console.print(f"dashboard: {dashboard}")

    run_or_exit(go)


TEXT_CHARS = 160  # a top example's text in the terminal summary (the whole text is in stop.json)


def print_attribution(a: dict) -> None:
    """The stop trace in the terminal: per round its influence and share, then the top examples (text escaped)."""
    from .dashboard import percent

    if not a.get("traced"):
        console.print(f"stop trace: not traced ({a.get('reason')})")
        return
    console.print(f"what drove it: {a['target']['description']}")
    lead = a["largest_share_round"]
    lead_text = f"largest share: round {lead}" if lead is not None else "no round's data pushed it toward the breach"
    console.print(table(f"influence on {a['metric']} by round ({lead_text})",
                        ["round", "examples", "influence", "share", "positive share"],
                        ((r["round"], r["n_examples"], f"{r['influence']:.4g}", percent(r["share"]), percent(r["positive_share"]))
                         for r in a["rounds"])))
    console.print(table("top training examples", ["rank", "id", "round", "score", "text"], (
        (e["rank"], e["id"], e["round"], f"{e['score']:.4g}", e["text"] if len(e["text"]) <= TEXT_CHARS else e["text"][:TEXT_CHARS] + "...")
        for e in a["top_examples"])))
