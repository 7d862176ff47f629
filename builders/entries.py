"""User entries: a model the user brings (a factory pair, one factory, or an ONNX file) as a
spec, so every command treats it exactly like a family variant.

An entry is a `ModelSpec` whose signature and grid come from its TOML table (or Python
call) instead of a family's hyper-parameters:

    [models.my-cnn]
    torch = "my_models.py:build_torch"     # FILE.py:CALLABLE (relative to the TOML file)
    keras = "my_models.py:build_keras"     #   or package.module:CALLABLE
    inputs = [{ name = "image", dtype = "float32", shape = ["batch", 3, 32, 32] }]
    dims = { batch = [1, 7] }

This module holds what every kind of entry shares: the `dims` grid, the tables' common
checks, and the base class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from onnxtwin.builders import grids
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.runtime.errors import OnnxtwinError, cause
from onnxtwin.runtime.files import shown
from onnxtwin.runtime.metrics import Comparison

MAX_DIM = 2**16
"""Largest value a dim of an entry's grid may take."""
MAX_POINTS = 64
"""Most points an entry's grid may expand to (each one runs every path)."""
EXAMPLE_FIRST = 6
"""The first export example size for a dim grids.EXPORT_EXAMPLE does not size (3 for
`batch`, 5 for `seq`); each next one is the next unused: sizes >= 2 and distinct, so
the torch exporter keeps each dim dynamic."""

RESERVED_DIMS = frozenset({"actual", "expected", "output", "tolerance", "passed", "model",
                           "dims", *(f.name for f in dataclasses.fields(Comparison))})
"""Field names of a comparison record (runtime.comparison.Check.to_dict), which carries
each dim as a field of its own."""
Grid = tuple[tuple[str, tuple[int, ...]], ...]
"""A frozen grid: ((dim, values), ...)."""


class EntryError(OnnxtwinError):
    """A user entry that cannot be used, said in one line that names the entry."""


def refuse(entry: str, expected: str, given: object) -> EntryError:
    """The one-line error of an entry: `model NAME: expected ..., got ...` (`given` shown
    as its short repr)."""
    return EntryError(f"model {entry!r}: expected {expected}, got {shown(given)}")


def failed(entry: str, expected: str, error: BaseException) -> EntryError:
    """The one-line error of an entry whose model or factory raised `error`: its type and
    the first line of its message, which may hold the user's own words."""
    if isinstance(error, OnnxtwinError):
        return EntryError(f"model {entry!r}: expected {expected}, got: {cause(error, 600)}")
    return EntryError(f"model {entry!r}: expected {expected}, got {type(error).__name__}: "
                      f"{cause(error)}")


def parse_dims(entry: str, value: object, signature_dims: tuple[str, ...]) -> Grid:
    """An entry's `dims` table ({dim: [sizes]}) checked against its signature's dims."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise refuse(entry, "dims as a table {dim = [sizes]}", value)
    taken = sorted(set(signature_dims) & RESERVED_DIMS)
    if taken:
        raise refuse(entry, f"dim names other than the report's field names "
                     f"{sorted(RESERVED_DIMS)}", taken)
    unknown = sorted(set(value) - set(signature_dims))
    if unknown:
        raise refuse(entry, f"dims naming only the signature's dims {list(signature_dims)}",
                     unknown)
    grid = []
    for dim in signature_dims:
        sizes = value.get(dim, grids.MATRIX.get(dim))
        if sizes is None:
            raise refuse(entry, f"sizes for dim {dim!r} in dims (it has no default)",
                         dict(value))
        if (not isinstance(sizes, list | tuple) or not sizes
                or not all(type(v) is int and 1 <= v <= MAX_DIM for v in sizes)):
            raise refuse(entry, f"dims.{dim} as a non-empty list of ints in [1, {MAX_DIM}]",
                         sizes)
        grid.append((dim, tuple(dict.fromkeys(sizes))))
    points = 1
    for _, sizes in grid:
        points *= len(sizes)
    if points > MAX_POINTS:
        raise refuse(entry, f"dims with at most {MAX_POINTS} combinations", points)
    return tuple(grid)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes: what an entry's code or weights are, for stamps and caches."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class EntrySpec(ModelSpec):
    """Base of the user entries: a grid given with the entry (each kind says where its
    signature comes from).

    The gate and the matrix both run every point of the grid (the gate skips the export
    example, where the export was traced).
    """

    family: ClassVar[str] = "entry"
    frameworks: ClassVar[tuple[str, ...]] = ()
    """An ONNX file has no framework side; a factory entry says which it has."""
    grid: Grid = ()

    def __post_init__(self) -> None:
        """Entries check themselves where they are parsed; only the name is checked here."""
        from onnxtwin.runtime.files import safe_name

        safe_name(self.name, "model name")

    def parameter_count(self) -> int:
        return 0

    def example_dims(self, given: Mapping[str, int] | None = None) -> dict[str, int]:
        """The export example: the `given` sizes, grids.EXPORT_EXAMPLE's, else distinct
        sizes >= 2 (distinct, so that an output axis is named for the right dim)."""
        given = dict(given or {})
        taken = set(given.values())
        sizes = {}
        for d in self.input_dims:
            size = given.get(d) or grids.EXPORT_EXAMPLE.get(d)
            if size is None or (size in taken and d not in given):
                size = next(s for s in itertools.count(EXAMPLE_FIRST) if s not in taken)
            sizes[d] = size
            taken.add(size)
        return sizes

    @property
    def input_dims(self) -> tuple[str, ...]:
        """The named dims of the inputs (what the grid spans)."""
        return self.signature.dims

    def timing_dims(self) -> dict[str, int]:
        """grids.TIMING's size of a dim where the entry's grid holds it, else the grid's
        largest: an entry is only run at sizes it declared."""
        return {d: grids.TIMING[d] if grids.TIMING.get(d) in sizes else max(sizes)
                for d, sizes in self.grid}

    def matrix_points(self) -> list[dict[str, int]]:
        return grids.combinations(dict(self.grid), self.input_dims)

    def gate_points(self) -> list[dict[str, int]]:
        example = self.example_dims()
        return [p for p in self.matrix_points() if p != example] or self.matrix_points()

    def described(self) -> str:
        return f"dims {dict((d, list(v)) for d, v in self.grid)}"

    def hyperparameters(self) -> dict[str, object]:
        """What the entry is, as JSON-ready values (stamped on its exports)."""
        return {"grid": {d: list(v) for d, v in self.grid}}
