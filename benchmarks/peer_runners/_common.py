"""Shared by the peer runners: read a case prepared by benchmarks/peers.py,
rebuild its model (the digits MLP, or the LM case's GPT), time each
variant, write scores as .npy.

Imports only torch and numpy (each peer's virtualenv has those; an LM case
also transformers, through _lm.py), never
gradtrace. A runner is called as

    python <runner>.py CASE_DIR METHOD OUT_DIR [VARIANT]

CASE_DIR holds ``case.json`` (checkpoint paths, learning rates, optimizer
state paths, what to score; for a language-model case the model's config
``gpt``, the ``words`` of its tokenizer and the ``examples``, see _lm.py)
and ``data.npz``; OUT_DIR gets one
``<variant>.npy`` per variant and ``meta.json`` mapping each variant to its
wall and CPU seconds (the set-up it shares with the other variants of the
method plus its own scoring). With VARIANT, only that variant runs. Scores are ``[n_query, n_train]`` (``mode == "pairwise"``) or
``[n_train]`` self-influence (``mode == "self"``), higher = more helpful to
the query (pairwise) or more unusual (self).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


def make_mlp(hidden: int) -> nn.Module:
    """The digits MLP's architecture (gradtrace.demos.digits.make_mlp)."""
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 10))


class Case:
    def __init__(self, case_dir: str | Path):
        self.dir = Path(case_dir)
        self.meta: dict[str, Any] = json.loads((self.dir / "case.json").read_text())
        with np.load(self.dir / "data.npz") as d:
            self.arrays = {k: d[k] for k in d.files}
        self.mode: str = self.meta["mode"]
        self.checkpoints: list[str] = self.meta["checkpoints"]
        self.lrs: list[float] = self.meta["lrs"]

    def tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(self.arrays[f"x_{name}"], dtype=torch.float32), torch.as_tensor(self.arrays[f"y_{name}"], dtype=torch.int64)

    @property
    def is_lm(self) -> bool:
        """A language-model case (``lm_lds``): the model is ``meta["gpt"]`` (see _lm.py)."""
        return "gpt" in self.meta

    def architecture(self) -> nn.Module:
        """The case's model with its initial weights (a checkpoint is loaded into it)."""
        if self.is_lm:
            from _lm import make_gpt

            return make_gpt(self.meta["gpt"])
        return make_mlp(self.meta["hidden"])

    def model(self, checkpoint: int = -1) -> nn.Module:
        m = self.architecture()
        m.load_state_dict(torch.load(self.checkpoints[checkpoint], weights_only=True))
        return m.eval()

    def examples(self, name: str) -> list[dict[str, str]]:
        """An LM case's ``name`` examples (``train``, ``query``, ``task``) as prompt/completion dicts."""
        return list(self.meta["examples"][name])

    def token_arrays(self, name: str) -> dict[str, torch.Tensor]:
        """An LM case's ``name`` examples tokenized and right-padded (``input_ids``, ``attention_mask``, ``labels``)."""
        return {k: torch.as_tensor(self.arrays[f"{name}_{k}"], dtype=torch.int64) for k in ("input_ids", "attention_mask", "labels")}

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return [torch.load(p, weights_only=True) for p in self.checkpoints]


class Recorder:
    """Writes each variant's scores and seconds into OUT_DIR.

    A variant's seconds are its own work plus the set-up it reads through
    :meth:`cached` (a store, fitted factors), whether that set-up ran inside
    this variant or was cached by an earlier one: each variant is charged
    what it would cost alone."""

    def __init__(self, out_dir: str | Path, only: str | None = None):
        self.only = only
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._cache: dict[str, tuple[Any, float, float]] = {}
        self._used: set[str] = set()
        self._fresh = (0.0, 0.0)

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            start, cpu = time.perf_counter(), time.process_time()
            value = fn()
            secs, cpu_secs = time.perf_counter() - start, time.process_time() - cpu
            self._cache[key] = (value, secs, cpu_secs)
            self._fresh = (self._fresh[0] + secs, self._fresh[1] + cpu_secs)
        self._used.add(key)
        return self._cache[key][0]

    def variant(self, name: str, fn: Callable[[], Any]) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", name):
            raise ValueError(f"variant names are file names: {name!r}")
        if self.only is not None and name != self.only:
            return
        self._used, self._fresh = set(), (0.0, 0.0)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            scores = np.asarray(fn(), dtype=np.float64)
        except Exception as e:  # a variant that fails is reported, the others still run
            self.errors[name] = f"{type(e).__name__}: {e}"[:2000]
            self.write()
            return
        own, own_cpu = time.perf_counter() - start - self._fresh[0], time.process_time() - cpu - self._fresh[1]
        self.seconds[name] = own + sum(self._cache[k][1] for k in self._used)
        self.cpu_seconds[name] = own_cpu + sum(self._cache[k][2] for k in self._used)
        np.save(self.out / f"{name}.npy", scores)
        self.write()

    def write(self) -> None:
        (self.out / "meta.json").write_text(json.dumps({"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "errors": self.errors}, indent=1))


def main(run: Callable[[Case, str, Recorder], None]) -> None:
    case_dir, method, out_dir = sys.argv[1:4]
    only = sys.argv[4] if len(sys.argv) > 4 else None
    torch.set_num_threads(int(json.loads((Path(case_dir) / "case.json").read_text()).get("threads", 1)))
    rec = Recorder(out_dir, only)
    run(Case(case_dir), method, rec)
    rec.write()
    if not rec.seconds:
        sys.exit("no variant produced scores: " + json.dumps(rec.errors))
