"""The explorer's Flask app and its server.

Security (every text from training data or a model is untrusted):

* Pages are Jinja templates with autoescape on; figures carry their JSON in an
  HTML-escaped attribute (:func:`gradtrace.report.figures.embed`); the page
  script fills panels with ``textContent`` only. A Content-Security-Policy
  allows scripts from this server only (no inline script runs), and no
  framing.
* URLs hold artefact ids and integer positions, never paths: the app serves
  only the artefacts it was started on, and its own static files.
* It binds to 127.0.0.1 by default and refuses any other (non-loopback)
  address unless given a token; a token, once given, is required on every
  request (``Authorization: Bearer``, or ``?token=`` once, which sets an
  HttpOnly cookie and redirects to the URL without it), compared in
  constant time and never logged. Requests whose ``Host`` is not the
  server's own are refused (DNS rebinding).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import math
import threading
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlencode

from ..errors import GradtraceError, InputError
from ..report import figures
from .artefacts import Artefact, BadRequest, NotFound

TOKEN_COOKIE = "gradtrace_token"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
NAV = {"store": (("", "Training set"), ("query", "Query")), "diff": (("", "Diff"),), "loop": (("", "Loop"),),
       "audit": (("", "Behaviours"),), "allocation": (("", "Heatmap"),), "probes": (("", "Probes"),)}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback ``host`` without a token, and an empty or short token."""
    if token is not None and len(token) < 16:
        raise InputError("--token must be at least 16 characters (use a random one: python -c 'import secrets; print(secrets.token_urlsafe())')")
    if not is_loopback(host) and token is None:
        raise InputError(
            f"--host {host!r} is not a loopback address: anyone who can reach it could read the artefacts; "
            "give --token (required then on every request) or bind to 127.0.0.1"
        )


def create_app(artefacts: Sequence[Artefact], token: str | None = None) -> Any:
    """The Flask app over ``artefacts``. ``app.config["GRADTRACE_HOSTS"]``:
    the ``Host`` headers accepted (None, as made here: any; the server sets
    its own names once bound)."""
    try:
        from flask import Flask, Response, abort, redirect, render_template, request
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("flask", "gradtrace serve", "pip install 'gradtrace[explore]'") from None
    from markupsafe import Markup

    here = Path(__file__).parent
    app = Flask(__name__, template_folder=str(here / "templates"), static_folder=str(here / "static"), static_url_path="/static")
    app.config.update(MAX_CONTENT_LENGTH=1 << 20, TEMPLATES_AUTO_RELOAD=False, GRADTRACE_HOSTS=None)
    by_id = {a.id: a for a in artefacts}
    if len(by_id) != len(artefacts):
        raise InputError("artefact ids must be unique")
    secret = token.encode("utf-8") if token is not None else None

    def token_ok(supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode("utf-8"), secret)  # type: ignore[arg-type]

    @app.before_request
    def guard() -> Any:
        hosts = app.config["GRADTRACE_HOSTS"]
        if hosts is not None and request.host.lower() not in hosts:
            return Response("unknown host\n", 400, mimetype="text/plain")
        if secret is None:
            return None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and token_ok(auth[len("Bearer "):]):
            return None
        if token_ok(request.cookies.get(TOKEN_COOKIE)):
            return None
        if token_ok(request.args.get("token")):
            rest = [(k, v) for k, vs in request.args.lists() if k != "token" for v in vs]
            resp = redirect(request.path + ("?" + urlencode(rest) if rest else ""), code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")  # type: ignore[arg-type]
            return resp
        return Response("a token is required (start the session with ?token=...)\n", 401, mimetype="text/plain")

    @app.after_request
    def headers(resp: Any) -> Any:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def artefact(aid: str) -> Artefact:
        if aid not in by_id:
            abort(404)
        return by_id[aid]

    def render(template: str, a: Artefact | None, **ctx: Any) -> str:
        return render_template(template, a=a, artefacts=artefacts, nav=NAV, **ctx)

    def show(a: Artefact, name: str, path_args: Sequence[int]) -> Any:
        args = {k: v for k, v in request.args.items()}
        try:
            template, ctx = a.page(name, args, path_args)
        except NotFound as exc:
            return render("error.html", a, status=404, message=str(exc)), 404
        except (BadRequest, GradtraceError) as exc:
            return render("error.html", a, status=400, message=str(exc)), 400
        return render(template, a, **_markup(ctx, Markup))

    @app.get("/")
    def index() -> Any:
        return render("index.html", None)

    @app.get("/a/<aid>/")
    def main_page(aid: str) -> Any:
        return show(artefact(aid), "", ())

    @app.get("/a/<aid>/p/<name>")
    def named_page(aid: str, name: str) -> Any:
        return show(artefact(aid), name, ())

    @app.get("/a/<aid>/p/<name>/<int:n>")
    def item_page(aid: str, name: str, n: int) -> Any:
        return show(artefact(aid), name, (n,))

    @app.get("/a/<aid>/data/<name>/<int:n>")
    def data(aid: str, name: str, n: int) -> Any:
        a = artefact(aid)
        try:
            return _json_safe(a.data(name, dict(request.args.items()), (n,)))
        except NotFound as exc:
            return {"error": str(exc)}, 404

    @app.get("/assets/plotly.min.js")
    def plotly_js() -> Any:
        return Response(figures.plotly_js(), mimetype="text/javascript")

    @app.get("/assets/boot.js")
    def boot_js() -> Any:
        return Response(figures.BOOT_JS, mimetype="text/javascript")

    @app.errorhandler(404)
    def not_found(_: Any) -> Any:
        return render("error.html", None, status=404, message="not found"), 404

    @app.errorhandler(500)
    def internal(_: Any) -> Any:
        return render("error.html", None, status=500, message="internal error"), 500

    return app


def _markup(ctx: dict[str, Any], markup: Any) -> dict[str, Any]:
    """Figure markup (built by :func:`figures.embed`, already escaped) marked safe for Jinja; everything else as it is."""
    def conv(key: str, value: Any) -> Any:
        if key in ("figure", "map", "cumulative") and isinstance(value, str):
            return markup(value)
        if isinstance(value, dict):
            return {k: conv(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [conv("", v) for v in value]
        return value

    return {k: conv(k, v) for k, v in ctx.items()}


def _json_safe(value: Any) -> Any:
    """NaN and inf as None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclasses.dataclass
class RunningServer:
    """A server started by :func:`start`: its ``url``; :meth:`stop` ends it."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _quiet_handler() -> Any:
    from werkzeug.serving import WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        """Logs nothing: a request line may carry ``?token=``."""

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log(self, *args: Any, **kwargs: Any) -> None:
            pass

    return Quiet


def make_server(artefacts: Sequence[Artefact], host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> Any:
    """A threaded WSGI server bound to ``host:port`` (refused as
    :func:`check_bind` says); ``port`` 0 picks a free one."""
    from werkzeug.serving import make_server as werkzeug_server

    check_bind(host, token)
    app = create_app(artefacts, token)
    try:
        server = werkzeug_server(host, port, app, threaded=True, request_handler=_quiet_handler())
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = server.server_port
    shown = f"[{host}]" if ":" in host else host
    if not _unspecified(host):  # bound to 0.0.0.0 or ::, any name may reach it (the token guards it)
        names = {shown.lower(), "localhost", "127.0.0.1", "[::1]"}
        # a browser leaves the port out of Host when it is the scheme's default
        app.config["GRADTRACE_HOSTS"] = {f"{n}:{bound}" for n in names} | (names if bound == 80 else set())
    return server


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def start(artefacts: Sequence[Artefact], host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> RunningServer:
    """Serve in a background thread (for tests and notebooks)."""
    server = make_server(artefacts, host, port, token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(f"http://{shown}:{server.server_port}", server, thread)
