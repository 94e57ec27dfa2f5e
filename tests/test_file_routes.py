"""Every route through which the web server could hand out a file, probed with every spelling of a path.

The routes are the running studio's own (its route list, `/openapi.json`); the routes that serve files are
found by asking each for a clip. Each route is then asked, in each spelling, for a clip (served where the
route serves files), its sidecar, the storyboard, a job record, the signing key and a file outside the
output folder (never served, however spelled: the README's promise)."""

from __future__ import annotations

import http.client
import json
import os
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from gradio_client import Client

from tests.server import ROOT, studio

NETGUARD = Path(__file__).resolve().parent / "netguard"
SECRET_TARGETS = ("sidecar", "storyboard", "job record", "signing key", "outside")


def fetch(url: str, path: str, method: str = "GET") -> tuple[int, bytes]:
    """One request with `path` sent exactly as spelled (urllib would normalise it): (status, body). An event
    stream answers 0 and is not read: events, not a file (Gradio's heartbeat never ends)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        if response.getheader("content-type", "").startswith("text/event-stream"):
            return 0, b""
        return response.status, response.read()
    finally:
        connection.close()


def every_byte_encoded(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


def spellings(path: Path, out: Path, door: Path) -> dict[str, tuple[str, bool]]:
    """Ways to write `path` in a URL: name -> (spelled, whether it still names the file for a server that
    decodes once). `door` is a folder outside `out` that is a symlink to it."""
    inside = path.relative_to(out) if path.is_relative_to(out) else None
    alias = out / f"alias-{path.name.replace('.', '-')}.mp4"  # a clip's name, the target's bytes
    if not alias.is_symlink():
        alias.symlink_to(path)
    spelled = {
        "plain": (quote(str(path)), True),
        "every byte percent-encoded": (every_byte_encoded(str(path)), True),
        "percent-encoded twice": (quote(every_byte_encoded(str(path)), safe=""), False),
        "doubled slashes": ("/" + quote(str(path))[1:].replace("/", "//"), True),
        "a doubled leading slash": ("/" + quote(str(path)), False),  # Gradio takes //tmp for another folder
        "dot segments": (quote(f"{path.parent}/./no-such-folder/../{path.name}"), True),
        "relative to the studio's folder": (quote(os.path.relpath(path, ROOT)), True),
        "a symlink named like a clip": (quote(str(alias)), True),
        "a NUL byte, then .mp4": (quote(str(path)) + "%00.mp4", False),
    }
    if inside is not None:
        spelled["through a symlinked folder"] = (quote(str(door / inside)), True)
    return spelled


def route_paths(template: str, spelled: str) -> str:
    """The route's template with the spelled path as its last parameter (the others get a plain word)."""
    names = re.findall(r"\{[^}]+\}", template)
    last = template.rfind(names[-1])
    head = re.sub(r"\{[^}]+\}", "x", template[:last])
    return head + spelled + template[last + len(names[-1]) :]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A studio (under the network guard) with one clip, a storyboard, a job record and a signing key."""
    from library import Library, Shot

    tmp = tmp_path_factory.mktemp("routes")
    netlog = tmp / "outbound.log"
    guard = {"PYTHONPATH": str(NETGUARD), "WAN_STUDIO_NETLOG": str(netlog)}
    with studio(tmp, env=guard) as s:
        client = Client(s.url, verbose=False)
        clip = Path(client.predict(prompt="a lighthouse at dusk", steps=2, frames=5, api_name="/text_to_video")[2])
        client.close()
        out = s.output_dir.resolve()
        video = next(out.glob("*lighthouse*.mp4"))
        assert video.read_bytes() == clip.read_bytes()
        Library(out).storyboard.append(Shot(clip=video.name))
        (tmp / "door").symlink_to(out)
        outside = tmp / "outside.mp4"
        outside.write_bytes(b"a file outside the output folder, never served by the studio")
        targets = {
            "clip": video,
            "sidecar": video.with_suffix(".json"),
            "storyboard": out / "storyboard.json",
            "job record": next((out / ".jobs").glob("*.json")),
            "signing key": s.home / "keys" / "signer-key.pem",
            "outside": outside,
        }
        assert all(path.is_file() for path in targets.values()), targets
        routes = json.loads(fetch(s.url, "/openapi.json")[1])["paths"]
        yield s, targets, tmp / "door", routes, netlog


def probes(served):
    """(template, method) for each GET or HEAD route of the studio that takes a parameter."""
    for template, operations in sorted(served[3].items()):
        if "{" not in template:
            continue  # no parameter: no path from the caller
        for method in ("get", "head"):
            if method in operations:
                yield template, method.upper()


def test_the_route_list_holds_the_file_routes(served):
    probed = set(probes(served))
    assert {("/gradio_api/file={path_or_url}", "GET"), ("/gradio_api/file={path_or_url}", "HEAD"),
            ("/gradio_api/file/{path}", "GET"), ("/static/{path}", "GET"), ("/assets/{path}", "GET"),
            ("/gradio_api/proxy={url_path}", "GET")} <= probed  # fmt: skip


def test_each_route_serves_a_clip_in_every_spelling_or_nothing(served):
    """The clip is served by the file routes in every spelling that names it; no route errs."""
    s, targets, door, _, _ = served
    clip, out = targets["clip"], s.output_dir.resolve()
    serving = set()
    for template, method in probes(served):
        for name, (spelled, _) in spellings(clip, out, door).items():
            status, body = fetch(s.url, route_paths(template, spelled), method)
            assert status < 500, (template, name, status, body[:200])
            if status == 200 and method == "GET" and body == clip.read_bytes():
                serving.add((template, name))
    file_routes = {"/gradio_api/file={path_or_url}", "/gradio_api/file/{path}"}
    expected = {(t, n) for t in file_routes for n, (_, names_it) in spellings(clip, out, door).items() if names_it}
    assert serving == expected


@pytest.mark.parametrize("target", SECRET_TARGETS)
def test_no_route_hands_out_what_is_not_a_clip_however_spelled(served, target):
    s, targets, door, _, _ = served
    path, out = targets[target], s.output_dir.resolve()
    secret = path.read_bytes()
    for template, method in probes(served):
        for name, (spelled, _) in spellings(path, out, door).items():
            status, body = fetch(s.url, route_paths(template, spelled), method)
            assert status == 0 or 400 <= status < 500, (template, method, name, status)
            assert secret not in body, (template, method, name)
            if template.startswith(("/gradio_api/file=", "/gradio_api/file/")):
                assert status == 403, (template, method, name, status, body[:200])  # one answer for a refusal


def test_a_path_holding_a_nul_byte_is_refused_like_any_other(served):
    s, targets, _, _, _ = served
    clip = quote(str(targets["clip"]))
    for path in (f"/gradio_api/file={clip}%00.mp4", f"/gradio_api/file/{clip}%00.mp4", "/assets/index%00.js",
                 f"/gradio_api/file={quote(str(targets['sidecar']))}%00.mp4"):  # fmt: skip
        assert fetch(s.url, path)[0] == 403, path
    assert fetch(s.url, f"/gradio_api/file={clip}")[0] == 200  # the same clip without it is served


def test_the_server_fetches_nothing_from_beyond_this_machine_for_a_caller(served):
    s, _, _, _, netlog = served
    remote = (
        "/gradio_api/file=http://example.com/clip.mp4",
        "/gradio_api/file=https%3A//example.com/a.png",
        "/gradio_api/file/https://example.com/clip.mp4",
        "/gradio_api/proxy=https://x.hf.space/file=a.mp4",
    )
    for path in remote:
        assert fetch(s.url, path)[0] == 403, path
    assert not netlog.exists(), netlog.read_text()
    loaded = (netlog.parent / (netlog.name + ".loaded")).read_text().split()
    assert str(s.pid) in loaded  # the network guard was watching the studio's process


def test_the_studio_knows_every_route_its_gradio_registers(served):
    """A route the guard does not know is refused with a warning at start-up: today's Gradio has none."""
    log = served[0].log.read_text()
    assert "file guard" not in log, log


def test_a_route_the_guard_does_not_know_is_refused_if_it_takes_a_parameter(tmp_path, capsys):
    """A later Gradio's new route (here one that serves any file it is named) is refused by default."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse
    from starlette.middleware import Middleware
    from starlette.testclient import TestClient

    from studio.guard import Guard

    out = tmp_path / "outputs"
    out.mkdir()
    (out / "clip.json").write_text('{"prompt": "private"}')
    app = FastAPI(middleware=[Middleware(Guard, output_dir=out, login=False)])
    app.add_api_route("/download/{path:path}", lambda path: FileResponse(path))
    app.add_api_route("/hello", lambda: {"hello": "world"})
    with TestClient(app) as client:
        assert client.get("/hello").json() == {"hello": "world"}  # no parameter: nothing to judge
        response = client.get(f"/download/{out}/clip.json")
        assert response.status_code == 403 and "private" not in response.text
    assert "the web route /download/{path} is not one the file guard knows" in capsys.readouterr().err


def test_a_studio_without_a_route_list_refuses_rather_than_guesses():
    import asyncio

    from studio.guard import Guard

    sent = []

    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("reached the app")

    async def send(message):
        sent.append(message)

    guard = Guard(app, Path("."), login=False)
    asyncio.run(guard({"type": "http", "path": "/gradio_api/file=x.json", "headers": []}, None, send))
    assert sent[0]["status"] == 403
