"""gradtrace.configbase: the shared base of the settings dataclasses. The
converted configs write exactly what they wrote before (results files and
cache keys depend on it), read it back, and name unknown keys."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gradtrace.configbase import ConfigBase, int_at_least, one_of, positive, positive_int
from gradtrace.diff.cluster import ClusterConfig
from gradtrace.errors import InputError
from gradtrace.loop.stop import StopRule
from gradtrace.unlearn.cache import fingerprint
from gradtrace.unlearn.compare import CompareConfig
from gradtrace.unlearn.lds import LDSConfig
from gradtrace.unlearn.methods import UnlearnConfig
from gradtrace.unlearn.relearn import RelearnConfig
from gradtrace.unlearn.retrain import RemovalConfig
from gradtrace.unlearn.routing import RoutingConfig
from gradtrace.unlearn.select import SelectionGrid, SelectionRule
from gradtrace.unlearn.train import TrainConfig

CONFIGS = {
 "compare": CompareConfig(methods=("base","filter","graddiff","rmu","era"), unlearn={"rmu": UnlearnConfig("rmu", lr=1e-2, steps=3, batch_size=8, rmu_layer="0", rmu_params=["a*"])},
     routing=RoutingConfig(layers=["0:2"], expand=4), coherence=TrainConfig(steps=3, lr=1e-2, batch_size=8),
     relearn=RelearnConfig(ks=[2, 4], lrs=(1e-2,), steps=4, eval_every=2, batch_size=4), select={"graddiff": SelectionGrid(lrs=[1e-3], steps=[5, 2]), "era": SelectionGrid(steps=(3,))},
     rule=SelectionRule(0.1, relative=True, retain_higher_is_better=False)),
 "compare_default": CompareConfig(methods=("base","filter","ga","npo","era"), routing=RoutingConfig(layers=("a:b",))),
 "removal": RemovalConfig(k=5, seeds=[0, 3], iterative_rounds=2),
 "lds": LDSConfig(n_subsets=7, alpha=0.3),
 "cluster": ClusterConfig(method="hdbscan", k_min=3, seed=5),
 "stop": StopRule("nll.tail_share", above=0.2, k=2),
 "stop_cusum": StopRule("cka.cka", kind="cusum", limit=0.5, direction="down"),
}

#: ``json.dumps(config.to_dict())`` and its cache fingerprint before the configs shared a base
PINNED = {
 "compare": [
  "{\"methods\": [\"base\", \"filter\", \"graddiff\", \"rmu\", \"era\"], \"unlearn\": {\"graddiff\": {\"method\": \"graddiff\", \"lr\": 1e-05, \"steps\": 100, \"batch_size\": 8, \"weight_decay\": 0.0, \"seed\": 0, \"retain_weight\": 1.0, \"npo_beta\": 0.1, \"rmu_layer\": null, \"rmu_params\": [], \"rmu_steering\": 6.5, \"rmu_alpha\": 1200.0}, \"rmu\": {\"method\": \"rmu\", \"lr\": 0.01, \"steps\": 3, \"batch_size\": 8, \"weight_decay\": 0.0, \"seed\": 0, \"retain_weight\": 1.0, \"npo_beta\": 0.1, \"rmu_layer\": \"0\", \"rmu_params\": [\"a*\"], \"rmu_steering\": 6.5, \"rmu_alpha\": 1200.0}}, \"routing\": {\"layers\": [\"0:2\"], \"expand\": 4, \"forget_expanded\": 1.0, \"forget_original\": -0.5, \"retain_expanded\": 0.0, \"retain_original\": 1.0, \"l1_coef\": 0.001, \"seed\": 0}, \"coherence\": {\"steps\": 3, \"lr\": 0.01, \"batch_size\": 8, \"optimizer\": \"adam\", \"weight_decay\": 0.0, \"seed\": 0, \"n_checkpoints\": 0}, \"relearn\": {\"ks\": [2, 4], \"lrs\": [0.01], \"steps\": 4, \"batch_size\": 4, \"optimizer\": \"adam\", \"eval_every\": 2, \"seed\": 0, \"attacker_maximises\": true}, \"seed\": 0, \"select\": {\"graddiff\": {\"lrs\": [0.001], \"steps\": [2, 5]}, \"era\": {\"lrs\": [], \"steps\": [3]}}, \"rule\": {\"retain_tolerance\": 0.1, \"relative\": true, \"retain_higher_is_better\": false}}",
  "b1a6f523d8e94e385280"
 ],
 "compare_default": [
  "{\"methods\": [\"base\", \"filter\", \"ga\", \"npo\", \"era\"], \"unlearn\": {\"ga\": {\"method\": \"ga\", \"lr\": 1e-05, \"steps\": 100, \"batch_size\": 8, \"weight_decay\": 0.0, \"seed\": 0, \"retain_weight\": 1.0, \"npo_beta\": 0.1, \"rmu_layer\": null, \"rmu_params\": [], \"rmu_steering\": 6.5, \"rmu_alpha\": 1200.0}, \"npo\": {\"method\": \"npo\", \"lr\": 1e-05, \"steps\": 100, \"batch_size\": 8, \"weight_decay\": 0.0, \"seed\": 0, \"retain_weight\": 1.0, \"npo_beta\": 0.1, \"rmu_layer\": null, \"rmu_params\": [], \"rmu_steering\": 6.5, \"rmu_alpha\": 1200.0}}, \"routing\": {\"layers\": [\"a:b\"], \"expand\": 16, \"forget_expanded\": 1.0, \"forget_original\": -0.5, \"retain_expanded\": 0.0, \"retain_original\": 1.0, \"l1_coef\": 0.001, \"seed\": 0}, \"coherence\": {\"steps\": 50, \"lr\": 0.001, \"batch_size\": 32, \"optimizer\": \"adam\", \"weight_decay\": 0.0, \"seed\": 0, \"n_checkpoints\": 0}, \"relearn\": {\"ks\": [4, 16, 64], \"lrs\": [0.0001, 0.001, 0.01], \"steps\": 50, \"batch_size\": 16, \"optimizer\": \"adam\", \"eval_every\": 10, \"seed\": 0, \"attacker_maximises\": true}, \"seed\": 0, \"select\": {}, \"rule\": {\"retain_tolerance\": 0.02, \"relative\": false, \"retain_higher_is_better\": true}}",
  "1dd50104ebe6f7cf026e"
 ],
 "removal": [
  "{\"k\": 5, \"seeds\": [0, 3], \"random_seed\": 0, \"iterative_rounds\": 2}",
  "0d22af93547c2a7f808d"
 ],
 "lds": [
  "{\"n_subsets\": 7, \"alpha\": 0.3, \"seed\": 0, \"train_seed\": 0, \"vary_train_seed\": false}",
  "6f1cf2f4185e7fa4da31"
 ],
 "cluster": [
  "{\"method\": \"hdbscan\", \"k_min\": 3, \"k_max\": 24, \"min_cluster_size\": 10, \"silhouette_sample\": 3000, \"n_init\": 4, \"seed\": 5}",
  "b45ed5a7af8e75099adb"
 ],
 "stop": [
  "{\"metric\": \"nll.tail_share\", \"kind\": \"threshold\", \"above\": 0.2, \"below\": null, \"k\": 2, \"direction\": \"up\", \"slack\": 0.0, \"limit\": null, \"target\": null}",
  "bdbf4bac780e74819915"
 ],
 "stop_cusum": [
  "{\"metric\": \"cka.cka\", \"kind\": \"cusum\", \"above\": null, \"below\": null, \"k\": 1, \"direction\": \"down\", \"slack\": 0.0, \"limit\": 0.5, \"target\": null}",
  "4658e26a7f970aabe071"
 ]
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_to_dict_is_byte_identical_and_round_trips(name):
    config = CONFIGS[name]
    text, fp = PINNED[name]
    assert json.dumps(config.to_dict()) == text
    assert fingerprint(config.to_dict()) == fp
    back = type(config).from_dict(json.loads(text))
    assert json.dumps(back.to_dict()) == text
    if not isinstance(config, CompareConfig):  # its to_dict fills in the default settings of unlisted methods
        assert back == config


@pytest.mark.parametrize("cls", [CompareConfig, UnlearnConfig, RelearnConfig, RemovalConfig, LDSConfig, RoutingConfig,
                                 SelectionGrid, SelectionRule, TrainConfig, ClusterConfig])
def test_unknown_keys_are_named(cls):
    with pytest.raises(InputError, match=r"unknown fields \['bogus'\]"):
        cls.from_dict({"bogus": 1})


def test_stop_rule_names_its_table():
    with pytest.raises(InputError, match=r"stop\[2\]: unknown fields \['bogus'\]"):
        StopRule.from_dict({"metric": "a.b", "bogus": 1}, "stop[2]")
    with pytest.raises(InputError, match=r"stop\[2\]\.k must be a positive integer; got 0"):
        StopRule.from_dict({"metric": "a.b", "above": 1, "k": 0}, "stop[2]")
    assert "field" not in StopRule("a.b", above=1.0, field="stop[0]").to_dict()


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(steps=0), "steps must be a positive integer; got 0"),
    (lambda: TrainConfig(batch_size=True), "batch_size must be a positive integer; got True"),
    (lambda: UnlearnConfig(lr=0.0), "lr must be positive; got 0.0"),
    (lambda: UnlearnConfig(method="magic"), "method must be one of ('ga', 'graddiff', 'npo', 'rmu'); got 'magic'"),
    (lambda: RelearnConfig(eval_every=-1), "eval_every must be a positive integer; got -1"),
    (lambda: RemovalConfig(k=3, iterative_rounds=-1), "iterative_rounds must be a non-negative integer; got -1"),
    (lambda: ClusterConfig(k_min=1), "cluster.k_min must be an integer >= 2; got 1"),
    (lambda: LDSConfig(n_subsets=2), "n_subsets must be an integer >= 3 (a rank correlation needs several points); got 2"),
])
def test_field_checks_keep_their_messages(make, message):
    with pytest.raises(InputError) as info:
        make()
    assert str(info.value) == message


@dataclasses.dataclass(frozen=True)
class Inner(ConfigBase):
    _checks = {"n": positive_int}
    n: int = 1


@dataclasses.dataclass(frozen=True)
class Outer(ConfigBase):
    _prefix = "outer."
    _checks = {"kind": one_of(("a", "b")), "rate": positive, "width": int_at_least(4)}
    kind: str = "a"
    rate: float = 0.1
    width: int = 4
    names: tuple[str, ...] = ()
    inner: Inner = Inner()
    by_name: dict[str, Inner] = dataclasses.field(default_factory=dict)
    maybe: Inner | None = None


def test_a_new_config_gets_everything_from_the_base():
    o = Outer(names=["x", "y"], inner=Inner(2), by_name={"p": Inner(3)}, maybe=Inner(4))
    assert o.names == ("x", "y") and Outer(names="x").names == ("x",)
    d = o.to_dict()
    assert d == {"kind": "a", "rate": 0.1, "width": 4, "names": ["x", "y"], "inner": {"n": 2}, "by_name": {"p": {"n": 3}},
                 "maybe": {"n": 4}}
    assert Outer.from_dict(json.loads(json.dumps(d))) == o
    with pytest.raises(InputError, match=r"outer.width must be an integer >= 4; got 3"):
        Outer(width=3)
    with pytest.raises(InputError, match=r"outer: unknown fields \['colour'\]"):
        Outer.from_dict({"colour": 1})
    with pytest.raises(InputError, match=r"n must be a positive integer; got 0"):
        Outer.from_dict({"inner": {"n": 0}})
