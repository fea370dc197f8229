"""A minimal OpenAI-compatible chat-completions server for a local model.

``POST /v1/chat/completions`` with ``{"model", "messages", "temperature",
"top_p", "max_tokens", "seed"}`` answers ``{"choices": [{"message": {"role":
"assistant", "content": ...}}], ...}``. Meant for local use and tests (one
request at a time, no authentication); it lets every endpoint-based feature
(sampling, the LLM labeller, the judge) run offline.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Completer = Callable[[list[dict[str, str]], dict[str, Any]], str]


def hf_completer(model: Any, tokenizer: Any) -> Completer:
    """Answers chat messages with a local HF causal LM (seeded sampling)."""
    import torch

    from ..lm.sample import SamplingConfig, sample_chat

    lock = threading.Lock()

    def complete(messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        system = next((m["content"] for m in messages if m.get("role") == "system"), None)
        user = "\n".join(m["content"] for m in messages if m.get("role") == "user")
        config = SamplingConfig(max_new_tokens=int(params.get("max_tokens") or 64), temperature=float(params.get("temperature", 0.8)),
                                  top_p=float(params.get("top_p", 1.0)) or 1.0, batch_size=1, system=system)
        gen = torch.Generator().manual_seed(int(params.get("seed") or 0))
        with lock:
            return sample_chat(model, tokenizer, [user], config, gen)[0]

    return complete


class ChatServer:
    """Serve ``completer`` on ``http://host:port/v1``; use as a context manager."""

    def __init__(self, completer: Completer, model_name: str = "local", host: str = "127.0.0.1", port: int = 0):
        self.completer, self.model_name, self.host, self.port = completer, model_name, host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self._server.server_address[1]}/v1"

    def start(self) -> "ChatServer":
        completer, name = self.completer, self.model_name

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                    messages = body["messages"]
                    if not isinstance(messages, list) or not messages:
                        raise ValueError("messages must be a non-empty list")
                except (ValueError, KeyError) as exc:
                    self._send(400, {"error": {"message": f"bad request: {exc}"}})
                    return
                text = completer(messages, body)
                self._send(200, {
                    "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()), "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                })

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
