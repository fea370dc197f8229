"""What the CLI prints: untrusted ids, tags, paths and messages as plain text
(never terminal escapes, never Rich markup), plain unwrapped output when
stdout is not a terminal, and ``--json``."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradtrace import cli_common
from gradtrace.cli import app
from gradtrace.progress import progress_bar
from gradtrace.store import open_for_writing
from store_builders import fill, settings, write_checkpoint_files

# Each id would do something if it reached the terminal or Rich's markup parser raw.
EVIL = {
    "title": "\x1b]0;pwned\x07",  # sets the terminal's title
    "clear": "\x1b[2J",  # clears the screen
    "link": "[link=https://evil.example]click[/link]",  # a hyperlink
    "close": "a[/]b",  # MarkupError: closing tag with nothing to close
    "bidi": "\u202eevil",  # reorders what the reader sees
    "emoji": ":warning:",  # an emoji code
}
SHOWN = {  # how each is shown instead
    "title": "\\x1b]0;pwned\\x07", "clear": "\\x1b[2J", "link": "[link=https://evil.example]click[/link]", "close": "a[/]b",
    "bidi": "\\u202eevil", "emoji": ":warning:",
}
N = 8


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_safe(text: str) -> None:
    assert "\x1b]" not in text and "\x1b[2J" not in text and "\u202e" not in text and "\x07" not in text
    assert "\u26a0" not in text  # the emoji


@pytest.fixture
def evil_store(tmp_path: Path) -> Path:
    """A store (no model needed) whose ids and tags are the evil strings."""
    ids = [f"{name}-{value}" for name, value in EVIL.items()] + ["plain-6", "plain-7"]
    tags = list(EVIL.values()) + ["t", "t"]

    def prepare(store):
        return store.segments[0] if store.segments else store.add_segment("evil", ids, tags)

    cfg = settings(write_checkpoint_files(tmp_path / "ckpts"))
    root = tmp_path / "store"
    with open_for_writing(root, cfg, prepare=prepare) as session:
        fill(session.store, session.prepared)
    return root


@pytest.fixture(params=["plain", "terminal"])
def mode(request, monkeypatch) -> str:
    """Output off a terminal (the runner's pipe), or as if stdout were one."""
    if request.param == "terminal":
        monkeypatch.setattr(cli_common.Output, "is_terminal", lambda self: True)
        monkeypatch.setenv("COLUMNS", "400")  # so that the terminal table does not fold the ids
    return request.param


def test_self_influence_shows_evil_ids_and_tags_as_text(evil_store: Path, mode: str) -> None:
    r = invoke("self-influence", evil_store, "--top", N)
    assert r.exit_code == 0, r.output
    _assert_safe(r.output)
    for name, shown in SHOWN.items():
        assert f"{name}-{shown}" in r.output


def test_inspect_shows_an_evil_store_path_as_text(evil_store: Path, mode: str) -> None:
    evil_dir = evil_store.parent / "s\x1b[2J[red]y"
    evil_store.rename(evil_dir)
    r = invoke("inspect", evil_dir)
    assert r.exit_code == 0, r.output
    _assert_safe(r.output)
    assert "s\\x1b[2J[red]y" in r.output


@pytest.mark.parametrize("path,shown", [
    ("no[/]store", "no[/]store"), ("[bold]no[/bold]store", "[bold]no[/bold]store"), ("no\x1b]0;x\x07store", "0;x"),
])
def test_the_error_handler_prints_evil_messages_as_text(tmp_path: Path, path: str, shown: str, mode: str) -> None:
    r = invoke("inspect", tmp_path / path)
    assert r.exit_code == 2
    assert "Traceback" not in r.output and "MarkupError" not in r.output
    _assert_safe(r.output)
    assert r.output.startswith("error: ") and shown in r.output and "manifest.json is missing" in r.output


def test_warnings_and_progress_show_markup_as_text(capsys) -> None:
    cli_common.warn("bad [/] id \x1b[2J")
    cli_common.run_or_exit(lambda: warnings.warn("python [/] warning \x1b[2J", UserWarning))
    with progress_bar("unlearn (a[/]b \x1b[2J)", 1, True) as bar:
        bar.advance(1)
        bar.note("note [/] \x1b]0;t\x07")
    err = capsys.readouterr().err
    _assert_safe(err)
    assert "warning: bad [/] id \\x1b[2J" in err and "warning: python [/] warning \\x1b[2J" in err and "unlearn (a[/]b \\x1b[2J)" in err and "note [/] \\x1b]0;t\\x07" in err


# -- plain output off a terminal ----------------------------------------------------------

TASK = '''
import torch
from torch import nn
from gradtrace.checkpoints import CheckpointRef
from gradtrace.spec import TaskSpec
from gradtrace.task import ClassificationTask

HERE = {here!r}
IDS = {ids!r}


def model():
    torch.manual_seed(0)
    return nn.Linear(3, 2).double()


def make_task():
    refs = []
    for i in range(2):
        path = HERE + f"/ckpt_{{i}}.pt"
        torch.manual_seed(10 + i)
        torch.save(nn.Linear(3, 2).double().state_dict(), path)
        refs.append(CheckpointRef(path, 0.1, step=i))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn({n}, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, ({n},), generator=gen)
    return TaskSpec(model=model, task=ClassificationTask(), checkpoints=refs, train=(x, y), queries=(x[:2], y[:2]),
                    train_ids=IDS, train_tags=IDS, query_ids=["q-" + IDS[0], "q-" + IDS[3]])
'''


@pytest.fixture
def task_file(tmp_path: Path) -> str:
    ids = [f"{name}-{value}" for name, value in EVIL.items()] + ["plain-6", "plain-7"]
    path = tmp_path / "task.py"
    path.write_text(textwrap.dedent(TASK.format(here=str(tmp_path), ids=ids, n=N)))
    return f"{path}:make_task"


def _long_path(tmp_path: Path) -> Path:
    """A store path of ~300 characters: longer than any terminal line."""
    return tmp_path.joinpath(*(["a-folder-with-a-long-name-for-testing"] * 7)) / "store"


def test_plain_output_is_never_wrapped_whatever_the_width_or_path(tmp_path: Path, task_file: str, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "20")
    store = _long_path(tmp_path)
    r = invoke("featurize", "--task", task_file, "--out", store, "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"store {store}: {N} examples, 2 checkpoints, feature dim 8, complete=True\n" in r.output
    assert "\x1b[" not in r.output  # no colour codes
    r = invoke("inspect", store)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"gradient store {store}"
    assert lines[1] == "field\tvalue" and f"examples\t{N}" in lines and "shards\t2 of 2 written" in lines
    r = invoke("self-influence", store, "--top", 3)
    lines = r.output.splitlines()
    assert lines[:2] == ["highest self-influence", "rank\ttrain_id\tself_influence\ttag"]
    assert len(lines) == 5 and all(line.count("\t") == 3 for line in lines[1:])


def test_query_shows_evil_ids_as_text(tmp_path: Path, task_file: str, mode: str) -> None:
    store = tmp_path / "store"
    assert invoke("featurize", "--task", task_file, "--out", store, "--no-progress").exit_code == 0
    r = invoke("query", store, "--task", task_file, "--k", N)
    assert r.exit_code == 0, r.output
    _assert_safe(r.output)
    assert f"query q-title-{SHOWN['title']}" in r.output and f"query q-close-{SHOWN['close']}" in r.output
    for name, shown in SHOWN.items():
        assert f"{name}-{shown}" in r.output


# -- --json ----------------------------------------------------------------------------------

def test_json_output_of_featurize_inspect_self_influence_and_query(tmp_path: Path, task_file: str) -> None:
    store = tmp_path / "store"
    r = invoke("featurize", "--task", task_file, "--out", store, "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"store": str(store), "examples": N, "checkpoints": 2, "feature_dim": 8, "complete": True}

    r = invoke("inspect", store, "--verify", "--json")
    data = json.loads(r.stdout)
    assert data["examples"] == N and data["shards_written"] == data["shards"] == 2 and data["problems"] == []
    assert data["projection"]["kind"] == "none" and data["learning_rates"] == [0.1, 0.1]

    r = invoke("self-influence", store, "--top", 3, "--json")
    data = json.loads(r.stdout)
    assert [row["rank"] for row in data["top"]] == [1, 2, 3] and data["examples"] == N
    assert {row["train_id"] for row in data["top"]} <= {f"{k}-{v}" for k, v in EVIL.items()} | {"plain-6", "plain-7"}
    assert "\x1b" not in r.stdout  # JSON escapes control characters (\u001b)

    out = tmp_path / "pro.jsonl"
    r = invoke("query", store, "--task", task_file, "--k", 3, "--json", "--out", out)
    data = json.loads(r.stdout)
    assert data["variant"] == "raw" and data["out"] == str(out) and len(data["records"]) == 2 * 3
    assert data["records"] == [json.loads(line) for line in out.read_text().splitlines()]
    assert data["records"][0]["query"] == "q-" + "title-" + EVIL["title"]


def test_a_progress_note_is_never_broken_mid_sentence(capsys, monkeypatch) -> None:
    from gradtrace.progress import progress_bar

    monkeypatch.setenv("COLUMNS", "40")
    note = "gradtrace: " + " ".join(f"word{i}" for i in range(60))
    with progress_bar("work", 1, True) as bar:
        bar.note(note)
        bar.advance(1)
    assert note in capsys.readouterr().err.splitlines()
