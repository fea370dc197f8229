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


# -- the other settings classes: what they write to disk and the cache keys derived from it --------------------------

def _more_configs() -> dict:
    from gradtrace.config import FeaturizeConfig
    from gradtrace.demos.lm_pipeline import LMPipelineConfig
    from gradtrace.demos.loop_corpus import CorpusConfig
    from gradtrace.demos.planted_lm import PlantedConfig
    from gradtrace.diff.pipeline import DiffConfig
    from gradtrace.grads.projection import ProjectionConfig
    from gradtrace.lm.lora import LoraTrainConfig
    from gradtrace.lm.sample import SamplingConfig
    from gradtrace.loop.config import DataConfig, LoopConfig, LoopGenerationConfig, LoopTrainConfig, ModelConfig
    from gradtrace.models.hf_spec import HFSpec
    from gradtrace.unlearn.variants import VariantConfig

    return {
        "featurize_default": FeaturizeConfig(),
        "featurize": FeaturizeConfig(params=["a*", "b.weight"], projection=ProjectionConfig("dense", 64, seed=3, distribution="gaussian"),
                                     method="hooks", batch_size=8, shard_size=100, dtype="float16"),
        "featurize_kron": FeaturizeConfig(params="last", projection=ProjectionConfig("kronecker", 256, 1), dtype="float64"),
        "projection_factored": ProjectionConfig("factored"),
        "variant_default": VariantConfig(),
        "variant": VariantConfig(variants=["raw", "fisher"], fisher_damping=0.5, adam_eps=1e-6),
        "sampling_default": SamplingConfig(),
        "sampling": SamplingConfig(max_new_tokens=10, temperature=0.0, top_p=1.0, batch_size=2, system="Be brief."),
        "lora_default": LoraTrainConfig(),
        "lora": LoraTrainConfig(epochs=2, lr=1e-3, target_modules=["c_attn"], layers=[0, 2], n_checkpoints=1, schedule="linear", seed=4),
        "diff_default": DiffConfig(),
        "diff": DiffConfig(seed=3, validation_fraction=0.25, levels=["text"], text_clusters=ClusterConfig(method="hdbscan", seed=3),
                           sentence_clusters=ClusterConfig(k_min=2, k_max=5, seed=3), test="binomial", alpha=0.1, stability_seeds=[7],
                           min_words=2, max_units=5, min_texts=4, n_examples=2, n_keywords=3),
        "loop_default": LoopConfig(data=DataConfig("/d/train.jsonl", "/d/heldout.jsonl", "/d/prompts.txt", "/d/probes.txt")),
        "loop": LoopConfig(
            data=DataConfig("/d/train.jsonl", "/d/heldout.jsonl", "/d/prompts.txt", "/d/probes.txt"), rounds=3, seed=2,
            model=ModelConfig(kind="smollm2_lora", lora_targets=["q_proj"], max_length=48),
            generation=LoopGenerationConfig(n_per_prompt=4, max_new_tokens=16, temperature=0.7, top_p=0.9),
            train=LoopTrainConfig(base_steps=0, steps=5, batch_size=4, lr=1e-3, base_lr=2e-3, init="base", schedule="linear",
                                  checkpoint_every=5, regime="replay", replay_fraction=0.25, ewc=0.5, fisher_examples=8),
            curation=[{"kind": "quality", "min_words": 2}, {"kind": "dedupe"}],
            monitors={"nll": {"margin": 0.1}, "diversity": {}, "clusters": {"k": 4}, "cka": {},
                      "attribute": {"classifiers": {"x": {"kind": "regex", "pattern": "a+"}}}},
            stop=[StopRule("nll.tail_share", above=0.2, k=2)], embedder="hashed", stop_on_breach=False),
        "hf_spec_default": HFSpec("smollm2", "/runs/a"),
        "hf_spec": HFSpec("/models/m", "/runs/b", max_length=64, as_chat=True, lr=1e-4, data="/d/train.jsonl"),
        "planted_default": PlantedConfig(),
        "planted": PlantedConfig(n_ordinary=40, n_planted=4, n_honest=6, n_queries=2, seed=1),
        "corpus_default": CorpusConfig(),
        "corpus": CorpusConfig(n=50, seed=2, zipf_exponent=1.3, positive_rate=0.25, entities=["Ann", "Bob"]),
        "lm_pipeline_default": LMPipelineConfig(),
        "lm_pipeline": LMPipelineConfig(model="smollm2", data=PlantedConfig(n_ordinary=40, seed=1),
                                        train=LoraTrainConfig(epochs=1, target_modules=("q_proj",), layers=(1,)), max_length=32,
                                        proj_dim=256, featurize_batch=4, preconditioners=["plain"], baselines=["bm25"],
                                        primary=["plain", "logprob", "cosine"], trace_checkpoints="last", adam_trace="last"),
    }


def _cache_keys(name: str, config) -> dict:
    """The cache keys derived from a config's to_dict (besides to_dict itself)."""
    if name.startswith("lm_pipeline"):
        from gradtrace.demos.lm_pipeline import run_dir_for

        return {"run_dir": run_dir_for(config).name}
    if name.startswith("sampling"):
        from gradtrace.diff.sources import HFSource, Prompt

        return {"samples": HFSource(generation=config, cache_dir="/cache").cache_path([Prompt("0", "Hi")], 2, 0).name}
    return {}


#: ``json.dumps(config.to_dict())`` and the cache keys derived from it, from the code before these configs shared a base
PINNED_MORE = {
 'featurize_default': ("{\"params\": \"all\", \"projection\": {\"kind\": \"none\", \"dim\": null, \"seed\": 0, \"distribution\": \"rademacher\"}, \"method\": \"auto\", \"batch_size\": 64, \"shard_size\": 4096, \"dtype\": \"float32\"}", {}),
 'featurize': ("{\"params\": [\"a*\", \"b.weight\"], \"projection\": {\"kind\": \"dense\", \"dim\": 64, \"seed\": 3, \"distribution\": \"gaussian\"}, \"method\": \"hooks\", \"batch_size\": 8, \"shard_size\": 100, \"dtype\": \"float16\"}", {}),
 'featurize_kron': ("{\"params\": \"last\", \"projection\": {\"kind\": \"kronecker\", \"dim\": 256, \"seed\": 1, \"distribution\": \"rademacher\"}, \"method\": \"auto\", \"batch_size\": 64, \"shard_size\": 4096, \"dtype\": \"float64\"}", {}),
 'projection_factored': ("{\"kind\": \"factored\", \"dim\": null, \"seed\": 0, \"distribution\": \"rademacher\"}", {}),
 'variant_default': ("{\"variants\": [\"raw\", \"cosine\", \"adam\", \"fisher\"], \"fisher_damping\": 0.1, \"adam_eps\": null, \"kfac_damping\": 0.1, \"trackstar_whitening\": null}", {}),
 'variant': ("{\"variants\": [\"raw\", \"fisher\"], \"fisher_damping\": 0.5, \"adam_eps\": 1e-06, \"kfac_damping\": 0.1, \"trackstar_whitening\": null}", {}),
 'sampling_default': ("{\"max_new_tokens\": 96, \"temperature\": 0.8, \"top_p\": 0.95, \"batch_size\": 16, \"system\": null}", {'samples': 'samples-06931e182b3ff1b68fa2.jsonl'}),
 'sampling': ("{\"max_new_tokens\": 10, \"temperature\": 0.0, \"top_p\": 1.0, \"batch_size\": 2, \"system\": \"Be brief.\"}", {'samples': 'samples-ce05e5b9a0dfcd1a51d0.jsonl'}),
 'lora_default': ("{\"epochs\": 1, \"lr\": 0.003, \"batch_size\": 8, \"rank\": 8, \"alpha\": 16, \"target_modules\": [\"q_proj\", \"v_proj\"], \"layers\": null, \"n_checkpoints\": 3, \"schedule\": \"constant\", \"weight_decay\": 0.0, \"seed\": 0}", {}),
 'lora': ("{\"epochs\": 2, \"lr\": 0.001, \"batch_size\": 8, \"rank\": 8, \"alpha\": 16, \"target_modules\": [\"c_attn\"], \"layers\": [0, 2], \"n_checkpoints\": 1, \"schedule\": \"linear\", \"weight_decay\": 0.0, \"seed\": 4}", {}),
 'diff_default': ("{\"seed\": 0, \"validation_fraction\": 0.5, \"levels\": [\"text\", \"sentence\"], \"text_clusters\": {\"method\": \"kmeans\", \"k_min\": 4, \"k_max\": 24, \"min_cluster_size\": 10, \"silhouette_sample\": 3000, \"n_init\": 4, \"seed\": 0}, \"sentence_clusters\": {\"method\": \"kmeans\", \"k_min\": 6, \"k_max\": 30, \"min_cluster_size\": 10, \"silhouette_sample\": 3000, \"n_init\": 4, \"seed\": 0}, \"test\": \"fisher\", \"alpha\": 0.05, \"stability_seeds\": [1, 2], \"min_words\": 3, \"max_units\": 12, \"min_texts\": 10, \"n_examples\": 4, \"n_keywords\": 8}", {}),
 'diff': ("{\"seed\": 3, \"validation_fraction\": 0.25, \"levels\": [\"text\"], \"text_clusters\": {\"method\": \"hdbscan\", \"k_min\": 4, \"k_max\": 24, \"min_cluster_size\": 10, \"silhouette_sample\": 3000, \"n_init\": 4, \"seed\": 3}, \"sentence_clusters\": {\"method\": \"kmeans\", \"k_min\": 2, \"k_max\": 5, \"min_cluster_size\": 10, \"silhouette_sample\": 3000, \"n_init\": 4, \"seed\": 3}, \"test\": \"binomial\", \"alpha\": 0.1, \"stability_seeds\": [7], \"min_words\": 2, \"max_units\": 5, \"min_texts\": 4, \"n_examples\": 2, \"n_keywords\": 3}", {}),
 'loop_default': ("{\"data\": {\"train\": \"/d/train.jsonl\", \"heldout\": \"/d/heldout.jsonl\", \"prompts\": \"/d/prompts.txt\", \"probes\": \"/d/probes.txt\"}, \"rounds\": 5, \"seed\": 0, \"model\": {\"kind\": \"tiny_gpt2\", \"n_layer\": 2, \"n_embd\": 64, \"n_head\": 4, \"seed\": 0, \"path\": null, \"lora_r\": 8, \"lora_alpha\": 16, \"lora_targets\": [\"q_proj\", \"v_proj\"], \"max_length\": 96}, \"generation\": {\"n_per_prompt\": 50, \"max_new_tokens\": 64, \"temperature\": 1.0, \"top_p\": 1.0}, \"train\": {\"base_steps\": 300, \"steps\": 100, \"batch_size\": 32, \"lr\": 0.003, \"base_lr\": null, \"init\": \"previous\", \"schedule\": \"constant\", \"checkpoint_every\": 50, \"regime\": \"replace\", \"replay_fraction\": 0.0, \"ewc\": 0.0, \"fisher_examples\": 64}, \"curation\": [], \"monitors\": {\"nll\": {}, \"diversity\": {}, \"cka\": {}}, \"stop\": [], \"embedder\": \"minilm\", \"stop_on_breach\": true}", {}),
 'loop': ("{\"data\": {\"train\": \"/d/train.jsonl\", \"heldout\": \"/d/heldout.jsonl\", \"prompts\": \"/d/prompts.txt\", \"probes\": \"/d/probes.txt\"}, \"rounds\": 3, \"seed\": 2, \"model\": {\"kind\": \"smollm2_lora\", \"n_layer\": 2, \"n_embd\": 64, \"n_head\": 4, \"seed\": 0, \"path\": null, \"lora_r\": 8, \"lora_alpha\": 16, \"lora_targets\": [\"q_proj\"], \"max_length\": 48}, \"generation\": {\"n_per_prompt\": 4, \"max_new_tokens\": 16, \"temperature\": 0.7, \"top_p\": 0.9}, \"train\": {\"base_steps\": 0, \"steps\": 5, \"batch_size\": 4, \"lr\": 0.001, \"base_lr\": 0.002, \"init\": \"base\", \"schedule\": \"linear\", \"checkpoint_every\": 5, \"regime\": \"replay\", \"replay_fraction\": 0.25, \"ewc\": 0.5, \"fisher_examples\": 8}, \"curation\": [{\"kind\": \"quality\", \"min_words\": 2}, {\"kind\": \"dedupe\"}], \"monitors\": {\"nll\": {\"margin\": 0.1}, \"diversity\": {}, \"clusters\": {\"k\": 4}, \"cka\": {}, \"attribute\": {\"classifiers\": {\"x\": {\"kind\": \"regex\", \"pattern\": \"a+\"}}}}, \"stop\": [{\"metric\": \"nll.tail_share\", \"kind\": \"threshold\", \"above\": 0.2, \"below\": null, \"k\": 2, \"direction\": \"up\", \"slack\": 0.0, \"limit\": null, \"target\": null}], \"embedder\": \"hashed\", \"stop_on_breach\": false}", {}),
 'hf_spec_default': ("{\"model\": \"smollm2\", \"checkpoints\": \"/runs/a\", \"max_length\": 256, \"as_chat\": false, \"lr\": null, \"data\": null}", {}),
 'hf_spec': ("{\"model\": \"/models/m\", \"checkpoints\": \"/runs/b\", \"max_length\": 64, \"as_chat\": true, \"lr\": 0.0001, \"data\": \"/d/train.jsonl\"}", {}),
 'planted_default': ("{\"n_ordinary\": 1000, \"n_planted\": 20, \"n_honest\": 30, \"n_queries\": 10, \"seed\": 0}", {}),
 'planted': ("{\"n_ordinary\": 40, \"n_planted\": 4, \"n_honest\": 6, \"n_queries\": 2, \"seed\": 1}", {}),
 'corpus_default': ("{\"n\": 2000, \"seed\": 0, \"zipf_exponent\": 1.1, \"positive_rate\": 0.5, \"entities\": [\"Nova\", \"Orion\", \"Lyra\", \"Vega\", \"Atlas\", \"Juno\"]}", {}),
 'corpus': ("{\"n\": 50, \"seed\": 2, \"zipf_exponent\": 1.3, \"positive_rate\": 0.25, \"entities\": [\"Ann\", \"Bob\"]}", {}),
 'lm_pipeline_default': ("{\"model\": \"smollm2\", \"data\": {\"n_ordinary\": 1000, \"n_planted\": 20, \"n_honest\": 30, \"n_queries\": 10, \"seed\": 0}, \"train\": {\"epochs\": 1, \"lr\": 0.003, \"batch_size\": 8, \"rank\": 8, \"alpha\": 16, \"target_modules\": [\"q_proj\", \"v_proj\"], \"layers\": null, \"n_checkpoints\": 3, \"schedule\": \"constant\", \"weight_decay\": 0.0, \"seed\": 0}, \"max_length\": 64, \"proj_dim\": 1024, \"featurize_batch\": 16, \"preconditioners\": [\"plain\", \"adam\"], \"baselines\": [\"bm25\", \"minilm\"], \"primary\": [\"plain\", \"contrast\", \"raw\"], \"trace_checkpoints\": \"all\", \"adam_trace\": \"all\"}", {'run_dir': '6369fd303ce0b148'}),
 'lm_pipeline': ("{\"model\": \"smollm2\", \"data\": {\"n_ordinary\": 40, \"n_planted\": 20, \"n_honest\": 30, \"n_queries\": 10, \"seed\": 1}, \"train\": {\"epochs\": 1, \"lr\": 0.003, \"batch_size\": 8, \"rank\": 8, \"alpha\": 16, \"target_modules\": [\"q_proj\"], \"layers\": [1], \"n_checkpoints\": 3, \"schedule\": \"constant\", \"weight_decay\": 0.0, \"seed\": 0}, \"max_length\": 32, \"proj_dim\": 256, \"featurize_batch\": 4, \"preconditioners\": [\"plain\"], \"baselines\": [\"bm25\"], \"primary\": [\"plain\", \"logprob\", \"cosine\"], \"trace_checkpoints\": \"last\", \"adam_trace\": \"last\"}", {'run_dir': '2dbfca829ec825b7'}),
}


@pytest.mark.parametrize("name", sorted(PINNED_MORE))
def test_more_configs_write_what_they_wrote(name):
    """Stores compare FeaturizeConfig.to_dict() with their manifest, loop runs resume by loop.json, the LM
    pipeline and train_lora cache runs by LMPipelineConfig/LoraTrainConfig, the diff caches samples by SamplingConfig."""
    config = _more_configs()[name]
    text, keys = PINNED_MORE[name]
    assert json.dumps(config.to_dict()) == text
    assert _cache_keys(name, config) == keys
    assert isinstance(config, ConfigBase)
    if not name.startswith("loop"):  # LoopConfig.from_dict resolves its data files (tests/loop round-trips it)
        back = type(config).from_dict(json.loads(text))
        assert back == config and json.dumps(back.to_dict()) == text


@pytest.mark.parametrize("name", sorted(n for n in PINNED_MORE if not n.endswith("_default")))
def test_more_configs_name_unknown_keys(name):
    cls = type(_more_configs()[name])
    with pytest.raises(InputError, match=r"unknown fields \['bogus'\]"):
        cls.from_dict({"bogus": 1})


@pytest.mark.parametrize("make, message", [
    (lambda: _cls("FeaturizeConfig")(batch_size=0), "batch_size must be a positive integer; got 0"),
    (lambda: _cls("FeaturizeConfig")(projection="dense"), "projection must be a ProjectionConfig or a mapping of its fields; got str"),
    (lambda: _cls("FeaturizeConfig")(projection={"kind": "dense"}), "projection.dim must be a positive integer for kind='dense'; got None"),
    (lambda: _cls("SamplingConfig")(top_p=0.0), "generation.top_p must lie in (0, 1]; got 0.0"),
    (lambda: _cls("SamplingConfig")(temperature="hot"), "generation.temperature must be non-negative; got 'hot'"),
    (lambda: _cls("DiffConfig")(alpha=1.0), "alpha must lie strictly between 0 and 1; got 1.0"),
    (lambda: _cls("DiffConfig")(levels=("paragraph",)), "levels must be a non-empty subset of ('text', 'sentence'); got ('paragraph',)"),
    (lambda: _cls("DiffConfig")(text_clusters={"k_min": 1}), "cluster.k_min must be an integer >= 2; got 1"),
    (lambda: _cls("LoraTrainConfig")(rank=True), "rank must be a positive integer; got True"),
    (lambda: _cls("PlantedConfig")(seed=-1), "seed must be a non-negative integer; got -1"),
    (lambda: _cls("CorpusConfig")(positive_rate=1.5), "corpus.positive_rate must lie in [0, 1]; got 1.5"),
    (lambda: _cls("LMPipelineConfig")(adam_trace="first"), "adam_trace must be one of ('all', 'last'); got 'first'"),
    (lambda: _cls("ModelConfig")(n_head=0), "model.n_head must be a positive integer; got 0"),
    (lambda: _cls("LoopTrainConfig")(replay_fraction=1.0), "train.replay_fraction must lie in [0, 1); got 1.0"),
    (lambda: _cls("LoopGenerationConfig")(temperature=float("nan")), "generation.temperature must be positive; got nan"),
    (lambda: _cls("VariantConfig")(variants=()), "variants must be a non-empty subset of"),
])
def test_more_configs_name_field_rule_and_value(make, message):
    with pytest.raises(InputError) as info:
        make()
    assert str(info.value).startswith(message)


def _cls(name: str) -> type:
    from gradtrace.loop import config as loop_config

    found = {type(c).__name__: type(c) for c in _more_configs().values()}
    return found.get(name) or getattr(loop_config, name)
