"""Retraining the bundled digits task on a subset, for counterfactual checks.

:func:`digits_train_fn` returns ``train_fn(train_indices, seed) -> model``
that trains exactly as :func:`gradtrace.demos.digits.train_digits` does
(same architecture, plain SGD, same epochs and batch size) on the rows
``train_indices`` of the digits training set, deterministically per seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..task import ClassificationTask
from ..unlearn.retrain import TrainFn
from ..unlearn.train import TrainConfig, train
from .digits import DigitsConfig, load_digits_data, make_mlp


def digits_train_fn(config: DigitsConfig = DigitsConfig()) -> TrainFn:
    data = load_digits_data(config)

    def train_fn(train_indices: np.ndarray, seed: int) -> nn.Module:
        idx = torch.as_tensor(np.asarray(train_indices, dtype=np.int64))
        model = make_mlp(config.hidden, seed)
        steps = config.epochs * math.ceil(len(idx) / config.batch_size)
        cfg = TrainConfig(steps=steps, lr=config.lr, batch_size=config.batch_size, optimizer="sgd", seed=seed)
        train(model, ClassificationTask(), (data.x_train[idx], data.y_train[idx]), cfg)
        return model

    return train_fn
