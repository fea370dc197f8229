"""Write a benchmark's results into its section of BENCHMARKS.md and its JSON file."""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    import torch

    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average at the end {load:.1f}"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )


def record(name: str, command: str, summary_md: str, results: dict[str, Any], machine_line: str | None = None) -> None:
    """Replace the ``name`` section of BENCHMARKS.md and write results/<name>.json.
    ``machine_line``: the Machine line of a run made elsewhere (default: this machine, now)."""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    write_section(name, command, summary_md, f"benchmarks/results/{name}.json", machine_line)


def merge_results(file_name: str, keys: dict[str, Any]) -> dict[str, Any]:
    """Update only ``keys`` of results/<file_name>.json (read, update,
    atomic write), for a results file several scripts write; returns the
    whole file's content."""
    from gradtrace.fileio import atomic_write_bytes

    path = ROOT / "benchmarks" / "results" / f"{file_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(keys)
    atomic_write_bytes(path, (json.dumps(current, indent=1, sort_keys=True) + "\n").encode())
    return current


def write_section(name: str, command: str, summary_md: str, results_file: str, machine_line: str | None = None) -> None:
    """Replace (or add) the ``name`` section of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number below comes from the command shown with it.\n"
    section = (
        f"<!-- {name}:start -->\n## {name}\n\nCommand: `{command}`  \nMachine: {machine_line or machine()}\n\n{summary_md.strip()}\n\n"
        f"Raw results: `{results_file}`\n<!-- {name}:end -->"
    )
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def median_time(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], result


def paired_time(peer: Any, ours: Any, repeats: int) -> tuple[float, float, float, Any, Any]:
    """Time ``peer`` and ``ours`` alternately, after one warm-up call each.

    Returns (median peer seconds, median our seconds, median of the per-pair
    ratios peer/ours, last peer result, last our result). Pairing the calls
    means a burst of load from elsewhere on a noisy machine slows both sides
    of a pair instead of only one side of the comparison.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}")
    peer_result, our_result = peer(), ours()
    peer_times, our_times, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        peer_result = peer()
        mid = time.perf_counter()
        our_result = ours()
        end = time.perf_counter()
        peer_times.append(mid - start)
        our_times.append(end - mid)
        ratios.append((mid - start) / (end - mid))
    return float(np.median(peer_times)), float(np.median(our_times)), float(np.median(ratios)), peer_result, our_result
