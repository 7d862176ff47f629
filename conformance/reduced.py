"""Reduced-precision files in the matrix: each exported file's fp16 / int8 copy, made and
gated by onnxtwin.export.precision, then run as paths of their own
(`cnn.torch.int8.onnx@cpu`) against the oracle with their own tolerance rows
(tolerances.REDUCED, fractions of each output's scale)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from onnxtwin.builders.datasets import Dataset
from onnxtwin.conformance.tolerances import REDUCED
from onnxtwin.export import ExportResult
from onnxtwin.export.batch import reduce_file
from onnxtwin.export.precision import GateRefused, ReducedResult
from onnxtwin.runtime import Session
from onnxtwin.runtime.comparison import Case, Comparisons, compare_paths
from onnxtwin.runtime.paths import ModelPath, OnnxPath


@dataclass(frozen=True)
class ReducedPaths:
    """The accepted reduced files, the refusals (each the gate's one line), and the
    accepted files' paths compared with the oracle. A refusal fails the check."""

    files: tuple[ReducedResult, ...]
    refused: tuple[str, ...]
    comparisons: Comparisons

    @property
    def passed(self) -> bool:
        return self.comparisons.passed and not self.refused

    def to_dict(self) -> dict:
        return {"tolerances": REDUCED, "files": [f.to_dict() for f in self.files],
                "refused": list(self.refused),
                "comparisons": [c.to_dict() for c in self.comparisons.checks]}


def run_reduced(spec, exports: Iterable[ExportResult], precisions: tuple[str, ...],
                providers: list[str], oracle: ModelPath, cases: Callable[[], Iterable[Case]],
                data: Dataset | None, options, on_step: Callable[[str], None]) -> ReducedPaths:
    """Make each export's reduced files (a refused one is recorded, and the check goes on),
    then compare every accepted file on every provider with the oracle on `cases()`, one
    tolerance per precision. A usage error (int8 of a Conv graph without calibration
    samples) still ends the check."""
    files, refused = [], []
    for export, precision in itertools.product(exports, precisions):
        try:
            files += reduce_file(export.path, (precision,), spec, data, options.calibration,
                                 options.limits, on_step, options.seed)
        except GateRefused as e:
            refused.append(str(e))
    checks = []
    for precision in precisions:
        paths = [OnnxPath(Session(f.path, alias, strict=True),
                          f"{f.path.name}@{alias}", _framework(f.path.name))
                 for alias, f in itertools.product(providers, files)
                 if f.precision == precision]
        on_step(f"{spec.name}: running {len(paths)} {precision} paths")
        tolerances = {o.name: REDUCED[precision] if o.dtype.startswith("float") else 0.0
                      for o in spec.signature.outputs}  # an integer output stays exact
        checks += compare_paths(paths, oracle, cases(), tolerances, pairs="reference",
                                scaled=True).checks
    return ReducedPaths(tuple(files), tuple(refused), Comparisons(oracle.name, tuple(checks)))


def _framework(name: str) -> str:
    """NAME.FRAMEWORK.PRECISION.onnx -> FRAMEWORK."""
    return name.split(".")[-3]
