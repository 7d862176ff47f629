"""Automatic layer matching on user pairs written here: weights moved either way give equal
models (against float64 torch), each refusal is one line naming both layers, and localise
names the first layer pair that parts."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest

from onnxtwin.builders.matching import match_layers
from onnxtwin.builders.signature import Signature, TensorSpec
from onnxtwin.builders.weights import (
    keras_state,
    keras_to_torch,
    load_keras_state,
    load_torch_state,
    torch_state,
    torch_to_keras,
)
from onnxtwin.runtime.errors import OnnxtwinError

TOLERANCE = 1e-5
POINTS = ((2, 5), (3, 8))
"""(batch, seq) of the two fresh inputs each transferred pair is run on."""


def _keras():
    from onnxtwin.builders.keras_support import keras

    return keras


@dataclass
class UserPair:
    """A torch model and a Keras model of one network, and how to feed them."""

    torch: object
    keras: object
    inputs: object
    """(rng, batch, seq) -> the torch inputs (channels-first, as the signature gives them)."""
    channels_last: tuple[bool, ...] = (False,)

    def keras_args(self, args: list[np.ndarray]) -> list[np.ndarray]:
        return [np.moveaxis(a, 1, -1) if moved else a
                for a, moved in zip(args, self.channels_last, strict=True)]

    def match(self, rng: np.random.Generator | None = None):
        args = self.inputs(rng or np.random.default_rng(0), *POINTS[0])
        return match_layers(self.torch, self.keras, args, self.keras_args(args))


def _floats(shape, rng) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _tokens(shape, rng) -> np.ndarray:
    return rng.integers(0, 20, shape).astype(np.int64)


def _bn_cnn():
    import torch.nn as nn

    keras = _keras()
    torch_model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 3, 5))
    keras_model = keras.Sequential([
        keras.Input((8, 6, 3)), keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.BatchNormalization(epsilon=1e-5), keras.layers.ReLU(),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(5)])
    return UserPair(torch_model, keras_model, lambda rng, n, _: [_floats((n, 3, 8, 6), rng)],
                    channels_last=(True,))


def _text_cnn():
    import torch
    import torch.nn as nn

    keras = _keras()

    class TextCnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(20, 8)
            self.conv = nn.Conv1d(8, 6, 3, padding=1)
            self.fc = nn.Linear(6, 4)

        def forward(self, tokens):
            x = torch.relu(self.conv(self.embedding(tokens).transpose(1, 2)))
            return self.fc(x.amax(dim=2))

    tokens = keras.Input((None,), dtype="int64")
    x = keras.layers.Embedding(20, 8)(tokens)
    x = keras.layers.Conv1D(6, 3, padding="same", activation="relu")(x)
    logits = keras.layers.Dense(4)(keras.layers.GlobalMaxPooling1D()(x))
    return UserPair(TextCnn(), keras.Model(tokens, logits),
                    lambda rng, n, seq: [_tokens((n, seq), rng)])


def _bigru():
    import torch
    import torch.nn as nn

    keras = _keras()

    class BiGru(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(6, 5, num_layers=2, bidirectional=True, batch_first=True)
            self.fc = nn.Linear(10, 3)

        def forward(self, x):
            h = self.rnn(x)[1]
            return self.fc(torch.cat([h[-2], h[-1]], dim=-1))

    x = keras.Input((None, 6))
    gru = keras.layers.GRU
    h = keras.layers.Bidirectional(gru(5, return_sequences=True, reset_after=True))(x)
    h = keras.layers.Bidirectional(gru(5, reset_after=True))(h)
    return UserPair(BiGru(), keras.Model(x, keras.layers.Dense(3)(h)),
                    lambda rng, n, seq: [_floats((n, seq, 6), rng)])


def _lstm_sequence_first():
    import torch.nn as nn

    keras = _keras()

    class Lstm(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(6, 5, num_layers=2)  # batch_first=False
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(self.rnn(x.transpose(0, 1))[0][-1])

    keras_model = keras.Sequential([keras.Input((None, 6)),
                                    keras.layers.LSTM(5, return_sequences=True),
                                    keras.layers.LSTM(5), keras.layers.Dense(3)])
    return UserPair(Lstm(), keras_model, lambda rng, n, seq: [_floats((n, seq, 6), rng)])


def _attention():
    import torch.nn as nn

    keras = _keras()

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            h = self.norm(x)
            return self.fc(x + self.attn(h, h, h, need_weights=False)[0])

    x = keras.Input((None, 8))
    h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(h, h)
    y = keras.layers.Dense(3)(keras.layers.Add()([x, h]))
    return UserPair(Attention(), keras.Model(x, y),
                    lambda rng, n, seq: [_floats((n, seq, 8), rng)])


def _subclassed():
    import torch
    import torch.nn as nn

    keras = _keras()

    class TorchBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.dense(x))

    class TorchMlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(6, 8)
            self.block = TorchBlock()
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(torch.relu(self.block(torch.tanh(self.first(x)))))

    class KerasBlock(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(8)
            self.norm = keras.layers.LayerNormalization(epsilon=1e-5)

        def call(self, x):
            return self.norm(self.dense(x))

    class KerasMlp(keras.Model):
        def __init__(self):
            super().__init__()
            self.first = keras.layers.Dense(8, activation="tanh")
            self.block = KerasBlock()
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(keras.ops.relu(self.block(self.first(x))))

    keras_model = KerasMlp()
    keras_model(np.zeros((1, 2, 6), np.float32))  # a subclassed model has weights once called
    return UserPair(TorchMlp(), keras_model, lambda rng, n, seq: [_floats((n, seq, 6), rng)])


CASES = {"bn_cnn": _bn_cnn, "text_cnn": _text_cnn, "bigru_2_layers": _bigru,
         "lstm_2_layers_sequence_first": _lstm_sequence_first,
         "layernorm_attention": _attention, "subclassed_keras": _subclassed}


@pytest.fixture(scope="module")
def user_pair():
    """user_pair(name): that case's pair, built once per module (Keras building is slow)."""
    built: dict[str, UserPair] = {}

    def get(name: str) -> UserPair:
        if name not in built:
            built[name] = CASES[name]()
        return built[name]

    return get


def _randomise_torch(model, rng) -> None:
    state = {}
    for name, value in torch_state(model).items():
        if name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif value.dtype.kind == "f":
            state[name] = (0.4 * rng.standard_normal(value.shape)).astype(np.float32)
        else:
            state[name] = value
    load_torch_state(model, state, "test")


def _randomise_keras(model, rng) -> None:
    for v in model.weights:
        value = rng.uniform(0.5, 1.5, v.shape) if v.path.endswith("moving_variance") else \
            0.4 * rng.standard_normal(v.shape)
        v.assign(value.astype(np.float32))


def _run_torch(model, args: list[np.ndarray], double: bool = False) -> np.ndarray:
    import torch

    if double:
        model = copy.deepcopy(model).double()
        args = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in args]
    with torch.no_grad():
        return model.eval()(*(torch.from_numpy(a) for a in args)).numpy()


def _run_keras(model, args: list[np.ndarray]) -> np.ndarray:
    return np.asarray(model(args[0] if len(args) == 1 else args, training=False))


@pytest.mark.parametrize("direction", ["torch_to_keras", "keras_to_torch"])
@pytest.mark.parametrize("name", list(CASES))
def test_transferred_weights_give_equal_models(user_pair, name, direction):
    pair = user_pair(name)
    rng = np.random.default_rng(sorted(CASES).index(name))
    maps = pair.match(rng)
    if direction == "torch_to_keras":
        _randomise_torch(pair.torch, rng)
        load_keras_state(pair.keras, torch_to_keras(maps, torch_state(pair.torch)), "test")
    else:
        _randomise_keras(pair.keras, rng)
        load_torch_state(pair.torch, keras_to_torch(maps, keras_state(pair.keras)), "test")
    for batch, seq in POINTS:
        args = pair.inputs(rng, batch, seq)
        expected = _run_torch(pair.torch, args, double=True)
        torch_out = _run_torch(pair.torch, args)
        keras_out = _run_keras(pair.keras, pair.keras_args(args))
        assert keras_out.shape == torch_out.shape == expected.shape
        assert np.abs(expected).max() > 0.1  # the weights really were set
        assert np.abs(torch_out - expected).max() < TOLERANCE
        assert np.abs(keras_out - expected).max() < TOLERANCE
        assert np.abs(keras_out - torch_out).max() < TOLERANCE


def test_maps_use_the_real_names(user_pair):
    pair = user_pair("bigru_2_layers")
    maps = pair.match()
    torch_names = [n for m in maps for n in m.torch_names]
    keras_paths = [p for m in maps for p in m.keras_paths]
    assert sorted(torch_names) == sorted(pair.torch.state_dict())
    assert sorted(keras_paths) == sorted(v.path for v in pair.keras.weights)
    second = pair.keras.layers[2]  # the second Bidirectional layer
    reverse = next(m for m in maps if "rnn.weight_ih_l1_reverse" in m.torch_names)
    assert reverse.keras_paths[0] == second.backward_layer.cell.kernel.path
    assert reverse.torch_module == "rnn" and reverse.keras_layer == second.path


def _refusal(torch_model, keras_layers, torch_shape, keras_shape) -> str:
    """match_layers' one-line refusal for a torch model and a Keras Sequential."""
    keras = _keras()
    keras_model = keras.Sequential([keras.Input(keras_shape[1:]), *keras_layers])
    rng = np.random.default_rng(0)
    with pytest.raises(OnnxtwinError) as raised:
        match_layers(torch_model, keras_model, [_floats(torch_shape, rng)],
                     [_floats(keras_shape, rng)])
    message = str(raised.value)
    assert "\n" not in message and len(message) < 300
    return message


def _cnn_layers(keras, epsilon: float | None = 1e-5):
    norm = [] if epsilon is None else [keras.layers.BatchNormalization(epsilon=epsilon,
                                                                       name="bn")]
    return [keras.layers.Conv2D(4, 3, padding="same", name="conv"), *norm,
            keras.layers.Flatten(), keras.layers.Dense(5, name="fc")]


def _torch_cnn(bn: bool = True):
    import torch.nn as nn

    norm = [nn.BatchNorm2d(4)] if bn else []
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *norm, nn.Flatten(),
                         nn.Linear(4 * 8 * 6, 5))


IMAGE, IMAGE_LAST = (2, 3, 8, 6), (2, 8, 6, 3)


def test_keras_default_batchnorm_epsilon_is_refused():
    message = _refusal(_torch_cnn(), _cnn_layers(_keras(), epsilon=0.001), IMAGE, IMAGE_LAST)
    assert "layer 2: torch '1' (BatchNorm2d, eps 1e-05) and keras 'bn' (BatchNormalization, " \
           "epsilon 0.001): expected equal epsilon" in message


def test_a_missing_layer_is_refused_by_count():
    message = _refusal(_torch_cnn(), _cnn_layers(_keras(), epsilon=None), IMAGE, IMAGE_LAST)
    assert "expected as many parameterised layers: torch has 3 (first unmatched: '1' " \
           "BatchNorm2d), keras has 2" in message


def test_a_conv_against_a_dense_is_refused():
    import torch.nn as nn

    message = _refusal(nn.Sequential(nn.Conv1d(6, 4, 1)), [_keras().layers.Dense(4, name="fc")],
                       (2, 6, 5), (2, 5, 6))
    assert "layer 1: torch '0' (Conv1d) and keras 'fc' (Dense): expected the same kind of " \
           "layer" in message


def test_different_widths_are_refused():
    import torch.nn as nn

    message = _refusal(nn.Sequential(nn.Linear(6, 4)), [_keras().layers.Dense(5, name="fc")],
                       (2, 6), (2, 6))
    assert "layer 1: torch '0' (Linear, 6 -> 4) and keras 'fc' (Dense, 6 -> 5): expected " \
           "equal widths" in message


def test_gru_without_reset_after_is_refused():
    import torch.nn as nn

    keras = _keras()
    message = _refusal(nn.Sequential(nn.GRU(6, 5, batch_first=True)),
                       [keras.layers.GRU(5, reset_after=False, name="gru")], (2, 4, 6), (2, 4, 6))
    assert "layer 1: torch '0' (GRU) and keras 'gru' (GRU, reset_after=False): expected " \
           "reset_after=True" in message


@pytest.mark.parametrize("module", ["PReLU", "Conv3d"])
def test_an_unsupported_layer_is_refused_by_name(module):
    import torch.nn as nn

    keras = _keras()
    if module == "PReLU":
        torch_model = nn.Sequential(nn.Linear(6, 4), nn.PReLU())
        keras_layers, shapes = [keras.layers.Dense(4), keras.layers.PReLU()], ((2, 6), (2, 6))
    else:
        torch_model = nn.Sequential(nn.Conv3d(3, 4, 1))
        keras_layers = [keras.layers.Conv3D(4, 1)]
        shapes = ((2, 3, 4, 4, 4), (2, 4, 4, 4, 3))
    message = _refusal(torch_model, keras_layers, *shapes)
    index = "1" if module == "PReLU" else "0"
    assert f"torch '{index}' ({module}): expected layers with parameters among" in message


def test_different_conv_padding_is_refused():
    import torch.nn as nn

    keras = _keras()
    message = _refusal(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)),
                       [keras.layers.Conv2D(4, 3, padding="valid", name="conv")],
                       IMAGE, IMAGE_LAST)
    assert "layer 1: torch '0' (Conv2d, padding (1, 1): before (1, 1), output (8, 6)) and " \
           "keras 'conv' (Conv2D, padding 'valid': before (0, 0), output (6, 4)): expected " \
           "equal padding" in message


@dataclass(frozen=True)
class UserSpec:
    """The part of a spec that Twins.layer_maps and localise use: the signature, and
    matching by running the pair on a sample."""

    name: str
    signature: Signature
    pair: UserPair

    def match_layers(self, torch_model, keras_model):
        assert (torch_model, keras_model) == (self.pair.torch, self.pair.keras)
        return self.pair.match()


@pytest.mark.parametrize("name, perturbed", [("bn_cnn", 2), ("subclassed_keras", 1)])
def test_localise_names_the_first_diverging_pair(user_pair, name, perturbed):
    """After a correct transfer, one Keras Dense kernel is moved: the layers before it agree,
    and it is named as the first to diverge."""
    from onnxtwin.builders.twins import Twins
    from onnxtwin.conformance.localise import localise

    pair = user_pair(name)
    maps = pair.match()
    rng = np.random.default_rng(3)
    _randomise_torch(pair.torch, rng)
    variables = torch_to_keras(maps, torch_state(pair.torch))
    target = maps[perturbed]
    variables[target.keras_paths[0]] = variables[target.keras_paths[0]] + 0.1
    load_keras_state(pair.keras, variables, "test")
    shape = (3, 8, 6) if name == "bn_cnn" else (5, 6)
    signature = Signature((TensorSpec("x", "float32", ("batch", *shape),
                                      channels_last=pair.channels_last[0]),), ())
    twins = Twins(UserSpec(name, signature, pair), pair.torch, pair.keras)
    found = localise(twins, {"x": pair.inputs(rng, 4, 5)[0]}, TOLERANCE)
    assert found.first_divergent == f"{target.torch_module} (torch) / {target.keras_layer} (keras)"
    diffs = {d.torch: d for d in found.layers}
    assert list(diffs) == list(dict.fromkeys(m.torch_module for m in maps))
    before = [diffs[m.torch_module] for m in maps[:perturbed]]
    assert all(d.max_abs is not None and not d.diverged for d in before)
    assert diffs[target.torch_module].diverged and diffs[target.torch_module].max_abs > 1e-2


@pytest.mark.parametrize("name", ["lstm_2_layers_sequence_first", "bigru_2_layers"])
def test_localise_compares_only_what_a_multi_layer_rnn_shows(user_pair, name):
    """A torch RNN's inner layer stays inside the module (not comparable); its last layer is
    brought to the Keras layer's output (sequence-first transposed, final state taken)."""
    from onnxtwin.builders.twins import Twins
    from onnxtwin.conformance.localise import localise

    pair = user_pair(name)
    maps = pair.match()
    rng = np.random.default_rng(4)
    _randomise_torch(pair.torch, rng)
    load_keras_state(pair.keras, torch_to_keras(maps, torch_state(pair.torch)), "test")
    signature = Signature((TensorSpec("x", "float32", ("batch", "seq", 6)),), ())
    twins = Twins(UserSpec(name, signature, pair), pair.torch, pair.keras)
    found = localise(twins, {"x": pair.inputs(rng, 3, 7)[0]}, TOLERANCE)
    assert found.first_divergent is None
    assert [d.torch for d in found.layers] == ["rnn", "rnn", "fc"]
    assert found.layers[0].max_abs is None
    assert all(d.max_abs is not None and d.max_abs < TOLERANCE for d in found.layers[1:])
