"""Files: atomic writes (a reader sees the old file or the new one, never a partial one),
one check of the files a user names, and one rule for names that become paths."""

from __future__ import annotations

import fcntl
import json
import os
import re
import reprlib
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxtwin.runtime.errors import OnnxtwinError

TEMPORARY_PREFIX = ".onnxtwin-tmp-"
STAGING = "staging"
_TEMPORARY = re.compile(re.escape(TEMPORARY_PREFIX) + r"([0-9]{1,10})-[0-9a-f]{8}-.+", re.DOTALL)


def temporary_name(name: str) -> str:
    """A name beside `name` for a file or folder being written: a prefix only onnxtwin
    writes, the writer's pid (to tell a dead writer's leftovers), a random part, then
    `name` (writers that insist on a suffix, as Keras on `.weights.h5`, accept it)."""
    return f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}"


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A process killed with SIGKILL cannot remove its temporary file; the next write into the
    folder does. An OSError that names no file (a full disk) or the temporary one is given
    `path`, the name the user knows.
    """
    target = Path(path)
    _check_target(target)
    make_folder(target.parent)
    remove_stale_temporaries(target.parent)
    tmp = target.with_name(temporary_name(target.name))
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as e:
        if e.filename is None or str(e.filename) == str(tmp):
            raise OSError(e.errno, e.strerror or str(e), str(target)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _check_target(target: Path) -> None:
    """Refuse, in one line and before the work, a write that would replace a folder (a
    symbolic link is replaced itself; what it points to is never written through)."""
    if target.is_dir() and not target.is_symlink():
        raise OnnxtwinError(f"{target}: expected a file path to write, got a directory")


def make_folder(folder: Path) -> Path:
    """Create `folder` and its parents unless it exists; one line if something that is not
    a folder holds its name."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OnnxtwinError(f"{folder}: expected a folder, got "
                            f"{_kind(folder.stat().st_mode)}") from None
    return folder


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


def staging_folder(folder: Path) -> Path:
    """A folder inside `folder` to write a batch of files into before moving them in (see
    remove_stale_temporaries for what happens to it when its writer is killed)."""
    return folder / temporary_name(STAGING)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files in `folder` whose writing process no longer runs, and the
    staging folders (`staging_folder`) of such processes.

    Only entries whose whole name is one `temporary_name` makes: regular files, and real
    folders named for staging; a user's file that merely looks alike, any other folder or a
    symbolic link is never touched.
    """
    for entry in folder.glob(TEMPORARY_PREFIX + "*"):
        match = _TEMPORARY.fullmatch(entry.name)
        if not match or _running(int(match[1])):
            continue
        if _is_regular(entry):
            entry.unlink(missing_ok=True)
        elif entry.name.endswith(f"-{STAGING}") and _is_folder(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _is_folder(path: Path) -> bool:
    """Whether `path` itself (not what a symbolic link points to) is a folder."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _is_regular(path: Path) -> bool:
    """Whether `path` itself (not what a symbolic link points to) is a regular file."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:  # larger than any pid the system gives
        return False
    return True


def existing_file(path: Path, what: str) -> Path:
    """`path` if it is a non-empty regular file (symbolic links followed); else one line
    saying it was expected to be `what` and what it is. A FIFO or a device is refused
    before anything opens it, so reading never blocks."""
    try:
        status = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        got = "a symbolic link to nothing" if path.is_symlink() else "a path that does not exist"
        raise OnnxtwinError(f"{path}: expected {what}, got {got}") from None
    except ValueError as e:  # an embedded NUL byte
        raise OnnxtwinError(f"{path!r}: expected {what}, got an invalid path ({e})") from None
    if not stat.S_ISREG(status.st_mode):
        raise OnnxtwinError(f"{path}: expected {what}, got {_kind(status.st_mode)}")
    if status.st_size == 0:
        raise OnnxtwinError(f"{path}: expected {what}, got an empty file")
    return path


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISREG, "a file"))


def _kind(mode: int) -> str:
    """What a file is, in words."""
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1 to 64 ASCII letters, digits, '_', '.' or '-', starting with a letter or digit"
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


def shown(value: object) -> str:
    """repr(value), shortened for a one-line message (a user's megabyte name must not
    become the message)."""
    return _SHORT.repr(value)


def safe_name(name: object, what: str) -> str:
    """`name` if it may become a file or folder name (so never '', '.', '..', a '/' or a
    control character); else one line naming `what`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise OnnxtwinError(f"{what}: expected {NAME_RULE}, got {shown(name)}")
    return name


def inside(folder: str | Path, name: str) -> Path:
    """FOLDER/NAME, refused in one line unless it resolves to an entry directly in FOLDER
    (symbolic links followed): an output never lands outside its output folder."""
    folder = Path(folder)
    target = folder / name
    if "\0" in name or target.resolve().parent != folder.resolve():
        raise OnnxtwinError(f"output name: expected an entry of the output folder {folder}, "
                            f"got {shown(name)}, which leads elsewhere")
    return target
