"""torch.distributed: ``torchrun --nproc-per-node 2 -m gradtrace ...`` (gloo)
writes the store a one-process run writes, byte for byte (the digits MLP and
the tiny GPT-2 with LoRA); a killed rank leaves whole shards only and a rerun
finishes the same store; a two-process query prints the one-process query's
results; a rank that fails to set up stops every rank; the merge of the
ranks' top-k lists equals the top-k of the whole score matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.demos.digits import DigitsConfig, make_task as digits_task
from gradtrace.errors import InputError
from gradtrace.execution_dist import launch_environment
from gradtrace.scoring.attributor import _combine_top_k, merge_top_k
from gradtrace.store import GradientStore

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
CONFIG = DigitsConfig(hidden=16, epochs=4, n_checkpoints=2)
KILL = "GRADTRACE_TEST_KILL_RANK1_AFTER_BATCHES"

# The task file of these tests. With KILL set, rank 1 SIGKILLs itself on that
# forward pass (a test hook here, in the user's code: gradtrace has none).
TASK = '''
import dataclasses, os, signal
from gradtrace.demos.digits import DigitsConfig, make_task as digits_task

def make_task():
    spec = digits_task(r"{work}", DigitsConfig(hidden={hidden}, epochs={epochs}, n_checkpoints={n}))
    after = os.environ.get("{kill}")
    if after is None or os.environ.get("RANK") != "1":
        return spec
    make = spec.model

    def model():
        m, calls = make(), [0]

        def hook(*args):
            calls[0] += 1
            if calls[0] > int(after):
                os.kill(os.getpid(), signal.SIGKILL)

        m.register_forward_hook(hook)
        return m

    return dataclasses.replace(spec, model=model)
'''
FEATURIZE = ["--projection", "kronecker", "--dim", "16", "--shard-size", "100", "--batch-size", "50", "--no-progress"]


def torchrun(*args: object, env: dict[str, str] | None = None, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC -m gradtrace ARGS`` (gloo, a free port; one torch thread each)."""
    full_env = {k: v for k, v in os.environ.items() if k != KILL}
    full_env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "--monitor-interval", "0.1", "-m", "gradtrace",
           *[str(a) for a in args]]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits task file (checkpoints trained here, once) and its one-process store."""
    root = tmp_path_factory.mktemp("dist")
    work = root / "run"
    digits_task(work, CONFIG)  # train before the ranks start: they only read the checkpoints
    task = root / "task.py"
    task.write_text(TASK.format(work=work, hidden=CONFIG.hidden, epochs=CONFIG.epochs, n=CONFIG.n_checkpoints, kill=KILL))
    target = f"{task}:make_task"
    r = invoke("featurize", "--task", target, "--out", root / "one", *FEATURIZE)
    assert r.exit_code == 0, r.output
    return root, target


@pytest.mark.slow
def test_two_processes_write_the_one_process_store(digits, h) -> None:
    root, target = digits
    r = torchrun("featurize", "--task", target, "--out", root / "two", *FEATURIZE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("store ") == 1, r.stdout  # rank 0 alone prints
    one, two = h.store_files(root / "one"), h.store_files(root / "two")
    assert two == one  # every shard file, the ids and the manifest, byte for byte
    assert sum(name.endswith(".features.npy") for name in one) == 15 * 2


@pytest.mark.slow
def test_a_killed_rank_leaves_whole_shards_and_a_rerun_finishes(digits, h) -> None:
    root, target = digits
    out = root / "killed"
    r = torchrun("featurize", "--task", target, "--out", out, *FEATURIZE, env={KILL: "3"})
    assert r.returncode != 0  # torchrun saw rank 1 die and stopped rank 0
    store = GradientStore.open(out)
    assert store.missing_shards()  # rank 1 died in its second shard
    # whatever is there is whole and checks out
    assert [p for p in store.verify() if not p.startswith("missing shard")] == []
    r = torchrun("featurize", "--task", target, "--out", out, *FEATURIZE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert h.store_files(out) == h.store_files(root / "one")


@pytest.mark.slow
def test_two_process_query_prints_the_one_process_results(digits) -> None:
    root, target = digits
    args = ["query", root / "one", "--task", target, "--k", "7", "--limit", "5"]
    # the one-process run under the same launcher and thread count: a float32 matmul's last bits depend on the threads
    r1 = torchrun(*args, "--out", root / "q1.jsonl", "--opponents", nproc=1)
    assert r1.returncode == 0, r1.stdout + r1.stderr
    r2 = torchrun(*args, "--out", root / "q2.jsonl", "--opponents")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert (root / "q2.jsonl").read_bytes() == (root / "q1.jsonl").read_bytes()
    assert len((root / "q1.jsonl").read_text().splitlines()) == 35
    assert r2.stdout.count("wrote 35 rows") == 1


@pytest.mark.slow
def test_a_rank_that_fails_to_set_up_stops_every_rank(digits) -> None:
    root, target = digits
    other = [a if a != "16" else "9" for a in FEATURIZE]  # another projection size: the store refuses it
    r = torchrun("featurize", "--task", target, "--out", root / "one", *other)
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "made with other settings" in text and "projection.dim" in text  # rank 0's own error
    assert "rank 0 failed setting up" in text  # rank 1 says whose error stopped it


@pytest.mark.slow
def test_two_processes_featurize_the_tiny_gpt2_lora_run(tmp_path: Path, h) -> None:
    from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
    from gradtrace.models import zoo
    from gradtrace.models.hf import CausalLMTask

    tok = zoo.byte_tokenizer()
    model_dir = tmp_path / "tiny-model"
    make = lambda: zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64)  # noqa: E731
    make().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    examples = [{"prompt": f"Q{i}: is {i} even?", "completion": " yes" if i % 2 == 0 else " no"} for i in range(11)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(dict(e, id=f"ex{i}")) + "\n" for i, e in enumerate(examples)))
    config = LoraTrainConfig(epochs=1, lr=5e-3, batch_size=4, rank=2, target_modules=("c_attn",), n_checkpoints=2)
    train_lora(add_lora(make(), config), CausalLMTask(tok, max_length=48), examples, tmp_path / "run", config, progress=False)
    args = ["featurize", "--hf-model", model_dir, "--checkpoints", tmp_path / "run", "--data", data, "--projection", "kronecker",
            "--dim", "16", "--max-length", "48", "--shard-size", "3", "--batch-size", "2", "--no-progress"]
    r = invoke(*args, "--out", tmp_path / "one")
    assert r.exit_code == 0, r.output
    r = torchrun(*args, "--out", tmp_path / "two")
    assert r.returncode == 0, r.stdout + r.stderr
    assert h.store_files(tmp_path / "two") == h.store_files(tmp_path / "one")


# -- pieces, in this process --------------------------------------------------------

@pytest.mark.parametrize("largest", [True, False])
def test_merging_the_ranks_top_k_equals_the_top_k_of_everything(largest: bool) -> None:
    gen = np.random.default_rng(0)
    scores = gen.integers(-4, 5, size=(6, 57)).astype(np.float32)  # many ties: the lower index must win
    ranges = [(a, min(a + 8, 57)) for a in range(0, 57, 8)]
    k = 9
    for world in (2, 3):
        parts = []
        for rank in range(world):
            best_s, best_i = np.empty((6, 0)), np.empty((6, 0), dtype=np.int64)
            for a, b in ranges[rank::world]:
                best_s, best_i = merge_top_k(best_s, best_i, scores[:, a:b], a, k, largest)
            parts.append((best_s, best_i))
        for order in (parts, parts[::-1]):  # each rank puts its own part first
            got_s, got_i = _combine_top_k(list(order), k, largest)
            want_i = np.stack([np.lexsort((np.arange(57), -row if largest else row))[:k] for row in scores.astype(np.float64)])
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_array_equal(got_s, np.take_along_axis(scores, want_i, 1))


def test_launch_environment() -> None:
    assert launch_environment({}) is None
    assert launch_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert launch_environment({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == (2, 4, 0)
    assert launch_environment({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}) == (5, 8, 1)
    # a batch script's own shell (no srun): one process, whatever the allocation
    assert launch_environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}) is None
    # torchrun's variables win over SLURM's (torchrun inside an allocation)
    assert launch_environment({"WORLD_SIZE": "2", "RANK": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) == (1, 2, 0)
    with pytest.raises(InputError, match="RANK=4 is not a rank of WORLD_SIZE=4"):
        launch_environment({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(InputError, match="must be integers"):
        launch_environment({"WORLD_SIZE": "two", "RANK": "0"})
