"""A stand-in for the Hugging Face Hub on 127.0.0.1: serves a local folder as a model repository through the
endpoints huggingface_hub's snapshot_download calls (repo info, tree listing, HEAD and GET of each file), so
the download path of the studio runs for real without the network. Bodies are sent in small timed chunks
so a download takes long enough to show progress.

It speaks plain HTTP only: no `X-Xet-Hash` headers, so huggingface_hub takes its HTTP path, never Xet (which
real Wan repositories use through hf_xet and needs Hugging Face's storage service). It honours `Range`
requests (206), as CDNs do, and can misbehave on purpose (`faults`): drop the connection halfway through the
largest file once ("drop"), answer its GET with a 503 once ("error"), or never answer ("hang"). Every
request is recorded (`requests`) for the tests to read."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler(repo: str, folder: Path, chunk: int, delay_s: float, faults: set[str],
             requests: list) -> type[BaseHTTPRequestHandler]:  # fmt: skip
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    largest = max(files, key=lambda n: files[n].stat().st_size)
    pending = set(faults)  # each fault strikes once

    def oid(path: Path) -> str:
        return hashlib.sha1(path.read_bytes()).hexdigest()

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _json(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, name: str, body: bool) -> None:
            path = files.get(name)
            if path is None:
                self.send_error(404)
                return
            if body and name == largest and "error" in pending and "drop" not in pending:  # after any drop
                pending.discard("error")
                self.send_error(503, "Service Unavailable")
                return
            data = path.read_bytes()
            first = 0
            spec = self.headers.get("Range", "")
            if body and spec.startswith("bytes=") and spec[6:].split("-")[0].isdigit():
                first = int(spec[6:].split("-")[0])
            self.send_response(206 if first else 200)
            if first:
                self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - first))
            self.send_header("ETag", f'"{oid(path)}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if not body:
                return
            cut = len(data) // 2 if name == largest and "drop" in pending and not first else None
            for start in range(first, len(data), chunk):
                if cut is not None and start >= cut:
                    pending.discard("drop")
                    self.close_connection = True
                    self.connection.shutdown(2)  # mid-body, as a dropped connection
                    return
                self.wfile.write(data[start : start + chunk])
                self.wfile.flush()
                time.sleep(delay_s)

        def _route(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            requests.append((self.command, path, self.headers.get("Range")))
            if "hang" in faults:
                time.sleep(3600)  # a network that accepts and never answers
                return
            if path.startswith(f"/api/models/{repo}/revision/"):
                self._json({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]})
            elif path.startswith(f"/api/models/{repo}/tree/"):
                self._json(
                    [{"type": "file", "path": n, "size": p.stat().st_size, "oid": oid(p)} for n, p in files.items()]
                )
            elif path.startswith(f"/{repo}/resolve/"):
                self._file(path.split("/", 5)[5], body)
            else:
                self.send_error(404)

        def do_GET(self) -> None:
            self._route(body=True)

        def do_HEAD(self) -> None:
            self._route(body=False)

    return Hub


@contextmanager
def fake_hub(repo: str, folder: Path, chunk: int = 64 * 1024, delay_s: float = 0.01, faults: tuple[str, ...] = (),
             requests: list | None = None) -> Iterator[str]:  # fmt: skip
    """Serve `folder` as `repo`; yields the endpoint URL to put in HF_ENDPOINT."""
    handler = _handler(repo, folder, chunk, delay_s, set(faults), requests if requests is not None else [])
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a hanging handler never holds up the shutdown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
