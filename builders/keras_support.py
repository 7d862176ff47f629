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
    returning {output name: tensor}: what tf2onnx converts and what deployments call."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape], t.dtype,
                               name=t.name) for t in spec.signature.inputs]
    names = spec.signature.output_names

    @tf.function(input_signature=signature)
    def serve(*inputs):
        result = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        outputs = result if isinstance(result, list | tuple) else [result]
        return dict(zip(names, outputs, strict=True))

    return serve
