"""The oracle of ONNX entries: the file run by onnx's reference implementation.

onnx.reference.ReferenceEvaluator computes each op as the ONNX specification writes it,
in numpy, so it shares neither onnxruntime's kernels nor its graph optimisations. It
runs the file in the file's own dtypes (a float32 graph in float32): an independent
implementation, not a more precise one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.paths import ModelPath, PathInfo

REFERENCE = "onnx.reference"


class ReferencePath(ModelPath):
    """An ONNX file (external data read from its folder) on onnx.reference."""

    def __init__(self, file: Path, name: str = REFERENCE) -> None:
        from onnx.reference import ReferenceEvaluator

        try:
            model = onnx.load(file)
            self.evaluator = ReferenceEvaluator(model)
        except Exception as e:  # an op it does not implement, a file it cannot read
            raise OnnxtwinError(f"{name}: expected onnx.reference to load {file.name}, got "
                                f"{type(e).__name__}: {first_line(e)}") from None
        initializers = {i.name for i in model.graph.initializer}
        floats = [d for d in map(_dtype, model.graph.output) if d.startswith("float")]
        super().__init__(PathInfo(name, "onnx", None, file.name, (floats or ["float32"])[0]),
                         [v.name for v in model.graph.input if v.name not in initializers],
                         [v.name for v in model.graph.output])

    def _run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self.evaluator.run(None, dict(zip(self.input_names, args, strict=True)))
        return [np.asarray(o) for o in outputs]


def _dtype(value: onnx.ValueInfoProto) -> str:
    """The numpy dtype name of a graph tensor ('' for anything else)."""
    elem = value.type.tensor_type.elem_type
    return (onnx.helper.tensor_dtype_to_np_dtype(elem).name
            if elem in onnx.helper.get_all_tensor_dtypes() else "")
