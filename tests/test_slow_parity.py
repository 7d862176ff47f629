"""Slow tier: native parity on more seeds, bigger batches and long sequences."""

from __future__ import annotations

import pytest

from onnxtwin.builders import build_twins, builtins, grids, sample_inputs
from onnxtwin.runtime.comparison import Case, compare_paths

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


@pytest.mark.parametrize("source", ["torch", "keras"])
@pytest.mark.parametrize("name", [s.name for s in builtins()])
def test_parity_on_other_seeds_batch_64_and_long_sequences(name, source):
    for seed in grids.SLOW_SEEDS:
        twins = build_twins(name, seed=seed, source=source)
        grid = [grids.SLOW] + ([grids.LONG] if twins.spec.family == "transformer" else [])
        points = [d for g in grid for d in grids.combinations(g, twins.spec.signature.dims)]
        result = compare_paths([twins.torch, twins.keras], twins.oracle(),
                               [Case(d, sample_inputs(twins.spec, d, seed=seed)) for d in points],
                               TOLERANCE)
        assert result.checks and result.passed, [(c.actual, c.expected, c.dims, c.metrics.max_abs)
                                                 for c in result.failed]
