"""``gradtrace serve DIR...``: the explorer, a local web app over gradtrace artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_common import console, positive_option, run_or_exit


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    paths: list[Path] = typer.Argument(..., help="gradient stores, diff.json files (or their folders), loop run folders, audit folders, allocation JSONs, probe run/comparison JSONs"),
    task: Optional[str] = typer.Option(None, help="path/to/file.py:make_task, the TaskSpec of stores made with --task"),
    queries: Optional[Path] = typer.Option(None, help="JSONL of LM queries to pick from (stores made with --hf-model)"),
    host: str = typer.Option("127.0.0.1", help="address to bind; a non-loopback one needs --token"),
    port: int = typer.Option(8765, help="port (0: any free one)"),
    token: Optional[str] = typer.Option(
        None, envvar="GRADTRACE_SERVE_TOKEN", show_envvar=True,
        help="required on every request when given (header 'Authorization: Bearer TOKEN', or ?token=TOKEN once per browser)",
    ),
    max_queries: int = typer.Option(500, help="task queries scored to list what each training example is a top proponent/opponent of"),
) -> None:
    """Browse stores, diffs, loop runs, audits, allocations and probe results in the browser (interactive plots, search, queries)."""
    from .app import check_bind, make_server
    from .artefacts import ServeOptions, load_artefacts

    def go() -> None:
        positive_option(max_queries, "--max-queries")
        if not 0 <= port < 65536:
            from ..errors import InputError

            raise InputError(f"--port must be in [0, 65535]; got {port}")
        check_bind(host, token)  # before any artefact loads
        options = ServeOptions(task=task, queries=None if queries is None else str(queries), max_queries=max_queries)
        artefacts = load_artefacts(paths, options)
        server = make_server(artefacts, host, port, token)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{server.server_port}/"
        for a in artefacts:
            console.print(f"{a.id}: {a.title} ({a.summary()})")
        console.print(f"serving on {url}" + (" (add ?token=<your token> once in the browser)" if token else "") + "; Ctrl-C stops")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()

    run_or_exit(go)
