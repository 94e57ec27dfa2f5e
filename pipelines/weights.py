"""Finding a model's files: the Hugging Face cache (downloading on first use), a local folder, or a test model."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipelines.catalogue import FastWeights, HubFile, ModelSpec
from pipelines.digests import sha256_of as file_sha256  # noqa: F401  (the post-production modules' name)
from pipelines.errors import UserError
from pipelines.testmodels import BUILD_VERSION, ensure_test_model


class ModelUnavailableError(UserError, RuntimeError):
    """The weights are not here and cannot be fetched; the message says what to do."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    revision: str  # the hub snapshot's commit, or a marker for local and test models


# (fraction 0..1, message) -> None
DownloadCallback = Callable[[float, str], None]


class _HiddenBar(tqdm):
    """huggingface_hub's bars, never drawn: our caller draws the one bar that matters."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


class DownloadMeter:
    """One fraction for a whole model download: bytes fetched over the repository's size, with an ETA.

    huggingface_hub draws several bars through the tqdm class it is given (files fetched, bytes received,
    bytes written) from up to eight threads, and its byte totals grow as each file starts, so none of them
    is a progress bar on its own. The meter takes the size from the file listing made before the download
    and the bytes from whichever byte bar is furthest along; what is already in the cache counts as done.
    Its fraction never goes backwards.
    """

    def __init__(self, repo: str, total_bytes: int, cached_bytes: int, files: int, report: DownloadCallback):
        self.repo, self.total, self.cached, self.report = repo, max(1, total_bytes), cached_bytes, report
        self.files_total, self.files_done = files, 0
        self.fetched = 0.0
        self.fraction = 0.0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def count(self, bar: _HiddenBar, n: float) -> None:
        with self._lock:  # up to eight download threads update the same bar
            bar.counted += n
            if bar.in_bytes:
                self.fetched = max(self.fetched, bar.counted)
            else:
                self.files_done = int(bar.counted)
            done = min(self.total, self.cached + self.fetched)
            # huggingface_hub versions that count no bytes through our class still count files
            by_files = self.files_done / max(1, self.files_total)
            self.fraction = max(self.fraction, done / self.total if self.fetched else by_files)
            message = f"Downloading {self.repo}: {human_size(done)} of {human_size(self.total)}"
            elapsed = time.monotonic() - self.started
            if elapsed > 2 and self.fetched > 0:
                left_s = (self.total - done) / (self.fetched / elapsed)
                message += f", about {_duration(left_s)} left"
            self.report(self.fraction, f"{message} ({self.files_done}/{self.files_total} files)")

    def tqdm_class(self) -> type[tqdm]:
        meter = self

        class _Counted(_HiddenBar):
            # counted here: a disabled tqdm counts nothing and keeps no unit
            def __init__(self, *args, **kwargs) -> None:
                self.counted = float(kwargs.get("initial") or 0)
                self.in_bytes = kwargs.get("unit") == "B"
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                meter.count(self, n or 0)
                return super().update(n)

        return _Counted


def human_size(n: float) -> str:
    """Bytes as GB, or MB below 0.1 GB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _meter(
    repo: str, report: DownloadCallback, allow_patterns: list[str] | None = None, revision: str | None = None
) -> DownloadMeter | None:
    """A meter sized from the repository's file listing; None when the Hub cannot be asked (the download
    then falls back to the cache, or fails with its own message)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        plan = snapshot_download(
            repo, revision=revision, dry_run=True, tqdm_class=_HiddenBar, allow_patterns=allow_patterns
        )
    except (HfHubHTTPError, OSError):
        return None
    size = sum(f.file_size or 0 for f in plan)
    cached = sum(f.file_size or 0 for f in plan if not f.will_download)
    return DownloadMeter(repo, size, cached, len(plan), report)


_CLIENT_LOCK = threading.Lock()
_client_set = False


def _hub_client_with_timeouts() -> None:
    """huggingface_hub's HTTP client waits forever for an answer (`timeout=None`): a hub, proxy or network that
    accepts a connection and never answers would hang a download, and the studio's queue behind it. Its calls
    time out instead after WAN_STUDIO_HUB_TIMEOUT_S quiet seconds (default 60), reported as no connection."""
    global _client_set
    with _CLIENT_LOCK:
        if _client_set:
            return
        import httpx2
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import hf_request_event_hook

        quiet_s = float(os.environ.get("WAN_STUDIO_HUB_TIMEOUT_S", "60"))

        class Bounded(httpx2.HTTPTransport):
            # Its API calls pass timeout=None per request, which beats a client default: bound them here.
            def handle_request(self, request):
                given = request.extensions.get("timeout") or {}
                request.extensions["timeout"] = {
                    key: quiet_s if given.get(key) is None else given[key]
                    for key in ("connect", "read", "write", "pool")
                }
                return super().handle_request(request)

        def client():  # huggingface_hub's default client, with the bounded transport
            return httpx2.Client(event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True,
                                 timeout=quiet_s, transport=Bounded())  # fmt: skip

        set_client_factory(client)
        _client_set = True


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _check_disk_space(what: str, missing_bytes: int) -> None:
    """Refuse before the first byte rather than fail half-way through tens of GB."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    existing = next(p for p in (cache, *cache.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if missing_bytes > free:
        raise ModelUnavailableError(
            f"{what} needs {human_size(missing_bytes)} more in the Hugging Face cache ({cache}), but that "
            f"disk has {human_size(free)} free. Free some space, or point HF_HUB_CACHE at a bigger disk."
        )


def resolve_weights(spec: ModelSpec, offline: bool, on_progress: DownloadCallback | None = None) -> ResolvedWeights:
    """Local path and revision of a model's files; downloads into the standard HF cache on first use."""
    if spec.is_test:
        return ResolvedWeights(ensure_test_model(spec.id), f"random-weights-v{BUILD_VERSION}")
    if spec.local_path:
        return ResolvedWeights(Path(spec.local_path), "local-folder")
    return download(spec.repo, spec.name, offline, on_progress)


def download(
    repo: str, what: str, offline: bool, on_progress: DownloadCallback | None = None,
    allow_patterns: list[str] | None = None, revision: str | None = None,
) -> ResolvedWeights:  # fmt: skip
    """A hub repository (or the files of it matching `allow_patterns`) in the standard HF cache, fetched with
    one byte-based progress report on first use; ModelUnavailableError with what to do otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    report = on_progress or (lambda fraction, message: None)
    report(0.0, f"Looking for {repo} in the Hugging Face cache")
    if not offline:
        _hub_client_with_timeouts()
    try:
        meter = None if offline else _meter(repo, report, allow_patterns, revision)
        if meter is not None:
            _check_disk_space(what, meter.total - meter.cached)
        path = snapshot_download(
            repo,
            revision=revision,
            local_files_only=offline,
            allow_patterns=allow_patterns,
            tqdm_class=meter.tqdm_class() if meter else None,
        )
    except LocalEntryNotFoundError as err:
        if offline:
            raise ModelUnavailableError(
                f"{what} is not downloaded yet and offline mode is on. Run once without --offline to "
                f"download it, or pick a model that is already in the Hugging Face cache."
            ) from err
        raise ModelUnavailableError(
            f"{what} could not be downloaded from the Hugging Face Hub (no connection?). "
            f"Check the network, or pick a model that is already downloaded."
        ) from err
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status is not None and (status == 429 or status >= 500):
            raise ModelUnavailableError(
                f"The Hugging Face Hub is busy or failing right now (HTTP {status}) while downloading {what}. "
                "Try again in a minute: files already downloaded are kept."
            ) from err
        raise ModelUnavailableError(f"Downloading {repo} failed: {err}") from err
    except OSError as err:  # disk full, permissions
        if err.errno == errno.ENOSPC:
            raise ModelUnavailableError(
                f"The disk holding the Hugging Face cache ({_hub_cache()}) filled up while downloading {what}. "
                "Free some space or set HF_HUB_CACHE to a bigger disk, then try again: the download goes on "
                "from where it stopped."
            ) from err
        raise ModelUnavailableError(f"Downloading {repo} failed: {err}") from err
    report(1.0, f"{repo} is ready")
    return ResolvedWeights(Path(path), Path(path).name)


def fetch_fast(spec: ModelSpec, offline: bool, on_progress: DownloadCallback | None = None) -> FastWeights:
    """The files of `spec`'s fast preset, downloaded into the HF cache on first use (test presets are built)."""
    preset = spec.fast
    if preset is None:
        raise ModelUnavailableError(f"{spec.name} has no fast mode.")
    if spec.is_test:
        from pipelines.testmodels import ensure_fast_test_weights

        return ensure_fast_test_weights(spec.id)
    transformer = None
    what = f"Fast mode of {spec.name} ({preset.label})"
    if preset.transformer_repo:
        patterns = ["transformer/*", "transformer_2/*", "model_index.json"]
        transformer = download(preset.transformer_repo, what, offline, on_progress, allow_patterns=patterns).path
    loras = []
    for lora in preset.loras:
        folder = download(lora.repo, what, offline, on_progress, allow_patterns=[lora.file]).path
        loras.append((folder / lora.file, lora.experts))
    return FastWeights(transformer, tuple(loras))


def fetch_file(file: HubFile, offline: bool, on_progress: DownloadCallback | None = None) -> Path:
    """A pinned hub file in the standard HF cache, downloaded with the progress report on first use and
    checked against its SHA-256 (a mismatch is removed from the cache and refused: a tampered or truncated file
    never loads, and the next try downloads it again)."""
    folder = download(
        file.repo, file.name, offline, on_progress, allow_patterns=[file.filename], revision=file.revision
    )
    path = folder.path / file.filename
    if not path.is_file():
        raise ModelUnavailableError(f"{file.name}: {file.filename} is not in {file.repo} at {file.revision[:12]}.")
    found = file_sha256(path)
    if found != file.sha256:
        for stale in (path.resolve(), path):  # the cache's blob and the snapshot's link to it
            stale.unlink(missing_ok=True)
        raise ModelUnavailableError(
            f"{file.name}: the downloaded {file.filename} does not match its published checksum (SHA-256 "
            f"{found[:16]}…, expected {file.sha256[:16]}…), so it was removed. Try again: it is downloaded afresh."
        )
    return path
