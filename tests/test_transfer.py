"""Weight transfer: exact round trips where the mapping is invertible, seeded and saved weights."""

from __future__ import annotations

import numpy as np
import pytest

from onnxtwin.builders import build_twins, builtins, from_weights, get_spec, load_twins
from onnxtwin.builders.weights import keras_state, keras_to_torch, torch_to_keras, weights_hash
from onnxtwin.runtime.errors import OnnxtwinError

NAMES = [s.name for s in builtins()]
LSTMS = {"lstm", "bilstm"}


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_torch_keras_torch_round_trip(twins_of, name):
    twins = twins_of(name)
    maps = twins.spec.layer_maps()
    back = keras_to_torch(maps, keras_state(twins.keras_model))
    weights = twins.weights
    if name not in LSTMS:
        _assert_same(back, weights)
        return
    # The LSTM bias split is the known exception: Keras keeps only b_ih + b_hh.
    for k in weights:
        if "bias_ih" in k:
            hh = k.replace("bias_ih", "bias_hh")
            np.testing.assert_array_equal(back[k], weights[k] + weights[hh])
            np.testing.assert_array_equal(back[hh], np.zeros_like(weights[hh]))
            assert np.abs(weights[hh]).max() > 0  # so the split really was lost
        elif "bias_hh" not in k:
            np.testing.assert_array_equal(back[k], weights[k])


@pytest.mark.parametrize("name", NAMES)
def test_keras_torch_keras_round_trip_is_exact(twins_of, name):
    twins = twins_of(name, "keras")
    variables = keras_state(twins.keras_model)
    maps = twins.spec.layer_maps()
    _assert_same(torch_to_keras(maps, keras_to_torch(maps, variables)), variables)


@pytest.mark.parametrize("source", ["torch", "keras"])
def test_same_seed_gives_bit_identical_weights(twins_of, source):
    again = build_twins("gru", seed=0, source=source)
    assert weights_hash(again.weights) == weights_hash(twins_of("gru", source).weights)
    assert weights_hash(build_twins("gru", seed=1, source=source).weights) != \
        weights_hash(again.weights)


def test_saved_twins_load_back_identically(twins_of, tmp_path):
    twins = twins_of("bilstm")
    twins.save(tmp_path / "bilstm")
    assert sorted(p.name for p in (tmp_path / "bilstm").iterdir()) == \
        ["keras.weights.h5", "spec.json", "torch.safetensors"]
    loaded = load_twins(tmp_path / "bilstm")
    _assert_same(loaded.weights, twins.weights)
    keras_model = twins.spec.keras_model()
    keras_model.load_weights(str(tmp_path / "bilstm" / "keras.weights.h5"))
    _assert_same(keras_state(keras_model), keras_state(twins.keras_model))


def test_weights_of_the_wrong_shape_are_refused(twins_of):
    weights = twins_of("cnn").weights
    weights["fc2.weight"] = weights["fc2.weight"][:, :63]
    with pytest.raises(OnnxtwinError, match=r"^cnn: weights: tensor 'fc2.weight' expected "
                                            r"shape \(10, 64\), got \(10, 63\)$"):
        from_weights(get_spec("cnn"), weights)


def test_missing_and_unexpected_weights_are_named(twins_of):
    weights = twins_of("cnn").weights
    weights["extra.weight"] = weights.pop("fc1.bias")
    with pytest.raises(OnnxtwinError, match=r"missing \['fc1.bias'\], unexpected "
                                            r"\['extra.weight'\]"):
        from_weights(get_spec("cnn"), weights)


def test_corrupt_weight_file_gives_one_line_error(twins_of, tmp_path):
    twins_of("cnn").save(tmp_path)
    path = tmp_path / "torch.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OnnxtwinError, match="expected a safetensors file, got unreadable") as e:
        load_twins(tmp_path)
    assert "\n" not in str(e.value)


def test_weights_of_another_spec_are_refused(twins_of, tmp_path):
    twins_of("cnn").save(tmp_path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec_file.read_text().replace('"dense": 64', '"dense": 32'))
    with pytest.raises(OnnxtwinError, match="expected weights for spec"):
        load_twins(tmp_path)
