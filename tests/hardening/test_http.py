"""The endpoint client: no API key on a redirect to another origin, bounded waits."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator

import pytest

from gradtrace.errors import InputError
from gradtrace.http import EndpointError, Timeouts, post_json


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]
    reply: Any

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.server.seen.append({"path": self.path, "headers": dict(self.headers)})  # type: ignore[attr-defined]
        status, headers, body = self.server.reply(self.path)  # type: ignore[attr-defined]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(reply: Any) -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    server.reply = reply  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def elsewhere() -> Iterator[HTTPServer]:
    yield from _serve(lambda path: (200, {}, b'{"stolen": true}'))


def _url(server: HTTPServer, path: str = "/v1/chat/completions") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_a_redirect_to_another_origin_is_refused_and_the_key_never_leaves(elsewhere: HTTPServer) -> None:
    target = _url(elsewhere)
    for server in _serve(lambda path: (302, {"Location": target}, b"")):
        with pytest.raises(EndpointError, match="another origin") as info:
            post_json(_url(server), {"x": 1}, {"Authorization": "Bearer sk-secret-123"}, retries=0)
        assert "sk-secret-123" not in str(info.value)
        assert len(server.seen) == 1 and server.seen[0]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert elsewhere.seen == []


def test_a_same_origin_redirect_is_followed() -> None:
    def reply(path: str) -> tuple[int, dict[str, str], bytes]:
        if path == "/old":
            return 307, {"Location": "/new"}, b""
        return 200, {}, json.dumps({"path": path}).encode()

    for server in _serve(reply):
        assert post_json(_url(server, "/old"), {}, retries=0) == {"path": "/new"}


def test_an_endpoint_that_never_answers_fails_with_the_url_named() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/chat/completions"
    try:
        with pytest.raises(EndpointError, match="timed out") as info:
            post_json(url, {}, timeouts=Timeouts(connect=1.0, read=0.2, deadline=1.0), retries=1, backoff=0.01)
        assert url in str(info.value)
    finally:
        listener.close()


def test_client_errors_are_not_retried_and_server_errors_are() -> None:
    for server in _serve(lambda path: (404, {}, b"")):
        with pytest.raises(EndpointError, match="HTTP 404"):
            post_json(_url(server), {}, retries=3, backoff=0.0)
        assert len(server.seen) == 1
    for server in _serve(lambda path: (503, {}, b"")):
        with pytest.raises(EndpointError, match="HTTP 503"):
            post_json(_url(server), {}, retries=2, backoff=0.0)
        assert len(server.seen) == 3


@pytest.mark.parametrize("field", ["connect", "read", "deadline"])
def test_bad_timeouts_name_the_field(field: str) -> None:
    with pytest.raises(InputError, match=f"timeout {field} must be a positive number"):
        Timeouts(**{field: 0})
