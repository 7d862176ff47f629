"""Every grid of named dims and every seed onnxtwin draws with, each named for its purpose.

A grid gives each named dynamic dim (`batch`, `seq`, or any name a signature uses) the
values it takes; `combinations` expands it over the dims a signature really has, so a
grid with `seq` runs an image model at its batches only. A family may declare its own
grids (ModelSpec.GATE_GRID, MATRIX_GRID); these are the defaults.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import shown

Grid = Mapping[str, tuple[int, ...]]
"""Dim name -> the values it takes."""
Dims = dict[str, int]
"""One point of a grid: dim name -> size."""

GATE: Grid = {"batch": (1, 7), "seq": (1, 12, 50)}
"""The export gate and native parity: each file run against its framework at these shapes."""
MATRIX: Grid = {"batch": (1, 7), "seq": (1, 12, 50, 256)}
"""`onnxtwin check`: every path at every point."""
TIMING: Dims = {"batch": 7, "seq": 50}
"""The one shape at which `check` times each path."""
EXPORT_EXAMPLE: Dims = {"batch": 3, "seq": 5}
"""The torch exporter's example: sizes >= 2 and different, or a dim may become static."""
SLOW: Grid = {"batch": (64,), "seq": (256,)}
"""The slow tier's native parity: batch 64 at sequence 256."""
LONG: Grid = {"batch": (4,), "seq": (2048,)}
"""The slow tier's Transformer at its longest sequence."""
BENCH_BATCHES = (1, 64)
BENCH_SEQ = 50
"""`onnxtwin bench`: batch sizes, and the sequence length of token models."""

WEIGHT_SEED = 0
"""Default seed of the twins' weight initialisation (`--seed`)."""
MATRIX_SEED = 0
"""Default seed of the matrix inputs (`check --seed` sets it with the weights)."""
GATE_SEED = 7
"""The gate's inputs: different from the matrix's, so an export is not judged on its test."""
NATIVE_SEED = 1
"""Native parity's inputs (`onnxtwin build`)."""
EXAMPLE_SEED = 0
"""The export example's inputs."""
BENCH_SEED = 0
"""The benchmarks' inputs."""
SLOW_SEEDS = (11, 12)
"""The slow tier's other weight and input seeds."""
MAX_SEED = 2**32 - 1
"""The largest seed every generator takes (numpy's legacy one, scikit-learn's, Keras')."""


def check_seed(seed: object) -> int:
    """`seed` if every generator takes it, else one line: torch overflows above 2**64 and
    numpy refuses negative seeds, each with a traceback of its own."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise OnnxtwinError(f"seed: expected an int in [0, {MAX_SEED}], got {shown(seed)}")
    return seed


def combinations(grid: Grid, dims: Iterable[str]) -> list[Dims]:
    """Every point of `grid` over the named `dims` a signature has, in the grid's order.

    A dim of the signature that the grid does not name is an error: it would be unset.
    """
    present = list(dict.fromkeys(dims))
    missing = [d for d in present if d not in grid]
    if missing:
        raise OnnxtwinError(f"grid {dict(grid)}: expected values for every named dim of the "
                            f"signature {present}, got none for {missing}")
    names = [d for d in grid if d in present]
    return [dict(zip(names, values, strict=True))
            for values in itertools.product(*(grid[d] for d in names))]


def restrict(point: Mapping[str, int], dims: Iterable[str]) -> Dims:
    """The part of `point` (e.g. TIMING) that names one of `dims`."""
    dims = set(dims)
    return {d: v for d, v in point.items() if d in dims}

