"""Finding a model's files: the Hugging Face cache (downloading on first use), a local folder, or a test model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipelines.catalogue import ModelSpec
from pipelines.testmodels import BUILD_VERSION, ensure_test_model


class ModelUnavailableError(RuntimeError):
    """The weights are not here and cannot be fetched; the message says what to do."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    revision: str  # the hub snapshot's commit, or a marker for local and test models


# (fraction 0..1, message) -> None
DownloadCallback = Callable[[float, str], None]


def _progress_class(callback: DownloadCallback, repo: str) -> type[tqdm]:
    """A tqdm that also tells our caller, so the UI and CLI can draw the download like any other wait."""

    class _Reporting(tqdm):
        done = 0  # counted here: a disabled tqdm (HF_HUB_DISABLE_PROGRESS_BARS) does not count

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self.done += n or 0
            if self.total:
                callback(min(1.0, self.done / self.total), f"Downloading {repo}: {self.done:g}/{self.total:g} files")
            return shown

    return _Reporting


def resolve_weights(spec: ModelSpec, offline: bool, on_progress: DownloadCallback | None = None) -> ResolvedWeights:
    """Local path and revision of a model's files; downloads into the standard HF cache on first use."""
    if spec.is_test:
        return ResolvedWeights(ensure_test_model(spec.id), f"random-weights-v{BUILD_VERSION}")
    if spec.local_path:
        return ResolvedWeights(Path(spec.local_path), "local-folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    report = on_progress or (lambda fraction, message: None)
    report(0.0, f"Looking for {spec.repo} in the Hugging Face cache")
    try:
        path = snapshot_download(
            spec.repo,
            local_files_only=offline,
            tqdm_class=_progress_class(report, spec.repo),
        )
    except LocalEntryNotFoundError as err:
        if offline:
            raise ModelUnavailableError(
                f"{spec.name} is not downloaded yet and offline mode is on. Run once without --offline to "
                f"download it, or pick a model that is already in the Hugging Face cache."
            ) from err
        raise ModelUnavailableError(
            f"{spec.name} could not be downloaded from the Hugging Face Hub (no connection?). "
            f"Check the network, or pick a model that is already downloaded."
        ) from err
    except HfHubHTTPError as err:
        raise ModelUnavailableError(f"Downloading {spec.repo} failed: {err}") from err
    except OSError as err:  # disk full, permissions
        raise ModelUnavailableError(f"Downloading {spec.repo} failed: {err}") from err
    report(1.0, f"{spec.repo} is ready")
    return ResolvedWeights(Path(path), Path(path).name)
