"""The twins: one spec per family, a torch model and a Keras model with the same weights.

    from onnxtwin.builders import build_twins, sample_inputs
    twins = build_twins("gru", seed=0)
    x = sample_inputs(twins.spec, batch=7, seq=12, seed=1)
    twins.run_torch(x), twins.run_keras(x), twins.run_oracle(x)
"""

from onnxtwin.builders.inputs import check_shapes, has_seq, sample_inputs
from onnxtwin.builders.registry import BUILTIN, get_spec, load_toml, make_spec, names, register
from onnxtwin.builders.signature import ModelSpec, Signature, TensorSpec
from onnxtwin.builders.twins import Twins, build_twins, from_keras, from_weights, load_twins

__all__ = [
    "BUILTIN", "ModelSpec", "Signature", "TensorSpec", "Twins", "build_twins", "check_shapes",
    "from_keras", "from_weights",
    "get_spec", "has_seq", "load_toml", "load_twins", "make_spec", "names", "register",
    "sample_inputs",
]
