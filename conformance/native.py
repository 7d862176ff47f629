"""Native parity: torch twin vs Keras twin vs the float64 oracle, at several shapes."""

from __future__ import annotations

from dataclasses import dataclass

from onnxtwin.builders import Twins, check_shapes, sample_inputs
from onnxtwin.runtime.metrics import FLOAT32_ABS_TOLERANCE, Comparison, compare

PAIRS = ("torch_vs_keras", "torch_vs_oracle", "keras_vs_oracle")


@dataclass(frozen=True)
class NativeCase:
    """One input shape: the three comparisons."""

    batch: int
    seq: int | None
    torch_vs_keras: Comparison
    torch_vs_oracle: Comparison
    keras_vs_oracle: Comparison


@dataclass(frozen=True)
class NativeParity:
    """Every shape of one twin pair, with the tolerance each comparison must meet."""

    model: str
    tolerance: float
    cases: tuple[NativeCase, ...]

    def worst(self, pair: str) -> float:
        """Largest max abs error of one pair over all shapes."""
        return max(getattr(c, pair).max_abs for c in self.cases)

    @property
    def passed(self) -> bool:
        return all(getattr(c, p).passed(self.tolerance) for c in self.cases for p in PAIRS)


def native_parity(twins: Twins, tolerance: float = FLOAT32_ABS_TOLERANCE,
                  seed: int = 1) -> NativeParity:
    """Run both twins and the oracle on seeded inputs at every native shape and compare."""
    cases = []
    for batch, seq in check_shapes(twins.spec):
        x = sample_inputs(twins.spec, batch, seq, seed=seed)
        oracle, t, k = twins.run_oracle(x), twins.run_torch(x), twins.run_keras(x)
        cases.append(NativeCase(batch, seq, compare(t, k), compare(t, oracle), compare(k, oracle)))
    return NativeParity(twins.spec.name, tolerance, tuple(cases))
