"""Cost of LM featurization: time against a training step, peak memory of
Kronecker against dense projection.

* :func:`featurize_vs_train_step`: on one batch, the median time of one
  featurizer call (per-example LoRA gradients, Kronecker projection) over the
  median time of one plain training step (forward + backward of the batch's
  mean loss) on the same batch, in the same process, interleaved.
* :func:`peak_memory_mib`: run one featurizer call (forward, backward,
  projection) in a fresh Python process and report its peak resident memory
  above the level just before the call (Linux: the peak is reset through
  ``/proc/self/clear_refs`` after ``malloc_trim``), so the loaded model
  cancels and the activations, gradients and projection work count.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.grads.projection import ProjectionConfig
from gradtrace.grads.selection import select_parameters


def featurize_vs_train_step(model: nn.Module, task: Any, batch: Any, params: Any, dim: int, repeats: int = 5) -> dict[str, float]:
    """Median seconds of a featurizer call and of a training step, and their ratio."""
    names = select_parameters(model, params)
    featurizer = GradientFeaturizer(names, ProjectionConfig("kronecker", dim), "auto")
    selected = [p for n, p in model.named_parameters() if n in set(names)]
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in set(names))

    def step() -> None:
        loss = task.per_example_loss(model, batch).mean()
        grads = torch.autograd.grad(loss, selected)
        del grads

    def feat() -> None:
        featurizer(model, task.per_example_loss, batch)

    step(), feat()  # warm-up
    t_step, t_feat = [], []
    for _ in range(repeats):
        for fn, acc in ((step, t_step), (feat, t_feat)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    for n, p in model.named_parameters():
        p.requires_grad_(before[n])
    s, f = statistics.median(t_step), statistics.median(t_feat)
    return {"train_step_seconds": s, "featurize_seconds": f, "featurize_over_train_step": f / s}


_CHILD = r"""
import ctypes, json, sys, torch
sys.path.insert(0, sys.argv[4])  # the benchmarks folder, which holds the setups package
from setups.lm_cost import _child_setup, _rss_kib
from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.grads.projection import ProjectionConfig
kind, dim = sys.argv[1], int(sys.argv[2])
model, task, batch, names = _child_setup(json.loads(sys.argv[3]))
f = GradientFeaturizer(names, ProjectionConfig(kind, dim), "auto")
f._resolve(model)
if kind == "dense":
    f._dense._cache_ok = False  # stream the projection matrix by blocks, as a large one would be
ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the peak below is this call's own
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak resident size (VmHWM) to the current one
base = _rss_kib("VmRSS")
out = f(model, task.per_example_loss, batch)
peak = _rss_kib("VmHWM")
print(json.dumps({"peak_kib_above_base": peak - base, "feature_dim": out.features.shape[1]}))
"""


def _rss_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child_setup(spec: dict[str, Any]) -> tuple[nn.Module, Any, Any, list[str]]:
    from gradtrace.models.hf import CausalLMTask, lora_selection
    from gradtrace.lm.load import load_model
    from gradtrace.lm.lora import LoraTrainConfig, add_lora
    from gradtrace.demos.planted_lm import PlantedConfig, make_planted_data

    base, tok = load_model(spec["model"])
    model = add_lora(base, LoraTrainConfig.from_dict(spec["train"]))
    task = CausalLMTask(tok, max_length=spec["max_length"])
    data = make_planted_data(PlantedConfig(**spec["data"]))
    batch = task.collate(data.train[: spec["batch_size"]])
    return model, task, batch, select_parameters(model, lora_selection(model))


def peak_memory_mib(kind: str, dim: int, spec: dict[str, Any]) -> float:
    """Peak resident memory (MiB) of one featurizer call above the base level, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(dim), json.dumps(spec), str(Path(__file__).resolve().parents[1])], capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe ({kind}) failed: {proc.stderr[-2000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    return json.loads(line)["peak_kib_above_base"] / 1024.0
