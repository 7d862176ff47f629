"""Slow tier: native parity on more seeds, bigger batches and long sequences."""

from __future__ import annotations

import pytest

from onnxtwin.builders import BUILTIN, build_twins, has_seq, sample_inputs
from onnxtwin.runtime.metrics import compare

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


@pytest.mark.parametrize("source", ["torch", "keras"])
@pytest.mark.parametrize("name", [s.name for s in BUILTIN])
def test_parity_on_other_seeds_batch_64_and_long_sequences(name, source):
    for seed in (11, 12):
        twins = build_twins(name, seed=seed, source=source)
        seqs = (256, 2048) if twins.spec.family == "transformer" else (256,)
        for seq in seqs if has_seq(twins.spec) else (None,):
            x = sample_inputs(twins.spec, batch=64 if seq != 2048 else 4, seq=seq, seed=seed)
            oracle, t, k = twins.run_oracle(x), twins.run_torch(x), twins.run_keras(x)
            for pair, c in {"torch-keras": compare(t, k), "torch-oracle": compare(t, oracle),
                            "keras-oracle": compare(k, oracle)}.items():
                assert c.passed(TOLERANCE), (name, source, seed, seq, pair, c.max_abs)
