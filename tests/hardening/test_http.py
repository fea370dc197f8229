"""The endpoint client: no API key on a redirect to another origin, bounded waits."""

from __future__ import annotations

import json
from http.server import HTTPServer
from typing import Iterator

import pytest

from gradtrace.errors import InputError
from gradtrace.http import EndpointError, Timeouts, post_json
from http_servers import serve, silent_listener, url


@pytest.fixture
def elsewhere() -> Iterator[HTTPServer]:
    yield from serve(lambda path: (200, {}, b'{"stolen": true}'))


def test_a_redirect_to_another_origin_is_refused_and_the_key_never_leaves(elsewhere: HTTPServer) -> None:
    target = url(elsewhere)
    for server in serve(lambda path: (302, {"Location": target}, b"")):
        with pytest.raises(EndpointError, match="another origin") as info:
            post_json(url(server), {"x": 1}, {"Authorization": "Bearer sk-secret-123"}, retries=0)
        assert "sk-secret-123" not in str(info.value)
        assert len(server.seen) == 1 and server.seen[0]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert elsewhere.seen == []


def test_a_same_origin_redirect_is_followed() -> None:
    def reply(path: str) -> tuple[int, dict[str, str], bytes]:
        if path == "/old":
            return 307, {"Location": "/new"}, b""
        return 200, {}, json.dumps({"path": path}).encode()

    for server in serve(reply):
        assert post_json(url(server, "/old"), {}, retries=0) == {"path": "/new"}


def test_an_endpoint_that_never_answers_fails_with_the_url_named() -> None:
    with silent_listener() as base:
        target = base + "/v1/chat/completions"
        with pytest.raises(EndpointError, match="timed out") as info:
            post_json(target, {}, timeouts=Timeouts(connect=1.0, read=0.2, deadline=1.0), retries=1, backoff=0.01)
        assert target in str(info.value)


def test_client_errors_are_not_retried_and_server_errors_are() -> None:
    for server in serve(lambda path: (404, {}, b"")):
        with pytest.raises(EndpointError, match="HTTP 404"):
            post_json(url(server), {}, retries=3, backoff=0.0)
        assert len(server.seen) == 1
    for server in serve(lambda path: (503, {}, b"")):
        with pytest.raises(EndpointError, match="HTTP 503"):
            post_json(url(server), {}, retries=2, backoff=0.0)
        assert len(server.seen) == 3


@pytest.mark.parametrize("field", ["connect", "read", "deadline"])
def test_bad_timeouts_name_the_field(field: str) -> None:
    with pytest.raises(InputError, match=f"timeout {field} must be a positive number"):
        Timeouts(**{field: 0})
