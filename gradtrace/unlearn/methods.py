"""Fine-tuning-based unlearning baselines on a trained model.

Given forget data ``D_f`` and retain data ``D_r`` and a task whose
``per_example_loss`` is the negative log-likelihood ``L = -log p(y|x)`` of
each example (summed or averaged over its tokens), the losses minimised are:

* ``ga`` (gradient ascent): ``-mean_f L``.
* ``graddiff`` (gradient difference, TOFU, Maini et al. 2024):
  ``-mean_f L + retain_weight * mean_r L``.
* ``npo`` (negative preference optimisation, Zhang et al. 2024):
  ``(2/beta) * mean_f softplus(beta * (L_ref - L))`` which equals
  ``-(2/beta) mean log sigmoid(-beta log(p/p_ref))``, plus
  ``retain_weight * mean_r L`` (NPO-RT; 0 gives plain NPO). ``p_ref`` is
  the model before unlearning.
* ``rmu`` (representation misdirection, Li et al. 2024, WMDP):
  ``mean((h_f - c u)^2) + alpha * mean((h_r - h_r^frozen)^2)`` on the
  output ``h`` of one layer, with ``u`` a fixed random unit vector and ``c``
  the steering coefficient; only the parameters matching ``rmu_params`` are
  updated (the paper updates the MLPs of layers l-2..l).

Paper defaults are the defaults here (their learning rates were chosen for
7B models; small models need larger ones, which every result records).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configbase import ConfigBase, non_negative, one_of, positive, positive_int
from ..data import ExampleSource, as_source, hash_into
from ..errors import InputError
from ..progress import progress_bar

METHODS = ("ga", "graddiff", "npo", "rmu")


@dataclasses.dataclass(frozen=True)
class UnlearnConfig(ConfigBase):
    """Settings of one unlearning run; recorded in every result.

    ``lr``/``steps``/``batch_size``: AdamW fine-tuning on batches drawn with
    ``seed`` (forget and retain batches of the same size).
    ``retain_weight``: GradDiff's and NPO-RT's weight of the retain loss.
    ``npo_beta``: NPO's inverse temperature (paper: 0.1).
    ``rmu_layer``: module whose output RMU steers; ``rmu_params``: name
    patterns (fnmatch) of the parameters RMU updates (empty: all);
    ``rmu_steering``: ``c`` (paper: 6.5 for Zephyr-7B); ``rmu_alpha``: retain
    weight (paper: 1200).
    """

    method: str = "graddiff"
    lr: float = 1e-5
    steps: int = 100
    batch_size: int = 8
    weight_decay: float = 0.0
    seed: int = 0
    retain_weight: float = 1.0
    npo_beta: float = 0.1
    rmu_layer: str | None = None
    rmu_params: tuple[str, ...] = ()
    rmu_steering: float = 6.5
    rmu_alpha: float = 1200.0

    _checks = {
        "method": one_of(METHODS), "steps": positive_int, "batch_size": positive_int, "lr": positive, "npo_beta": positive,
        "retain_weight": non_negative, "rmu_alpha": non_negative, "weight_decay": non_negative,
    }

    def _check(self) -> None:
        if self.method == "rmu" and not self.rmu_layer:
            raise InputError("rmu_layer must name the module whose output RMU steers (method='rmu'); got None")


@dataclasses.dataclass
class UnlearnResult:
    """The unlearned model, its settings and the loss at each step."""

    config: UnlearnConfig
    model: nn.Module
    history: list[float]


# -- the losses, as plain functions (tested against their formulas) -----------
def ga_loss(model: nn.Module, task: Any, forget: Any) -> Tensor:
    return -task.per_example_loss(model, forget).mean()


def graddiff_loss(model: nn.Module, task: Any, forget: Any, retain: Any, retain_weight: float) -> Tensor:
    return -task.per_example_loss(model, forget).mean() + retain_weight * task.per_example_loss(model, retain).mean()


def npo_loss(
    model: nn.Module, reference: nn.Module, task: Any, forget: Any, retain: Any | None, beta: float, retain_weight: float,
) -> Tensor:
    loss = task.per_example_loss(model, forget)
    with torch.no_grad():
        ref = task.per_example_loss(reference, forget)
    out = (2.0 / beta) * F.softplus(beta * (ref - loss)).mean()
    if retain is not None and retain_weight > 0:
        out = out + retain_weight * task.per_example_loss(model, retain).mean()
    return out


def rmu_loss(
    model: nn.Module, frozen: nn.Module, layer: str, task: Any, forget: Any, retain: Any,
    control: Tensor, alpha: float,
) -> Tensor:
    """``control`` is ``c * u`` (shape: the layer's feature size)."""
    h_f = layer_output(model, layer, task, forget)
    h_r = layer_output(model, layer, task, retain)
    with torch.no_grad():
        h_r0 = layer_output(frozen, layer, task, retain)
    return F.mse_loss(h_f, control.expand_as(h_f)) + alpha * F.mse_loss(h_r, h_r0)


def layer_output(model: nn.Module, layer: str, task: Any, batch: Any) -> Tensor:
    """Output of module ``layer`` (first element if it returns a tuple) when
    the task's loss runs on ``batch``."""
    module = get_module(model, layer)
    captured: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_hook(hook)
    try:
        task.per_example_loss(model, batch)
    finally:
        handle.remove()
    if not captured:
        raise InputError(f"layer {layer!r} was not called by the task's forward pass")
    return captured[-1]


def get_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        some = [n for n in modules if n][:12]
        raise InputError(f"layer {name!r} is not a module of the model; some module names: {some}")
    return modules[name]


# -- the runner -----------------------------------------------------------------
class Unlearner:
    """Runs one method: ``Unlearner(config).fit(model, task, forget, retain)``
    returns a new model (the input model is not changed)."""

    def __init__(self, config: UnlearnConfig, *, progress: bool = False):
        self.config = config
        self.progress = progress

    def fit(
        self, model: nn.Module, task: Any, forget: Any, retain: Any, *,
        callback: Callable[[int, nn.Module], None] | None = None,
    ) -> UnlearnResult:
        """``callback(step, model)`` runs after every step (in eval mode; it
        must not change the model), e.g. to evaluate along the run."""
        cfg = self.config
        collate = getattr(task, "collate", None)
        f_src, r_src = check_forget_retain(forget, retain, collate)
        student = copy.deepcopy(model)
        frozen = copy.deepcopy(model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        params = self._trainable(student)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        control = None
        if cfg.method == "rmu":
            assert cfg.rmu_layer is not None
            width = layer_output(frozen, cfg.rmu_layer, task, f_src.batch(0, 1)).shape[-1]
            u = torch.rand(width, generator=gen, dtype=torch.float64)
            control = (cfg.rmu_steering * u / u.norm()).to(next(model.parameters()).dtype)
        history = []
        student.train()
        with progress_bar(f"unlearn ({cfg.method})", cfg.steps, self.progress) as bar:
            for _ in range(cfg.steps):
                fb = sample_batch(f_src, cfg.batch_size, gen)
                rb = sample_batch(r_src, cfg.batch_size, gen)
                if cfg.method == "ga":
                    loss = ga_loss(student, task, fb)
                elif cfg.method == "graddiff":
                    loss = graddiff_loss(student, task, fb, rb, cfg.retain_weight)
                elif cfg.method == "npo":
                    loss = npo_loss(student, frozen, task, fb, rb, cfg.npo_beta, cfg.retain_weight)
                else:
                    assert cfg.rmu_layer is not None and control is not None
                    loss = rmu_loss(student, frozen, cfg.rmu_layer, task, fb, rb, control, cfg.rmu_alpha)
                opt.zero_grad()
                loss.backward()
                opt.step()
                history.append(float(loss.detach()))
                if callback is not None:
                    student.eval()
                    callback(len(history), student)
                    student.train()
                bar.advance(1)
        student.eval()
        return UnlearnResult(cfg, student, history)

    def _trainable(self, model: nn.Module) -> list[nn.Parameter]:
        cfg = self.config
        if cfg.method != "rmu" or not cfg.rmu_params:
            return list(model.parameters())
        names = [n for n, _ in model.named_parameters()]
        chosen = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in cfg.rmu_params)]
        if not chosen:
            raise InputError(f"rmu_params {list(cfg.rmu_params)!r} match no parameter; some names: {names[:8]}")
        for n, p in model.named_parameters():
            p.requires_grad_(n in chosen)
        return [p for n, p in model.named_parameters() if n in chosen]


def sample_batch(source: ExampleSource, size: int, gen: torch.Generator) -> Any:
    """A batch of ``size`` examples drawn without replacement (all of them if fewer)."""
    n = len(source)
    idx = torch.randperm(n, generator=gen)[: min(size, n)].sort().values.tolist()
    return source.gather(idx)


def check_forget_retain(forget: Any, retain: Any, collate: Any = None) -> tuple[ExampleSource, ExampleSource]:
    """Sources of forget and retain data; errors when either is empty or
    when an example appears in both (by content)."""
    f_src, r_src = as_source(forget, collate), as_source(retain, collate)
    if len(f_src) == 0:
        raise InputError("forget: the forget set is empty; give at least one example to unlearn")
    if len(r_src) == 0:
        raise InputError("retain: the retain set is empty; give at least one example to keep")
    f_keys = {_key(f_src.example(i)): i for i in range(len(f_src))}
    both = [(f_keys[k], j) for j in range(len(r_src)) if (k := _key(r_src.example(j))) in f_keys]
    if both:
        raise InputError(
            f"forget and retain overlap: {len(both)} example(s) are in both (forget, retain positions: {both[:5]}); "
            "an example must be in one set only"
        )
    return f_src, r_src


def _key(example: Any) -> str:
    h = hashlib.sha256()
    hash_into(h, example)
    return h.hexdigest()
