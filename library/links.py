"""Adding a LoRA or an upscaler from a link: a file of the Hugging Face Hub (`owner/repo/file.safetensors`,
`owner/repo@REVISION/path`, or its huggingface.co / hf.co `resolve` or `blob` URL) or any https:// download
link (CivitAI's `https://civitai.com/api/download/models/<id>` included: the file's name then comes from the
answer's Content-Disposition).

The download is written under a `.partial-` name in the folder it is kept in (library/files.py `temporary`),
with progress in bytes, speed and time left; a dropped connection, a timeout or a busy server is retried, the
partial file continued with an HTTP Range request (`If-Range` guards against a file that changed meanwhile).
A size limit is enforced from the announced size and again from the bytes read. A site that needs a token gets
it from the environment (HF_TOKEN for the Hub, CIVITAI_API_TOKEN for civitai.com), sent to that site's host
only (never across a redirect to another host), never logged and never recorded.

The file then gets the same checks as an upload (a Wan LoRA's safetensors header, `pipelines.loras.inspect_lora`;
an upscaler spandrel recognises, `pipelines.upscale.load_upscaler`) before it is given its final name, and its
source is recorded beside it in `<file name>.source.json` (`link`, `sha256`, `size`, `added`; `commit` for a
Hub file; `pair` for an A14B high/low pair). A file whose SHA-256 is already in the folder is not kept twice.
Every refusal is one sentence (LinkError, or the check's LoraError / UpscalerError) and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import re
import shutil
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

from library.files import LibraryError, discard, disk_error, publish, read_json, temporary, write_json
from library.layout import TMP_PREFIX

LORA, UPSCALER = "lora", "upscaler"
SOURCE_SUFFIX = ".source.json"  # `<file name>.source.json` beside a file added from a link
HUB, CIVITAI, WEB = "hub", "civitai", "web"
HUB_SITE = "https://huggingface.co"  # what a Hub link is recorded as, whichever endpoint served it
GiB = 1024**3
DEFAULT_TIMEOUT_S = 60.0  # quiet seconds before a connection or a read is given up (and retried)
ATTEMPTS = 5  # tries of one download: the first and four resumptions
RETRY_WAIT_S = 0.5  # before the first retry; doubled for each next one
CHUNK = 256 * 1024
MAX_REDIRECTS = 10
MAX_HEADER = 100 * 1024 * 1024  # a safetensors header longer than this is not a LoRA or upscaler's
TOKENS = {HUB: "HF_TOKEN", CIVITAI: "CIVITAI_API_TOKEN"}
SITE_NAMES = {HUB: "The Hugging Face Hub", CIVITAI: "CivitAI", WEB: "The site"}
_SECRET_PARAM = re.compile(r"token|key|auth|sig|secret|pass|credential", re.IGNORECASE)
_NOT_MODEL_FILES = {  # what a link that names one of these gives is no LoRA or upscaler
    ".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bin", ".pkl", ".gguf", ".onnx", ".h5", ".msgpack", ".html",
    ".htm", ".json", ".txt", ".md", ".png", ".jpg", ".jpeg", ".webp", ".mp4",
}  # fmt: skip

ProgressCallback = Callable[[float, str], None]


class LinkError(LibraryError):
    """A link that cannot be added: not a link to a file, refused by the site, too big, not reachable."""


class LinkCancelled(Exception):
    """The caller cancelled the download (nothing was kept)."""


@dataclass(frozen=True)
class FolderKind:
    what: str  # in words: "LoRA"
    suffixes: tuple[str, ...]  # the file types it keeps, the first one the safe default
    max_bytes: int
    folder: str  # in words: "the LoRA folder"


def _kinds() -> dict[str, FolderKind]:
    from pipelines.upscale import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX

    return {
        LORA: FolderKind("LoRA", (SAFETENSORS_SUFFIX,), 2 * GiB, "the LoRA folder"),
        UPSCALER: FolderKind("upscaler", (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES), 1 * GiB, "the Upscalers folder"),
    }


def kind_of(kind: str) -> FolderKind:
    kinds = _kinds()
    if kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds)}; got {kind!r}")
    return kinds[kind]


# ---- links -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A parsed link to one file. Hub files are fetched from HF_ENDPOINT (default huggingface.co)."""

    site: str  # HUB, CIVITAI or WEB
    url: str = ""  # CIVITAI and WEB: the URL as given (any token in it is used, never shown or recorded)
    repo: str = ""  # HUB: owner/name
    revision: str = "main"  # HUB: a branch, tag or commit
    path: str = ""  # HUB: the file's path in the repository
    kind: str = LORA  # what it was parsed for

    @property
    def filename(self) -> str | None:
        """The file's name as the link gives it (None: the download's Content-Disposition says)."""
        if self.site == HUB:
            return self.path.rsplit("/", 1)[-1]
        last = unquote(urlsplit(self.url).path).rstrip("/").rsplit("/", 1)[-1]
        return last if Path(last).suffix.lower() in kind_of(self.kind).suffixes else None

    @property
    def canonical(self) -> str:
        """The link as recorded and shown: a Hub file as its huggingface.co address, any other without the
        user name, password or token parameters it may carry."""
        if self.site == HUB:
            return f"{HUB_SITE}/{self.repo}/resolve/{self.revision}/{self.path}"
        return _public_url(self.url)

    @property
    def token_variable(self) -> str | None:
        return TOKENS.get(self.site)

    def request_url(self) -> str:
        if self.site == HUB:
            return f"{hub_endpoint()}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(self.path)}"
        return self.url

    def __str__(self) -> str:
        return self.canonical


def hub_endpoint() -> str:
    """The Hub's address: HF_ENDPOINT when set (a mirror, or the tests' stand-in hub), read at each call."""
    return (os.environ.get("HF_ENDPOINT") or HUB_SITE).rstrip("/")


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_FILE = re.compile(rf"^(?P<owner>{_NAME})/(?P<name>{_NAME})(?:@(?P<rev>[^/@\s]+))?/(?P<path>[^\s]+)$")
_HUB_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
_CIVITAI_HOSTS = {"civitai.com", "www.civitai.com", "civitai.green", "www.civitai.green"}


def parse_link(text: str, kind: str = LORA) -> Link:
    """`text` as a link to one file for `kind` (LORA or UPSCALER); LinkError, in one sentence, for anything
    else."""
    fk = kind_of(kind)
    if not isinstance(text, str) or not text.strip():
        raise LinkError(f"Give a link to a {fk.what} file: a Hugging Face file like owner/repo/file.safetensors, "
                        "or an https:// download link.")  # fmt: skip
    text = text.strip()
    if len(text) > 2000 or any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise LinkError("That is not a link: a link is one line without spaces, at most 2000 characters.")
    lowered = text.lower()
    if lowered.startswith(("huggingface.co/", "hf.co/", "www.huggingface.co/")):
        text, lowered = f"https://{text}", f"https://{lowered}"
    if "://" not in text:
        if text.startswith(("/", "~", ".", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
            raise LinkError(f"'{text[:80]}' is a file on this machine, not a link: upload it or put it in "
                            f"{fk.folder}.")  # fmt: skip
        match = _HUB_FILE.match(text)
        if match is None:
            raise LinkError(f"'{text[:80]}' is not a link: give owner/repo/path/file of a Hugging Face repository "
                            "(optionally owner/repo@revision/path) or an https:// address.")  # fmt: skip
        return _hub_link(f"{match['owner']}/{match['name']}", match["rev"] or "main", match["path"], kind)
    parts = urlsplit(text)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("https", "http"):
        raise LinkError(f"Links are https:// addresses or Hugging Face files; '{scheme}://' links are not "
                        "downloaded.")  # fmt: skip
    if not host:
        raise LinkError(f"'{text[:80]}' names no site.")
    if scheme == "http" and not _loopback(host):
        raise LinkError("Plain http:// links can be altered on the way: use the site's https:// address.")
    if host in _HUB_HOSTS:
        return _hub_url(parts, kind)
    site = CIVITAI if host in _CIVITAI_HOSTS else WEB
    if site == CIVITAI and re.match(r"^/models/\d+", parts.path):
        raise LinkError("That is a CivitAI model page, not a download link: copy the link of its Download button "
                        "(https://civitai.com/api/download/models/…).")  # fmt: skip
    last = unquote(parts.path).rstrip("/").rsplit("/", 1)[-1]
    suffix = Path(last).suffix.lower()
    if suffix in _NOT_MODEL_FILES or (suffix in (".ckpt", ".pt", ".pth") and suffix not in fk.suffixes):
        raise LinkError(_wrong_type(last, fk))
    return Link(WEB if site == WEB else CIVITAI, url=text, kind=kind)


def _hub_url(parts, kind: str) -> Link:
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if segments and segments[0] in ("datasets", "spaces"):
        raise LinkError(f"That is a Hugging Face {segments[0][:-1]}, not a model repository: link to a file of a "
                        "model repository.")  # fmt: skip
    if len(segments) < 2:
        raise LinkError("That Hugging Face link names no repository: link to the file itself "
                        "(https://huggingface.co/owner/repo/resolve/main/file.safetensors).")  # fmt: skip
    repo = f"{segments[0]}/{segments[1]}"
    if len(segments) >= 3 and segments[2] == "tree":
        raise LinkError(f"That link shows a folder of {repo}, not a file: open the file and copy its link.")
    if len(segments) < 5 or segments[2] not in ("resolve", "blob", "raw"):
        raise LinkError(f"That link shows the repository {repo}, not a file: open the file in its Files tab and "
                        "copy its link.")  # fmt: skip
    rest = segments[3:]
    take = 3 if rest[0] == "refs" and len(rest) > 3 else 1  # refs/pr/1, refs/convert/parquet
    revision, path = "/".join(rest[:take]), "/".join(rest[take:])
    if not path:
        raise LinkError(f"That link names no file of {repo}: link to the file itself.")
    return _hub_link(repo, revision, path, kind)


def _hub_link(repo: str, revision: str, path: str, kind: str) -> Link:
    fk = kind_of(kind)
    path = path.strip("/")
    if not path or any(part in ("", ".", "..") for part in path.split("/")):
        raise LinkError(f"'{path[:80]}' is not a file path of a repository.")
    name = path.rsplit("/", 1)[-1]
    if Path(name).suffix.lower() not in fk.suffixes:
        raise LinkError(_wrong_type(name, fk))
    return Link(HUB, repo=repo, revision=revision, path=path, kind=kind)


def _wrong_type(name: str, fk: FolderKind) -> str:
    if fk.suffixes == (".safetensors",):
        return (f"'{name[:80]}' is not a .safetensors file: {fk.what}s are added from .safetensors files only (other "
                "formats can run code when loaded).")  # fmt: skip
    return f"'{name[:80]}' is not an {fk.what} file: use a .safetensors (or .pth, .pt, .ckpt) file."


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _public_url(url: str) -> str:
    """`url` without a user name or password and without query parameters that look like secrets."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SECRET_PARAM.search(k)]
    query = urlencode(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _as_link(link: Link | str, kind: str) -> Link:
    if isinstance(link, Link):
        if link.kind != kind:  # parsed for the other folder: its file type is checked again
            return parse_link(link.canonical if link.site == HUB else link.url, kind)
        return link
    return parse_link(link, kind)


# ---- downloading -----------------------------------------------------------------------------------------------


@dataclass
class Fetched:
    """A downloaded file under its temporary name, not yet checked or kept."""

    link: Link
    tmp: Path
    name: str  # the name it is to be kept under
    sha256: str
    size: int
    commit: str | None = None  # the Hub's commit of the file


@dataclass(frozen=True)
class Added:
    """A file kept in the folder from a link."""

    name: str
    path: Path
    sha256: str
    size: int
    reused: bool  # the same file (same SHA-256) was already in the folder
    source: dict = field(default_factory=dict)


class _Refused(Exception):
    """An HTTP answer that is not retried (4xx other than 408/429)."""

    def __init__(self, code: int, headers: Message | None, token_sent: bool):
        super().__init__(code)
        self.code, self.headers, self.token_sent = code, headers, token_sent


class _Transient(Exception):
    """A failure worth another try (a dropped connection, a timeout, a busy server); str() says what."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # redirects are followed by _open
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _open(link: Link, headers: dict[str, str], timeout_s: float) -> tuple[http.client.HTTPResponse, list[Message]]:
    """GET the link, following redirects here: the token goes to the link's own host only, and a redirect
    may not leave https (except between loopback addresses). The answer and every hop's headers."""
    url = link.request_url()
    origin = urlsplit(url).netloc.lower()
    local = _loopback(urlsplit(url).hostname or "")
    token_name = link.token_variable
    token = os.environ.get(token_name, "").strip() if token_name else ""
    if link.site == HUB and not token:
        token = _saved_hub_token()
    hops: list[Message] = []
    for _ in range(MAX_REDIRECTS + 1):
        request = urllib.request.Request(url, headers=headers)
        if token and urlsplit(url).netloc.lower() == origin:
            request.add_unredirected_header("Authorization", f"Bearer {token}")
        try:
            response = _OPENER.open(request, timeout=timeout_s)
        except urllib.error.HTTPError as err:
            code, err_headers = err.code, err.headers
            err.close()
            hops.append(err_headers)
            if code in (301, 302, 303, 307, 308) and err_headers.get("Location"):
                url = urljoin(url, err_headers["Location"])
                target = urlsplit(url)
                loopback = local and _loopback(target.hostname or "")  # http between this machine's addresses
                if target.scheme != "https" and not (target.scheme == "http" and loopback):
                    raise LinkError("The link redirected to an address that is not https://, so it was not "
                                    "followed.") from None  # fmt: skip
                continue
            if code in (408, 429) or code >= 500:
                raise _Transient(f"HTTP {code}") from None
            raise _Refused(code, err_headers, bool(token)) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, TimeoutError):
                raise _Transient(f"no answer for {timeout_s:g} s") from None
            raise _Transient(f"cannot reach {urlsplit(url).hostname}: {getattr(reason, 'strerror', None) or reason}"
                             ) from None  # fmt: skip
        except TimeoutError:
            raise _Transient(f"no answer for {timeout_s:g} s") from None
        except (OSError, http.client.HTTPException) as err:
            raise _Transient(f"the connection failed ({type(err).__name__})") from None
        hops.append(response.headers)
        return response, hops
    raise LinkError(f"The link redirected more than {MAX_REDIRECTS} times, so it was given up.")


def _saved_hub_token() -> str:
    """The token `hf auth login` saved, when HF_TOKEN is not set."""
    try:
        from huggingface_hub import get_token

        return get_token() or ""
    except Exception:
        return ""


def _refusal(link: Link, code: int, headers: Message | None, token_sent: bool) -> LinkError:
    """The sentence for a site's refusal of the download."""
    site = SITE_NAMES[link.site]
    variable = link.token_variable
    error_code = (headers.get("X-Error-Code", "") if headers is not None else "") or ""
    if link.site == HUB:
        if error_code == "GatedRepo":
            return LinkError(f"{link.repo} is gated: accept its conditions on {HUB_SITE}/{link.repo} and set HF_TOKEN "
                             "to a token of that account.")  # fmt: skip
        if code == 404 and error_code == "RevisionNotFound":
            return LinkError(f"{link.repo} has no revision '{link.revision}' on the Hugging Face Hub (HTTP 404).")
        if code in (404, 410):
            return LinkError(f"The Hugging Face Hub has no file '{link.path}' in {link.repo} at '{link.revision}' "
                             "(HTTP 404): check the link.")  # fmt: skip
    if code in (401, 403) and link.site == HUB and not token_sent:
        return LinkError(f"The Hugging Face Hub refused the download (HTTP {code}): {link.repo} is private, gated or "
                         "does not exist; check the link, or set HF_TOKEN to a token that may read it.")  # fmt: skip
    if code in (401, 403):
        if variable and not token_sent:
            return LinkError(f"{site} refused the download (HTTP {code}): the file needs an access token; set "
                             f"{variable} and try again.")  # fmt: skip
        if variable:
            return LinkError(f"{site} refused the download with the token given (HTTP {code}): check that the token in "
                             f"{variable} is valid and may read this file.")  # fmt: skip
        return LinkError(f"{site} refused the download (HTTP {code}): the link needs a login or has expired.")
    if code in (404, 410):
        return LinkError(f"Nothing is at that link (HTTP {code}): check it.")
    return LinkError(f"{site} refused the download (HTTP {code}).")


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total size or None) from a Content-Range header."""
    match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    if match is None:
        return None
    return int(match.group(1)), None if match.group(3) == "*" else int(match.group(3))


def _safe_name(raw: str | None) -> str | None:
    """A plain file name from what a site sent: no folder part, no leading dot, no odd characters."""
    if not raw:
        return None
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.\-+() ]", "_", name).strip(" .")
    return name[:200] or None


def _sniff(head: bytes) -> str | None:
    """The file type its first bytes show: ".safetensors", ".pth" (a torch zip or a pickle), "html", or None."""
    if len(head) >= 9:
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length <= MAX_HEADER and head[8:9] == b"{":
            return ".safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return ".pth"
    if head.lstrip()[:1] in (b"<",):
        return "html"
    return None


def _human(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{max(1, seconds):.0f} s"


class _Download:
    """One file's download into a temporary of `dest`, over as many tries as it takes (at most ATTEMPTS)."""

    def __init__(self, link: Link, dest: Path, report: ProgressCallback, cancel: threading.Event | None,
                 max_bytes: int, timeout_s: float):  # fmt: skip
        self.link, self.dest, self.report, self.cancel = link, dest, report, cancel
        self.max_bytes, self.timeout_s = max_bytes, timeout_s
        self.fk = kind_of(link.kind)
        self.tmp: Path | None = None
        self.file = None
        self.name: str | None = None
        self.total: int | None = None
        self.have = 0
        self.hash = hashlib.sha256()
        self.validator: str | None = None  # ETag or Last-Modified of the first answer: If-Range
        self.commit: str | None = None
        self.head = b""
        self.head_checked = False
        self.started = time.monotonic()
        self.fetched_here = 0  # bytes received (not counting restarts' lost ones): the speed
        self.fraction = 0.0
        self.last_report = 0.0

    def run(self) -> Fetched:
        try:
            return self._tries()
        except BaseException:
            self._close()
            if self.tmp is not None:
                discard(self.tmp)
            raise

    def _tries(self) -> Fetched:
        problem = ""
        failed = 0  # tries in a row that brought no new byte: a try that did is not counted
        for _ in range(10 * ATTEMPTS):
            self._check_cancel()
            if problem:
                wait = RETRY_WAIT_S * 2 ** max(0, failed - 1)
                self.report(self.fraction, f"{problem}; trying again in {wait:g} s (try {failed + 1} of {ATTEMPTS})")
                if self.cancel is not None and self.cancel.wait(wait):
                    raise LinkCancelled()
                if self.cancel is None:
                    time.sleep(wait)
            before = self.have
            try:
                if self._try():
                    return self._finish()
                problem = f"The connection ended after {_human(self.have)}"
            except _Transient as err:
                problem = f"The download stopped ({err})"
            except _Refused as err:
                raise _refusal(self.link, err.code, err.headers, err.token_sent) from None
            failed = 1 if self.have > before else failed + 1
            if failed >= ATTEMPTS:
                break
        what = self.link.repo if self.link.site == HUB else urlsplit(self.link.request_url()).hostname
        raise LinkError(f"The download from {what} failed {ATTEMPTS} times ({problem[0].lower()}{problem[1:]}); "
                        "try again later.")  # fmt: skip

    def _try(self) -> bool:
        """One request; True once the whole file is here."""
        headers = {"User-Agent": "wan-studio", "Accept-Encoding": "identity"}
        if self.have:
            headers["Range"] = f"bytes={self.have}-"
            if self.validator:
                headers["If-Range"] = self.validator
        response, hops = _open(self.link, headers, self.timeout_s)
        with response:
            status = response.status
            if self.have and status == 206:
                ranged = _content_range(response.headers.get("Content-Range"))
                if ranged is None or ranged[0] != self.have or (ranged[1] or self.total) != self.total:
                    self._restart()
                    raise _Transient("the site sent another part of the file than asked")
            elif self.have:  # a whole answer: the site ignored the Range, or the file changed (If-Range)
                self._restart()
                self._size_from(response)
            if self.name is None:
                self._first_answer(response, hops)
            self._read(response)
        if self.total is not None and self.have < self.total:
            return False
        if self.total is not None and self.have > self.total:
            self._restart()
            raise _Transient("the site sent more than the file's size")
        return True

    def _first_answer(self, response: http.client.HTTPResponse, hops: list[Message]) -> None:
        """Name, size and validator of the file, from the first answer; refusals before any byte is read."""
        headers = response.headers
        for hop in hops:
            self.commit = self.commit or hop.get("X-Repo-Commit")
        if (headers.get("Content-Type") or "").lower().startswith("text/html"):
            hint = f" (it may need a login: set {self.link.token_variable})" if self.link.token_variable else ""
            raise LinkError(f"The link gave a web page instead of a {self.fk.what} file{hint}.")
        given = next((n for hop in reversed(hops) if (n := _safe_name(hop.get_filename()))), None)
        if given is not None and Path(given).suffix.lower() not in self.fk.suffixes:
            raise LinkError(_wrong_type(given, self.fk))  # the site names the file: no other name is guessed
        final_last = _safe_name(unquote(urlsplit(response.url or "").path).rstrip("/").rsplit("/", 1)[-1])
        if final_last is not None and Path(final_last).suffix.lower() not in self.fk.suffixes:
            final_last = None
        self.name = _safe_name(given or self.link.filename or final_last) or ""  # "": the first bytes tell
        self._size_from(response)
        etag = headers.get("ETag")
        self.validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
        self.tmp = temporary(self.dest, ".download")
        try:
            self.file = open(self.tmp, "wb")
        except OSError as err:
            raise disk_error(err, self.dest) from None

    def _size_from(self, response: http.client.HTTPResponse) -> None:
        """The file's size from a whole answer's Content-Length or a part's Content-Range; refused when it
        passes the limit or the free space."""
        size = response.headers.get("Content-Length")
        ranged = _content_range(response.headers.get("Content-Range"))
        self.total = None
        if response.status == 206 and ranged is not None:
            self.total = ranged[1]
        elif size and size.isdigit():
            self.total = int(size)
        if self.total is not None and self.total > self.max_bytes:
            raise LinkError(f"The file at that link is {_human(self.total)}, more than the {_human(self.max_bytes)} "
                            f"a {self.fk.what} may have.")  # fmt: skip
        if self.total is not None:
            free = shutil.disk_usage(self.dest).free
            if self.total + 16 * 1024 * 1024 > free:
                raise LinkError(f"{self.fk.folder[0].upper()}{self.fk.folder[1:]} ({self.dest}) has {_human(free)} "
                                f"free, and the file needs {_human(self.total)}: free some space.")  # fmt: skip

    def _read(self, response: http.client.HTTPResponse) -> None:
        while True:
            self._check_cancel()
            try:
                block = response.read(CHUNK)
            except TimeoutError:
                raise _Transient(f"no data for {self.timeout_s:g} s") from None
            except (OSError, http.client.HTTPException) as err:
                raise _Transient(f"the connection dropped ({type(err).__name__})") from None
            if not block:
                return
            if not self.head_checked:
                self.head = (self.head + block)[:9]
                if len(self.head) >= 9:
                    self._check_head()
            self.have += len(block)
            self.fetched_here += len(block)
            if self.have > self.max_bytes:
                raise LinkError(f"The download passed the {_human(self.max_bytes)} a {self.fk.what} may have, so it "
                                "was stopped.")  # fmt: skip
            try:
                self.file.write(block)
            except OSError as err:
                raise disk_error(err, self.dest) from None
            self.hash.update(block)
            self._progress()

    def _check_head(self) -> None:
        """Refuse from the first bytes a file that is not of the type its name says (or a web page)."""
        self.head_checked = True
        kind = _sniff(self.head)
        shown = self.name or self.link.filename or "the file"
        if kind == "html":
            hint = f" (it may need a login: set {self.link.token_variable})" if self.link.token_variable else ""
            raise LinkError(f"The link gave a web page instead of a {self.fk.what} file{hint}.")
        if not self.name:  # the link named no file: its first bytes say what it is
            if kind not in self.fk.suffixes:
                raise LinkError(f"The file at that link is not a {self.fk.what} file (neither its name nor its first "
                                "bytes show a .safetensors file).")  # fmt: skip
            stem = _safe_name(unquote(urlsplit(self.link.url).path).rstrip("/").rsplit("/", 1)[-1]) or self.fk.what
            self.name = f"{Path(stem).stem if Path(stem).suffix else stem}{kind}"
            return
        if Path(self.name).suffix.lower() == ".safetensors" and kind != ".safetensors":
            raise LinkError(f"'{shown}' at that link is not a .safetensors file: its first bytes are not a "
                            "safetensors header.")  # fmt: skip

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < 0.2:
            return
        self.last_report = now
        elapsed = max(1e-6, now - self.started)
        speed = self.fetched_here / elapsed
        message = f"Downloading {self.name or 'the file'}: {_human(self.have)}"
        if self.total:
            self.fraction = max(self.fraction, min(1.0, self.have / self.total))
            message += f" of {_human(self.total)}"
        message += f", {speed / 1e6:.1f} MB/s"
        if self.total and speed > 0 and elapsed > 0.5:
            message += f", about {_duration((self.total - self.have) / speed)} left"
        self.report(self.fraction, message)

    def _restart(self) -> None:
        """Back to the first byte (the site sent the whole file again)."""
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
        self.have, self.hash, self.head, self.head_checked = 0, hashlib.sha256(), b"", False

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise LinkCancelled()

    def _close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None

    def _finish(self) -> Fetched:
        if not self.head_checked:  # a file of under 9 bytes
            self._check_head()
        self._progress(force=True)
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as err:
            raise disk_error(err, self.dest) from None
        self._close()
        if not self.name:
            raise LinkError(f"The file at that link is empty, not a {self.fk.what} file.")
        suffix = Path(self.name).suffix.lower()
        final_tmp = temporary(self.dest, suffix)
        os.replace(self.tmp, final_tmp)  # the checks read the file type from the name
        self.tmp = final_tmp
        return Fetched(self.link, final_tmp, self.name, self.hash.hexdigest(), self.have, self.commit)


def fetch_link(link: Link, dest_folder: Path, on_progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None, max_bytes: int | None = None, offline: bool = False,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> Fetched:  # fmt: skip
    """Download `link` into a temporary file of `dest_folder` (not checked, not kept: see `check_fetched` and
    `keep_fetched`). LinkError for a refusal, LinkCancelled when `cancel` is set; nothing is left behind."""
    fk = kind_of(link.kind)
    if offline:
        raise LinkError(f"Adding a {fk.what} from a link needs the network, and offline mode is on.")
    dest = Path(dest_folder)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LinkError(f"{fk.folder[0].upper()}{fk.folder[1:]} '{dest}' cannot be written: "
                        f"{err.strerror or err}.") from None  # fmt: skip
    report = on_progress or (lambda fraction, message: None)
    report(0.0, f"Connecting for {link.filename or link.canonical}")
    limit = fk.max_bytes if max_bytes is None else int(max_bytes)
    return _Download(link, dest, report, cancel, limit, timeout_s).run()


def check_fetched(fetched: Fetched) -> int | None:
    """The same checks as an upload, on the temporary file, in the file's own name: a Wan LoRA's header
    (its blocks' width returned) or an upscaler spandrel recognises. LoraError / UpscalerError otherwise."""
    if fetched.link.kind == LORA:
        from pipelines.loras import LoraError, inspect_lora

        try:
            return inspect_lora(fetched.tmp).width
        except LoraError as err:
            raise LoraError(str(err).replace(fetched.tmp.name, fetched.name)) from None
    from pipelines.upscale import UpscalerError, load_upscaler

    try:
        load_upscaler(fetched.tmp)
    except UpscalerError as err:
        raise UpscalerError(str(err).replace(fetched.tmp.name, fetched.name)) from None
    return None


# ---- keeping ---------------------------------------------------------------------------------------------------


def source_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}{SOURCE_SUFFIX}"


def read_source(folder: Path, name: str) -> dict | None:
    """The source record of a file of `folder` (None: not added from a link, or unreadable)."""
    from library.layout import plain_name

    if plain_name(name) is None:
        return None
    path = source_path(folder, name)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _same_file(folder: Path, fetched: Fetched) -> str | None:
    """A file of `folder` with the fetched file's content (same size, then same SHA-256)."""
    from pipelines.digests import sha256_of

    suffixes = kind_of(fetched.link.kind).suffixes
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith((".", TMP_PREFIX)) or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        try:
            if path.stat().st_size == fetched.size and sha256_of(path) == fetched.sha256:
                return path.name
        except OSError:
            continue
    return None


def _record(fetched: Fetched) -> dict:
    record = {"link": fetched.link.canonical, "sha256": fetched.sha256, "size": fetched.size,
              "added": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if fetched.commit:
        record["commit"] = fetched.commit
    return record


def keep_fetched(fetched: Fetched, dest_folder: Path, extra: dict | None = None) -> Added:
    """Give a checked download its final name in `dest_folder` (the first free one; never overwriting) and
    write its source record; a file with the same SHA-256 already there is reused instead."""
    dest = Path(dest_folder)
    try:
        same = _same_file(dest, fetched)
        if same is not None:
            discard(fetched.tmp)
            record = read_source(dest, same) or _record(fetched)
            record.update(extra or {})
            write_json(source_path(dest, same), record)
            return Added(same, dest / same, fetched.sha256, fetched.size, True, record)
        suffix = Path(fetched.name).suffix.lower()
        stem = Path(fetched.name).stem or kind_of(fetched.link.kind).what
        final = publish(fetched.tmp, dest, stem, suffix, taken=lambda s: source_path(dest, f"{s}{suffix}").exists())
        discard(fetched.tmp)
        record = {**_record(fetched), **(extra or {})}
        try:
            write_json(source_path(dest, final.name), record)
        except BaseException:
            discard(final)
            raise
        return Added(final.name, final, fetched.sha256, fetched.size, False, record)
    except OSError as err:
        discard(fetched.tmp)
        raise disk_error(err, dest) from None


def _unkeep(dest: Path, added: Added, before: dict | None) -> None:
    """Undo `keep_fetched`: remove a new file and its record, or put a reused file's record back."""
    if added.reused:
        if before is None:
            discard(source_path(dest, added.name))
        else:
            write_json(source_path(dest, added.name), before)
        return
    discard(source_path(dest, added.name))
    discard(added.path)


def download_link(link: Link | str, folder_kind: str, dest_folder: Path,
                  on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                  max_bytes: int | None = None, offline: bool = False,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Added:  # fmt: skip
    """Download the file at `link` (text or a parsed Link) for `folder_kind` (LORA or UPSCALER), check it
    as an upload is checked, and keep it in `dest_folder` with its source record. `on_progress(fraction,
    message)`; `cancel` (a threading.Event) stops it with LinkCancelled; `max_bytes` defaults to the kind's
    limit (2 GiB for a LoRA, 1 GiB for an upscaler). Refusals are LinkError, LoraError or UpscalerError; none
    leaves anything behind."""
    link = _as_link(link, folder_kind)
    fetched = fetch_link(link, dest_folder, on_progress, cancel, max_bytes, offline, timeout_s)
    report = on_progress or (lambda fraction, message: None)
    try:
        report(1.0, f"Checking {fetched.name}")
        check_fetched(fetched)
        added = keep_fetched(fetched, dest_folder)
    finally:
        discard(fetched.tmp)
    report(1.0, f"Kept {added.name}" + (" (already there)" if added.reused else ""))
    return added


def download_pair(high_link: Link | str, low_link: Link | str, dest_folder: Path,
                  on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                  max_bytes: int | None = None, offline: bool = False,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Added, Added]:  # fmt: skip
    """A Wan2.2 A14B LoRA pair: the high-noise expert's file and the low-noise one's, both downloaded and checked
    before either is kept (both kept or neither), each source record naming the pair
    (`"pair": {"high": name, "low": name}`)."""
    high_link, low_link = _as_link(high_link, LORA), _as_link(low_link, LORA)
    report = on_progress or (lambda fraction, message: None)
    fetched: list[Fetched] = []
    kept: list[tuple[Added, dict | None]] = []
    dest = Path(dest_folder)
    try:
        for index, (which, link) in enumerate((("high-noise", high_link), ("low-noise", low_link))):

            def part(fraction: float, message: str, index: int = index, which: str = which) -> None:
                report((index + fraction) / 2, f"{which[0].upper()}{which[1:]} LoRA: {message}")

            fetched.append(fetch_link(link, dest, part, cancel, max_bytes, offline, timeout_s))
        high, low = fetched
        report(1.0, "Checking the pair")
        widths = [check_fetched(f) for f in fetched]
        if high.sha256 == low.sha256:
            raise LinkError("The high-noise and low-noise links give the same file: add it once and let it go to "
                            "both experts.")  # fmt: skip
        if widths[0] != widths[1]:
            from pipelines.loras import made_for

            raise LinkError(f"'{high.name}' and '{low.name}' are not a pair: one was made for {made_for(widths[0])}, "
                            f"the other for {made_for(widths[1])}.")  # fmt: skip
        if not _two_expert_width(widths[0]):
            from pipelines.loras import made_for

            raise LinkError(f"A high/low pair is for the Wan2.2 A14B models, and these LoRAs were made for "
                            f"{made_for(widths[0])}: add them one at a time.")  # fmt: skip
        for f in fetched:
            before = read_source(dest, same) if (same := _same_file(dest, f)) else None
            kept.append((keep_fetched(f, dest), before))
        pair = {"high": kept[0][0].name, "low": kept[1][0].name}
        added = []
        for item, _ in kept:
            record = {**item.source, "pair": pair}
            write_json(source_path(dest, item.name), record)
            added.append(Added(item.name, item.path, item.sha256, item.size, item.reused, record))
    except BaseException:
        for item, before in reversed(kept):
            _unkeep(dest, item, before)
        raise
    finally:
        for f in fetched:
            discard(f.tmp)
    report(1.0, f"Kept the pair {pair['high']} + {pair['low']}")
    return added[0], added[1]


def _two_expert_width(width: int) -> bool:
    from pipelines.catalogue import CATALOGUE

    return any(spec.two_experts and spec.transformer_width == width for spec in CATALOGUE.values())


@dataclass(frozen=True)
class LoraPair:
    """A high-noise and a low-noise LoRA added together, offered as one choice."""

    high: str
    low: str

    @property
    def label(self) -> str:
        return f"{self.high} + {self.low} (high/low pair)"


def pairs_in(folder: Path) -> list[LoraPair]:
    """The pairs the source records of `folder` name whose two files are both there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = set()
    for path in folder.glob(f"*{SOURCE_SUFFIX}"):
        name = path.name[: -len(SOURCE_SUFFIX)]
        record = read_source(folder, name) or {}
        pair = record.get("pair")
        if not isinstance(pair, dict):
            continue
        high, low = pair.get("high"), pair.get("low")
        if isinstance(high, str) and isinstance(low, str) and name in (high, low):
            if (folder / high).is_file() and (folder / low).is_file():
                found.add(LoraPair(high, low))
    return sorted(found, key=lambda p: (p.high, p.low))
