"""Keras 3 on the TensorFlow backend, imported on first use, and the custom layers the twins need.

Importing this module imports TensorFlow (seconds), so the family files import it
inside their Keras builders only.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError

if keras.backend.backend() != "tensorflow":
    raise OnnxtwinError(f"Keras backend: expected 'tensorflow' (KERAS_BACKEND), "
                        f"got {keras.backend.backend()!r}")


class AddPositions(keras.layers.Layer):
    """Add the first `seq` rows of a fixed positional table (the torch twin's same constant)."""

    def __init__(self, table: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.table = table  # numpy: a constant in every traced graph, not a captured input

    def call(self, x):
        return x + keras.ops.convert_to_tensor(self.table)[: keras.ops.shape(x)[1]]


def seeded(seed: int) -> None:
    """Seed Keras' initialisers (Python, numpy and TensorFlow global generators)."""
    keras.utils.set_random_seed(seed)


def keras_function(spec, model):
    """The Keras twin as a tf.function with an explicit signature (`batch`/`seq` left None),
    returning {output name: tensor}: what tf2onnx converts and what deployments call."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape], t.dtype,
                               name=t.name) for t in spec.signature.inputs]
    output = spec.signature.outputs[0].name

    @tf.function(input_signature=signature)
    def serve(*inputs):
        return {output: model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)}

    return serve
