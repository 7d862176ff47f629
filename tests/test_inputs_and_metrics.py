"""Sample inputs follow the signature deterministically; metrics measure what they say."""

from __future__ import annotations

import numpy as np
import pytest

from onnxtwin.builders import get_spec, sample_inputs
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.metrics import compare


def test_images_are_seeded_and_in_unit_range():
    x = sample_inputs(get_spec("cnn"), batch=7, seed=3)["image"]
    assert x.shape == (7, 1, 28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() < 1.0
    np.testing.assert_array_equal(x, sample_inputs(get_spec("cnn"), batch=7, seed=3)["image"])
    assert not np.array_equal(x, sample_inputs(get_spec("cnn"), batch=7, seed=4)["image"])


def test_tokens_are_left_padded_with_padding_present():
    tokens = sample_inputs(get_spec("lstm"), batch=7, seq=12, seed=0)["tokens"]
    assert tokens.shape == (7, 12) and tokens.dtype == np.int64
    assert tokens.min() == 0 and tokens.max() < 10000
    assert (tokens[0] > 0).all()  # row 0 unpadded
    assert (tokens[-1, :6] == 0).all() and (tokens[-1, 6:] > 0).all()  # last row half padding
    assert (tokens[:, -1] > 0).all()  # padding only on the left: every row ends with text
    for row in tokens:  # no pad after the first real token
        first = np.argmax(row > 0)
        assert (row[first:] > 0).all()


def test_sequence_length_is_required_for_token_models():
    with pytest.raises(OnnxtwinError, match=r"input 'tokens': expected positive sizes for "
                                            r"\('batch', 'seq'\), got batch=2, seq=None"):
        sample_inputs(get_spec("gru"), batch=2)


def test_compare_metrics():
    expected = np.array([[10.0, 0.0, -2.0], [0.0, 1.0, 0.0]])
    actual = expected + np.array([[0.0, 1e-3, 0.0], [0.0, 0.0, 2.0]])
    c = compare(actual, expected)
    assert c.max_abs == pytest.approx(2.0)
    assert c.max_rel == pytest.approx(0.2)  # relative to the output's scale, 10
    assert c.argmax_agreement == 0.5
    assert c.nonfinite == 0 and not c.passed(1e-5) and c.passed(2.0)


def test_compare_flags_nan_and_inf():
    bad = np.array([[np.nan, 1.0], [np.inf, 0.0]])
    c = compare(bad, np.zeros((2, 2)))
    assert c.nonfinite == 2 and not c.passed(1e9)
