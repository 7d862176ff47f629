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


# Each direction of each converter against the frameworks themselves: random weights on
# one side, converted by the LayerMap onto the other side's layer (found by the names and
# paths the LayerMap gives), and the two layers' outputs on random input must agree. The
# expectation is what torch and Keras compute, not what the converters do, so a mistake
# made symmetrically in to_keras and to_torch (which the round trip above cannot see)
# fails here in both directions.
PREFIX = "p"
DIRECTIONS = ("torch_to_keras", "keras_to_torch")
FRAMEWORK_CASES = ("embedding", "dense", "flatten_dense", "conv2d", "layernorm", "lstm", "gru",
                   "bilstm", "bigru", "attention")


def _keras():
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def _framework_case(name: str, rng: np.random.Generator):
    """(layer maps, torch module, built Keras layer, torch output fn, Keras output fn):
    the two output functions return numpy arrays in the same layout."""
    import torch

    keras, nn = _keras(), torch.nn
    t = lambda *a: torch.from_numpy(np.ascontiguousarray(a[0]))  # noqa: E731
    if name == "embedding":
        x = rng.integers(0, 11, (3, 5))
        tm, km = nn.Embedding(11, 6), keras.layers.Embedding(11, 6, name="k")
        maps, run_t, run_k = [layers.embedding(PREFIX, "k")], lambda: tm(t(x)), lambda: km(x)
    elif name == "dense":
        x = rng.standard_normal((3, 24)).astype(np.float32)
        tm, km = nn.Linear(24, 5), keras.layers.Dense(5, name="k")
        maps, run_t, run_k = [layers.dense(PREFIX, "k")], lambda: tm(t(x)), lambda: km(x)
    elif name == "flatten_dense":  # torch flattens NCHW, Keras NHWC: C 4, H 2, W 3
        x = rng.standard_normal((3, 4, 2, 3)).astype(np.float32)
        tm, km = nn.Linear(24, 5), keras.layers.Dense(5, name="k")
        maps = [layers.flatten_dense(PREFIX, "k", 4, 2, 3)]
        run_t = lambda: tm(nn.Flatten()(t(x)))  # noqa: E731
        run_k = lambda: km(keras.layers.Flatten()(x.transpose(0, 2, 3, 1)))  # noqa: E731
    elif name == "conv2d":  # a non-square kernel, in 3 != out 8
        x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
        tm, km = nn.Conv2d(3, 8, (2, 3)), keras.layers.Conv2D(8, (2, 3), name="k")
        maps = [layers.conv2d(PREFIX, "k")]
        run_t = lambda: tm(t(x)).permute(0, 2, 3, 1)  # noqa: E731  NCHW -> NHWC
        run_k = lambda: km(x.transpose(0, 2, 3, 1))  # noqa: E731
    elif name == "layernorm":
        x = rng.standard_normal((3, 4, 7)).astype(np.float32)
        tm, km = nn.LayerNorm(7, eps=1e-3), keras.layers.LayerNormalization(epsilon=1e-3,
                                                                             name="k")
        maps, run_t, run_k = [layers.layernorm(PREFIX, "k")], lambda: tm(t(x)), lambda: km(x)
    elif name in ("lstm", "gru", "bilstm", "bigru"):
        cell = name.removeprefix("bi")
        bidirectional = name.startswith("bi")
        x = rng.standard_normal((2, 5, 6)).astype(np.float32)
        tm = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](6, 4, batch_first=True,
                                                     bidirectional=bidirectional)
        options = {"reset_after": True} if cell == "gru" else {}
        rnn = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell]
        convert = {"lstm": layers.lstm, "gru": layers.gru}[cell]
        if bidirectional:
            km = keras.layers.Bidirectional(rnn(4, return_sequences=True, name="x", **options),
                                            name="k")
            maps = [convert(PREFIX, f"k/forward_x/{cell}_cell"),
                    convert(PREFIX, f"k/backward_x/{cell}_cell", reverse=True)]
        else:
            km = rnn(4, return_sequences=True, name="k", **options)
            maps = [convert(PREFIX, f"k/{cell}_cell")]
        run_t, run_k = lambda: tm(t(x))[0], lambda: km(x)
    elif name == "attention":  # D 16, 4 heads of 4
        x = rng.standard_normal((2, 5, 16)).astype(np.float32)
        tm = nn.MultiheadAttention(16, 4, batch_first=True)
        km = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4, name="k")
        maps = [layers.attention(PREFIX, "k", heads=4)]
        run_t = lambda: tm(t(x), t(x), t(x), need_weights=False)[0]  # noqa: E731
        run_k = lambda: km(x, x)  # noqa: E731
    else:
        raise AssertionError(name)
    run_k()  # builds the Keras layer's variables

    def torch_output():
        with torch.no_grad():
            return run_t().numpy()

    return maps, tm, km, torch_output, lambda: np.asarray(run_k())


def _random(shape, rng) -> np.ndarray:
    return (0.5 * rng.standard_normal(tuple(shape))).astype(np.float32)


def _torch_to_keras(maps, module, layer, rng) -> None:
    """Random torch parameters, converted by `maps`, assigned to the Keras variables."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(_random(p.shape, rng)))
    state = {f"{PREFIX}.{k}": v.numpy() for k, v in module.state_dict().items()}
    assert sorted(state) == sorted(n for m in maps for n in m.torch_names)
    variables = {v.path: v for v in layer.weights}
    assert sorted(variables) == sorted(p for m in maps for p in m.keras_paths)
    for m in maps:
        converted = m.to_keras(*(state[n] for n in m.torch_names))
        for path, value in zip(m.keras_paths, converted, strict=True):
            assert tuple(variables[path].shape) == np.shape(value), path
            variables[path].assign(np.asarray(value, np.float32))


def _keras_to_torch(maps, layer, module, rng) -> None:
    """Random Keras variables, converted by `maps`, loaded (strictly) into the torch module."""
    import torch

    for v in layer.weights:
        v.assign(_random(v.shape, rng))
    variables = {v.path: np.asarray(v.numpy()) for v in layer.weights}
    assert sorted(variables) == sorted(p for m in maps for p in m.keras_paths)
    state = {}
    for m in maps:
        converted = m.to_torch(*(variables[p] for p in m.keras_paths))
        state.update(zip(m.torch_names, converted, strict=True))
    holder = torch.nn.ModuleDict({PREFIX: module})  # state names "p.<parameter>"
    holder.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))
                            for k, v in state.items()}, strict=True)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", FRAMEWORK_CASES)
def test_each_converter_direction_agrees_with_the_frameworks(name, direction):
    rng = np.random.default_rng(FRAMEWORK_CASES.index(name) * 2 + DIRECTIONS.index(direction))
    maps, module, layer, torch_output, keras_output = _framework_case(name, rng)
    if direction == "torch_to_keras":
        _torch_to_keras(maps, module, layer, rng)
    else:
        _keras_to_torch(maps, layer, module, rng)
    expected, got = torch_output(), keras_output()
    assert got.shape == expected.shape
    assert np.abs(expected).max() > 0.1  # the weights really were set: not an all-zero output
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5)


def test_conv_and_flatten_dense_layouts_by_hand_indexing():
    """Keras kernel[kh, kw, i, o] == torch weight[o, i, kh, kw]; the Dense after Flatten:
    Keras row (h*W + w)*C + c (NHWC order) == torch column c*H*W + h*W + w (NCHW order)."""
    rng = np.random.default_rng(7)
    o_, i_, kh_, kw_ = 4, 3, 2, 5
    w = rng.standard_normal((o_, i_, kh_, kw_)).astype(np.float32)
    kernel, _ = layers.conv2d("c", "c").to_keras(w, np.zeros(o_, np.float32))
    assert kernel.shape == (kh_, kw_, i_, o_)
    for o in range(o_):
        for i in range(i_):
            for kh in range(kh_):
                for kw in range(kw_):
                    assert kernel[kh, kw, i, o] == w[o, i, kh, kw]
    k2 = rng.standard_normal((kh_, kw_, i_, o_)).astype(np.float32)
    back, _ = layers.conv2d("c", "c").to_torch(k2, np.zeros(o_, np.float32))
    for o, i, kh, kw in np.ndindex(o_, i_, kh_, kw_):
        assert back[o, i, kh, kw] == k2[kh, kw, i, o]

    c_, h_, w_, out = 4, 2, 3, 5
    weight = rng.standard_normal((out, c_ * h_ * w_)).astype(np.float32)
    dense = layers.flatten_dense("d", "d", c_, h_, w_)
    k, _ = dense.to_keras(weight, np.zeros(out, np.float32))
    k3 = rng.standard_normal((c_ * h_ * w_, out)).astype(np.float32)
    w3, _ = dense.to_torch(k3, np.zeros(out, np.float32))
    for c, h, x, o in np.ndindex(c_, h_, w_, out):
        assert k[(h * w_ + x) * c_ + c, o] == weight[o, c * h_ * w_ + h * w_ + x]
        assert w3[o, c * h_ * w_ + h * w_ + x] == k3[(h * w_ + x) * c_ + c, o]


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
