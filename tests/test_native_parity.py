"""Native torch and Keras twins agree with each other and with the float64 oracle to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from onnxtwin.builders import BUILTIN, check_shapes, sample_inputs
from onnxtwin.conformance.native import PAIRS, native_parity

NAMES = [s.name for s in BUILTIN]
TOLERANCE = 1e-5


@pytest.mark.parametrize("source", ["torch", "keras"])
@pytest.mark.parametrize("name", NAMES)
def test_twins_agree_at_every_shape(twins_of, name, source):
    parity = native_parity(twins_of(name, source), tolerance=TOLERANCE)
    assert [(c.batch, c.seq) for c in parity.cases] == check_shapes(twins_of(name).spec)
    for case in parity.cases:
        for pair in PAIRS:
            comparison = getattr(case, pair)
            assert comparison.nonfinite == 0
            assert comparison.max_abs <= TOLERANCE, (name, source, case.batch, case.seq, pair)
            assert comparison.argmax_agreement == 1.0
    assert parity.passed


def test_shapes_cover_batches_and_sequence_lengths(twins_of):
    assert check_shapes(twins_of("cnn").spec) == [(1, None), (7, None)]
    assert check_shapes(twins_of("gru").spec) == [(b, s) for b in (1, 7) for s in (1, 12, 50)]


def test_oracle_runs_in_float64_and_is_closer_than_float32_noise(twins_of):
    twins = twins_of("transformer-gelu")
    x = sample_inputs(twins.spec, batch=7, seq=50, seed=3)
    oracle, torch32 = twins.run_oracle(x), twins.run_torch(x)
    assert oracle.dtype == np.float64 and torch32.dtype == np.float32
    assert 0 < np.abs(oracle - torch32).max() < 1e-5  # float32 rounding, present but small


def test_trailing_padding_is_masked_in_the_transformer(twins_of):
    """Padding appended after the text keeps every token's position: logits must not move."""
    twins = twins_of("transformer")
    x = sample_inputs(twins.spec, batch=7, seq=12, seed=4)
    padded = {"tokens": np.pad(x["tokens"], ((0, 0), (0, 5)))}
    for run in (twins.run_torch, twins.run_keras):
        np.testing.assert_allclose(run(padded), run(x), atol=2e-6, rtol=0)
