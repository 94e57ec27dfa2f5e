"""Adding a LoRA or an upscaler from a link (library/links.py, `app.py add-lora` / `add-upscaler`): files served
on 127.0.0.1 by a small HTTP server of this module (Range, dropped connections, refusals, redirects, tokens) and
by the stand-in hub (tests/fakehub.py, through HF_ENDPOINT). Every refusal is one sentence and leaves nothing
in the folder; a dropped download goes on from where it stopped and ends with the served file's SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import library.links as links
from library.links import LORA, UPSCALER, LinkCancelled, LinkError, LoraPair, download_link, parse_link
from library.lora_folder import LoraFolder
from library.post_models import UpscalerFolder
from pipelines.errors import UserError
from pipelines.loras import LoraError
from pipelines.testmodels import save_lora
from pipelines.upscale import UpscalerError, ensure_test_upscaler
from tests.fakehub import COMMIT, fake_hub

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_secret_test_token_123"


# ---- the files served ------------------------------------------------------------------------------------------


def wan_lora(path: Path, seed: int, width: int = 5120, blocks: int = 2) -> bytes:
    """A real Wan LoRA file (ComfyUI layout) whose blocks are `width` wide: 5120 is Wan2.2 A14B's."""
    g = torch.Generator().manual_seed(seed)
    weights = {(b, "attn1.to_q"): (torch.randn(16, width, generator=g), torch.randn(width, 16, generator=g))
               for b in range(blocks)}  # fmt: skip
    return save_lora(weights, path, "comfyui").read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("made")
    flux = folder / "flux.safetensors"
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072)}, str(flux))
    return {
        "high": wan_lora(folder / "high.safetensors", seed=1),  # about 1.3 MB
        "low": wan_lora(folder / "low.safetensors", seed=2),
        "tiny": wan_lora(folder / "tiny.safetensors", seed=3, width=24),  # the tiny test models' width
        "flux": flux.read_bytes(),
        "upscaler": ensure_test_upscaler().read_bytes(),
        "pickle": b"\x80\x04\x95" + os.urandom(2000),
        "html": b"<!DOCTYPE html><html><body>Log in to download</body></html>" + b" " * 500,
    }


class Site:
    """A web site on 127.0.0.1: `routes[path] = dict(body=..., status=, busy=, drop=, drops=, range=, auth=,
    disposition=, location=, length=, delay=, type=)`; each request is recorded as (path, Range, Authorization)."""

    def __init__(self) -> None:
        self.routes: dict[str, dict] = {}
        self.requests: list[tuple[str, str | None, str | None]] = []
        self.sent = 0  # body bytes sent, all requests
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                site.requests.append((path, self.headers.get("Range"), self.headers.get("Authorization")))
                route = site.routes.get(path)
                if route is None:
                    return self._status(404)
                if route.get("auth") and self.headers.get("Authorization") != f"Bearer {route['auth']}":
                    return self._status(401)
                if "status" in route:
                    return self._status(route["status"])
                if route.pop("busy", None):  # once: a 503, as a busy server
                    return self._status(503)
                if "location" in route:
                    self.send_response(302)
                    self.send_header("Location", route["location"])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self._body(route)

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _body(self, route: dict) -> None:
                data = route["body"]
                first = 0
                spec = self.headers.get("Range") or ""
                if route.get("range", True) and spec.startswith("bytes="):
                    first = int(spec[6:].split("-")[0])
                self.send_response(206 if first else 200)
                self.send_header("Content-Type", route.get("type", "application/octet-stream"))
                if first:
                    self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
                if route.get("length", True):
                    self.send_header("Content-Length", str(len(data) - first))
                else:
                    self.close_connection = True  # the body ends when the connection does
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                if route.get("disposition"):
                    self.send_header("Content-Disposition", f'attachment; filename="{route["disposition"]}"')
                self.end_headers()
                drop = route["drops"].pop(0) if route.get("drops") else route.pop("drop", None)  # each once
                for start in range(first, len(data), 64 * 1024):
                    if drop is not None and start >= len(data) * drop:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)  # mid-body, as a dropped connection
                        return
                    block = data[start : start + 64 * 1024]
                    self.wfile.write(block)
                    site.sent += len(block)
                    if route.get("delay"):
                        time.sleep(route["delay"])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def serve(self, path: str, body: bytes, **options) -> str:
        self.routes[path] = {"body": body, **options}
        return self.url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_site():
    site = Site()
    try:
        yield site
    finally:
        site.close()


@pytest.fixture
def site():
    with running_site() as s:
        yield s


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(links, "RETRY_WAIT_S", 0.01)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    monkeypatch.setattr(links, "_saved_hub_token", lambda: "")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and len(message) < 400


def refused(call, error=UserError) -> str:
    with pytest.raises(error) as err:
        call()
    assert one_sentence(str(err.value)), str(err.value)
    return str(err.value)


# ---- parsing ---------------------------------------------------------------------------------------------------


def test_the_link_forms_that_are_accepted():
    hub = parse_link("owner/repo/loras/style.safetensors")
    assert (hub.site, hub.repo, hub.revision, hub.path) == ("hub", "owner/repo", "main", "loras/style.safetensors")
    assert hub.canonical == "https://huggingface.co/owner/repo/resolve/main/loras/style.safetensors"
    assert hub.token_variable == "HF_TOKEN"
    pinned = parse_link("owner/repo@v1.0/style.safetensors")
    assert (pinned.repo, pinned.revision, pinned.path) == ("owner/repo", "v1.0", "style.safetensors")
    for url in ("https://huggingface.co/owner/repo/resolve/abc123/dir/style.safetensors?download=true",
                "https://huggingface.co/owner/repo/blob/abc123/dir/style.safetensors",
                "https://hf.co/owner/repo/resolve/abc123/dir/style.safetensors",
                "huggingface.co/owner/repo/blob/abc123/dir/style.safetensors"):  # fmt: skip
        link = parse_link(url)
        assert (link.site, link.repo, link.revision) == ("hub", "owner/repo", "abc123")
        assert link.path == "dir/style.safetensors"
    pr = parse_link("https://huggingface.co/owner/repo/resolve/refs/pr/3/style.safetensors")
    assert (pr.revision, pr.path) == ("refs/pr/3", "style.safetensors")
    civitai = parse_link("https://civitai.com/api/download/models/12345?type=Model&format=SafeTensor&token=abc")
    assert civitai.site == "civitai" and civitai.filename is None and civitai.token_variable == "CIVITAI_API_TOKEN"
    assert "token" not in civitai.canonical and "format=SafeTensor" in civitai.canonical  # never recorded
    web = parse_link("https://user:pw@example.com/files/style.safetensors")
    assert web.site == "web" and web.filename == "style.safetensors" and "pw" not in web.canonical
    assert parse_link("owner/repo/x2.pth", UPSCALER).filename == "x2.pth"  # upscalers take .pth/.pt/.ckpt too
    assert parse_link("http://127.0.0.1:8000/a.safetensors").site == "web"  # plain http on this machine only


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "Give a link to a LoRA file"),
    ("http://example.com/style.safetensors", "Plain http:// links can be altered"),
    ("file:///home/me/style.safetensors", "'file://' links are not downloaded"),
    ("ftp://example.com/style.safetensors", "'ftp://' links are not downloaded"),
    ("/home/me/style.safetensors", "is a file on this machine, not a link"),
    ("owner/repo/style.ckpt", "'style.ckpt' is not a .safetensors file: LoRAs are added from .safetensors files only"),
    ("owner/repo/model.bin", "'model.bin' is not a .safetensors file"),
    ("https://huggingface.co/owner/repo/resolve/main/pytorch_lora.bin", "'pytorch_lora.bin' is not a .safetensors"),
    ("https://example.com/pack.zip", "'pack.zip' is not a .safetensors file"),
    ("https://huggingface.co/owner/repo", "shows the repository owner/repo, not a file"),
    ("https://huggingface.co/owner/repo/tree/main/loras", "shows a folder of owner/repo, not a file"),
    ("https://huggingface.co/datasets/owner/repo/resolve/main/x.safetensors", "not a model repository"),
    ("https://civitai.com/models/12345/some-style", "a CivitAI model page, not a download link"),
    ("just-a-name.safetensors", "is not a link"),
    ("owner/repo/../secret.safetensors", "is not a file path of a repository"),
])  # fmt: skip
def test_anything_else_is_refused_in_one_sentence(text, fragment):
    assert fragment in refused(lambda: parse_link(text), LinkError)


def test_an_upscaler_link_refuses_other_files():
    assert "'notes.txt' is not an upscaler file" in refused(lambda: parse_link("owner/repo/notes.txt", UPSCALER))


# ---- downloading from a web site -------------------------------------------------------------------------------


def test_a_lora_is_downloaded_with_progress_checked_and_kept_with_its_source(site, files, tmp_path):
    url = site.serve("/dl/style.safetensors", files["high"])
    events = []
    folder = tmp_path / "loras"
    added = download_link(url, LORA, folder, lambda f, m: events.append((f, m)))
    assert (added.name, added.reused) == ("style.safetensors", False)
    assert (folder / "style.safetensors").read_bytes() == files["high"]
    assert listing(folder) == ["style.safetensors", "style.safetensors.source.json"]
    record = json.loads((folder / "style.safetensors.source.json").read_text())
    assert record["link"] == url and record["sha256"] == sha(files["high"]) and record["size"] == len(files["high"])
    assert record["added"].endswith("+00:00")
    assert LoraFolder(folder).source_of("style.safetensors") == record
    assert LoraFolder(folder).source_of("../style.safetensors") is None
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    downloading = [m for _, m in events if m.startswith("Downloading style.safetensors")]
    assert downloading and all(" of 1.3 MB, " in m and "MB/s" in m for m in downloading), downloading

    # the same file again, from another address and name: the one already there is used
    again = site.serve("/mirror/copy.safetensors", files["high"])
    assert download_link(again, LORA, folder).name == "style.safetensors"
    assert listing(folder) == ["style.safetensors", "style.safetensors.source.json"]
    # another file of the same name: kept beside it, never overwriting
    other = site.serve("/other/style.safetensors", files["low"])
    assert LoraFolder(folder).add_from_link(other) == "style-2.safetensors"
    assert LoraFolder(folder).source_of("style-2.safetensors")["link"] == other


def test_a_dropped_connection_is_resumed_with_a_range_request(site, files, tmp_path):
    url = site.serve("/style.safetensors", files["high"], drop=0.5)
    events = []
    added = download_link(url, LORA, tmp_path, lambda f, m: events.append(m))
    assert sha(added.path.read_bytes()) == sha(files["high"]) == added.sha256
    ranges = [r for _, r, _ in site.requests]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(files["high"]) // 2 + 64 * 1024
    assert site.sent == len(files["high"])  # not a byte sent twice: continued, not started again
    assert any("trying again" in m for m in events)
    assert listing(tmp_path) == ["style.safetensors", "style.safetensors.source.json"]


def test_tries_that_bring_bytes_do_not_count_against_the_limit(site, files, tmp_path, monkeypatch):
    monkeypatch.setattr(links, "ATTEMPTS", 2)
    url = site.serve("/style.safetensors", files["high"], drops=[0.3, 0.6, 0.9])
    added = download_link(url, LORA, tmp_path)
    assert added.sha256 == sha(files["high"]) and site.sent == len(files["high"])
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for _, r, _ in site.requests[1:]]
    assert len(starts) == 3 and starts == sorted(starts) and starts[0] > 0


def test_a_busy_server_is_asked_again(site, files, tmp_path):
    url = site.serve("/style.safetensors", files["high"], busy=True)
    events = []
    added = download_link(url, LORA, tmp_path, lambda f, m: events.append(m))
    assert added.sha256 == sha(files["high"]) and len(site.requests) == 2
    assert any(m.startswith("The download stopped (HTTP 503); trying again") for m in events), events


def test_a_site_that_ignores_the_range_is_downloaded_again_from_the_start(site, files, tmp_path):
    url = site.serve("/style.safetensors", files["high"], drop=0.5, range=False)
    added = download_link(url, LORA, tmp_path)
    assert added.sha256 == sha(files["high"]) and added.path.read_bytes() == files["high"]


@pytest.mark.parametrize(("route", "fragment"), [
    ({"status": 404}, "Nothing is at that link (HTTP 404): check it."),
    ({"status": 401}, "The site refused the download (HTTP 401): the link needs a login or has expired."),
    ({"status": 403}, "(HTTP 403)"),
])  # fmt: skip
def test_refusals_of_the_site_leave_nothing_behind(site, files, tmp_path, route, fragment):
    url = site.serve("/style.safetensors", files["high"], **route)
    assert fragment in refused(lambda: download_link(url, LORA, tmp_path), LinkError)
    assert listing(tmp_path) == []
    assert len(site.requests) == 1  # a refusal is not retried


def test_a_file_past_the_size_limit_is_refused_by_its_length_or_as_it_arrives(site, files, tmp_path, monkeypatch):
    url = site.serve("/style.safetensors", files["high"])
    read = links._Download._read
    reads = []
    monkeypatch.setattr(links._Download, "_read", lambda self, response: reads.append(1) or read(self, response))
    message = refused(lambda: download_link(url, LORA, tmp_path, max_bytes=1_000_000), LinkError)
    assert message == "The file at that link is 1.3 MB, more than the 1.0 MB a LoRA may have."
    assert reads == [] and listing(tmp_path) == []  # refused from the headers, before the body
    unsized = site.serve("/unsized.safetensors", files["high"], length=False)
    message = refused(lambda: download_link(unsized, LORA, tmp_path, max_bytes=1_000_000), LinkError)
    assert message == "The download passed the 1.0 MB a LoRA may have, so it was stopped."
    assert listing(tmp_path) == []
    assert links.kind_of(LORA).max_bytes == 2 * 1024**3 and links.kind_of(UPSCALER).max_bytes == 1024**3


@pytest.mark.parametrize(("name", "body", "options", "fragment"), [
    ("html", "html", {"type": "text/html"}, "The link gave a web page instead of a LoRA file."),
    ("html", "html", {}, "The link gave a web page instead of a LoRA file."),
    ("pickle", "pickle", {}, "'style.safetensors' at that link is not a .safetensors file: its first bytes"),
    ("zip", "high", {"disposition": "pack.zip"}, "'pack.zip' is not a .safetensors file"),
])  # fmt: skip
def test_a_file_that_is_not_safetensors_is_refused_from_its_first_bytes(site, files, tmp_path, name, body,
                                                                        options, fragment):  # fmt: skip
    url = site.serve("/style.safetensors", files[body], **options)
    assert fragment in refused(lambda: download_link(url, LORA, tmp_path), LinkError)
    assert listing(tmp_path) == []


def test_a_lora_for_another_model_is_refused_by_its_own_name_before_it_is_kept(site, files, tmp_path):
    url = site.serve("/flux-style.safetensors", files["flux"])
    message = refused(lambda: download_link(url, LORA, tmp_path), LoraError)
    assert message.startswith("'flux-style.safetensors' is not a Wan LoRA: its keys look like 'transformer.single_")
    assert listing(tmp_path) == []


def test_a_token_goes_to_its_own_site_only_and_is_never_recorded(site, files, tmp_path, monkeypatch):
    with running_site() as cdn:
        final = cdn.serve("/blob/abc", files["high"], disposition="style.safetensors")
        site.serve("/owner/private/resolve/main/style.safetensors", b"", auth=TOKEN, location=final)
        monkeypatch.setenv("HF_ENDPOINT", site.url)
        message = refused(lambda: download_link("owner/private/style.safetensors", LORA, tmp_path), LinkError)
        assert "owner/private is private, gated or does not exist" in message and "set HF_TOKEN" in message
        assert listing(tmp_path) == []
        monkeypatch.setenv("HF_TOKEN", "a-wrong-token")
        message = refused(lambda: download_link("owner/private/style.safetensors", LORA, tmp_path), LinkError)
        assert "with the token given (HTTP 401): check that the token in HF_TOKEN is valid" in message
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        events = []
        added = download_link("owner/private/style.safetensors", LORA, tmp_path, lambda f, m: events.append(m))
        assert added.sha256 == sha(files["high"])
        assert site.requests[-1][2] == f"Bearer {TOKEN}"
        assert cdn.requests == [("/blob/abc", None, None)]  # the redirect's other host never sees the token
    text = (tmp_path / "style.safetensors.source.json").read_text()
    assert TOKEN not in text and not any(TOKEN in m for m in events)
    assert json.loads(text)["link"] == "https://huggingface.co/owner/private/resolve/main/style.safetensors"


def test_civitai_refusals_name_its_token_variable():
    link = parse_link("https://civitai.com/api/download/models/12345")
    assert str(links._refusal(link, 401, None, False)) == (
        "CivitAI refused the download (HTTP 401): the file needs an access token; set CIVITAI_API_TOKEN and try again."
    )


def test_a_cancelled_download_leaves_nothing(site, files, tmp_path):
    url = site.serve("/style.safetensors", files["high"], delay=0.05)
    cancel = threading.Event()
    seen = []

    def progress(fraction: float, message: str) -> None:
        seen.append(message)
        if "left" in message:  # once it can tell the time left
            cancel.set()

    with pytest.raises(LinkCancelled):
        download_link(url, LORA, tmp_path, progress, cancel)
    shape = r"Downloading style\.safetensors: [\d.]+ MB of 1\.3 MB, [\d.]+ MB/s, about \d+ s left"
    assert re.fullmatch(shape, seen[-1]), seen[-1]
    assert listing(tmp_path) == []


def test_offline_nothing_is_asked(site, files, tmp_path):
    url = site.serve("/style.safetensors", files["high"])
    assert "offline mode is on" in refused(lambda: download_link(url, LORA, tmp_path, offline=True), LinkError)
    assert site.requests == [] and listing(tmp_path) == []


# ---- upscalers -------------------------------------------------------------------------------------------------


def test_an_upscaler_is_named_by_content_disposition_and_checked_by_spandrel(site, files, tmp_path):
    folder = UpscalerFolder(tmp_path / "upscalers")
    url = site.serve("/api/download/models/777", files["upscaler"], disposition="compact-x2.safetensors")
    assert folder.add_from_link(url) == "compact-x2.safetensors"
    assert folder.names() == ["compact-x2.safetensors"]
    assert folder.source_of("compact-x2.safetensors")["sha256"] == sha(files["upscaler"])
    # no name anywhere: the first bytes say it is a safetensors file
    unnamed = site.serve("/api/download/models/778", files["upscaler"][:-4] + b"    ")
    assert UpscalerFolder(tmp_path / "other").add_from_link(unnamed) == "778.safetensors"
    # a LoRA is no upscaler: refused by its name, nothing kept
    lora = site.serve("/files/style.safetensors", files["high"])
    message = refused(lambda: folder.add_from_link(lora), UpscalerError)
    assert message.startswith("'style.safetensors' is not an upscaler spandrel recognises")
    assert listing(folder.root) == ["compact-x2.safetensors", "compact-x2.safetensors.source.json"]


# ---- the Hub (the stand-in hub, through HF_ENDPOINT) -----------------------------------------------------------


def test_hub_files_come_from_hf_endpoint_in_both_forms_and_a_drop_is_resumed(files, tmp_path, monkeypatch):
    served = tmp_path / "repo"
    (served / "loras").mkdir(parents=True)
    (served / "loras" / "style-high.safetensors").write_bytes(files["high"])
    (served / "upscaler.safetensors").write_bytes(files["upscaler"])
    seen: list = []
    with fake_hub("someone/wan-loras", served, chunk=32 * 1024, delay_s=0, faults=("drop",), requests=seen) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub)
        folder = LoraFolder(tmp_path / "loras")
        assert folder.add_from_link("someone/wan-loras/loras/style-high.safetensors") == "style-high.safetensors"
        gets = [(path, rng) for method, path, rng in seen if method == "GET"]
        assert [p for p, _ in gets] == ["/someone/wan-loras/resolve/main/loras/style-high.safetensors"] * 2
        assert gets[0][1] is None and gets[1][1].startswith("bytes=") and gets[1][1] != "bytes=0-"  # resumed
        record = folder.source_of("style-high.safetensors")
        assert record["sha256"] == sha(files["high"]) and record["commit"] == COMMIT
        assert record["link"] == "https://huggingface.co/someone/wan-loras/resolve/main/loras/style-high.safetensors"

        upscalers = UpscalerFolder(tmp_path / "upscalers")
        url = f"https://huggingface.co/someone/wan-loras/resolve/{COMMIT}/upscaler.safetensors"
        assert upscalers.add_from_link(url) == "upscaler.safetensors"
        assert seen[-1][1] == f"/someone/wan-loras/resolve/{COMMIT}/upscaler.safetensors"

        missing = "https://huggingface.co/someone/wan-loras/blob/main/gone.safetensors"
        message = refused(lambda: folder.add_from_link(missing), LinkError)
        assert message == ("The Hugging Face Hub has no file 'gone.safetensors' in someone/wan-loras at 'main' "
                           "(HTTP 404): check the link.")  # fmt: skip
    assert listing(folder.root) == ["style-high.safetensors", "style-high.safetensors.source.json"]


def test_a_hub_that_never_answers_times_out(files, tmp_path, monkeypatch):
    served = tmp_path / "repo"
    served.mkdir()
    (served / "style.safetensors").write_bytes(files["high"])
    monkeypatch.setattr(links, "ATTEMPTS", 2)
    with fake_hub("someone/slow", served, faults=("hang",)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub)
        started = time.monotonic()
        message = refused(lambda: download_link("someone/slow/style.safetensors", LORA, tmp_path / "l",
                                                timeout_s=0.3), LinkError)  # fmt: skip
        assert time.monotonic() - started < 5
    assert message == ("The download from someone/slow failed 2 times (the download stopped (no answer for 0.3 s)); "
                       "try again later.")  # fmt: skip
    assert listing(tmp_path / "l") == []


# ---- A14B pairs ------------------------------------------------------------------------------------------------


def test_a_high_low_pair_is_kept_together_and_listed_as_one_choice(site, files, tmp_path):
    folder = LoraFolder(tmp_path / "loras")
    high = site.serve("/wan22-style-high.safetensors", files["high"])
    low = site.serve("/wan22-style-low.safetensors", files["low"])
    events = []
    names = folder.add_pair(high, low, on_progress=lambda f, m: events.append((f, m)))
    assert names == ("wan22-style-high.safetensors", "wan22-style-low.safetensors")
    pair = {"high": names[0], "low": names[1]}
    assert folder.source_of(names[0])["pair"] == pair == folder.source_of(names[1])["pair"]
    assert folder.source_of(names[1])["sha256"] == sha(files["low"])
    assert folder.pairs() == [LoraPair(*names)]
    assert folder.pairs()[0].label == "wan22-style-high.safetensors + wan22-style-low.safetensors (high/low pair)"
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("High-noise LoRA: Downloading") for _, m in events)
    assert any(m.startswith("Low-noise LoRA: Downloading") for _, m in events)
    (folder.root / names[1]).unlink()  # a pair missing a file is no choice
    assert folder.pairs() == []


@pytest.mark.parametrize(("low", "error", "fragment"), [
    ("flux", LoraError, "'wan22-style-low.safetensors' is not a Wan LoRA"),
    ("missing", LinkError, "Nothing is at that link (HTTP 404)"),
    ("high", LinkError, "The high-noise and low-noise links give the same file"),
    ("tiny", LinkError, "are not a pair: one was made for Wan2.2 A14B / Wan2.1 14B, the other for the tiny"),
])  # fmt: skip
def test_a_pair_is_kept_whole_or_not_at_all(site, files, tmp_path, low, error, fragment):
    folder = LoraFolder(tmp_path / "loras")
    high = site.serve("/wan22-style-high.safetensors", files["high"])
    low_url = site.serve("/wan22-style-low.safetensors", files[low]) if low != "missing" else site.url + "/nothing"
    assert fragment in refused(lambda: folder.add_pair(high, low_url), error)
    assert listing(folder.root) == []


def test_a_pair_for_a_single_expert_model_is_refused(site, files, tmp_path):
    folder = LoraFolder(tmp_path / "loras")
    with running_site() as other:
        tiny_b = wan_lora(tmp_path / "b.safetensors", seed=9, width=24)
        high = site.serve("/a.safetensors", files["tiny"])
        low = other.serve("/b.safetensors", tiny_b)
        message = refused(lambda: folder.add_pair(high, low), LinkError)
    assert "A high/low pair is for the Wan2.2 A14B models" in message
    assert listing(folder.root) == []


def test_a_pair_reusing_a_file_already_there_records_the_pairing_and_undoes_it_on_refusal(site, files, tmp_path):
    folder = LoraFolder(tmp_path / "loras")
    high = site.serve("/wan22-style-high.safetensors", files["high"])
    assert folder.add_from_link(high) == "wan22-style-high.safetensors"
    before = folder.source_of("wan22-style-high.safetensors")
    flux = site.serve("/flux.safetensors", files["flux"])
    refused(lambda: folder.add_pair(high, flux), LoraError)
    assert folder.source_of("wan22-style-high.safetensors") == before  # untouched
    low = site.serve("/wan22-style-low.safetensors", files["low"])
    assert folder.add_pair(high, low) == ("wan22-style-high.safetensors", "wan22-style-low.safetensors")
    assert folder.source_of("wan22-style-high.safetensors")["added"] == before["added"]
    assert folder.pairs() == [LoraPair("wan22-style-high.safetensors", "wan22-style-low.safetensors")]


def test_a_pair_whose_second_file_cannot_be_kept_keeps_neither(site, files, tmp_path, monkeypatch):
    folder = LoraFolder(tmp_path / "loras")
    reused = site.serve("/already.safetensors", files["high"])
    assert folder.add_from_link(reused) == "already.safetensors"
    before = folder.source_of("already.safetensors")
    keep = links.keep_fetched

    def failing(fetched, dest, extra=None):
        if fetched.sha256 == sha(files["low"]):
            raise LinkError("The disk failed.")
        return keep(fetched, dest, extra)

    monkeypatch.setattr(links, "keep_fetched", failing)
    low = site.serve("/wan22-style-low.safetensors", files["low"])
    for high in (reused, site.serve("/tiny-as-high.safetensors", files["high"][:-4] + b"    ")):
        refused(lambda high=high: folder.add_pair(high, low), LinkError)
        assert listing(folder.root) == ["already.safetensors", "already.safetensors.source.json"]
        assert folder.source_of("already.safetensors") == before


def test_a_redirect_away_from_https_is_not_followed(site, files, tmp_path):
    url = site.serve("/style.safetensors", b"", location="http://example.com/style.safetensors")
    assert "not https://" in refused(lambda: download_link(url, LORA, tmp_path), LinkError)
    assert listing(tmp_path) == []


# ---- the command line ------------------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from app import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_commands_exit_codes_and_output(site, files, tmp_path, capsys):
    loras, upscalers = str(tmp_path / "loras"), str(tmp_path / "upscalers")
    url = site.serve("/style.safetensors", files["high"])
    code, out, err = run_cli(capsys, "add-lora", url, "--lora-dir", loras)
    assert code == 0 and out.splitlines()[-1] == "style.safetensors", err
    assert "download" in err  # the bar

    high = site.serve("/p-high.safetensors", files["high"])
    low = site.serve("/p-low.safetensors", files["low"])
    code, out, err = run_cli(capsys, "add-lora", high, low, "--lora-dir", loras)
    assert code == 0 and out.splitlines() == ["style.safetensors", "p-low.safetensors"], err  # the same file reused
    assert LoraFolder(loras).pairs() == [LoraPair("style.safetensors", "p-low.safetensors")]

    up = site.serve("/x2.safetensors", files["upscaler"])
    code, out, err = run_cli(capsys, "add-upscaler", up, "--upscaler-dir", upscalers)
    assert code == 0 and out.splitlines()[-1] == "x2.safetensors", err

    before = listing(Path(loras))
    for argv, expected, fragment in (
        (["add-lora", "owner/repo/style.ckpt"], 2, "error: 'style.ckpt' is not a .safetensors file"),
        (["add-lora", "http://example.com/a.safetensors"], 2, "error: Plain http:// links"),
        (["add-lora", url, "--offline"], 2, "needs the network, and --offline is on"),
        (["add-lora", site.url + "/gone.safetensors"], 1, "error: Nothing is at that link (HTTP 404): check it."),
        (["add-lora", site.serve("/flux.safetensors", files["flux"])], 1, "error: 'flux.safetensors' is not a Wan"),
        (["add-upscaler", url], 1, "error: 'style.safetensors' is not an upscaler spandrel recognises"),
    ):
        code, out, err = run_cli(capsys, *argv, "--lora-dir" if argv[0] == "add-lora" else "--upscaler-dir",
                                 loras if argv[0] == "add-lora" else upscalers)  # fmt: skip
        assert (code, out) == (expected, ""), (argv, code, out, err)
        assert fragment in err, (argv, err)
    assert listing(Path(loras)) == before
    assert listing(Path(upscalers)) == ["x2.safetensors", "x2.safetensors.source.json"]


def test_the_help_says_two_links_make_a_pair():
    from studio.links_cli import _parser

    text = " ".join(_parser("add-lora").format_help().split())
    assert "Two links add a Wan2.2 A14B pair: the high-noise expert's LoRA first, then the low-noise one's" in text
    assert "HF_TOKEN" in text and "CIVITAI_API_TOKEN" in text


def test_an_interrupted_command_exits_130_and_keeps_nothing(site, files, tmp_path):
    url = site.serve("/slow.safetensors", files["high"], delay=0.1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "app.py", "add-lora", url, "--lora-dir", str(tmp_path)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while site.sent < 200_000 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert site.sent >= 200_000, child.communicate(timeout=5)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err[-2000:]
    assert out == "" and "interrupted: nothing was kept" in err
    assert listing(tmp_path) == []
