"""Files: atomic writes (a reader sees the old file or the new one, never a partial one),
and one check of the files a user names."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxtwin.runtime.errors import OnnxtwinError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary name ends with the final name, so writers that insist on a suffix
    (Keras wants `.weights.h5`) accept it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{secrets.token_hex(4)}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def existing_file(path: Path, what: str) -> Path:
    """`path` if it is a non-empty file; else one line saying it was expected to be `what`."""
    if not path.exists():
        raise OnnxtwinError(f"{path}: expected {what}, got a path that does not exist")
    if not path.is_file():
        raise OnnxtwinError(f"{path}: expected {what}, got a directory")
    if path.stat().st_size == 0:
        raise OnnxtwinError(f"{path}: expected {what}, got an empty file")
    return path
