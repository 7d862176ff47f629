"""The acceptance gate: an export is trusted only after it has been checked and run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.builders import ModelSpec, check_shapes, sample_inputs
from onnxtwin.export.graphs import node_ops, written_opset
from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.metrics import compare
from onnxtwin.runtime.session import Session

Run = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class GateCase:
    """One validation shape: the ONNX file's max abs error against its framework twin."""

    batch: int
    seq: int | None
    max_abs: float


def check_file(path: Path, opset: int, what: str) -> onnx.ModelProto:
    """onnx.checker (full), the opset actually written, and no op unknown to ONNX."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxtwinError(f"{what}: expected a valid ONNX model, onnx.checker says: "
                            f"{first_line(e)}") from None
    model = onnx.load(str(path))
    written = written_opset(model)
    if written != opset:
        raise OnnxtwinError(f"{what}: expected opset {opset}, the exporter wrote {written}")
    unknown = sorted({f"{d}:{op}" if d else op for d, op in node_ops(model.graph)
                      if not onnx.defs.has(op, d)})
    if unknown:
        raise OnnxtwinError(f"{what}: expected standard ONNX ops only, got unknown {unknown}")
    return model


def run_against(path: Path, spec: ModelSpec, framework: Run, tolerance: float,
                what: str) -> list[GateCase]:
    """Run the file on onnxruntime CPU at every validation shape and compare with the twin."""
    try:
        session = Session(path, "cpu", strict=True)
    except OnnxtwinError as e:
        raise OnnxtwinError(f"{what}: {e}") from None
    output = spec.signature.outputs[0].name
    cases = []
    for batch, seq in check_shapes(spec):
        inputs = sample_inputs(spec, batch, seq, seed=7)
        shape = f"batch {batch}" + (f", seq {seq}" if seq else "")
        try:
            got = session.run(inputs)[output]
        except OnnxtwinError as e:
            raise OnnxtwinError(f"{what} at {shape}: {e}") from None
        expected = framework(inputs)
        error = compare(got, expected).max_abs if got.shape == expected.shape else float("inf")
        if not error <= tolerance:
            raise OnnxtwinError(f"{what}: expected outputs within {tolerance:g} of the framework "
                                f"at {shape}, got max abs error {error:.3g} "
                                f"(shape {got.shape} vs {expected.shape})")
        cases.append(GateCase(batch, seq, error))
    return cases
