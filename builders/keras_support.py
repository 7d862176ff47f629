"""Keras 3 on the TensorFlow backend, imported on first use.

Importing this module imports TensorFlow (seconds), so the family files import it
inside their Keras builders only.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras

from onnxtwin.runtime.errors import OnnxtwinError

if keras.backend.backend() != "tensorflow":
    raise OnnxtwinError(f"Keras backend: expected 'tensorflow' (KERAS_BACKEND), "
                        f"got {keras.backend.backend()!r}")


def seeded(seed: int) -> None:
    """Seed Keras' initialisers (Python, numpy and TensorFlow global generators)."""
    keras.utils.set_random_seed(seed)


def keras_function(spec, model):
    """The Keras twin as a tf.function with an explicit signature (named dims left None),
    returning {output name: tensor}: what tf2onnx converts and what deployments call.

    A `channels_last` input keeps the shared channels-first signature; the transpose is
    in the graph, so both exported files stay drop-in replacements for each other.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape], t.dtype,
                               name=t.name) for t in spec.signature.inputs]
    names = spec.signature.output_names
    moves = [[0, *range(2, len(t.shape)), 1] if t.channels_last else None
             for t in spec.signature.inputs]

    @tf.function(input_signature=signature)
    def serve(*inputs):
        args = [x if m is None else tf.transpose(x, m) for x, m in zip(inputs, moves,
                                                                      strict=True)]
        result = model(args[0] if len(args) == 1 else args, training=False)
        if isinstance(result, dict):
            return {n: result[n] for n in names}
        outputs = result if isinstance(result, list | tuple) else [result]
        return dict(zip(names, outputs, strict=True))

    return serve


def float64_twin(factory, model, args):
    """The Keras model rebuilt by `factory` under a float64 dtype policy, called once on
    `args` (so a subclassed model has its weights), holding `model`'s weights: the float64
    run of a Keras-only entry. Weights are matched by order (one factory, one order)."""
    import numpy as np

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        twin = factory()
        twin(args, training=False)
    finally:
        keras.config.set_dtype_policy(previous)
    if [tuple(v.shape) for v in twin.weights] != [tuple(v.shape) for v in model.weights]:
        raise OnnxtwinError("keras float64 run: expected the factory to build the same "
                            "variables again, got a different model")
    for target, value in zip(twin.weights, model.weights, strict=True):
        target.assign(np.asarray(value.numpy()).astype(target.dtype))
    return twin
