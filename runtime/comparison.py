"""The comparison engine: paths, a reference, a grid of inputs and per-output tolerances in;
one result out.

Native parity, the export gate, the matrix, accuracy parity and the pytest assertions
are uses of `compare_paths`. Each path runs once per case; then every path is compared
with the reference and, unless `pairs="reference"`, every pair of paths directly, on
every output. It lives in the torch-free runtime so the export gate can use it too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.metrics import Comparison, compare, json_ready
from onnxtwin.runtime.paths import Arrays, ModelPath

OutputTolerances = float | Mapping[str, float]
"""One max abs tolerance for every output, or {output: tolerance} with "" as the default."""
REPORTED_DIMS = ("batch", "seq")
"""Dims every comparison record carries (None where the model has no such dim)."""


def dims_record(dims: Mapping[str, int]) -> dict[str, int | None]:
    """A point as a record's fields: REPORTED_DIMS always (None if absent), then the rest."""
    return {**dict.fromkeys(REPORTED_DIMS), **dims}


@dataclass(frozen=True)
class Case:
    """One point of a grid (dim name -> size) and the inputs drawn at it."""

    dims: dict[str, int]
    inputs: Arrays


@dataclass(frozen=True)
class Check:
    """`actual` against `expected` (a path or the reference) on one output at one point."""

    actual: str
    expected: str
    output: str
    dims: dict[str, int]
    metrics: Comparison
    tolerance: float
    detail: str = field(default="", compare=False)
    """Why the metrics are infinite when the two outputs' shapes differ."""

    @property
    def passed(self) -> bool:
        return self.metrics.passed(self.tolerance)

    def where(self) -> str:
        return describe(self.dims)

    def to_dict(self) -> dict:
        return {"actual": self.actual, "expected": self.expected, "output": self.output,
                **dims_record(self.dims), "tolerance": self.tolerance,
                **json_ready(asdict(self.metrics)), "passed": self.passed}


@dataclass(frozen=True)
class Comparisons:
    """Every check of one run of the engine, in case order; optionally every path's outputs."""

    reference: str | None
    checks: tuple[Check, ...]
    outputs: dict[str, list[Arrays]] = field(default_factory=dict, repr=False, compare=False)
    """With keep_outputs: per path (and the reference), its outputs case by case."""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def worst(self, actual: str, expected: str) -> float | None:
        """Largest max abs error of one pair over every case and output (None if the pair
        was never compared: a model with one framework has no torch-keras pair)."""
        return max((c.metrics.max_abs for c in self.checks
                    if (c.actual, c.expected) == (actual, expected)), default=None)

    def needed(self) -> dict[str, float]:
        """Per output: the smallest tolerance every comparison would have passed."""
        worst: dict[str, float] = {}
        for c in self.checks:
            error = c.metrics.max_abs if c.metrics.nonfinite == 0 else float("inf")
            worst[c.output] = max(worst.get(c.output, 0.0), error)
        return worst


def describe(dims: Mapping[str, int]) -> str:
    """'batch 7, seq 12': a grid point for messages ('the given inputs' when it has none)."""
    return ", ".join(f"{d} {v}" for d, v in dims.items()) or "the given inputs"


def tolerance_for(tolerances: OutputTolerances, output: str) -> float:
    """The tolerance of one output: its own entry, else the "" default."""
    if isinstance(tolerances, int | float):
        return float(tolerances)
    if output in tolerances:
        return tolerances[output]
    if "" in tolerances:
        return tolerances[""]
    raise OnnxtwinError(f"tolerance for output {output!r}: expected an entry or a default "
                        f"(''), got {sorted(tolerances)}")


def compare_paths(paths: Sequence[ModelPath], reference: ModelPath | None,
                  cases: Iterable[Case], tolerances: OutputTolerances,
                  pairs: Literal["all", "reference"] = "all",
                  on_case: Callable[[Case], None] = lambda _: None,
                  fail_fast: bool = False, keep_outputs: bool = False,
                  scaled: bool = False) -> Comparisons:
    """Run every path (and the reference) on every case and compare them output by output.

    Each path is compared with the reference; with pairs="all" every two paths are
    compared directly too. A path that cannot run raises OnnxtwinError naming the path
    and the case. With `fail_fast`, the first failing case ends the run. With `scaled`,
    tolerances are fractions of the expected output's scale (reduced precision): a check
    passes within tolerance x max(1, max |expected|), the tolerance it records.
    """
    names = [p.name for p in paths]
    if len(set(names)) != len(names) or (reference and reference.name in names):
        raise OnnxtwinError(f"compare_paths: expected distinct path names, got {names}"
                            + (f" and reference {reference.name!r}" if reference else ""))
    compared = [(p.name, reference.name) for p in paths] if reference else []
    if pairs == "all":
        compared += list(itertools.combinations(names, 2))
    runs = [*paths, *([reference] if reference else [])]
    named = {p.name: p.output_names for p in runs if p.output_names}
    if len(set(named.values())) > 1:
        raise OnnxtwinError(f"compare_paths: expected every path to have the same outputs, "
                            f"got {named}")
    checks: list[Check] = []
    kept: dict[str, list[Arrays]] = {p.name: [] for p in runs} if keep_outputs else {}
    for case in cases:
        on_case(case)
        results = {p.name: _run(p, case) for p in runs}
        for name, result in results.items() if keep_outputs else ():
            kept[name].append(result)
        new = [_check(a, e, o, case.dims, results[a][o], results[e][o],
                      tolerance_for(tolerances, o) * (_scale(results[e][o]) if scaled else 1))
               for a, e in compared for o in results[e]]
        checks += new
        if fail_fast and not all(c.passed for c in new):
            break
    return Comparisons(reference.name if reference else None, tuple(checks), kept)


class PathFailed(OnnxtwinError):
    """A path could not run one case: which path, at which point, and why."""

    def __init__(self, path: str, dims: dict[str, int], cause: str) -> None:
        super().__init__(f"{path} at {describe(dims)}: {cause}")
        self.path, self.dims, self.cause = path, dims, cause


def _run(path: ModelPath, case: Case) -> Arrays:
    try:
        return path.run(case.inputs)
    except OnnxtwinError as e:
        raise PathFailed(path.name, case.dims, str(e)) from None


def _scale(expected: np.ndarray) -> float:
    """max(1, the largest finite |value|): what a scaled tolerance multiplies."""
    e = np.asarray(expected, np.float64)
    return max(1.0, float(np.abs(e[np.isfinite(e)]).max(initial=0.0)))


def _check(actual: str, expected: str, output: str, dims: dict[str, int], a: np.ndarray,
           e: np.ndarray, tolerance: float) -> Check:
    if np.shape(a) != np.shape(e):
        inf = float("inf")
        return Check(actual, expected, output, dims, Comparison(inf, inf, 0.0, 0), tolerance,
                     f"shape {np.shape(a)} vs {np.shape(e)}")
    return Check(actual, expected, output, dims, compare(a, e), tolerance)
