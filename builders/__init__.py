"""What a model is: family specs that register themselves, twins with shared weights, and
the framework paths that run them.

    from onnxtwin.builders import build_twins, sample_inputs
    twins = build_twins("gru", seed=0)
    x = sample_inputs(twins.spec, batch=7, seq=12, seed=1)
    twins.torch.run(x), twins.keras.run(x), twins.oracle().run(x)   # {"logits": array}
"""

from onnxtwin.builders import grids
from onnxtwin.builders.inputs import sample_inputs
from onnxtwin.builders.registry import (
    builtins,
    families,
    family,
    get_spec,
    load_toml,
    make_spec,
    names,
    register,
)
from onnxtwin.builders.signature import ModelSpec, Signature, TensorSpec
from onnxtwin.builders.twins import Twins, build_twins, from_keras, from_weights, load_twins

__all__ = [
    "ModelSpec", "Signature", "TensorSpec", "Twins", "build_twins", "builtins", "families",
    "family", "from_keras", "from_weights", "get_spec", "grids", "load_toml", "load_twins",
    "make_spec", "names", "register", "sample_inputs",
]
