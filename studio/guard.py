"""What the web server hands out, and to whom: an ASGI middleware in front of Gradio.

- From the output folder only clips, films and pictures are served (`.mp4 .webm .gif .png`), never a
  sidecar, the storyboard, a job record or a job's stored input, whatever the route and however the path is
  spelled. At start-up every route of the app is read and sorted (`ROUTES`): the routes whose parameter
  names a file on this machine have that parameter judged on its real path (symlinks, `..`, doubled slashes
  and one more level of percent-decoding resolved; any hidden folder on the way, like `.jobs`, refused);
  routes that fetch from beyond this machine are refused; and a route this table does not know, one a
  later Gradio adds, is refused whenever it takes a parameter (a warning names it at start-up). A path
  holding a NUL byte, or a name longer than any file's, is refused like any other. Gradio's own
  allowed/blocked lists stay in force behind this.
- With a login on (`--auth`, `--share`), a caller without a session reaches the login page and its static
  files only; that page no longer carries the API description (Gradio embeds it for everyone).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import unquote

from library.layout import SERVED_SUFFIXES

# what a caller without a session may reach: the login page's files, the login itself, and the startup
# call the launcher makes once before anyone signs in
PUBLIC_PREFIXES = ("/assets/", "/static/", "/favicon.ico", "/theme.css", "/manifest.json", "/login",
                   "/gradio_api/login", "/gradio_api/startup-events")  # fmt: skip
API_INFO = re.compile(rb"<script>window\.gradio_api_info = .*?;</script>", re.S)
NOT_SERVED = "This file is not served."

# Gradio 6's routes that take a parameter, by path template (routes without one take no path from the
# caller). "file": the parameter names a file on this machine, judged by `Guard.may_serve`. "refuse": the
# server would fetch from beyond this machine, which a local studio never needs. "pass": Gradio's own
# package files (joined safely under its folders), streams and events it keeps by id, API names.
FILE, REFUSE, PASS = "file", "refuse", "pass"
ROUTES = {
    "/gradio_api/file={path_or_url}": FILE,
    "/gradio_api/file/{path}": FILE,
    "/gradio_api/proxy={url_path}": REFUSE,
    "/gradio_api/run-history/records/{endpoint}/{record_id}/assets/{asset_id}": REFUSE,
    "/svelte/{path}": PASS,
    "/static/{path}": PASS,
    "/assets/{path}": PASS,
    "/pwa_icon/{size}": PASS,
    "/monitoring/{key}": PASS,
    "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}": PASS,
    "/gradio_api/stream/{event_id}": PASS,
    "/gradio_api/stream/{event_id}/close": PASS,
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist.m3u8": PASS,
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}": PASS,
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist-file": PASS,
    "/gradio_api/heartbeat/{session_hash}": PASS,
    "/gradio_api/api/{api_name}": PASS,
    "/gradio_api/api/{api_name}/": PASS,
    "/gradio_api/run/{api_name}": PASS,
    "/gradio_api/run/{api_name}/": PASS,
    "/gradio_api/call/{api_name}": PASS,
    "/gradio_api/call/{api_name}/": PASS,
    "/gradio_api/call/v2/{api_name}": PASS,
    "/gradio_api/call/v2/{api_name}/": PASS,
    "/gradio_api/call/{api_name}/{event_id}": PASS,
    "/gradio_api/call/v2/{api_name}/{event_id}": PASS,
    # the MCP server (--mcp): its own endpoints (streamable HTTP, SSE, messages, schema) over the same API; a tool
    # argument that is a file may be an https URL, which Gradio downloads, as an API client's handle_file is
    "/gradio_api/mcp/{path}": PASS,
}
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
LONGEST_NAME = 255  # bytes in one file name on Linux and macOS: a longer part names no file (Gradio answered 500)


@dataclass(frozen=True)
class Rule:
    """One route of the app: its template, the pattern its requests match, and the verdict."""

    template: str
    pattern: re.Pattern
    verdict: str


def route_rules(app) -> tuple[list[Rule], list[str]]:
    """Every route of `app` (a Starlette/FastAPI app) sorted by `ROUTES`, and a warning for each route with
    a parameter that the table does not know (refused) or whose path cannot be read."""
    rules, warnings = [], []
    for route in _flat_routes(getattr(app, "routes", [])):
        template, pattern = getattr(route, "path_format", None), getattr(route, "path_regex", None)
        if template is None or pattern is None:
            warnings.append(f"the file guard cannot read the route {route!r}; it is not judged")
            continue
        verdict = ROUTES.get(template, PASS if not getattr(route, "param_convertors", None) else REFUSE)
        if template not in ROUTES and verdict == REFUSE:
            warnings.append(f"the web route {template} is not one the file guard knows, so it is refused")
        rules.append(Rule(template, pattern, verdict))
    return rules, warnings


def _flat_routes(routes):
    """The routes as requests meet them: routers included with a prefix are opened (FastAPI keeps them as
    one entry whose routes carry the prefix)."""
    for route in routes:
        inner = getattr(route, "effective_route_contexts", None)
        if callable(inner):
            yield from _flat_routes(inner())
        else:
            yield route


class Guard:
    def __init__(self, app, output_dir: Path, login: bool):
        self.app = app
        self.output_dir = Path(os.path.realpath(output_dir))
        self.login = login
        self.rules: list[Rule] | None = None  # read from the app at start-up (its first scope); none: refuse all

    async def __call__(self, scope, receive, send):
        if self.rules is None and "app" in scope:
            self.learn_routes(scope["app"])
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        signed_in = not self.login or _signed_in(scope)
        if not signed_in and path not in ("", "/") and not path.startswith(PUBLIC_PREFIXES):
            return await _refuse(send, 401, "Sign in first.")
        if not self.may_request(path, scope.get("root_path", "")):
            return await _refuse(send, 403, NOT_SERVED)
        if not signed_in and path in ("", "/"):
            return await self.app(scope, receive, _without_api_info(send))
        return await self.app(scope, receive, send)

    def learn_routes(self, app) -> None:
        """Sort the app's routes once, when the server starts, and say which ones are refused unknown."""
        self.rules, warnings = route_rules(app)
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def may_request(self, path: str, root_path: str = "") -> bool:
        """False when any route this path can reach refuses it, or when the routes are not known yet. Judged
        on the path with and without the server's root path, since either may be what the router matches."""
        if self.rules is None or "\0" in path or any(len(part.encode()) > LONGEST_NAME for part in path.split("/")):
            return False
        routed = path[len(root_path) :] if root_path and path.startswith(root_path) else path
        return all(self._allows(rule, spelled) for rule in self.rules for spelled in {path, routed})

    def _allows(self, rule: Rule, path: str) -> bool:
        found = rule.pattern.match(path)
        if found is None or rule.verdict == PASS:
            return True
        return rule.verdict == FILE and all(self.may_serve(value) for value in found.groupdict().values())

    def may_serve(self, requested: str) -> bool:
        """False for a file of the output folder that is not a clip, a film or a picture, for a URL (the
        server would fetch it from beyond this machine), and for a path holding a NUL byte. Judged as
        given and decoded once more, since Gradio may decode a level further than the server did."""
        return all(self._may_serve(spelled) for spelled in {requested, unquote(requested)})

    def _may_serve(self, requested: str) -> bool:
        if "\0" in requested or URL.match(requested):
            return False
        resolved = Path(os.path.realpath(requested))
        try:
            inside = resolved.relative_to(self.output_dir)
        except ValueError:
            return True  # not ours to judge: Gradio's own rules decide
        hidden = any(part.startswith(".") for part in inside.parts)
        return not hidden and resolved.suffix.lower() in SERVED_SUFFIXES


def _signed_in(scope) -> bool:
    app = scope.get("app")
    tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
    if not tokens or cookie_id is None:
        return False
    header = b"; ".join(value for name, value in scope.get("headers", []) if name == b"cookie").decode("latin-1")
    cookies = SimpleCookie()
    try:
        cookies.load(header)
    except Exception:
        return False
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        if name in cookies and cookies[name].value in tokens:
            return True
    return False


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _without_api_info(send):
    """Wrap `send` so the login page's HTML goes out without the embedded API description."""
    start: dict = {}
    chunks: list[bytes] = []

    async def filtered(message):
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = API_INFO.sub(b"<script>window.gradio_api_info = {};</script>", b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return filtered
