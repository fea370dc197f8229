"""Local HTTP servers for the endpoint tests, on 127.0.0.1 only: one that
records each POST and answers what ``reply(path)`` says, and a listener that
accepts connections and never answers."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Iterator

Reply = Callable[[str], "tuple[int, dict[str, str], bytes]"]


class _Recorder(BaseHTTPRequestHandler):
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


def serve(reply: Reply) -> Iterator[HTTPServer]:
    """Yields a running server (``server.seen``: the requests it got); stops it after."""
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


def url(server: HTTPServer, path: str = "/v1/chat/completions") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT``) of a socket that accepts
    connections (the kernel does) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
