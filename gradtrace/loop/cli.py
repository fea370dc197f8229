"""``gradtrace loop --config loop.toml`` and ``gradtrace loop --resume DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..cli_common import console, progress_option, run_or_exit
from ..errors import InputError

KEY_METRICS = ("nll.tail_share", "diversity.distinct_2", "clusters.js", "cka.cka")


def register(app: typer.Typer) -> None:
    app.command("loop")(loop)


def loop(
    config: Optional[Path] = typer.Option(None, help="a loop.toml (see examples/loop.toml)"),
    resume: Optional[Path] = typer.Option(None, help="a run folder to continue (its loop.json is the config)"),
    out: Optional[Path] = typer.Option(None, help="run folder (default: the config's 'out')"),
    progress: bool = progress_option(),
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
            runner = SelfTrainingLoop(cfg, folder, progress=progress)
        else:
            runner = SelfTrainingLoop.resume(resume, progress=progress)  # type: ignore[arg-type]
        result = runner.run()
        metrics = [m for m in KEY_METRICS if result.rows and m in result.rows[0]]
        metrics += [m for m in (result.rows[0] if result.rows else {}) if m.startswith("attribute.") and m.endswith(".rate")]
        table = Table("round", *(m.replace(".", "\n", 1) for m in metrics), title=f"loop {result.out}")
        for row in result.rows:
            table.add_row(str(int(row["round"])), *(f"{row[m]:.4g}" for m in metrics))
        console.print(table)
        if result.stop is not None:
            console.print(f"[bold red]{result.stop.message()}[/]", highlight=False)
        else:
            console.print(f"finished {len(result.rows) - 1} round(s) without a stop")
        console.print(f"dashboard: {result.out / 'dashboard.html'}")

    run_or_exit(go)
