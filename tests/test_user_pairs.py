"""A user's own torch/Keras pairs through the whole pipeline, from a spec file: weights
moved in both directions, both sides exported with one signature and gated, and the
matrix against the float64 oracle. The models are written here, as a user would.
"""

from __future__ import annotations

import textwrap
import tomllib

import numpy as np
import onnx
import pytest

from onnxtwin.builders import build_twins, sample_inputs
from onnxtwin.builders.registry import toml_specs
from onnxtwin.conformance.orchestrator import CheckOptions, check
from onnxtwin.runtime import Session
from onnxtwin.runtime.errors import OnnxtwinError

MODELS = textwrap.dedent('''
    import keras
    import torch
    from torch import nn

    L = keras.layers


    def cnn_torch():
        return nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))


    def cnn_keras(epsilon=1e-5):
        return keras.Sequential([
            keras.Input((16, 16, 3)),
            L.Conv2D(6, 3, padding="same"), L.BatchNormalization(epsilon=epsilon), L.ReLU(),
            L.MaxPooling2D(2),
            L.Conv2D(8, 3), L.BatchNormalization(epsilon=epsilon), L.ReLU(),
            L.Flatten(), L.Dense(16, activation="relu"), L.Dense(4)])


    def cnn_keras_default_epsilon():
        return cnn_keras(epsilon=1e-3)


    class TextConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(30, 8)
            self.conv = nn.Conv1d(8, 12, 3, padding=1)
            self.out = nn.Linear(12, 3)

        def forward(self, tokens):
            h = torch.relu(self.conv(self.embed(tokens).transpose(1, 2)))
            return self.out(h.amax(dim=2))


    def text_torch():
        return TextConv()


    def text_keras():
        tokens = keras.Input((None,), dtype="int64")
        h = L.Conv1D(12, 3, padding="same", activation="relu")(L.Embedding(30, 8)(tokens))
        return keras.Model(tokens, L.Dense(3)(L.GlobalMaxPooling1D()(h)))


    class BiGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(5, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.out = nn.Linear(12, 2)

        def forward(self, x):
            h, _ = self.gru(x)
            return self.out(h[:, -1])


    def gru_torch():
        return BiGRU()


    def gru_keras():
        x = keras.Input((None, 5))
        h = L.Bidirectional(L.GRU(6, return_sequences=True))(x)
        h = L.Bidirectional(L.GRU(6, return_sequences=True))(h)
        return keras.Model(x, L.Dense(2)(h[:, -1]))
''')

PAIRS = {
    "user-cnn": '''
        torch = "pairs.py:cnn_torch"
        keras = "pairs.py:cnn_keras"
        outputs = ["logits"]
        dims = { batch = [1, 5] }
        inputs = [{ name = "image", dtype = "float32", shape = ["batch", 3, 16, 16], \
channels_last = true }]
    ''',
    "user-text": '''
        torch = "pairs.py:text_torch"
        keras = "pairs.py:text_keras"
        inputs = [{ name = "tokens", dtype = "int64", shape = ["batch", "seq"], range = [0, 30] }]
        dims = { batch = [1, 4], seq = [3, 17] }
    ''',
    "user-bigru": '''
        torch = "pairs.py:gru_torch"
        keras = "pairs.py:gru_keras"
        inputs = [{ name = "x", dtype = "float32", shape = ["batch", "time", 5] }]
        dims = { batch = [1, 3], time = [1, 8] }
    ''',
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "pairs.py").write_text(MODELS)
    return folder


def spec(folder, name: str, source: str = "torch", body: str | None = None):
    table = textwrap.dedent(body or PAIRS[name]) + f'source = "{source}"\n'
    return toml_specs(tomllib.loads(f"[models.{name}]\n{table}"), folder / "spec.toml")[0]


@pytest.mark.parametrize("source", ["torch", "keras"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_a_pair_agrees_after_transfer_and_its_files_pass_the_matrix(folder, tmp_path, name,
                                                                     source):
    s = spec(folder, name, source)
    report = check([s], tmp_path, CheckOptions(providers=("cpu",), timing_runs=2))
    result = report.models[0]
    assert result.passed, [c.to_dict() for c in result.failed][:3]
    paths = {p.name for p in result.paths}
    assert paths == {"torch", "keras", "torch.onnx@cpu", "keras.onnx@cpu"}
    assert {tuple(sorted(c.dims.items())) for c in result.checks} == {
        tuple(sorted(p.items())) for p in s.matrix_points()}
    for path in paths:
        assert result.worst_against_oracle(path) < 1e-5
    assert result.comparisons.worst("torch", "keras") < 1e-5
    # both files carry the one signature: the channels-first image, dims by name
    for framework in ("torch", "keras"):
        model = onnx.load(str(tmp_path / f"{name}.{framework}.onnx"))
        graph_input = model.graph.input[0]
        dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        assert dims == list(s.signature.inputs[0].shape)


def test_the_keras_file_of_a_channels_last_pair_takes_the_torch_layout(folder, tmp_path):
    """The transpose is inside the Keras file: the torch file's input runs in it unchanged,
    and its logits equal the float64 torch model's."""
    import torch

    s = spec(folder, "user-cnn")
    twins = build_twins(s)
    report = check([s], tmp_path, CheckOptions(providers=("cpu",), timing_runs=2))
    assert report.passed
    x = sample_inputs(s, batch=6, seed=5)["image"]  # batch 6: a size no grid used
    with torch.no_grad():
        expected = twins.oracle().module(torch.from_numpy(x).double()).numpy()
    got = Session(tmp_path / "user-cnn.keras.onnx").run({"image": x})["logits"]
    assert np.abs(got - expected).max() < 1e-5


def test_a_keras_batchnorm_left_at_its_default_epsilon_is_refused_naming_it(folder):
    body = PAIRS["user-cnn"].replace("pairs.py:cnn_keras", "pairs.py:cnn_keras_default_epsilon")
    with pytest.raises(OnnxtwinError) as e:
        build_twins(spec(folder, "user-cnn", body=body))
    message = str(e.value)
    assert "model 'user-cnn'" in message and "BatchNorm" in message and "eps" in message
    assert "\n" not in message


def _mlp_pair():
    import keras
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch_model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    keras_model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                                    keras.layers.LayerNormalization(epsilon=1e-5),
                                    keras.layers.Activation("tanh"), keras.layers.Dense(3)])
    return torch_model.eval(), keras_model


def test_assert_twins_agree_moves_the_weights_then_names_a_diverging_layer():
    from onnxtwin.conformance.parity import assert_twins_agree

    torch_model, keras_model = _mlp_pair()
    x = {"x": np.random.default_rng(0).random((5, 6), dtype=np.float32)}
    with pytest.raises(AssertionError):  # Keras's own initialisation: not twins yet
        assert_twins_agree(torch_model, keras_model, x)
    assert_twins_agree(torch_model, keras_model, x, transfer=True)
    dense = keras_model.layers[-1]
    dense.kernel.assign(np.asarray(dense.kernel) * 1.5)  # the last layer only
    with pytest.raises(AssertionError) as e:
        assert_twins_agree(torch_model, keras_model, x)
    assert "first diverging layer: 3 (torch) / " in str(e.value)
    assert dense.name in str(e.value)


def test_entry_from_models_is_checked_like_a_spec_file_entry(tmp_path):
    from onnxtwin.builders import entry_from_models

    torch_model, keras_model = _mlp_pair()
    spec = entry_from_models(torch_model, keras_model, source="keras", outputs=["scores"],
                             inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 6]}],
                             dims={"batch": [1, 4]}, name="api-mlp")
    twins = build_twins(spec)
    assert twins.torch_model is torch_model and twins.keras_model is keras_model
    keras_kernel = np.asarray(keras_model.layers[0].kernel)
    assert np.array_equal(torch_model[0].weight.detach().numpy(), keras_kernel.T)
    report = check([spec], tmp_path, CheckOptions(providers=("cpu",), timing_runs=2))
    assert report.passed and report.models[0].worst_against_oracle("keras.onnx@cpu") < 1e-6


def _two_heads(widths: tuple[int, int]):
    """Two inputs, a shared trunk and two heads; Keras runs the second head first."""
    import keras
    import torch
    from torch import nn

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)
            self.head1, self.head2 = nn.Linear(6, widths[0]), nn.Linear(6, widths[1])

        def forward(self, feats, extra):
            h = torch.tanh(self.a(feats) + self.b(extra))
            return self.head1(h), self.head2(h)

    feats, extra = keras.Input((4,)), keras.Input((3,))
    h = keras.layers.Activation("tanh")(keras.layers.Add()([keras.layers.Dense(6)(feats),
                                                          keras.layers.Dense(6)(extra)]))
    heads = [keras.layers.Dense(w)(h) for w in widths]
    return Heads().eval(), keras.Model([feats, extra], heads)


@pytest.mark.parametrize("widths", [(2, 2), (2, 1)])
def test_two_heads_are_matched_in_the_order_the_graph_was_written(widths):
    from onnxtwin.conformance.parity import assert_twins_agree

    torch_model, keras_model = _two_heads(widths)
    rng = np.random.default_rng(0)
    x = {"feats": rng.random((5, 4), dtype=np.float32),
         "extra": rng.random((5, 3), dtype=np.float32)}
    assert_twins_agree(torch_model, keras_model, x, transfer=True)
    second = keras_model.layers[-1]
    assert np.array_equal(np.asarray(second.kernel), torch_model.head2.weight.detach().numpy().T)


def test_a_strided_conv_padded_by_a_keras_zeropadding_layer_is_the_torch_padding():
    """Keras 'same' pads 0 before and 1 after at stride 2; torch's padding=1 is matched
    by ZeroPadding2D(1) then a 'valid' conv, and the weights move across it."""
    import keras
    from torch import nn

    from onnxtwin.builders import entry_from_models

    torch_model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
                                nn.Flatten(), nn.Linear(6 * 4 * 4, 3)).eval()
    keras_model = keras.Sequential([
        keras.Input((8, 8, 4)), keras.layers.ZeroPadding2D(1),
        keras.layers.Conv2D(6, 3, strides=2, padding="valid", activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.default_rng(0).random((2, 4, 8, 8), dtype=np.float32)
    spec = entry_from_models(torch_model, keras_model, dims={"batch": [1, 2]}, inputs=[
        {"name": "x", "dtype": "float32", "shape": ["batch", 4, 8, 8], "channels_last": True}])
    twins = build_twins(spec)
    got, want = twins.keras.run({"x": x}), twins.oracle().run({"x": x})
    assert np.abs(got["output_0"] - want["output_0"]).max() < 1e-6


def test_outputs_that_part_outside_every_matched_layer_are_said_so(tmp_path):
    """Keras fuses a relu into its last Dense where torch has none: each matched layer
    agrees (the fused activation is applied to torch's output before comparing), so the
    report says the cause lies outside the matched layers instead of naming none."""
    import keras
    from torch import nn

    from onnxtwin.builders import entry_from_models
    from onnxtwin.conformance.render import failures

    torch_model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    keras_model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                                    keras.layers.Dense(3, activation="relu")])
    spec = entry_from_models(torch_model, keras_model, dims={"batch": [4]}, name="fused-relu",
                             inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 6]}])
    report = check([spec], tmp_path, CheckOptions(providers=("cpu",), timing_runs=2))
    assert not report.passed
    localisation = report.models[0].localisation
    assert localisation.first_divergent is None
    assert all(row.max_abs < 1e-6 for row in localisation.layers)
    said = [line for line in failures(report.to_dict()) if "matched layer" in line]
    last = keras_model.layers[-1].path  # Keras numbers its names per process
    assert said == [f"fused-relu: every matched layer agrees, yet the outputs differ: the cause "
                    f"is outside the matched layers, after the last (2 / {last}) or between "
                    f"them (an activation, a pooling, a reshape, an op in forward)"]


def test_assert_twins_agree_feeds_a_channels_last_keras_model_from_torch_layout():
    import keras
    from torch import nn

    from onnxtwin.conformance.parity import assert_twins_agree

    torch_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                                nn.Linear(4 * 6 * 6, 2)).eval()
    keras_model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                                    keras.layers.ReLU(), keras.layers.Flatten(),
                                    keras.layers.Dense(2)])
    x = {"image": np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)}
    assert_twins_agree(torch_model, keras_model, x, transfer=True, channels_last=["image"])
    conv = keras_model.layers[0]
    assert np.array_equal(np.asarray(conv.kernel),
                          torch_model[0].weight.detach().numpy().transpose(2, 3, 1, 0))
    with pytest.raises(OnnxtwinError, match=r"channels_last: expected names of the inputs "
                                            r"\['image'\], got \['x'\]"):
        assert_twins_agree(torch_model, keras_model, x, channels_last=["x"])


def test_uneven_branches_are_matched_in_the_order_the_graph_was_written():
    """trunk -> headA, and trunk -> b1 -> b2: Keras' `layers` lists b1 before headA (by
    depth); torch calls headA first, as the graph was written. Equal widths everywhere, so
    a wrong order would swap weights silently."""
    import keras
    import torch
    from torch import nn

    from onnxtwin.conformance.parity import assert_twins_agree

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.head = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b1, self.b2 = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = torch.tanh(self.trunk(x))
            return self.head(h), self.b2(torch.tanh(self.b1(h)))

    x = keras.Input((4,))
    h = keras.layers.Dense(4, activation="tanh")(x)
    head = keras.layers.Dense(4)(h)
    b = keras.layers.Dense(4)(keras.layers.Dense(4, activation="tanh")(h))
    keras_model = keras.Model(x, [head, b])
    torch_model = Branches().eval()
    inputs = {"x": np.random.default_rng(2).random((3, 4), dtype=np.float32)}
    assert_twins_agree(torch_model, keras_model, inputs, transfer=True)
