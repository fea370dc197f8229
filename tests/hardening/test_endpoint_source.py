"""The diff's endpoint source speaks through gradtrace.http: no API key on a
redirect to another origin, bounded waits set from Python or the command line."""

from __future__ import annotations

import json
from http.server import HTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from gradtrace import http
from gradtrace.cli import app
from gradtrace.diff import sources
from gradtrace.diff.sources import EndpointSource, Prompt, parse_source
from gradtrace.errors import InputError
from gradtrace.http import EndpointError, Timeouts, timeouts_from_options
from gradtrace.lm.sample import SamplingConfig
from http_servers import serve, silent_listener, url

KEY = "sk-secret-123"
GEN = SamplingConfig(max_new_tokens=4, batch_size=2)
QUICK = Timeouts(connect=1.0, read=0.2, deadline=1.0)


def _answer(path: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, json.dumps({"choices": [{"message": {"content": f"answer from {path}"}}]}).encode()


@pytest.fixture
def elsewhere() -> Iterator[HTTPServer]:
    yield from serve(_answer)


def test_endpoint_error_is_one_class() -> None:
    assert sources.EndpointError is http.EndpointError


def test_a_redirect_to_another_origin_never_receives_the_api_key(elsewhere: HTTPServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    target = url(elsewhere)
    for server in serve(lambda path: (302, {"Location": target}, b"")):
        src = EndpointSource(url(server, "/v1"), "m", GEN, retries=0)
        with pytest.raises(EndpointError, match="another origin") as info:
            src.chat([{"role": "user", "content": "hi"}])
        assert KEY not in str(info.value) and "(model 'm')" in str(info.value)
        assert server.seen[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert elsewhere.seen == []


def test_a_same_origin_redirect_is_followed_with_the_key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def reply(path: str):
        return (307, {"Location": "/v2/chat/completions"}, b"") if path.startswith("/v1") else _answer(path)

    for server in serve(reply):
        assert EndpointSource(url(server, "/v1"), "m", GEN).chat([{"role": "user", "content": "hi"}]) == "answer from /v2/chat/completions"
        assert [s["headers"]["Authorization"] for s in server.seen] == [f"Bearer {KEY}"] * 2


def test_an_endpoint_that_never_answers_fails_within_the_deadline_naming_it() -> None:
    with silent_listener() as base:
        src = EndpointSource(base + "/v1", "m", GEN, timeouts=QUICK, retries=1, backoff=0.01)
        with pytest.raises(EndpointError, match="timed out") as info:
            src.sample([Prompt("0", "hi")], 1, seed=0)
        assert f"{base}/v1/chat/completions" in str(info.value) and "(model 'm')" in str(info.value)


def test_an_answer_without_choices_is_an_endpoint_error() -> None:
    for server in serve(lambda path: (200, {}, b'{"error": "quota"}')):
        with pytest.raises(EndpointError, match=r"answered without choices\[0\]\.message\.content.*quota"):
            EndpointSource(url(server, "/v1"), "m", GEN).chat([{"role": "user", "content": "hi"}])


def test_parse_source_passes_the_timeouts() -> None:
    src = parse_source("http://127.0.0.1:9/v1#m", GEN, timeouts=QUICK)
    assert isinstance(src, EndpointSource) and src.timeouts == QUICK
    assert parse_source("http://127.0.0.1:9/v1#m").timeouts == Timeouts()


@pytest.mark.parametrize("timeout,deadline,expected", [
    ("3,20", 50.0, Timeouts(3, 20, 50)), ("5", 9.0, Timeouts(5, 5, 9)), (" 1.5 , 2 ", 4.0, Timeouts(1.5, 2, 4)),
])
def test_timeouts_from_options(timeout: str, deadline: float, expected: Timeouts) -> None:
    assert timeouts_from_options(timeout, deadline) == expected


@pytest.mark.parametrize("timeout,deadline,option", [
    ("x", 1.0, "--endpoint-timeout"), ("1,2,3", 1.0, "--endpoint-timeout"), ("0,5", 1.0, "--endpoint-timeout"),
    ("nan", 1.0, "--endpoint-timeout"), ("1,2", 0.0, "--endpoint-deadline"), ("1,2", float("inf"), "--endpoint-deadline"),
])
def test_bad_timeout_options_name_the_option_and_value(timeout: str, deadline: float, option: str) -> None:
    with pytest.raises(InputError, match=f"{option} must be") as info:
        timeouts_from_options(timeout, deadline)
    assert repr(timeout if option == "--endpoint-timeout" else deadline) in str(info.value)


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": "p1", "prompt": "hi"}) + "\n")
    texts = tmp_path / "a.jsonl"
    texts.write_text("".join(json.dumps({"prompt_id": "p1", "text": f"t{i}"}) + "\n" for i in range(12)))
    return path


def test_diff_command_line_sets_the_endpoint_timeouts(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path)
    with silent_listener() as base:
        r = CliRunner().invoke(app, [
            "diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"{base}/v1#m", "--prompts", str(prompts),
            "--out", str(tmp_path / "out"), "--embedder", "hashing", "--no-progress", "--endpoint-timeout", "1,0.2",
            "--endpoint-deadline", "1",
        ])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"endpoint {base}/v1/chat/completions" in text and "timed out" in text and "read timeout 0.2 s" in text


def test_diff_refuses_a_bad_endpoint_timeout(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path)
    r = CliRunner().invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", "http://127.0.0.1:9/v1#m",
                                 "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--endpoint-timeout", "soon"])
    assert r.exit_code == 2 and "--endpoint-timeout must be CONNECT,READ" in " ".join(r.output.split())
