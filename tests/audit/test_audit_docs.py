"""docs/audit.md and the README name only options `gradtrace audit` has, and
every option of the command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from gradtrace.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "audit.md"


def _options() -> set[str]:
    command = typer.main.get_command(app).commands["audit"]
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def test_documented_options_exist() -> None:
    options = _options()
    doc = DOC.read_text()
    readme = ROOT / "README.md"
    section = readme.read_text().split("## The audit")[1].split("\n## ")[0]
    for text in (doc, section):
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text))
        assert named and named <= options, sorted(named - options)


def test_main_options_are_documented() -> None:
    doc = DOC.read_text()
    for opt in ("--a", "--run", "--data", "--prompts", "--samples-a", "--samples-b", "--verify", "--verify-top", "--train-config",
                "--as-chat", "--max-length"):
        assert opt in _options() and opt in doc, opt
