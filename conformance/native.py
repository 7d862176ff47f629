"""Native parity: torch twin vs Keras twin vs the float64 oracle, at the gate's points."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from onnxtwin.builders import Twins, grids, sample_inputs
from onnxtwin.builders.paths import ORACLE
from onnxtwin.runtime.comparison import Case, Comparisons, compare_paths, dims_record
from onnxtwin.runtime.metrics import json_ready

PAIRS = ("torch_vs_keras", "torch_vs_oracle", "keras_vs_oracle")
_PAIR_PATHS = {"torch_vs_keras": ("torch", "keras"), "torch_vs_oracle": ("torch", ORACLE),
               "keras_vs_oracle": ("keras", ORACLE)}


@dataclass(frozen=True)
class NativeParity:
    """Every point of one twin pair's comparisons, with the tolerance each must meet."""

    model: str
    tolerance: float
    result: Comparisons
    source: str = "torch"
    """Whose weights the other twin received."""

    def worst(self, pair: str) -> float | None:
        """Largest max abs error of one pair (a PAIRS name) over all points and outputs."""
        return self.result.worst(*_PAIR_PATHS[pair])

    @property
    def passed(self) -> bool:
        return self.result.passed

    def to_dict(self) -> dict:
        """parity.json's record: per point and output, the three comparisons."""
        cases: dict[tuple, dict] = {}
        for c in self.result.checks:
            case = cases.setdefault((tuple(c.dims.items()), c.output),
                                    {**dims_record(c.dims), "output": c.output})
            pair = next(p for p, paths in _PAIR_PATHS.items() if paths == (c.actual, c.expected))
            case[pair] = json_ready(asdict(c.metrics))
        return {"model": self.model, "source": self.source, "tolerance": self.tolerance,
                "cases": list(cases.values())}


def native_parity(twins: Twins, tolerance: float | None = None,
                  seed: int = grids.NATIVE_SEED, source: str = "torch") -> NativeParity:
    """Run both twins and the oracle on seeded inputs at every gate point and compare."""
    tolerance = twins.spec.TOLERANCE if tolerance is None else tolerance
    cases = (Case(dims, sample_inputs(twins.spec, dims, seed=seed))
             for dims in twins.spec.gate_points())
    result = compare_paths([twins.path(f) for f in twins.frameworks], twins.oracle(), cases,
                           tolerance)
    return NativeParity(twins.spec.name, tolerance, result, source)
