"""Writing into the output folder so that nothing is ever half-written or overwritten.

Every file is first written under a temporary `.partial-` name in the folder it will live in, then given
its final name by a hard link, which fails instead of replacing an existing file; JSON records that are
meant to change (the storyboard, job records) are replaced atomically from a temporary file of their own.
A crash leaves only `.partial-` files, which `clean_temporaries` removes at the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from library.layout import CORRUPT_SUFFIX, TMP_PREFIX
from pipelines.digests import sha256_of as sha256_file  # noqa: F401  (the library's name for it)
from pipelines.errors import UserError

MB = 1024 * 1024
_STARTED = time.time()  # about when this process started: every temporary it writes is newer


class LibraryError(UserError):
    """A problem with the output folder a user can act on: not found, full, not writable."""


def _machine_tag() -> str:
    """Eight hex digits naming this host, boot and process-id namespace: a process id in a temporary's name
    means something only where this tag is the same (another container or machine may share the folder)."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(source).read_text().strip() if "boot_id" in source else os.readlink(source))
        except OSError:
            parts.append("?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


MACHINE_TAG = _machine_tag()


def temporary(folder: Path, suffix: str) -> Path:
    """A fresh temporary name in `folder` (unique per process and call, so concurrent writers never share),
    naming the machine and the process writing it (`clean_temporaries` reads them)."""
    return Path(folder) / f"{TMP_PREFIX}{MACHINE_TAG}-{os.getpid()}-{time.monotonic_ns()}{suffix}"


def link_no_overwrite(src: Path, dst: Path) -> None:
    """Give `src` the name `dst`, failing with FileExistsError rather than replacing anything there."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: check, then rename
        if dst.exists():
            raise FileExistsError(dst) from None
        os.replace(src, dst)


def publish(tmp: Path, folder: Path, stem: str, suffix: str, taken: callable = lambda stem: False) -> Path:
    """Link a finished temporary file to the first free `<stem>[-n]<suffix>` in `folder`; never overwrites.
    `taken(stem)` lets a caller skip stems whose companion files (sidecars) already exist."""
    for n in range(1, 10_000):
        candidate = stem if n == 1 else f"{stem}-{n}"
        final = Path(folder) / f"{candidate}{suffix}"
        if taken(candidate):
            continue
        try:
            link_no_overwrite(tmp, final)
            return final
        except FileExistsError:
            continue
    raise LibraryError(f"No free file name for '{stem}' in {folder}.")


def write_png(path: Path, picture: Any) -> None:
    """Replace `path` with `picture` (a PIL image) as a PNG atomically: readers never see half a picture."""
    tmp = temporary(Path(path).parent, ".png")
    try:
        picture.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        discard(tmp)


def write_json(path: Path, data: Any) -> None:
    """Replace `path` atomically: readers see the old content or the new, never a mix or an empty file."""
    path = Path(path)
    tmp = temporary(path.parent, ".json")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        discard(tmp)
        raise disk_error(err, path.parent) from None


def read_json(path: Path) -> Any:
    """The JSON at `path`; ValueError (with the reason) when it is unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{Path(path).name} could not be read: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{Path(path).name} is not valid JSON: {err}") from None


def set_aside(path: Path) -> Path | None:
    """Rename a damaged saved file out of the way (kept, for the user to look at) so the studio can start."""
    target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, target)
        return target
    except OSError:
        return None


def free_mb(folder: Path) -> float:
    return shutil.disk_usage(folder).free / MB


def check_room(folder: Path, need_mb: float, what: str) -> None:
    """Refuse before the work when `folder` cannot take `need_mb` (with some slack for the records)."""
    folder = Path(folder)
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("/"))
    free = free_mb(probe)
    if free < need_mb + 1:
        raise LibraryError(
            f"The output folder is full: {free:.0f} MB free in {folder}, and {what} needs about {need_mb:.0f} MB. "
            f"Free some space or choose another output folder."
        )


def check_writable(folder: Path) -> None:
    """LibraryError unless `folder` is (or can be made) a folder this process can write into."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LibraryError(f"The output folder '{folder}' is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary(folder, ".probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise LibraryError(f"The output folder '{folder}' cannot be written: {err.strerror or err}.") from None


def disk_error(err: OSError, folder: Path) -> UserError | OSError:
    """A plain message for a full or read-only disk; other OS errors pass through unchanged."""
    import errno

    if err.errno == errno.ENOSPC:
        return LibraryError(f"The output folder is full ({free_mb(folder):.0f} MB free in {folder}). Free some space.")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return LibraryError(f"The output folder '{folder}' cannot be written: {err.strerror}.")
    return err


def write_error(err: Exception, folder: Path) -> Exception:
    """What to tell the user when writing into `folder` failed with `err`: a full or read-only disk, named by the
    error's errno or, where ffmpeg's or moviepy's own words lost it on the way, found by probing the folder
    (LibraryError naming the folder and the cause); any other failure is `err` itself."""
    if isinstance(err, OSError):
        plain = disk_error(err, folder)
        if plain is not err:
            return plain
    try:
        check_writable(folder)
    except LibraryError as unwritable:
        return unwritable
    return err


def discard(path: Path) -> None:
    """Remove a temporary file if it is there, never raising: on a disk that turned read-only even removing a
    missing file fails (EROFS), and the error that brought the caller here is the one to report. What cannot
    be removed now is a `.partial-` file, which `clean_temporaries` removes at a later start."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def clean_temporaries(root: Path, older_than_s: float = 3600) -> int:
    """Remove what crashed writes left behind, anywhere under `root` (films/, .jobs/, audio/ too): those
    whose writing process is gone (a studio stopped mid-export restarts within the hour), and any older
    than `older_than_s`; other recent ones may belong to a write still in progress."""
    removed = 0
    now = time.time()
    for path in Path(root).rglob(f"{TMP_PREFIX}*"):
        try:
            mtime = path.stat().st_mtime
            if path.is_file() and (now - mtime > older_than_s or _writer_gone(path.name, mtime)):
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def _writer_gone(name: str, mtime: float) -> bool:
    """Whether the process named in a temporary's name (`temporary`) no longer runs. One with this
    process's id from before it started was an earlier run's (a container's studio is often process 1
    each time). False when unknown: other names, a temporary of another machine or container (its process
    ids are not ours to check: it may be writing still), or no POSIX process check (Windows' os.kill would
    kill)."""
    match = re.match(rf"{re.escape(TMP_PREFIX)}([0-9a-f]{{8}})-(\d+)-", name)
    if match is None or match.group(1) != MACHINE_TAG or os.name != "posix":
        return False
    pid = int(match.group(2))
    if pid == os.getpid():
        return mtime < _STARTED - 2  # a margin for filesystems that keep whole seconds
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists, run by another user
        return False
    return False
