"""Files: atomic writes (a reader sees the old file or the new one, never a partial one),
and one check of the files a user names."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxtwin.runtime.errors import OnnxtwinError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary name carries the writer's pid and ends with the final name, so writers
    that insist on a suffix (Keras wants `.weights.h5`) accept it. A process killed with
    SIGKILL cannot remove its temporary file; the next write into the folder does.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    tmp = target.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], document: object) -> Path:
    """Write `document` as indented JSON (one trailing newline), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return Path(path)


LOCK_FILE = ".onnxtwin.lock"
_held: set[Path] = set()


@contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold `folder` for one writing process: a second one fails at once, in one line.

    An advisory lock (flock) on FOLDER/.onnxtwin.lock, released when the process ends
    however it ends; re-entrant within a process.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OnnxtwinError(f"output folder {folder}: expected no other onnxtwin process "
                                f"writing into it, got one holding {LOCK_FILE}") from None
        _held.add(folder)
        try:
            yield folder
        finally:
            _held.discard(folder)
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                shutil.rmtree(folder)  # failed before writing anything: leave no trace


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files in `folder` whose writing process no longer runs."""
    for tmp in folder.glob(".tmp-*-*-*"):
        pid = tmp.name.split("-")[1]
        if pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def existing_file(path: Path, what: str) -> Path:
    """`path` if it is a non-empty file; else one line saying it was expected to be `what`."""
    if not path.exists():
        raise OnnxtwinError(f"{path}: expected {what}, got a path that does not exist")
    if not path.is_file():
        raise OnnxtwinError(f"{path}: expected {what}, got a directory")
    if path.stat().st_size == 0:
        raise OnnxtwinError(f"{path}: expected {what}, got an empty file")
    return path
