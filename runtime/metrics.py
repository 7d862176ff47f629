"""How far one output is from another: the numbers every parity verdict is made of."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOAT32_ABS_TOLERANCE = 1e-5
"""Default max abs error between float32 outputs: every parity check, the gate, the matrix."""


@dataclass(frozen=True)
class Comparison:
    """`actual` against `expected`, both [batch, classes].

    max_rel is max |actual - expected| over the largest |expected| (the output's scale),
    so near-zero elements do not blow it up. argmax_agreement is the fraction of rows
    whose predicted class is the same. nonfinite counts NaN/Inf in either array.
    """

    max_abs: float
    max_rel: float
    argmax_agreement: float
    nonfinite: int

    def passed(self, tolerance: float) -> bool:
        return self.nonfinite == 0 and self.max_abs <= tolerance


def compare(actual: np.ndarray, expected: np.ndarray) -> Comparison:
    """Compare two outputs of the same shape in float64."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise ValueError(f"compare: expected equal shapes, got {a.shape} and {e.shape}")
    nonfinite = int((~np.isfinite(a)).sum() + (~np.isfinite(e)).sum())
    if nonfinite or a.size == 0:
        return Comparison(float("inf") if nonfinite else 0.0, float("inf") if nonfinite else 0.0,
                          0.0 if nonfinite else 1.0, nonfinite)
    diff = float(np.abs(a - e).max())
    scale = float(np.abs(e).max())
    agree = float(np.mean(a.argmax(-1) == e.argmax(-1)))
    return Comparison(diff, diff / scale if scale > 0 else diff, agree, 0)


def json_ready(values: dict) -> dict:
    """JSON has no Infinity or NaN: non-finite float values become None."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in values.items()}
