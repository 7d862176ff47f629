"""What a model is: family specs that register themselves, twins with shared weights, and
the framework paths that run them.

    from onnxtwin.builders import build_twins, sample_inputs
    twins = build_twins("gru", seed=0)
    x = sample_inputs(twins.spec, batch=7, seq=12, seed=1)
    twins.torch.run(x), twins.keras.run(x), twins.oracle().run(x)   # {"logits": array}

A user's own pair (or one model) becomes the same kind of spec: `entry_from_models(...)`,
or a `[models.NAME]` table with `torch`/`keras` factories in a spec file (`load_toml`).
"""

from onnxtwin.builders import grids
from onnxtwin.builders.factory_entry import entry_from_models
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
    "ModelSpec", "Signature", "TensorSpec", "Twins", "build_twins", "builtins",
    "entry_from_models", "families",
    "family", "from_keras", "from_weights", "get_spec", "grids", "load_toml", "load_twins",
    "make_spec", "names", "register", "sample_inputs",
]
