"""`gradtrace unlearn` and `gradtrace validate` end to end on tiny models; reports escape text."""

from __future__ import annotations

import json
import textwrap

from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.unlearn.report import comparison_html, validation_html

SPEC = textwrap.dedent(
    """
    import torch
    from torch import nn
    from gradtrace.task import ClassificationTask
    from gradtrace.unlearn.compare import CompareConfig, UnlearnSpec
    from gradtrace.unlearn.methods import UnlearnConfig
    from gradtrace.unlearn.relearn import RelearnConfig
    from gradtrace.unlearn.routing import RoutingConfig
    from gradtrace.unlearn.train import TrainConfig

    def init(seed):
        gen = torch.Generator().manual_seed(seed)
        m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        return m

    def make():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(60, 4, generator=gen, dtype=torch.float64)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        w = (y == 2).double()
        acc = lambda idx: (lambda m: float((m(x[idx]).argmax(1) == y[idx]).double().mean()))
        spec = UnlearnSpec(init, ClassificationTask(), (x, y), w, (x[y == 2][:8], y[y == 2][:8]),
                           acc(y == 2), acc(y != 2), TrainConfig(steps=20, lr=0.05, batch_size=16), name="<script>tiny</script>")
        config = CompareConfig(
            unlearn={"rmu": UnlearnConfig("rmu", lr=1e-2, steps=3, batch_size=8, rmu_layer="0")},
            routing=RoutingConfig(layers=("0:2",), expand=4),
            coherence=TrainConfig(steps=3, lr=1e-2, batch_size=8),
            relearn=RelearnConfig(ks=(2, 4), lrs=(1e-2,), steps=4, eval_every=2, batch_size=4),
        )
        return spec, config
    """
)


def test_unlearn_command_writes_results_and_an_escaped_report(tmp_path, h):
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["unlearn", "--spec", f"{spec}:make", "--method", "filter", "--method", "graddiff",
                                   "--method", "rmu", "--method", "era", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert list(data["methods"]) == ["filter", "graddiff", "rmu", "era"]
    for row in data["methods"].values():
        assert 0 <= row["forget"] <= 1 and 0 <= row["retain"] <= 1 and set(row["relearn"]["best"]) == {"2", "4"}
    assert data["config"]["unlearn"]["rmu"]["rmu_layer"] == "0" and data["config"]["routing"]["expand"] == 4
    html = (out / "report.html").read_text()
    assert "<script>" not in h.without_scripts(html) and "&lt;script&gt;tiny&lt;/script&gt;" in html
    curves = h.page_figures(html)
    assert [len(f["data"]) for f in curves] == [4, 4]  # 4 methods x 2 values of k
    assert [t["name"].split(" ")[0] for t in curves[0]["data"]] == ["filter", "graddiff", "rmu", "era"]
    bad = CliRunner().invoke(app, ["unlearn", "--spec", f"{spec}:make", "--method", "magic", "--out", str(out)])
    assert bad.exit_code == 2 and "methods must be a non-empty subset" in bad.output


def test_validate_command_on_a_tiny_task(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(textwrap.dedent(
        """
        import numpy as np
        import torch
        from torch import nn
        from gradtrace.spec import TaskSpec
        from gradtrace.task import ClassificationTask
        from gradtrace.unlearn.train import TrainConfig, train

        gen = torch.Generator().manual_seed(0)
        X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
        Y = (X[:, 0] > 0).long()
        HERE = __file__.rsplit("/", 1)[0]

        def model():
            return nn.Linear(3, 2).double()

        def train_fn(indices, seed):
            m = model()
            with torch.no_grad():
                m.weight.zero_(); m.bias.zero_()
            idx = torch.as_tensor(np.asarray(indices))
            train(m, ClassificationTask(), (X[idx], Y[idx]), TrainConfig(steps=30, lr=0.1, batch_size=8, optimizer="sgd", seed=seed,
                  n_checkpoints=2), checkpoint_dir=HERE + f"/ck_{len(idx)}_{seed}")
            return m

        def make_train_fn():
            return train_fn

        def make_task():
            train_fn(np.arange(40), 0)
            from gradtrace.checkpoints import CheckpointRef
            refs = [CheckpointRef(HERE + f"/ck_40_0/step_{s:07d}.pt", 0.1, step=s) for s in (15, 30)]
            return TaskSpec(model=model, task=ClassificationTask(), checkpoints=refs, train=(X, Y), queries=(X[:5], Y[:5]))
        """
    ))
    runner = CliRunner()
    store = tmp_path / "store"
    res = runner.invoke(app, ["featurize", "--task", f"{task}:make_task", "--out", str(store), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "val"
    res = runner.invoke(app, ["validate", "--store", str(store), "--task", f"{task}:make_task", "--train-fn", f"{task}:make_train_fn",
                              "--k", "8", "--seeds", "0", "--seeds", "1", "--limit", "5", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "validation.json").read_text())
    s = data["summary"]
    # removing the 8 strongest proponents of the queries' loss raises that loss more than 8 random removals
    assert s["after_topk"] > s["base"] and s["after_topk"] > s["after_random"]
    assert len(data["removed_ids"]) == 8 and data["direction"] == "decrease"
    assert "after top-k" in (out / "report.html").read_text()
    # the iterative arm from the CLI: default re-attribution is TracIn at the retrained model, featurized like the store
    res = runner.invoke(app, ["validate", "--store", str(store), "--task", f"{task}:make_task", "--train-fn", f"{task}:make_train_fn",
                              "--k", "8", "--seeds", "0", "--limit", "5", "--iterative-rounds", "2", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "validation.json").read_text())
    assert data["config"]["iterative_rounds"] == 2 and data["iterative_attribution"].startswith("retrained_tracin")
    assert data["summary"]["after_iterative"] > data["summary"]["base"]  # removing proponents in rounds also raises the loss
    assert "after iterative" in (out / "report.html").read_text() and "after_iterative" in res.output
    bad = runner.invoke(app, ["validate", "--store", str(store), "--task", f"{task}:make_task", "--train-fn", f"{task}:nope", "--out", str(out)])
    assert bad.exit_code == 2 and "has no function 'nope'" in " ".join(bad.output.split())


def test_reports_escape_every_text(h):
    evil = "<script>alert(1)</script>"
    result = {
        "labelled_fraction": 1.0, "config": {evil: evil},
        "methods": {evil: {"forget": 0.1, "retain": 0.9, "relearn": {"best": {"4": 0.2}, "best_lr": {"4": 0.01}, "steps": [0, 1],
                                                                        "curves": {"4": {"0.01": [0.1, 0.2]}}}}},
    }
    html = comparison_html(result, evil, attacker_maximises=True)
    assert "<script>" not in h.without_scripts(html)
    (fig,) = h.page_figures(html)
    assert fig["data"][0]["name"].startswith("&lt;script&gt;")  # escaped for plotly's label markup
    result["methods"][evil]["selection"] = {"selected": {"lr": 0.01, "steps": 5, "forget": 0.1, "retain": 0.9}, "retain_limit": 0.88,
                                            "admissible": True, "points": [{}, {}]}
    html = comparison_html(result, evil, attacker_maximises=True)
    assert "<script>" not in h.without_scripts(html) and "Selected settings" in html and "0.88" in html
    val = {"summary": {"base": 1.0, "after_topk": 2.0, "after_random": 1.0}, "config": {"seeds": [0], "k": 1, evil: 1},
           "base": [1.0], "after_topk": [2.0], "after_random": [1.0], "removed_topk": [0], "removed_ids": [evil], "behaviour": evil}
    assert "<script>" not in validation_html(val, evil)


def test_validate_behaviour_names_logit_margin_and_the_deprecated_margin(tmp_path):
    import torch

    from gradtrace.errors import InputError
    from gradtrace.spec import TaskSpec
    from gradtrace.task import ClassificationTask, LogitMarginBehaviour, LossBehaviour
    from gradtrace.unlearn.validate import behaviour_named

    spec = TaskSpec(model=lambda: torch.nn.Linear(2, 2), task=ClassificationTask(), checkpoints=[], train=None)
    assert behaviour_named("logit-margin", spec) == LogitMarginBehaviour()
    assert behaviour_named("margin", spec) == LogitMarginBehaviour()  # deprecated alias
    assert behaviour_named("loss", spec) == LossBehaviour(ClassificationTask())
    try:
        behaviour_named("preference", spec)
    except InputError as exc:
        assert "--behaviour must be one of ('loss', 'logit-margin')" in str(exc) and "'preference'" in str(exc)
    else:
        raise AssertionError("an unknown behaviour name was accepted")
    # the CLI says once that the old name is deprecated (then fails here on the missing task file, not on the name)
    res = CliRunner().invoke(app, ["validate", "--store", str(tmp_path / "s"), "--task", f"{tmp_path / 'task.py'}:make",
                                   "--train-fn", "x.py:f", "--behaviour", "margin", "--out", str(tmp_path / "o")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "--behaviour margin is deprecated; use --behaviour logit-margin" in text and "does not exist" in text
    res = CliRunner().invoke(app, ["validate", "--store", str(tmp_path / "s"), "--task", f"{tmp_path / 'task.py'}:make",
                                   "--train-fn", "x.py:f", "--behaviour", "logit-margin", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "deprecated" not in res.output
