"""Config files and the command line: bad configs name the field; the
shipped example config parses as written; the CLI runs, resumes and reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.errors import InputError
from gradtrace.loop.config import LoopConfig, read_toml

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
out = "run"
rounds = 1
embedder = "hashed"
[data]
train = "{d}/train.jsonl"
heldout = "{d}/heldout.jsonl"
prompts = "{d}/prompts.txt"
probes = "{d}/probes.txt"
[model]
n_layer = 1
n_embd = 32
n_head = 2
[generation]
n_per_prompt = 4
max_new_tokens = 30
[train]
base_steps = 10
steps = 5
checkpoint_every = 5
batch_size = 8
[monitors.nll]
margin = 0.1
[monitors.cka]
[[stop]]
metric = "nll.tail_share"
above = 1.0
"""


@pytest.fixture()
def data_dir(loop_data):
    return str(Path(loop_data.train).parent)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loop.toml"
    path.write_text(text)
    return path


def test_good_config_round_trips(tmp_path, data_dir):
    config, out = read_toml(write(tmp_path, GOOD.format(d=data_dir)))
    assert out == tmp_path / "run"
    assert config.stop[0].above == 1.0 and config.model.n_embd == 32
    assert LoopConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("change, field", [
    (("[monitors.cka]", "[monitors.vibes]"), r"monitors\.vibes: unknown monitor 'vibes'"),
    (("above = 1.0", 'above = "high"'), r"stop\[0\]\.above must be a finite number; got 'high'"),
    (('prompts = "{d}/prompts.txt"', 'prompts = "{d}/no_such_prompts.txt"'), r"data\.prompts: file .*no_such_prompts\.txt.* does not exist"),
    (("margin = 0.1", 'margin = "wide"'), r"monitors\.nll\.margin must be a non-negative number"),
    (("base_steps = 10", "base_steps = 1.5"), r"train\.base_steps must be a non-negative integer; got 1\.5"),
    (("rounds = 1", "rounds = 0"), r"rounds must be a positive integer"),
    (("[model]", "[model]\nkind = \"gpt5\""), r"model\.kind must be one of"),
    (("[train]", "[train]\nregime = \"mix\""), r"train\.regime must be one of"),
    (("n_head = 2", "n_head = 2\nwidth = 3"), r"model: unknown fields \['width'\]"),
])
def test_bad_config_names_the_field(tmp_path, data_dir, change, field):
    old, new = change
    text = GOOD.format(d=data_dir).replace(old.format(d=data_dir), new.format(d=data_dir))
    assert text != GOOD.format(d=data_dir)
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=field):
        read_toml(path)
    result = CliRunner().invoke(app, ["loop", "--config", str(path)])
    assert result.exit_code == 2 and "error:" in result.output


def test_unknown_monitor_in_python_and_curation_kind(loop_data, make_config):
    with pytest.raises(InputError, match="monitors.foo: unknown monitor"):
        make_config(loop_data, monitors={"foo": {}})
    from gradtrace.loop.curation import policy_from_dict

    with pytest.raises(InputError, match=r"curation\[0\]\.kind must be one of"):
        policy_from_dict({"kind": "magic"}, "curation[0]")
    with pytest.raises(InputError, match=r"curation\[1\]: bad fields for kind 'quality'"):
        policy_from_dict({"kind": "quality", "min_wrds": 3}, "curation[1]")


def test_example_config_parses_as_written():
    config, out = read_toml(ROOT / "examples" / "loop.toml")
    assert out == ROOT / "loop_run"
    assert {"nll", "diversity", "clusters", "cka", "attribute"} <= set(config.monitors)


def test_cli_runs_and_resumes(tmp_path, data_dir):
    path = write(tmp_path, GOOD.format(d=data_dir))
    runner = CliRunner()
    result = runner.invoke(app, ["loop", "--config", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "finished 1 round(s) without a stop" in result.output and "tail_share" in result.output
    assert (tmp_path / "run" / "round_001" / "DONE").is_file()
    shutil.rmtree(tmp_path / "run" / "round_001")
    result = runner.invoke(app, ["loop", "--resume", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "round_001" / "DONE").is_file()
    bad = runner.invoke(app, ["loop", "--resume", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "holds no loop run" in " ".join(bad.output.split())
    both = runner.invoke(app, ["loop"])
    assert both.exit_code == 2 and "exactly one of --config" in " ".join(both.output.split())
