"""The per-layer converters against the frameworks' own definitions of layout."""

from __future__ import annotations

import numpy as np
import pytest

from onnxtwin.builders import layers


def test_flatten_permutation_matches_nchw_and_nhwc_flatten():
    x = np.random.default_rng(0).random((2, 64, 3, 3))
    torch_flat = x.reshape(2, -1)
    keras_flat = x.transpose(0, 2, 3, 1).reshape(2, -1)
    perm = layers.flatten_permutation(64, 3, 3)
    np.testing.assert_array_equal(keras_flat, torch_flat[:, perm])
    assert perm[(1 * 3 + 2) * 64 + 5] == 5 * 9 + 1 * 3 + 2  # the PITFALLS.md formula


@pytest.mark.parametrize("make", [
    lambda: layers.conv2d("c", "c"), lambda: layers.dense("d", "d"),
    lambda: layers.flatten_dense("d", "d", 4, 2, 3), lambda: layers.gru("g", "g"),
    lambda: layers.attention("a", "a", heads=4), lambda: layers.layernorm("n", "n"),
    lambda: layers.embedding("e", "e")])
def test_converters_invert_exactly(make):
    shapes = {"c": [(8, 3, 3, 3), (8,)], "d": [(5, 24), (5,)],
              "g": [(12, 6), (12, 4), (12,), (12,)], "a": [(48, 16), (48,), (16, 16), (16,)],
              "n": [(7,), (7,)], "e": [(11, 6)]}
    m = make()
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes[m.layer]]
    back = m.to_torch(*m.to_keras(*arrays))
    for a, b in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(a, b)


def test_gru_gate_reorder_and_bias_rows():
    h = 2
    w = np.repeat(np.array([0.0, 1.0, 2.0]), h)[:, None] * np.ones((1, 3))  # rows r,r,z,z,n,n
    kernel, _, bias = layers.gru("g", "g").to_keras(w, w, np.arange(6.0), 10 + np.arange(6.0))
    np.testing.assert_array_equal(kernel[0], [1, 1, 0, 0, 2, 2])  # Keras order z, r, h
    np.testing.assert_array_equal(bias, [[2, 3, 0, 1, 4, 5], [12, 13, 10, 11, 14, 15]])


def test_attention_head_split():
    d, heads = 8, 2
    in_w = np.arange(3 * d * d, dtype=np.float32).reshape(3 * d, d)
    convert = layers.attention("a", "a", heads).to_keras
    qk = convert(in_w, np.zeros(3 * d), np.eye(d), np.zeros(d))[0]
    assert qk.shape == (d, heads, d // heads)
    np.testing.assert_array_equal(qk[:, 1, 0], in_w[d // heads])  # head 1 starts at row 4


def test_sinusoidal_table():
    table = layers.sinusoidal_table(2048, 64)
    assert table.dtype == np.float32 and table.shape == (2048, 64)
    np.testing.assert_array_equal(table[0, 0::2], 0.0)
    np.testing.assert_array_equal(table[0, 1::2], 1.0)
    assert table[2047, 0] == np.float32(np.sin(2047.0))


def test_batch_first_attention_equals_torch_multihead_attention():
    """The torch twin's attention (builders/transformer.py) against nn.MultiheadAttention
    with the same weights, in the path training and export take (grad enabled)."""
    import torch

    from onnxtwin.builders.families.transformer import BatchFirstAttention

    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ours = BatchFirstAttention(16, 4, batch_first=True)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 7, 16)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True
    additive = torch.zeros(3, 7).masked_fill(padding, float("-inf"))  # as the layer passes it
    expected = reference(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    got = ours(x, x, x, key_padding_mask=additive)[0]
    assert (got - expected).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match="expected self-attention"):
        ours(x, x.clone(), x)
