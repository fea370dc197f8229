"""The bundled digits task: an MLP on scikit-learn's 8x8 digits with a share
of training labels flipped, trained with plain SGD while saving checkpoints.

It is the demo's default and the ground truth of the mislabel benchmark: the
flipped examples are known, so detection can be scored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoints import CheckpointRef
from ..configbase import ConfigBase, positive, positive_int
from ..errors import InputError
from ..spec import ExampleView, TaskSpec
from ..task import ClassificationTask


@dataclasses.dataclass(frozen=True)
class DigitsConfig(ConfigBase):
    """Settings of the digits run; the defaults are the demo's."""

    _checks = {"hidden": positive_int, "epochs": positive_int, "batch_size": positive_int, "lr": positive}

    flip_fraction: float = 0.2
    hidden: int = 128
    epochs: int = 200
    n_checkpoints: int = 5
    lr: float = 0.1
    batch_size: int = 32
    test_fraction: float = 0.2
    seed: int = 0

    def _check(self) -> None:
        if not 0 <= self.flip_fraction < 1:
            raise InputError(f"flip_fraction must be in [0, 1); got {self.flip_fraction!r}")
        if not 1 <= self.n_checkpoints <= self.epochs:
            raise InputError(f"n_checkpoints must be in [1, epochs={self.epochs}]; got {self.n_checkpoints!r}")


@dataclasses.dataclass
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor  # labels as trained on (some flipped)
    y_train_true: torch.Tensor
    flipped: np.ndarray  # bool per training example
    x_test: torch.Tensor
    y_test: torch.Tensor
    images_train: np.ndarray  # [n, 8, 8] in 0..16
    images_test: np.ndarray


def load_digits_data(config: DigitsConfig = DigitsConfig(), dtype: torch.dtype = torch.float32) -> DigitsData:
    """Seeded split of scikit-learn's digits with ``flip_fraction`` of the
    training labels replaced by a different, uniformly drawn class."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(raw.target))
    n_test = int(round(config.test_fraction * len(order)))
    test, train = order[:n_test], order[n_test:]
    y_true = raw.target[train].copy()
    y = y_true.copy()
    n_flip = int(round(config.flip_fraction * len(train)))
    flip_idx = rng.choice(len(train), size=n_flip, replace=False)
    y[flip_idx] = (y[flip_idx] + rng.integers(1, 10, size=n_flip)) % 10
    flipped = np.zeros(len(train), dtype=bool)
    flipped[flip_idx] = True
    x = torch.tensor(raw.data / 16.0, dtype=dtype)
    return DigitsData(
        x_train=x[train], y_train=torch.tensor(y), y_train_true=torch.tensor(y_true), flipped=flipped,
        x_test=x[test], y_test=torch.tensor(raw.target[test]),
        images_train=raw.images[train], images_test=raw.images[test],
    )


def make_mlp(hidden: int = 128, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """64 -> hidden -> hidden -> 10 MLP with tanh, seeded."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) / np.sqrt(p.shape[-1]))
    return model.to(dtype)


def train_digits(data: DigitsData, out_dir: str | Path, config: DigitsConfig = DigitsConfig(), dtype: torch.dtype = torch.float32,
                 batch_seed: int | None = None) -> list[CheckpointRef]:
    """Train with plain SGD (so TracIn's lr weighting is exact) and save
    ``n_checkpoints`` state dicts at evenly spaced epochs. The model is
    initialised from ``config.seed``; the batch order comes from
    ``batch_seed`` (default ``config.seed + 1``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = make_mlp(config.hidden, config.seed, dtype)
    gen = torch.Generator().manual_seed(config.seed + 1 if batch_seed is None else batch_seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.y_train)
    save_at = {round(config.epochs * (i + 1) / config.n_checkpoints) for i in range(config.n_checkpoints)}
    refs = []
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            opt.zero_grad()
            loss_fn(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        if epoch in save_at:
            path = out_dir / f"epoch_{epoch:03d}.pt"
            torch.save(model.state_dict(), path)
            refs.append(CheckpointRef(str(path), config.lr, step=epoch))
    return refs


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def found_at(ranking_scores: np.ndarray, truth: np.ndarray, fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)) -> dict[str, float]:
    """Share of the true positives found when checking the top ``f`` of the
    ranking (highest score first), for each fraction ``f``."""
    order = np.argsort(-ranking_scores, kind="stable")
    total = max(int(truth.sum()), 1)
    return {f"{int(round(f * 100))}%": float(truth[order[: int(round(f * len(order)))]].sum() / total) for f in fractions}


def train_label(data: DigitsData, i: int) -> str:
    """``label 3`` or, for a flipped one, ``label 3 (true 5, flipped)``."""
    given, true = int(data.y_train[i]), int(data.y_train_true[i])
    return f"label {given}" + (f" (true {true}, flipped)" if bool(data.flipped[i]) else "")


def make_task(workdir: str | Path = "gradtrace_digits_run", config: DigitsConfig = DigitsConfig()) -> TaskSpec:
    """The digits task as a CLI ``--task`` target (trains once into ``workdir``)."""
    data = load_digits_data(config)
    ckpt_dir = Path(workdir) / "checkpoints"
    expected = sorted(ckpt_dir.glob("epoch_*.pt")) if ckpt_dir.is_dir() else []
    if len(expected) == config.n_checkpoints:
        save_at = sorted(round(config.epochs * (i + 1) / config.n_checkpoints) for i in range(config.n_checkpoints))
        refs = [CheckpointRef(str(ckpt_dir / f"epoch_{e:03d}.pt"), config.lr, step=e) for e in save_at]
    else:
        refs = train_digits(data, ckpt_dir, config)
    tags = ["flipped" if f else "clean" for f in data.flipped]
    return TaskSpec(
        model=lambda: make_mlp(config.hidden, config.seed),
        task=ClassificationTask(),
        checkpoints=refs,
        train=(data.x_train, data.y_train),
        queries=(data.x_test, data.y_test),
        train_ids=[f"train-{i}" for i in range(len(data.y_train))],
        train_tags=tags,
        query_ids=[f"test-{i}" for i in range(len(data.y_test))],
        train_view=lambda i: ExampleView(image=data.images_train[i], caption=train_label(data, i)),
        query_view=lambda i: ExampleView(image=data.images_test[i], caption=f"label {int(data.y_test[i])}"),
    )
