"""Keras twin -> ONNX ModelProto with tf2onnx, from a tf.function with an explicit signature."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx

from onnxtwin.builders import Twins
from onnxtwin.export.keras_gru import keras3_gru_rewriter
from onnxtwin.export.keras_rewrites import einsum_kept, lower_einsums, simplify
from onnxtwin.runtime.errors import OnnxtwinError


def _erfc_as_one_minus_erf(ctx, node, name, args) -> None:
    """tf2onnx handler: TF `Erfc` (exact GELU) as 1 - Erf.

    Workaround for tf2onnx 1.17, which has no Erfc converter: it logs "Unsupported ops",
    still writes a file, and onnx.checker and onnxruntime then reject it.
    """
    from onnx import helper
    from tf2onnx import utils

    node.type = "Erf"
    dtype = helper.tensor_dtype_to_np_dtype(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    sub = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(name))
    ctx.replace_inputs(sub, [one.output[0], node.output[0]])
    ctx.copy_dtype(node.output[0], sub.output[0])
    ctx.copy_shape(node.output[0], sub.output[0])


def _select_as_where(ctx, node, name, args) -> None:
    """tf2onnx handler: TF `SelectV2` as ONNX `Where` (they broadcast alike).

    tf2onnx 1.17 writes a float or int SelectV2 as Cast(c)*x + Cast(Not(c))*y, citing an
    old onnxruntime's slow Where; onnxruntime 1.31 runs the one Where faster than the five
    ops (figures in the commit that made this change).
    """
    node.type = "Where"


@contextmanager
def _tf2onnx_errors() -> Iterator[list[str]]:
    """Collect what tf2onnx logs at ERROR level: "Unsupported ops" is an error, not a warning."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, logger = Collect(logging.ERROR), logging.getLogger("tf2onnx")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def export_keras(twins: Twins, opset: int) -> onnx.ModelProto:
    """Convert the Keras twin with `batch`/`seq` dims left open (None) in the signature."""
    import tf2onnx

    from onnxtwin.builders.keras_support import keras_function

    spec = twins.spec
    serve = keras_function(spec, twins.keras_model)
    with _tf2onnx_errors() as errors, keras3_gru_rewriter(), einsum_kept():
        proto, _ = tf2onnx.convert.from_function(
            serve, input_signature=serve.input_signature, opset=opset,
            custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, []),
                                "SelectV2": (_select_as_where, [])})
    if errors:
        raise OnnxtwinError(f"tf2onnx ({spec.name}): expected a clean conversion, "
                            f"got: {'; '.join(errors)}")
    return simplify(lower_einsums(proto))
