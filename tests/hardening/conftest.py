"""The small training run most hardening tests share."""

from __future__ import annotations

import pytest

import gradtrace as gt


@pytest.fixture
def run(h, tmp_path):
    """A float64 MLP classifier, two checkpoints, 10 training examples (ids
    ``ex0``...) and 3 queries; ``run.featurize(data, out, ...)`` writes a store
    under ``tmp_path`` (shards of 4, batches of 3 unless ``config`` is given)."""

    class Run:
        dir = tmp_path
        model = h.make_mlp(seed=0)
        task = gt.ClassificationTask()
        ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ckpts", [0.3, 0.1])
        train = h.classification_data(10, seed=1)
        queries = h.classification_data(3, seed=2)

        @staticmethod
        def config(**changes):
            return gt.FeaturizeConfig(**{"dtype": "float64", "shard_size": 4, "batch_size": 3, **changes})

        def featurize(self, data=None, out="store", *, model=None, task=None, ckpts=None, config=None, **kwargs):
            data = self.train if data is None else data
            if "ids" not in kwargs and isinstance(data, tuple) and data[0].ndim > 0:
                kwargs["ids"] = [f"ex{i}" for i in range(len(data[0]))]
            return gt.featurize(
                model or self.model, task or self.task, ckpts or self.ckpts, data, tmp_path / out,
                config or self.config(), progress=False, **kwargs,
            )

    return Run()
