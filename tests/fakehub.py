"""A stand-in for the Hugging Face Hub on 127.0.0.1: serves a local folder as a model repository through the
endpoints huggingface_hub's snapshot_download calls (repo info, tree listing, HEAD and GET of each file), so
the download path of the studio runs for real without the network. Bodies are sent in small timed chunks
so a download takes long enough to show progress."""

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


def _handler(repo: str, folder: Path, chunk: int, delay_s: float) -> type[BaseHTTPRequestHandler]:
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}

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
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{oid(path)}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if body:
                for start in range(0, len(data), chunk):
                    self.wfile.write(data[start : start + chunk])
                    self.wfile.flush()
                    time.sleep(delay_s)

        def _route(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
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
def fake_hub(repo: str, folder: Path, chunk: int = 64 * 1024, delay_s: float = 0.01) -> Iterator[str]:
    """Serve `folder` as `repo`; yields the endpoint URL to put in HF_ENDPOINT."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(repo, folder, chunk, delay_s))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
