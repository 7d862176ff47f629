"""A wrong weight mapping or hyper-parameter must make the native parity check fail."""

from __future__ import annotations

import dataclasses

from onnxtwin.builders import Twins, build_twins, get_spec
from onnxtwin.builders.weights import load_keras_state, torch_to_keras
from onnxtwin.conformance.native import native_parity

TOLERANCE = 1e-5


def _with_keras_weights(twins: Twins, edit) -> Twins:
    """A fresh Keras twin with the correct transfer, then `edit` applied to its variables."""
    variables = torch_to_keras(twins.spec.layer_maps(), twins.weights)
    edit(variables, twins.weights)
    keras_model = twins.spec.keras_model()
    load_keras_state(keras_model, variables, "test")
    return Twins(twins.spec, twins.torch_model, keras_model)


def _assert_caught(twins: Twins, at_least: float) -> None:
    parity = native_parity(twins, tolerance=TOLERANCE)
    assert not parity.passed
    assert parity.worst("torch_vs_keras") > at_least
    assert parity.worst("torch_vs_oracle") <= TOLERANCE  # the torch twin itself is fine


def test_missing_flatten_permutation_is_caught(twins_of):
    def plain_dense(variables, weights):
        variables["fc1/kernel"] = weights["fc1.weight"].T.copy()

    _assert_caught(_with_keras_weights(twins_of("cnn"), plain_dense), at_least=1e-3)


def test_torch_gru_gate_order_in_keras_is_caught(twins_of):
    def torch_gate_order(variables, weights):
        variables["rnn0/gru_cell/kernel"] = weights["rnns.0.weight_ih_l0"].T.copy()
        variables["rnn0/gru_cell/recurrent_kernel"] = weights["rnns.0.weight_hh_l0"].T.copy()

    _assert_caught(_with_keras_weights(twins_of("gru"), torch_gate_order), at_least=1e-3)


def test_keras_default_layernorm_epsilon_is_caught():
    spec = get_spec("transformer")
    twins = build_twins(spec, seed=0)
    keras_eps = dataclasses.replace(spec, norm_eps=1e-3).keras_model()  # Keras' default epsilon
    load_keras_state(keras_eps, torch_to_keras(spec.layer_maps(), twins.weights), "test")
    _assert_caught(Twins(spec, twins.torch_model, keras_eps), at_least=1e-4)
