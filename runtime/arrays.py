"""Named arrays in .npy/.npz files: loaded without pickle and within a memory bound, written
atomically and without pickle.

A file is small on disk and may be large in memory: an .npy header can declare terabytes,
and a deflated .npz member inflates about a thousandfold. Every array's header is read
first, and the file is refused in one line unless the bytes it declares fit the bound and
fit the file; only then is anything allocated.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy

from onnxtwin.runtime.errors import OnnxtwinError, ResourceLimit, first_line
from onnxtwin.runtime.files import atomic_path, existing_file

MAX_ARRAY_BYTES = 2**31
"""Default bound (2 GiB) on the bytes a file's arrays may declare in all, and on an .npz's
decompressed size: twice the runtime's default per-run memory bound (1 GiB), so any input
a run admits loads; fixed, so a file loads or is refused alike on every machine."""
_NPY_MAGIC, _ZIP_MAGICS = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")  # a member, no member
_HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}


def load_arrays(path: Path, names: list[str],
                max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """An .npz's arrays by name, or an .npy as the only input of a single-input model.

    Refused in one line: arrays of Python objects (pickled), a header declaring more bytes
    than the file holds, and arrays (or, for an .npz, members decompressed) of more than
    `max_bytes` in all (ResourceLimit).
    """
    existing_file(path, "an .npy or .npz file")
    try:
        with path.open("rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            f.seek(0)
            if magic.startswith(_ZIP_MAGICS):
                return _load_npz(path, f, max_bytes)
            if magic != _NPY_MAGIC:
                raise OnnxtwinError(f"{path}: expected an .npy or .npz file of numeric "
                                    f"arrays, got a file that starts with {magic!r}")
            if len(names) != 1:
                raise OnnxtwinError(f"{path}: expected an .npz with arrays {names} (the model "
                                    f"has {len(names)} inputs), got one .npy array")
            return {names[0]: _read_array(f, path.stat().st_size, str(path), max_bytes)}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise OnnxtwinError(f"{path}: expected an .npy or .npz file of numeric arrays, got "
                            f"{type(e).__name__}: {first_line(e)}") from None


def _load_npz(path: Path, f: IO[bytes], max_bytes: int) -> dict[str, np.ndarray]:
    """Every member of the archive `f` as an array, its name without `.npy`.

    The members' declared decompressed sizes are bounded before any is read, and each
    array must fit its member: so the arrays fit the bound too, and a member whose zip
    header lies cannot inflate past it (zipfile stops at the declared size).
    """
    with zipfile.ZipFile(f) as archive:
        members = archive.infolist()
        inflated = sum(m.file_size for m in members)
        if inflated > max_bytes:
            raise ResourceLimit(f"{path}: expected an .npz of at most {max_bytes} bytes "
                                f"decompressed, got members declaring {inflated}")
        arrays = {}
        for member in members:
            _check_member(path, member)
            with archive.open(member) as stream:
                arrays[member.filename.removesuffix(".npy")] = _read_array(
                    stream, member.file_size, f"{path}: {member.filename}", max_bytes)
        return arrays


def _check_member(path: Path, member: zipfile.ZipInfo) -> None:
    if not member.filename.endswith(".npy"):
        raise OnnxtwinError(f"{path}: expected .npz members that are .npy arrays, got "
                            f"{member.filename!r}")
    if member.flag_bits & 0x1:
        raise OnnxtwinError(f"{path}: {member.filename}: expected an unencrypted member, got "
                            f"an encrypted one")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise OnnxtwinError(f"{path}: {member.filename}: expected a stored or deflated member "
                            f"(what numpy writes), got compression method "
                            f"{member.compress_type}")


def _read_array(f: IO[bytes], size: int, where: str, max_bytes: int) -> np.ndarray:
    """The array in `f` (an .npy stream of `size` bytes), after its header has shown that
    its data fit both `size` and `max_bytes`."""
    version = npy.read_magic(f)
    if version not in _HEADER_READERS:
        raise OnnxtwinError(f"{where}: expected .npy format version 1.0 or 2.0, got "
                            f"{version[0]}.{version[1]}")
    shape, fortran, dtype = _HEADER_READERS[version](f)
    if any(isinstance(n, bool) or n < 0 for n in shape):
        raise OnnxtwinError(f"{where}: expected a shape of sizes >= 0, got {shape}")
    if dtype.hasobject:
        raise OnnxtwinError(f"{where}: expected an array without Python objects (only pickle "
                            f"loads those), got dtype {dtype}")
    count = math.prod(shape)
    declared, held = count * dtype.itemsize, max(size - f.tell(), 0)
    if declared > held:
        raise OnnxtwinError(f"{where}: expected a file that holds the {declared} bytes its "
                            f"header declares ({dtype}{list(shape)}), got {held}")
    if declared > max_bytes:
        raise ResourceLimit(f"{where}: expected arrays of at most {max_bytes} bytes, got "
                            f"{dtype}{list(shape)}, {declared} bytes")
    return np.frombuffer(_read_exactly(f, declared), dtype, count=count).reshape(
        shape, order="F" if fortran else "C")


def _read_exactly(f: IO[bytes], size: int) -> bytearray:
    """`size` bytes of `f`, read in chunks into one buffer: never more, whatever `f` holds."""
    data = bytearray(size)
    filled = 0
    while filled < size:
        chunk = f.read(min(size - filled, 2**24))
        if not chunk:
            raise EOFError(f"expected {size} bytes of array data, got {filled}")
        data[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return data


def save_arrays(path: Path, arrays: dict[str, Any]) -> None:
    """Write an .npz (uncompressed) atomically, never with pickle: np.load(path,
    allow_pickle=False) reads it. Text outputs become fixed-width unicode arrays."""
    if path.suffix != ".npz":
        raise OnnxtwinError(f"{path}: expected an output path ending in .npz, got "
                            f"{path.suffix or 'no suffix'}")
    storable = {name: _storable(name, value) for name, value in arrays.items()}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, array in storable.items():  # as np.savez does, for any name
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                npy.write_array(member, array, allow_pickle=False)


def _storable(name: str, value: Any) -> np.ndarray:
    """`value` as an array .npy holds without pickle; one line if it cannot be."""
    try:
        array = np.asarray(value)
    except ValueError as e:  # ragged sequences
        raise OnnxtwinError(f"output {name!r}: expected a tensor, got {first_line(e)}") from None
    if not array.dtype.hasobject:
        return array
    if array.dtype == object and all(isinstance(v, str) for v in array.flat):
        return array.astype(str)
    kinds = sorted({type(v).__name__ for v in array.flat} if array.dtype == object else
                   {str(array.dtype)})
    raise OnnxtwinError(f"output {name!r}: expected a tensor of numbers, booleans or strings, "
                        f"got {', '.join(kinds)}")
