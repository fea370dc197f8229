"""A small JSON-over-HTTP client for model endpoints, safe with API keys.

Why not ``urllib.request.urlopen``: it follows redirects and keeps the
``Authorization`` header when the redirect leads to another host, so a key
meant for one server reaches another; and its one ``timeout`` applies to each
socket operation, so an endpoint that accepts connections and then trickles
or never answers can hold a run for minutes without a word.

:func:`post_json` instead

* follows a redirect only to the **same origin** (scheme, host and port), at
  most :data:`MAX_REDIRECTS` times, and refuses any other with an
  :class:`EndpointError` naming both URLs (the request is not re-sent, so no
  header ever leaves for another host);
* has a ``connect`` timeout, a ``read`` timeout (per socket read), and a
  ``deadline`` on the whole call, retries included, so the first error comes
  within a bounded time and names the URL;
* never puts header values (the key) into an error message.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import ssl
import time
import urllib.parse
from typing import Any, Mapping

from .errors import GradtraceError, InputError

MAX_REDIRECTS = 3


class EndpointError(GradtraceError):
    """An endpoint could not be reached or gave no usable answer."""


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds: ``connect`` to open a connection, ``read`` for each socket
    read, ``deadline`` for the whole call including retries and backoff."""

    connect: float = 10.0
    read: float = 60.0
    deadline: float = 300.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"timeout {name} must be a positive number of seconds; got {value!r}")


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, the port made explicit."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"endpoint URL must be http:// or https:// with a host; got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname.lower(), port


def _request_once(url: str, body: bytes, headers: Mapping[str, str], timeouts: Timeouts, budget: float) -> tuple[int, str | None, bytes]:
    """One POST; returns (status, Location header or None, body)."""
    scheme, host, port = origin(url)
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connect = min(timeouts.connect, budget)
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=connect, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=connect)
    try:
        conn.connect()
        if conn.sock is not None:  # from here on, each read waits at most the read timeout
            conn.sock.settimeout(min(timeouts.read, budget))
        conn.request("POST", path, body=body, headers=dict(headers))
        resp = conn.getresponse()
        return resp.status, resp.getheader("Location"), resp.read()
    finally:
        conn.close()


def post_json(
    url: str, payload: Any, headers: Mapping[str, str] | None = None, *,
    timeouts: Timeouts = Timeouts(), retries: int = 2, backoff: float = 0.5,
) -> Any:
    """POST ``payload`` as JSON to ``url`` and return the decoded JSON answer.

    Server errors (5xx), 429 and network errors are retried ``retries``
    times with exponential backoff while the deadline allows; other HTTP
    errors and unreadable answers fail at once. Raises :class:`EndpointError`.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be a non-negative integer; got {retries!r}")
    start = time.monotonic()
    body = json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    last = "no attempt made"
    attempts = 0
    for attempt in range(retries + 1):
        budget = timeouts.deadline - (time.monotonic() - start)
        if budget <= 0:
            break
        attempts += 1
        target = url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                status, location, data = _request_once(target, body, hdrs, timeouts, budget)
                if status in (301, 302, 303, 307, 308) and location:
                    nxt = urllib.parse.urljoin(target, location)
                    if origin(nxt) != origin(url):
                        raise EndpointError(
                            f"endpoint {url} redirected to another origin ({nxt}); refusing to follow it, "
                            "so that no request (or API key) is sent there. Give the final URL instead."
                        )
                    target = nxt
                    continue
                break
            else:
                raise EndpointError(f"endpoint {url}: more than {MAX_REDIRECTS} redirects")
            if status >= 400:
                last = f"HTTP {status}"
                if status < 500 and status != 429:
                    break
            else:
                try:
                    return json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise EndpointError(f"endpoint {url} answered with something that is not JSON: {exc}") from None
        except (socket.timeout, TimeoutError) as exc:
            last = f"timed out ({exc or 'no answer'}; connect timeout {timeouts.connect:g} s, read timeout {timeouts.read:g} s)"
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt < retries:
            pause = backoff * 2**attempt
            if time.monotonic() - start + pause >= timeouts.deadline:
                break
            time.sleep(pause)
    raise EndpointError(
        f"endpoint {url} failed after {attempts} attempt(s) in {time.monotonic() - start:.1f} s: {last}"
    )


def timeouts_from_options(
    timeout: str, deadline: float, timeout_option: str = "--endpoint-timeout", deadline_option: str = "--endpoint-deadline",
) -> Timeouts:
    """:class:`Timeouts` from the command line: ``timeout`` is ``CONNECT,READ``
    (or one number for both) in seconds, ``deadline`` the seconds for a whole
    request. Errors name the option and the value."""
    parts = [p.strip() for p in str(timeout).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(v > 0 and v != float("inf") for v in values):
        raise InputError(f"{timeout_option} must be CONNECT,READ (or one number for both), positive seconds, e.g. 10,60; got {timeout!r}")
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline < float("inf"):
        raise InputError(f"{deadline_option} must be a positive number of seconds; got {deadline!r}")
    return Timeouts(connect=values[0], read=values[-1], deadline=float(deadline))
