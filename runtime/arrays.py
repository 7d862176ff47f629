"""Named arrays in .npy/.npz files: loaded without pickle, written atomically."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path, existing_file


def load_arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """An .npz's arrays by name, or an .npy as the only input of a single-input model."""
    existing_file(path, "an .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise OnnxtwinError(f"{path}: expected an .npy or .npz file of numeric arrays, got "
                            f"{type(e).__name__}: {e}") from None
    if isinstance(loaded, np.ndarray):
        if len(names) != 1:
            raise OnnxtwinError(f"{path}: expected an .npz with arrays {names} (the model has "
                                f"{len(names)} inputs), got one .npy array")
        return {names[0]: loaded}
    with loaded:
        try:
            return {k: loaded[k] for k in loaded.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise OnnxtwinError(f"{path}: expected readable arrays, got {type(e).__name__}: "
                                f"{e}") from None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz (uncompressed) atomically."""
    if path.suffix != ".npz":
        raise OnnxtwinError(f"{path}: expected an output path ending in .npz, got "
                            f"{path.suffix or 'no suffix'}")
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)
