"""The acceptance gate: an export is trusted only after it has been checked and run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxtwin.builders import ModelSpec, grids, sample_inputs
from onnxtwin.export.graphs import node_ops, written_opset
from onnxtwin.runtime.comparison import Case, PathFailed, compare_paths, describe, dims_record
from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.paths import ModelPath, OnnxPath
from onnxtwin.runtime.session import Session


@dataclass(frozen=True)
class GateCase:
    """One validation point: the ONNX file's max abs error (over its outputs) against its
    framework twin."""

    dims: dict[str, int]
    max_abs: float

    def to_dict(self) -> dict:
        return {**dims_record(self.dims), "max_abs": self.max_abs}

    @classmethod
    def from_dict(cls, record: dict) -> GateCase:
        return cls({k: v for k, v in record.items() if k != "max_abs" and v is not None},
                   record["max_abs"])


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


def run_against(path: Path, spec: ModelSpec, framework: ModelPath, tolerance: float,
                what: str) -> list[GateCase]:
    """Run the file on onnxruntime CPU at every gate point and compare it with the framework
    path on every output; the first point outside `tolerance` refuses the file."""
    try:
        onnx_path = OnnxPath(Session(path, "cpu", strict=True), name=path.name)
        result = compare_paths(
            [onnx_path], framework,
            (Case(dims, sample_inputs(spec, dims, seed=grids.GATE_SEED))
             for dims in spec.gate_points()),
            tolerance, pairs="reference", fail_fast=True)
    except PathFailed as e:
        raise OnnxtwinError(f"{what} at {describe(e.dims)}: {e.cause}") from None
    except OnnxtwinError as e:
        raise OnnxtwinError(f"{what}: {e}") from None
    if failed := result.failed:
        c = failed[0]
        detail = f" ({c.detail})" if c.detail else ""
        raise OnnxtwinError(f"{what}: expected outputs within {tolerance:g} of the framework "
                            f"at {c.where()}, got max abs error {c.metrics.max_abs:.3g} on "
                            f"{c.output!r}{detail}")
    worst: dict[tuple, GateCase] = {}
    for c in result.checks:
        key = tuple(c.dims.items())
        if key not in worst or c.metrics.max_abs > worst[key].max_abs:
            worst[key] = GateCase(c.dims, c.metrics.max_abs)
    return list(worst.values())
