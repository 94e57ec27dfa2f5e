"""`Library`: the output folder behind one object. The studio's pages, its job workers and the CLI go
through it for everything they keep: clips, the storyboard, films, audio, job records."""

from __future__ import annotations

import re
import shutil
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from library import film, post, post_models
from library.clips import (
    Clip,
    ClipFiles,
    ClipOptions,
    move_to_trash,
    remove_half_published,
    save_clip,
)
from library.files import (
    LibraryError,
    check_writable,
    clean_temporaries,
    discard,
    disk_error,
    publish,
    read_json,
    sha256_file,
    temporary,
)
from library.index import ClipIndex
from library.layout import (
    AUDIO_DIR,
    FILMS_DIR,
    JOBS_DIR,
    PREVIEWS_DIR,
    STORYBOARD_FILE,
    TRASH_DIR,
    plain_name,
)
from library.media import frame_at, last_frame, read_frames, video_info
from library.post import PostRequest
from library.posters import Posters
from library.storyboard import Shot, Storyboard, StoryboardStore
from library.takes import TakeWriter, recover_take
from pipelines.manager import GenerationResult, Progress

AUDIO_SUFFIXES = (".mp3", ".wav", ".m4a", ".aac", ".ogg", ".opus", ".flac")
MAX_AUDIO_MB = 200
OUT_POINT_EPSILON_S = 1e-3  # an Out point ends its shot: the frame shown is the one just before it


class Library:
    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.storyboard = StoryboardStore(self.root / STORYBOARD_FILE)
        self.index = ClipIndex(self.root)
        self._digests: dict[Path, tuple[tuple[int, int], str]] = {}  # audio files' SHA-256 by (mtime, size)
        self.posters = Posters(self.root)
        # offline unless the studio or the CLI, which know the user's choice, set their own
        self.post_models = post_models.PostModels(post_models.UpscalerFolder(), offline=True)

    @classmethod
    def open(cls, root: Path) -> Library:
        """The library at `root`, made if missing; LibraryError when it cannot be written. Leftovers of
        crashed writes are removed and a damaged storyboard is set aside (see `warnings`)."""
        check_writable(Path(root).expanduser())
        library = cls(root)
        clean_temporaries(library.root)
        remove_half_published(library.root)
        library.storyboard.load()
        return library

    @property
    def jobs_dir(self) -> Path:
        return self.root / JOBS_DIR

    @property
    def films_dir(self) -> Path:
        return self.root / FILMS_DIR

    @property
    def audio_dir(self) -> Path:
        return self.root / AUDIO_DIR

    @property
    def trash_dir(self) -> Path:
        return self.root / TRASH_DIR

    @property
    def warnings(self) -> list[str]:
        return [w for w in (self.storyboard.warning,) if w]

    # ---- clips --------------------------------------------------------------------------------
    def clips(self) -> list[Clip]:
        """Newest first (through the index: only new or changed sidecars are read)."""
        return self.index.clips()

    def search(self, query: str = "", model: str | None = None, task: str | None = None) -> list[Clip]:
        """The clips, newest first, whose prompt holds every word of `query` (any case), made by `model` and of
        `task` (None: any)."""
        words = str(query or "").lower().split()
        found = []
        for clip in self.index.clips():
            if model is not None and clip.sidecar.get("model") != model:
                continue
            if task is not None and clip.sidecar.get("task") != task:
                continue
            prompt = str(clip.settings.get("prompt", "")).lower()
            if all(word in prompt for word in words):
                found.append(clip)
        return found

    def clip(self, name: str) -> Clip:
        found = self.index.find(name)
        if found is None:
            raise LibraryError(f"'{name}' is not a clip of the library.")
        return found

    def save_clip(self, result: GenerationResult, options: ClipOptions = ClipOptions()) -> ClipFiles:  # noqa: B008
        """Publish the clip, then its poster (a clip that cannot be read yet gets one when the grid asks)."""
        files = save_clip(result, self.root, options)
        clip = self.index.find(files.video.name)
        if clip is not None:
            self.posters.make(clip)
        return files

    # ---- watermarks ----------------------------------------------------------------------------------
    def find_mark(self, payload: int) -> tuple[str, dict] | None:
        """The clip or film whose watermark payload this is (its sidecar or record says so): (file name, that
        sidecar or record), or None when this library holds none. A stripped copy leads back here."""
        wanted = f"{payload:08x}"
        carrying = [c for c in self.clips() if c.sidecar.get("provenance", {}).get("watermark") == wanted]
        # upscaled and smoothed copies carry their source's mark: the source is the clip it names first
        for clip in sorted(carrying, key=lambda c: bool(c.sidecar.get("provenance", {}).get("watermark_of"))):
            return clip.name, clip.sidecar
        for record in sorted(self.films_dir.glob("*.json"), reverse=True) if self.films_dir.is_dir() else []:
            try:
                data = read_json(record)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("provenance", {}).get("watermark") == wanted:
                return record.name[: -len(".json")], data
        return None

    # ---- long takes ---------------------------------------------------------------------------------
    def take_folder(self, job_id: str) -> Path:
        """Where a take's finished windows wait while it runs (job ids are the queue's own hex names)."""
        return self.jobs_dir / f"{job_id}.take"

    def start_take(self, job_id: str, plan: dict, asked: dict, size: tuple[int, int],
                   options: ClipOptions) -> TakeWriter:  # fmt: skip
        return TakeWriter.start(self.take_folder(job_id), plan, asked, size, options)

    def publish_take(self, writer: TakeWriter, input_image: Image.Image | None = None,
                     stopped: str | None = None) -> ClipFiles:  # fmt: skip
        """The take's finished windows as one clip in the library, with its poster; the take's folder removed."""
        files = writer.publish(self.root, input_image, stopped)
        writer.remove()
        clip = self.index.find(files.video.name)
        if clip is not None:
            self.posters.make(clip)
        return files

    def recover_take(self, job_id: str, input_image: Image.Image | None = None) -> ClipFiles | None:
        """A take the studio stopped under (a crash, a power cut): its finished windows kept as a clip, if any."""
        folder = self.take_folder(job_id)
        return recover_take(folder, self.root, input_image) if folder.is_dir() else None

    # ---- post-production ------------------------------------------------------------------------
    def check_post(self, action: str, name: str, model: str | None, **how: object) -> PostRequest:
        """A checked upscale (`scale` or `height`) or frame interpolation (`factor` or `fps`) of the clip
        `name`; PostError (a UserError) naming the field when it cannot be done."""
        clip = self.index.find(plain_name(name) or "") if isinstance(name, str) else None
        if clip is None:
            raise post.PostError(f"'{str(name)[:80]}' is not a clip in the library ({self.root}).")
        model = model or self.post_models.default
        if model not in (post_models.DEFAULT, post_models.TEST):  # a file: there now (the defaults come later)
            find = self.post_models.upscaler_file if action == post.UPSCALE else self.post_models.interpolator_file
            find(model)
        if action == post.UPSCALE:
            scale = 2 if model == post_models.TEST else None  # the test upscaler's; the default's is read later
            return post.check_upscale(clip, model, how.get("scale"), how.get("height"), model_scale=scale or 2)
        if action == post.INTERPOLATE:
            return post.check_interpolate(clip, model, how.get("factor"), how.get("fps"))
        raise post.PostError(f"'{action}' is not a post-production step (upscale, interpolate).")

    def post(
        self, request: PostRequest, device: str, options: ClipOptions = ClipOptions(),  # noqa: B008
        cancel: threading.Event | None = None, report: Callable[[Progress], None] | None = None,
        downloading: Callable[[float, str], None] | None = None, out_dir: Path | None = None,
    ) -> ClipFiles:  # fmt: skip
        """Run a checked post-production request on `device` and publish its clip (into this library, or
        `out_dir`) with a poster."""
        clip = self.clip(request.source)
        out_dir = Path(out_dir) if out_dir is not None else self.root
        if request.action == post.UPSCALE:
            upscaler = self.post_models.upscaler(self.post_models.upscaler_file(request.model, downloading), device)
            files = post.upscale_clip(clip, request, upscaler, out_dir, options, cancel, report)
        else:
            path = self.post_models.interpolator_file(request.model, downloading)
            interpolator = self.post_models.interpolator(path, device)
            files = post.interpolate_clip(clip, request, interpolator, out_dir, options, cancel, report)
        made = self.index.find(files.video.name) if out_dir == self.root else None
        if made is not None:
            self.posters.make(made)
        return files

    def trash(self, name: str) -> Path:
        """Move a clip to `<output>/trash/`; refused while the storyboard uses it."""
        clip = self.clip(name)
        used = [n for n, shot in enumerate(self.storyboard.load().shots, start=1) if shot.clip == clip.name]
        if used:
            raise LibraryError(f"This clip is shot {used[0]} of the storyboard: remove it there first.")
        return move_to_trash(self.root, clip.name)

    def last_frame(self, name: str) -> Image.Image:
        return last_frame(self.clip(name).video)

    def frame_at(self, name: str, seconds: float) -> Image.Image:
        return frame_at(self.clip(name).video, seconds)

    def out_frame(self, shot: Shot) -> Image.Image:
        """The last picture a shot shows in the film: the frame just before its Out point, the clip's last
        frame when it runs to the end. The shot editor shows it, and an extension starts from it, so the film
        never cuts from the Out point back to a later moment of the clip."""
        video = self.clip(shot.clip).video
        if shot.end_s is None:
            return last_frame(video)
        return frame_at(video, max(0.0, shot.end_s - OUT_POINT_EPSILON_S))

    def frames_before(self, shot: Shot, count: int) -> np.ndarray:
        """The last `count` frames a shot shows in the film (up to its Out point), which an extension continues;
        LibraryError when the clip is gone or shorter."""
        clip = self.clip(shot.clip)
        last = None if shot.end_s is None else shot.end_s - OUT_POINT_EPSILON_S
        kept: deque[np.ndarray] = deque(maxlen=count)
        frames = read_frames(clip.video)
        fps = video_info(clip.video).fps or 1.0
        for n, frame in enumerate(frames):
            if last is not None and n / fps > last:
                break
            kept.append(frame)
        frames.close()
        if len(kept) < count:
            raise LibraryError(f"{shot.clip} shows {len(kept)} frames up to its Out point; the extension continues "
                               f"from its last {count}.")  # fmt: skip
        return np.stack(kept)

    def clip_seconds(self, name: str) -> float:
        return film.clip_seconds(self.clip(name))

    def poster(self, clip: Clip) -> Path | None:
        """The clip's poster frame for the library grid, made now if it is missing or older than the clip;
        None when the clip cannot be read, so one bad file never empties the grid."""
        return self.posters.make(clip)

    # ---- audio for the storyboard ---------------------------------------------------------------
    def keep_audio(self, upload: Path) -> str:
        """Copy an uploaded audio file into `<output>/audio/` (uploads live in a cache that is cleared) and
        return the name the storyboard uses for it. The same file uploaded again keeps its first copy; another file
        under a name already kept gets a numbered name (`music-2.wav`), so an edited track never plays the old one."""
        upload = Path(upload)
        if upload.parent == self.audio_dir:
            return upload.name
        if upload.suffix.lower() not in AUDIO_SUFFIXES:
            raise LibraryError(f"Audio must be one of {', '.join(AUDIO_SUFFIXES)}; got '{upload.name}'.")
        if upload.stat().st_size > MAX_AUDIO_MB * 2**20:
            raise LibraryError(f"Audio files over {MAX_AUDIO_MB} MB are refused.")
        name = plain_name(upload.name) or f"audio{upload.suffix.lower()}"
        same = self._kept_copy(upload, Path(name))
        if same is not None:
            return same
        try:
            self.audio_dir.mkdir(parents=True, exist_ok=True)
            tmp = temporary(self.audio_dir, upload.suffix)
            shutil.copyfile(upload, tmp)
            try:
                return publish(tmp, self.audio_dir, Path(name).stem, Path(name).suffix).name
            finally:
                discard(tmp)
        except OSError as err:
            raise disk_error(err, self.audio_dir) from None

    def _kept_copy(self, upload: Path, name: Path) -> str | None:
        """The name of a kept copy of exactly this upload (`<stem>[-n]<suffix>`, same SHA-256), if any. Content
        decides, not name and size: an edited track of the same length has the same size (every WAV does)."""
        if not self.audio_dir.is_dir():
            return None
        size, digest = upload.stat().st_size, None
        pattern = re.compile(rf"{re.escape(name.stem)}(-\d+)?{re.escape(name.suffix)}")
        for kept in sorted(self.audio_dir.iterdir()):
            if not pattern.fullmatch(kept.name) or not kept.is_file() or kept.stat().st_size != size:
                continue
            digest = digest or self._sha256(upload)
            if self._sha256(kept) == digest:
                return kept.name
        return None

    def _sha256(self, path: Path) -> str:
        """A file's SHA-256, kept while its (mtime, size) stay the same: the storyboard's summary checks its
        audio on every edit, and a 200 MB track is not read again each time."""
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        known = self._digests.get(path)
        if known is None or known[0] != stamp:
            known = self._digests[path] = (stamp, sha256_file(path))
        return known[1]

    def audio_path(self, name: str) -> Path:
        return film.audio_path(self.root, name)

    # ---- films --------------------------------------------------------------------------------
    def film_duration(self, board: Storyboard) -> float:
        return film.film_duration(board, self.root)

    def check_film(self, board: Storyboard) -> None:
        """StoryboardError for anything that would stop the export, before it is queued."""
        film.film_duration(board, self.root)

    def export_film(
        self, board: Storyboard, on_progress: Callable[[float, str], None] | None = None, sign: bool = True,
        cancel: threading.Event | None = None, mark: bool = False,
    ) -> Path:  # fmt: skip
        device = self.post_models.film_device
        models = film.FilmModels(
            interpolator=lambda: self.post_models.interpolator(self.post_models.interpolator_file(None), device),
            upscaler=lambda: self.post_models.upscaler(self.post_models.upscaler_file(None), device),
        )
        try:
            return film.export_film(board, self.root, on_progress=on_progress, sign=sign, cancel=cancel,
                                    models=models, mark=mark)  # fmt: skip
        finally:
            self.post_models.release()  # a film's models hold no GPU memory between exports

    def preview_film(self, board: Storyboard) -> Path:
        """A quick look at the film before the export: the same cut at most 320 px wide, at the clips' own
        frame rate, unsigned MP4, in `<output>/previews/` (the one before it is removed)."""
        film.film_duration(board, self.root)  # StoryboardError before any work
        if board.size:
            width, height = board.size
        else:
            first = self.clip(board.shots[0].clip).settings
            width, height = int(first.get("width") or 320), int(first.get("height") or 180)
        scale = min(1.0, 320 / width)
        small = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
        quick = replace(board, size=small, fps=None, slow_motion=False, format="mp4")
        folder = self.root / PREVIEWS_DIR
        old = list(folder.glob("*.mp4*")) if folder.is_dir() else []
        made = film.export_film(quick, self.root, sign=False, into=PREVIEWS_DIR)
        for path in old:
            path.unlink(missing_ok=True)
        return made
