"""What the web server hands out, and to whom: an ASGI middleware in front of Gradio.

- From the output folder only clips, films and pictures are served (`.mp4 .webm .gif .png`), never a
  sidecar, the storyboard, a job record or a job's stored input, however the path is spelled: it is
  resolved (symlinks followed) before the check, and any hidden folder on the way (`.jobs`) is refused.
  Gradio's own allowed/blocked lists stay in force behind this.
- With a login on (`--auth`, `--share`), a caller without a session reaches the login page and its static
  files only; that page no longer carries the API description (Gradio embeds it for everyone).
"""

from __future__ import annotations

import json
import os
import re
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import unquote

from library.layout import SERVED_SUFFIXES

# what a caller without a session may reach: the login page's files, the login itself, and the startup
# call the launcher makes once before anyone signs in
PUBLIC_PREFIXES = ("/assets/", "/static/", "/favicon.ico", "/theme.css", "/manifest.json", "/login",
                   "/gradio_api/login", "/gradio_api/startup-events")  # fmt: skip
API_INFO = re.compile(rb"<script>window\.gradio_api_info = .*?;</script>", re.S)


class Guard:
    def __init__(self, app, output_dir: Path, login: bool):
        self.app = app
        self.output_dir = Path(os.path.realpath(output_dir))
        self.login = login

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        signed_in = not self.login or _signed_in(scope)
        if not signed_in and path not in ("", "/") and not path.startswith(PUBLIC_PREFIXES):
            return await _refuse(send, 401, "Sign in first.")
        if "/file=" in path and not self.may_serve(path.split("/file=", 1)[1]):
            return await _refuse(send, 403, "This file is not served.")
        if not signed_in and path in ("", "/"):
            return await self.app(scope, receive, _without_api_info(send))
        return await self.app(scope, receive, send)

    def may_serve(self, requested: str) -> bool:
        """False for a file of the output folder that is not a clip, a film or a picture."""
        resolved = Path(os.path.realpath(unquote(requested)))
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
