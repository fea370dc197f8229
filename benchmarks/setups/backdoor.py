"""Counterfactual benchmarks on digits: backdoor removal and LDS.

*Backdoor*: ``n_poison`` training images of other classes get a 3-pixel
trigger in the bottom-right corner and the label ``target``. TracIn scores
of the behaviour "loss of ``target`` on triggered test images" (summed over
``n_queries`` triggered test images) rank the training set; the top ``k``
(2 x poisons) are removed and the model retrained from scratch, against
``k`` random removals, over several seeds. The attack success rate (ASR)
is measured on the other triggered test images.

*LDS*: the linear datamodeling score of each TracIn variant on clean
digits trained with Adam (so the Adam variant has states to use).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtrace.checkpoints import CheckpointRef
from gradtrace.config import FeaturizeConfig
from gradtrace.featurize import featurize
from gradtrace.grads.projection import ProjectionConfig
from gradtrace.scoring.attributor import Attributor
from gradtrace.task import ClassificationTask
from gradtrace.unlearn.lds import LDSConfig, lds, retrain_subsets
from gradtrace.unlearn.retrain import RemovalConfig, RemovalExperiment
from gradtrace.unlearn.train import TrainConfig, train
from gradtrace.unlearn.variants import VariantConfig, score_variants
from gradtrace.demos.digits import DigitsConfig, accuracy, load_digits_data, make_mlp

TRIGGER = ((7, 7), (7, 6), (6, 7))


def add_trigger(x: torch.Tensor) -> torch.Tensor:
    """Set the three trigger pixels (bottom-right corner) to full intensity."""
    img = x.clone().view(-1, 8, 8)
    for r, c in TRIGGER:
        img[:, r, c] = 1.0
    return img.view(-1, 64)


@dataclasses.dataclass(frozen=True)
class BackdoorConfig:
    n_poison: int = 40
    target: int = 0
    n_queries: int = 50
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    iterative_rounds: int = 2
    train: TrainConfig = TrainConfig(steps=1500, lr=0.1, batch_size=32, optimizer="sgd", n_checkpoints=5)
    data_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d


class DigitsTrainer:
    """``train_fn(indices, seed)`` for digits: a fresh MLP trained on those
    rows; checkpoints of the latest call are kept in ``last_checkpoints``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, workdir: str | Path):
        self.x, self.y, self.config, self.workdir = x, y, config, Path(workdir)
        self.calls = 0
        self.last_checkpoints: list[CheckpointRef] = []
        self.last_optimizer_states: list[str] = []

    def __call__(self, indices: np.ndarray, seed: int) -> nn.Module:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        model = make_mlp(128, seed)
        self.calls += 1
        out = self.workdir / f"run_{self.calls:04d}"
        cfg = dataclasses.replace(self.config, seed=seed)
        rec = train(model, ClassificationTask(), (self.x[idx], self.y[idx]), cfg, checkpoint_dir=out if cfg.n_checkpoints else None)
        self.last_checkpoints, self.last_optimizer_states = rec.checkpoints, rec.optimizer_states
        return model


def tracin_scores(trainer: DigitsTrainer, data: tuple[torch.Tensor, torch.Tensor], queries: tuple[torch.Tensor, torch.Tensor], out: Path) -> np.ndarray:
    """Raw TracIn of the loss on ``queries``, summed over queries, for every
    row of ``data``, over the latest run's checkpoints (exact: factored)."""
    model = make_mlp(128, 0)
    cfg = FeaturizeConfig(projection=ProjectionConfig("factored"), batch_size=256)
    store = featurize(model, ClassificationTask(), trainer.last_checkpoints, data, out, cfg, progress=False)
    return Attributor(store, model, ClassificationTask()).score(queries).sum(axis=0)


def run_backdoor(config: BackdoorConfig = BackdoorConfig(), progress: bool = False) -> dict[str, Any]:
    d = load_digits_data(DigitsConfig(flip_fraction=0.0))
    x, y = d.x_train.clone(), d.y_train.clone()
    rng = np.random.default_rng(config.data_seed)
    poison = np.sort(rng.choice(np.nonzero(y.numpy() != config.target)[0], config.n_poison, replace=False))
    x[poison] = add_trigger(x[poison])
    y[poison] = config.target
    others = torch.nonzero(d.y_test != config.target).flatten()
    triggered = add_trigger(d.x_test[others])
    qx, qy = triggered[: config.n_queries], torch.full((config.n_queries,), config.target)
    ex = triggered[config.n_queries :]

    def asr(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(ex).argmax(1) == config.target).double().mean())

    def clean(m: nn.Module) -> float:
        return accuracy(m, d.x_test, d.y_test)

    with tempfile.TemporaryDirectory(prefix="gradtrace-backdoor-") as tmp:
        trainer = DigitsTrainer(x, y, config.train, tmp)
        trainer(np.arange(len(y)), config.seeds[0])
        scores = tracin_scores(trainer, (x, y), (qx, qy), Path(tmp) / "store")
        k = 2 * config.n_poison
        stores = [0]

        def attribute(model: nn.Module, kept: np.ndarray) -> np.ndarray:
            stores[0] += 1
            idx = torch.as_tensor(kept)
            return tracin_scores(trainer, (x[idx], y[idx]), (qx, qy), Path(tmp) / f"store_iter_{stores[0]}")

        removal = RemovalConfig(k=k, seeds=config.seeds, random_seed=config.data_seed, iterative_rounds=config.iterative_rounds)
        exp = RemovalExperiment(trainer, asr, len(y), removal, attribute=attribute, extra_measures={"clean_acc": clean}, progress=progress)
        result = exp.run(scores)
    s = result.summary()
    top = set(result.removed_topk)
    return {
        "asr_base": s["base"], "asr_after_topk": s["after_topk"], "asr_after_random": s["after_random"],
        "asr_iterative": s.get("after_iterative"),
        "clean_acc_base": s["clean_acc_base"], "clean_acc_after_topk": s["clean_acc_after_topk"],
        "clean_acc_drop": 100 * (s["clean_acc_base"] - s["clean_acc_after_topk"]),
        "poisons_in_topk": len(top & set(poison.tolist())), "k": k, "n_poison": config.n_poison,
        "per_seed": {"base": result.base, "after_topk": result.after_topk, "after_random": result.after_random,
                     "after_iterative": result.after_iterative},
        "config": config.to_dict(),
    }


@dataclasses.dataclass(frozen=True)
class LDSBenchConfig:
    n_queries: int = 40
    lds: LDSConfig = LDSConfig(n_subsets=50, alpha=0.5, seed=0, train_seed=0)
    train: TrainConfig = TrainConfig(steps=1500, lr=1e-3, batch_size=32, optimizer="adam", n_checkpoints=5)
    projection_dim: int = 1024
    variants: VariantConfig = VariantConfig()

    def to_dict(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "lds": self.lds.to_dict(), "train": self.train.to_dict(),
                "projection_dim": self.projection_dim, "variants": self.variants.to_dict()}


def run_lds(config: LDSBenchConfig = LDSBenchConfig(), progress: bool = False) -> dict[str, Any]:
    d = load_digits_data(DigitsConfig(flip_fraction=0.0))
    x, y = d.x_train, d.y_train
    qx, qy = d.x_test[: config.n_queries], d.y_test[: config.n_queries]
    task = ClassificationTask()
    with tempfile.TemporaryDirectory(prefix="gradtrace-lds-") as tmp:
        trainer = DigitsTrainer(x, y, config.train, tmp)
        trainer(np.arange(len(y)), config.lds.train_seed)
        model = make_mlp(128, 0)
        fcfg = FeaturizeConfig(projection=ProjectionConfig("dense", config.projection_dim, seed=0), batch_size=128)
        store = featurize(model, task, trainer.last_checkpoints, (x, y), Path(tmp) / "store", fcfg, progress=progress)
        states = [torch.load(p, weights_only=True) for p in trainer.last_optimizer_states]
        scores = score_variants(store, model, task, (qx, qy), None, config.variants, adam_states=states)
        plain = dataclasses.replace(config.train, n_checkpoints=0)
        subsets = retrain_subsets(DigitsTrainer(x, y, plain, tmp), lambda m: task.per_example_loss(m, (qx, qy)), len(y), config.lds, progress=progress)
    by_variant = {v: lds(s, subsets, "decrease") for v, s in scores.items()}
    return {"lds_by_variant": by_variant, "config": config.to_dict()}
