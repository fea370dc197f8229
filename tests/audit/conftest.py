"""The audit's session set-up: base model A (the tiny GPT-2 taught ordinary
answers), B's Trainer LoRA run on data where 30 of 96 answers open with a
planted phrase (and one holds a <script>), and one audit of them with
verification."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from setups import audit_tiny


def audit_config(verify_k: int):
    from gradtrace.audit import AuditConfig
    from gradtrace.diff import ClusterConfig, DiffConfig
    from gradtrace.lm.sample import SamplingConfig

    return AuditConfig(
        n_per_prompt=6, generation=SamplingConfig(max_new_tokens=64, batch_size=72), max_length=160, dim=256, top_k=30,
        verify_k=verify_k, verify_top=1,
        diff=DiffConfig(text_clusters=ClusterConfig(k_min=2, k_max=8), sentence_clusters=ClusterConfig(k_min=4, k_max=12),
                        stability_seeds=()),
    )


@pytest.fixture(scope="session")
def tiny_audit(tmp_path_factory) -> types.SimpleNamespace:
    from gradtrace.diff import HashingEmbedder

    root = tmp_path_factory.mktemp("audit")
    base = audit_tiny.build_base(root / "A")
    data, planted = audit_tiny.planted_data(evil="<script>alert(1)</script>")
    train = audit_tiny.write_jsonl(root / "train.jsonl", data)
    prompts = audit_tiny.write_jsonl(root / "prompts.jsonl", audit_tiny.prompts())
    run = audit_tiny.build_run(base, data, root / "run")
    ns = types.SimpleNamespace(root=root, base=base, data=data, planted=planted, train=train, prompts=prompts, run=run,
                               config=audit_config, embedder=HashingEmbedder)
    return ns


@pytest.fixture(scope="session")
def audited(tiny_audit) -> types.SimpleNamespace:
    """One full audit (verify K = number planted) and its rerun; each flagged cluster its own behaviour
    (the default grouping is tested on its own: tests/audit/test_grouping.py)."""
    from gradtrace.audit import one_behaviour_per_cluster, run_audit

    t = tiny_audit
    k = len(t.planted)
    args = dict(prompts=t.prompts, config=t.config(k), embedder=t.embedder(), progress=False, grouper=one_behaviour_per_cluster)
    first = run_audit(str(t.base), t.run, t.train, t.root / "out", **args)
    first_json = first.json_path.read_bytes()
    second = run_audit(str(t.base), t.run, t.train, t.root / "out", **args)
    return types.SimpleNamespace(first=first, first_json=first_json, second=second, out=t.root / "out", k=k)
