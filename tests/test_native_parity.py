"""Native torch and Keras twins agree with each other and with the float64 oracle to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from onnxtwin.builders import builtins, sample_inputs
from onnxtwin.conformance.native import native_parity

NAMES = [s.name for s in builtins()]
TOLERANCE = 1e-5


@pytest.mark.parametrize("source", ["torch", "keras"])
@pytest.mark.parametrize("name", NAMES)
def test_twins_agree_at_every_shape(twins_of, name, source):
    parity = native_parity(twins_of(name, source), tolerance=TOLERANCE)
    checks = parity.result.checks
    expected = [{"batch": 1}, {"batch": 7}] if name == "cnn" else \
        [{"batch": b, "seq": s} for b in (1, 7) for s in (1, 12, 50)]
    assert list({tuple(c.dims.items()): c.dims for c in checks}.values()) == expected
    pairs = {("torch", "oracle"), ("keras", "oracle"), ("torch", "keras")}
    assert {(c.actual, c.expected) for c in checks} == pairs
    assert len(checks) == len(pairs) * len(expected)  # one output: logits
    for c in checks:
        assert c.metrics.nonfinite == 0
        assert c.metrics.max_abs <= TOLERANCE, (name, source, c.dims, c.actual, c.expected)
        assert c.metrics.argmax_agreement == 1.0
    assert parity.passed


def test_gate_points_cover_batches_and_sequence_lengths(twins_of):
    assert twins_of("cnn").spec.gate_points() == [{"batch": 1}, {"batch": 7}]
    assert twins_of("gru").spec.gate_points() == [{"batch": b, "seq": s} for b in (1, 7)
                                                  for s in (1, 12, 50)]


def test_oracle_runs_in_float64_and_is_closer_than_float32_noise(twins_of):
    twins = twins_of("transformer-gelu")
    x = sample_inputs(twins.spec, batch=7, seq=50, seed=3)
    oracle, torch32 = twins.oracle().run(x)["logits"], twins.torch.run(x)["logits"]
    assert oracle.dtype == np.float64 and torch32.dtype == np.float32
    assert 0 < np.abs(oracle - torch32).max() < 1e-5  # float32 rounding, present but small


def test_trailing_padding_is_masked_in_the_transformer(twins_of):
    """Padding appended after the text keeps every token's position: logits must not move."""
    twins = twins_of("transformer")
    x = sample_inputs(twins.spec, batch=7, seq=12, seed=4)
    padded = {"tokens": np.pad(x["tokens"], ((0, 0), (0, 5)))}
    for path in (twins.torch, twins.keras):
        np.testing.assert_allclose(path.run(padded)["logits"], path.run(x)["logits"],
                                   atol=2e-6, rtol=0)
