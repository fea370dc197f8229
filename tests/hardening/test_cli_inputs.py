"""Ordinary mistakes on the command line exit 2 with a message naming the
input (never a traceback), options never silently do nothing, and input files
are checked before a model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gradtrace.fingerprint as fingerprint
from gradtrace.cli import app
from gradtrace.data import read_jsonl_objects
from gradtrace.errors import InputError
from gradtrace.scoring import available_methods
from store_builders import make_store, write_checkpoint_files


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    fingerprint.forget_digests()
    return make_store(tmp_path / "store", write_checkpoint_files(tmp_path / "ckpts")).root


def _assert_exit_2(r, *expected: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for text in expected:
        assert text in flat(r.output), (text, r.output)


# -- where results go -------------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["self-influence", "STORE", "--out", "T/missing_dir/x.jsonl"], "--out 'T/missing_dir/x.jsonl': the folder 'T/missing_dir' does not exist"),
    (["self-influence", "STORE", "--out", "T/a_dir"], "--out 'T/a_dir' is a folder; it must name a file"),
    (["self-influence", "STORE", "--out", "T/a_file/x.jsonl"], "the folder 'T/a_file' is not a folder"),
    (["self-influence", "STORE", "--out", "T/x.csv"], "--out must end in .jsonl or .parquet; got 'x.csv'"),
    (["query", "STORE", "--task", "T/task.py:f", "--out", "T/missing_dir/x.jsonl"], "the folder 'T/missing_dir' does not exist"),
    (["query", "STORE", "--queries", "T/q.jsonl", "--report", "T/missing_dir/r.html"], "--report 'T/missing_dir/r.html': the folder"),
    (["featurize", "--task", "T/task.py:f", "--out", "T/a_file"], "--out 'T/a_file' is a file; it must be a folder"),
    (["featurize", "--task", "T/task.py:f", "--out", "T/a_file/store"], "'T/a_file' is a file, so the folder cannot be created"),
    (["diff", "--a", "jsonl:T/a.jsonl", "--b", "jsonl:T/a.jsonl", "--out", "T/a_file"], "--out 'T/a_file' is a file"),
    (["diff", "--a", "jsonl:T/a.jsonl", "--b", "jsonl:T/a.jsonl", "--cache-dir", "T/a_file"], "--cache-dir 'T/a_file' is a file"),
    (["unlearn", "--out", "T/a_file"], "--out 'T/a_file' is a file"),
    (["validate", "--store", "STORE", "--task", "T/task.py:f", "--train-fn", "T/t.py:f", "--out", "T/a_file"], "--out 'T/a_file' is a file"),
    (["demo", "--out", "T/a_file"], "--out 'T/a_file' is a file"),
])
def test_an_output_path_that_cannot_be_written_is_named_before_any_work(tmp_path: Path, store: Path, argv, expected) -> None:
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    t = str(tmp_path)
    r = invoke(*[str(store) if a == "STORE" else a.replace("T/", t + "/") for a in argv])
    _assert_exit_2(r, expected.replace("T/", t + "/"))


def test_a_write_that_fails_anyway_is_an_error_not_a_traceback(tmp_path: Path, store: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.jsonl"))

    monkeypatch.setattr(Path, "write_text", refuse)
    _assert_exit_2(invoke("self-influence", store, "--out", tmp_path / "x.jsonl"), "PermissionError", "Permission denied", "x.jsonl")


# -- a damaged store: StoreError, exit 2 ----------------------------------------------------------

DAMAGE = {
    "shard record not JSON": (lambda root: (root / "ckpt_000" / "rows_000000000_000000004.json").write_text("{oops"), "is not valid JSON"),
    "manifest a list": (lambda root: (root / "manifest.json").write_text("[1, 2]"), "must hold a JSON object"),
    "ids file deleted": (lambda root: (root / "ids" / "segment_000.json").unlink(), "the store cannot name its examples"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_store_is_exit_2_naming_the_file(store: Path, case: str) -> None:
    damage, expected = DAMAGE[case]
    damage(store)
    _assert_exit_2(invoke("self-influence", store), expected)
    r = invoke("inspect", store, "--verify")
    if case == "manifest a list":
        _assert_exit_2(r, expected)
    else:  # listed among the problems: exit 1
        assert r.exit_code == 1 and expected in flat(r.output) and "Traceback" not in r.output


def test_no_verify_skips_the_checksums(store: Path) -> None:
    path = store / "ckpt_001" / "rows_000000004_000000008.norms.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    _assert_exit_2(invoke("self-influence", store), "checksum")
    r = invoke("self-influence", store, "--no-verify")
    assert r.exit_code == 0, r.output


# -- --variant --------------------------------------------------------------------------------------

def test_variant_help_lists_every_registered_method() -> None:
    r = invoke("query", "--help")
    assert all(name in flat(r.output) for name in available_methods())


@pytest.mark.parametrize("variant,expected", [
    ("bogus", "--variant must be one of raw, cosine, adam, fisher, kfac, ekfac, trackstar; got 'bogus'"),
    ("adam", "--variant adam needs optimizer states"),
    ("trackstar", "--variant trackstar needs optimizer states"),
])
def test_a_variant_the_command_line_cannot_use_is_exit_2(tmp_path: Path, store: Path, variant: str, expected: str) -> None:
    r = invoke("query", store, "--task", tmp_path / "task.py:f", "--variant", variant)
    _assert_exit_2(r, expected)


# -- options that apply only with --queries ------------------------------------------------------------

@pytest.mark.parametrize("flags,named", [
    (["--behaviour", "bogus"], "--behaviour"), (["--report", "r.html"], "--report"), (["--hf-model", "smollm2"], "--hf-model"),
])
def test_queries_only_options_are_refused_with_task(tmp_path: Path, store: Path, flags, named: str) -> None:
    flags = [str(tmp_path / f) if f.endswith(".html") else f for f in flags]
    r = invoke("query", store, "--task", tmp_path / "task.py:f", *flags)
    _assert_exit_2(r, f"{named} apply only with --queries")


def test_task_and_queries_together_are_refused(tmp_path: Path, store: Path) -> None:
    _assert_exit_2(invoke("query", store, "--task", tmp_path / "t.py:f", "--queries", tmp_path / "q.jsonl"), "not both")


# -- data files: named, 1-based lines, checked before the model loads ---------------------------------------

def test_a_non_utf8_line_names_the_file_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "caf\xe9", "completion": "b"}\n')
    with pytest.raises(InputError, match=r"data\.jsonl: line 3 is not UTF-8 text \(byte 0xe9 at column 16\)"):
        read_jsonl_objects(path)


def test_a_bom_and_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"b": "x\xe2\x80\xa8y"}\r\n')  # U+2028 inside a string is one line
    assert read_jsonl_objects(path) == [{"a": 1}, {"b": "x\u2028y"}]


@pytest.mark.parametrize("lines,expected", [
    (['{"prompt": "p", "completion": "c"}', "", '{"completion": "c"}'], "line 3: missing 'prompt'"),
    (['{"prompt": "p", "completion": 3}'], "line 1: 'completion' must be a string; got int"),
    (['{"prompt": "p", "completion": "c"}', b'{"prompt": "\xff"}'], "line 2 is not UTF-8 text"),
    (["[1]"], "line 1 must be a JSON object; got list"),
])
def test_featurize_checks_the_data_before_the_model_or_checkpoints(tmp_path: Path, lines, expected: str) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    # the model and checkpoints do not exist: the data's error comes first
    r = invoke("featurize", "--hf-model", tmp_path / "no_model", "--checkpoints", tmp_path / "no_run", "--data", data,
               "--out", tmp_path / "s")
    _assert_exit_2(r, f"--data '{data}'", expected)


@pytest.mark.parametrize("behaviour,query,expected", [
    ("margin", {"prompt": "p", "chosen": "a"}, "line 2: missing 'rejected'"),
    ("contrast", {"prompt": "p", "completion": "a"}, "line 2: missing 'chosen'"),
    ("logprob", {"prompt": "p", "chosen": "a", "rejected": "b"}, "line 2: missing 'completion'"),
])
def test_queries_are_checked_for_the_fields_their_behaviour_needs(tmp_path: Path, behaviour: str, query, expected: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "hf_spec.json").write_text(json.dumps({"model": str(tmp_path / "no_model"), "checkpoints": str(tmp_path / "no_run")}))
    good = {"prompt": "p", "chosen": "a", "rejected": "b"} if behaviour != "logprob" else {"prompt": "p", "completion": "c"}
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps(good) + "\n" + json.dumps(query) + "\n")
    r = invoke("query", store, "--queries", queries, "--behaviour", behaviour)
    _assert_exit_2(r, f"--queries '{queries}', {expected}", f"--behaviour {behaviour} needs")


NAN_TASK = '''
import torch
from torch import nn
from gradtrace.checkpoints import CheckpointRef
from gradtrace.spec import TaskSpec
from gradtrace.task import ClassificationTask


def model():
    gen = torch.Generator().manual_seed(0)
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.randn(2, 3, generator=gen))
        m.bias.zero_()
    return m


def make_task():
    import pathlib
    here = pathlib.Path(__file__).parent
    torch.save(model().state_dict(), here / "ckpt.pt")
    x = torch.arange(18, dtype=torch.float32).reshape(6, 3) / 10
    x[3, 1] = float("nan")
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    return TaskSpec(model=model, task=ClassificationTask(), checkpoints=[CheckpointRef(str(here / "ckpt.pt"), 0.1)],
                    train=(x, y), train_ids=[f"ex{i}" for i in range(6)])
'''


def test_featurize_on_nonfinite_from_the_command_line(tmp_path: Path) -> None:
    task = tmp_path / "nan_task.py"
    task.write_text(NAN_TASK)
    r = invoke("featurize", "--task", f"{task}:make_task", "--out", tmp_path / "stopped", "--no-progress")
    _assert_exit_2(r, "ex3", "non-finite")
    r = invoke("featurize", "--task", f"{task}:make_task", "--out", tmp_path / "skipped", "--no-progress",
               "--on-nonfinite", "skip", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("self-influence", tmp_path / "skipped", "--json")
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.output
    r = invoke("featurize", "--task", f"{task}:make_task", "--out", tmp_path / "bad", "--on-nonfinite", "ignore")
    _assert_exit_2(r, "on_nonfinite", "ignore")
