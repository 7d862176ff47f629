"""The textcnn family: its conv1d converter, native parity, both exports, localisation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxtwin.builders import build_twins, get_spec, layers, sample_inputs
from onnxtwin.builders.families.textcnn import TextCnnSpec
from onnxtwin.conformance.localise import localise
from onnxtwin.conformance.native import native_parity
from onnxtwin.export import export_model
from onnxtwin.export.signature import read_signature
from onnxtwin.runtime import OnnxtwinError, Session

TOLERANCE = 1e-5
CONVERTER_TOLERANCE = 1e-6


def _numpy_same_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float64 cross-correlation of (N, I, L) with (O, I, k), (k - 1) / 2 zeros on each side."""
    k = weight.shape[2]
    pad = (k - 1) // 2
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad)))
    windows = np.stack([padded[:, :, j: j + x.shape[2]] for j in range(k)], axis=-1)
    return np.einsum("nilk,oik->nol", windows, weight.astype(np.float64)) + bias[:, None]


@pytest.mark.parametrize("direction", ["torch_to_keras", "keras_to_torch"])
def test_conv1d_converter_gives_the_same_conv_in_both_frameworks(direction):
    import torch

    from onnxtwin.builders.keras_support import keras, seeded

    convert = layers.conv1d("conv", "conv")
    torch.manual_seed(0)
    seeded(0)
    torch_conv = torch.nn.Conv1d(6, 4, 5, padding="same")
    keras_conv = keras.layers.Conv1D(4, 5, padding="same", bias_initializer="random_normal")
    keras_conv.build((None, None, 6))
    rng = np.random.default_rng(0)
    if direction == "torch_to_keras":
        keras_conv.set_weights(list(convert.to_keras(torch_conv.weight.detach().numpy(),
                                                     torch_conv.bias.detach().numpy())))
    else:
        weight, bias = convert.to_torch(*keras_conv.get_weights())
        torch_conv.load_state_dict({"weight": torch.from_numpy(np.ascontiguousarray(weight)),
                                    "bias": torch.from_numpy(np.ascontiguousarray(bias))})
    assert np.abs(torch_conv.bias.detach().numpy()).min() > 0  # the bias is really carried
    for length in (1, 2, 9):
        x = rng.standard_normal((3, 6, length)).astype(np.float32)
        t = torch_conv(torch.from_numpy(x)).detach().numpy()
        k = np.asarray(keras_conv(x.transpose(0, 2, 1))).transpose(0, 2, 1)
        expected = _numpy_same_conv(x, torch_conv.weight.detach().numpy(),
                                    torch_conv.bias.detach().numpy())
        assert t.shape == k.shape == (3, 4, length)
        assert np.abs(t - k).max() <= CONVERTER_TOLERANCE
        assert np.abs(t - expected).max() <= CONVERTER_TOLERANCE  # torch "same": 2 each side
        assert np.abs(k - expected).max() <= CONVERTER_TOLERANCE


def test_conv1d_converter_layouts_and_inverse():
    convert = layers.conv1d("c", "c")
    weight = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)  # (O, I, k)
    kernel, bias = convert.to_keras(weight, np.arange(4, dtype=np.float32))
    assert kernel.shape == (5, 3, 4) and kernel[2, 1, 3] == weight[3, 1, 2]
    back = convert.to_torch(kernel, bias)
    np.testing.assert_array_equal(back[0], weight)
    np.testing.assert_array_equal(back[1], np.arange(4))
    assert convert.torch_names == ("c.weight", "c.bias")
    assert convert.keras_paths == ("c/kernel", "c/bias")


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("kernel_size", 4, "an odd kernel_size >= 1"), ("kernel_size", 0, "an odd kernel_size"),
    ("vocab", 1, "vocab >= 2"), ("channels", 0, "channels >= 1"),
    ("dropout", 1.0, "0 <= dropout < 1")])
def test_spec_bounds_are_one_line_errors(field, value, expected):
    with pytest.raises(OnnxtwinError, match=rf"^textcnn spec 'x': expected {expected}"):
        TextCnnSpec(name="x", **{field: value})


def test_builtin_spec_and_signature():
    spec = get_spec("textcnn")
    assert (spec.family, spec.vocab, spec.embed_dim, spec.channels, spec.kernel_size,
            spec.classes) == ("textcnn", 10000, 64, 128, 5, 10)
    (tokens,), (logits,) = spec.signature.inputs, spec.signature.outputs
    assert (tokens.name, tokens.dtype, tokens.shape, tokens.vocab) == \
        ("tokens", "int64", ("batch", "seq"), 10000)
    assert (logits.name, logits.dtype, logits.shape) == ("logits", "float32", ("batch", 10))


@pytest.mark.parametrize("source", ["torch", "keras"])
def test_native_parity_both_sources(twins_of, source):
    parity = native_parity(twins_of("textcnn", source))
    assert parity.passed
    points = {(c.dims["batch"], c.dims["seq"]) for c in parity.result.checks}
    assert points == {(b, s) for b in (1, 7) for s in (1, 12, 50)}
    for pair in ("torch_vs_keras", "torch_vs_oracle", "keras_vs_oracle"):
        assert parity.worst(pair) <= TOLERANCE, (pair, parity.worst(pair))


def test_both_exports_pass_the_gate_and_answer_at_new_shapes(twins_of, tmp_path):
    twins = twins_of("textcnn")
    results = [export_model(twins, fw, tmp_path) for fw in ("torch", "keras")]
    x = sample_inputs(twins.spec, batch=5, seq=33, seed=9)  # a shape the gate never ran
    expected = twins.oracle().run(x)["logits"]
    signatures = []
    for r in results:
        assert len(r.gate) == 6 and r.max_abs <= TOLERANCE
        assert r.ops.get("ReduceMax") == 1  # the pool, over the dynamic seq axis
        model = onnx.load(str(r.path))
        signatures.append(read_signature(model))
        got = Session(r.path).run(x)["logits"]
        assert got.shape == (5, 10)
        assert np.abs(got - expected).max() <= TOLERANCE
    assert signatures[0] == signatures[1]
    assert signatures[0][0][0][2] == ("batch", "seq")


def test_a_planted_conv_mapping_error_is_localised_to_the_conv(monkeypatch):
    """A kernel flipped along its width (convolution mistaken for cross-correlation): the
    embedding still agrees, the conv is where the twins first part."""
    correct = TextCnnSpec.layer_maps

    def flipped_conv(self):
        def wrong(m):
            if m.layer != "conv":
                return m
            return layers.LayerMap(m.layer, m.torch_names, m.keras_paths,
                                   to_keras=lambda w, b: (w[:, :, ::-1].transpose(2, 1, 0), b),
                                   to_torch=m.to_torch, align=m.align)
        return [wrong(m) for m in correct(self)]

    monkeypatch.setattr(TextCnnSpec, "layer_maps", flipped_conv)
    twins = build_twins("textcnn", seed=0)
    inputs = sample_inputs(twins.spec, batch=7, seq=12, seed=1)
    found = localise(twins, inputs, TOLERANCE)
    assert found.first_divergent == "conv (torch) / conv (keras)"
    by_layer = {d.torch: d for d in found.layers}
    assert list(by_layer) == ["embedding", "conv", "fc"]
    assert not by_layer["embedding"].diverged and by_layer["embedding"].max_abs == 0.0
    assert by_layer["conv"].diverged and by_layer["conv"].max_abs > 1e-3
    assert not native_parity(twins).passed
