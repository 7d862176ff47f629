"""A content-addressed cache of accepted exports, keyed by everything that shapes the file."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from onnxtwin.runtime.files import atomic_path


def cache_dir() -> Path:
    """$ONNXTWIN_CACHE, else ~/.cache/onnxtwin/exports."""
    env = os.environ.get("ONNXTWIN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "onnxtwin" / "exports"


def cache_key(**parts: object) -> str:
    """sha256 of the parts (spec hash, weights hash, framework, opset, tool versions...)
    and of the code that builds and exports the twins."""
    return hashlib.sha256(json.dumps({**parts, "code": code_hash()}, sort_keys=True).encode()
                          ).hexdigest()


@functools.cache
def code_hash() -> str:
    """sha256 of every source file under onnxtwin.builders and onnxtwin.export, subpackages
    included: a changed builder (say, another pooling op) never hits an entry exported by
    the old one."""
    import onnxtwin.builders
    import onnxtwin.export

    digest = hashlib.sha256()
    for package in (onnxtwin.builders, onnxtwin.export):
        root = Path(package.__path__[0])
        for source in sorted(root.rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode() + b"\0"
                          + source.read_bytes())
    return digest.hexdigest()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(key: str, destination: Path) -> dict | None:
    """Copy a cached file to `destination` and return its record, or None on a miss.

    An entry whose bytes no longer match its recorded sha256 is deleted and is a miss.
    """
    model, record = cache_dir() / f"{key}.onnx", cache_dir() / f"{key}.json"
    try:
        info = json.loads(record.read_text())
        if _digest(model) != info["sha256"]:
            raise ValueError("digest mismatch")
    except (OSError, ValueError, KeyError):
        model.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        return None
    with atomic_path(destination) as tmp:
        shutil.copyfile(model, tmp)
    return info


def store(key: str, source: Path, info: dict) -> None:
    """Add an accepted file and its record (summary data) to the cache."""
    model, record = cache_dir() / f"{key}.onnx", cache_dir() / f"{key}.json"
    with atomic_path(model) as tmp:
        shutil.copyfile(source, tmp)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps({**info, "sha256": _digest(model)}, indent=1))
