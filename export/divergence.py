"""Where a reduced-precision file parts from its float32 source: the tensors whose error
grows most.

Every tensor the two files both compute is compared on the same inputs: its error is the
max abs difference over its float32 scale, and its *growth* that error less the largest
error among the inputs of the node that computes it, so a tensor that merely inherits an
upstream error does not rank above its cause. int8 QDQ files are matched with onnxruntime's
`qdq_loss_debug` (each float tensor with its dequantized twin); float16 files and dynamic
int8 files keep the float32 tensor names, so every node output is marked and matched by
name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.export.graphs import origin, run_all_outputs
from onnxtwin.export.quantize import batch_reader
from onnxtwin.runtime.metrics import json_ready

Arrays = dict[str, np.ndarray]
WORST = 3


@dataclass(frozen=True)
class TensorError:
    """One tensor: what computes it (op, node, the layer the exporter says it came from),
    its error over its scale, and how much of that error its own node adds."""

    tensor: str
    op: str
    layer: str
    error: float
    growth: float

    def to_dict(self) -> dict:
        return json_ready(asdict(self))

    def describe(self) -> str:
        return f"{self.tensor!r} ({self.op}, {self.layer}): {self.error:.2g} of its scale"


def divergence(source: Path, reduced: Path, inputs: Sequence[Arrays], worst: int = WORST
               ) -> tuple[TensorError, ...]:
    """The `worst` tensors of `source` by error growth in `reduced`, on `inputs`."""
    model = onnx.load(str(source))
    if any(n.op_type == "QuantizeLinear" for n in onnx.load(str(reduced)).graph.node):
        pairs = _qdq_pairs(source, reduced, inputs)
    else:
        pairs = _named_pairs(model, onnx.load(str(reduced)), inputs)
    errors = {name: relative_error(full, low) for name, (full, low) in pairs.items()}
    found = []
    for node in model.graph.node:
        upstream = max((errors.get(i, 0.0) for i in node.input), default=0.0)
        layer = origin(node) or node.name or "?"
        found += [TensorError(o, node.op_type, layer, errors[o], _growth(errors[o], upstream))
                  for o in node.output if o in errors]
    return tuple(sorted(found, key=lambda t: -t.growth)[:worst])


def _growth(error: float, upstream: float) -> float:
    """What a node adds: a non-finite error appearing here is infinite growth, one inherited
    from upstream none."""
    if not np.isfinite(upstream):
        return 0.0
    return error - upstream


def relative_error(full: np.ndarray, low: np.ndarray) -> float:
    """max |full - low| over max finite |full| (1 if that is 0); equal values, infinities
    included (a mask's -inf), differ by 0, and NaN or inf on one side only is inf."""
    full, low = np.asarray(full, np.float64), np.asarray(low, np.float64)
    if full.shape != low.shape:
        return float("inf")
    with np.errstate(invalid="ignore"):
        same = (full == low) | (np.isnan(full) & np.isnan(low))
        diff = np.where(same, 0.0, np.abs(full - low))
    diff[np.isnan(diff)] = np.inf
    scale = float(np.abs(full[np.isfinite(full)]).max(initial=0.0)) or 1.0
    return float(diff.max(initial=0.0)) / scale


def _named_pairs(model: onnx.ModelProto, reduced: onnx.ModelProto, inputs: Sequence[Arrays]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    full, low = _all_outputs(model, inputs), _all_outputs(reduced, inputs)
    return {name: (full[name], low[name]) for name in full
            if name in low and full[name].dtype.kind == "f" and low[name].dtype.kind == "f"}


def _all_outputs(model: onnx.ModelProto, inputs: Sequence[Arrays]) -> dict[str, np.ndarray]:
    """Every node output on onnxruntime CPU, the input sets' results concatenated."""
    runs = run_all_outputs(model, inputs)
    return {name: np.concatenate([r[name].ravel() for r in runs]) for name in runs[0]}


def _qdq_pairs(source: Path, reduced: Path, inputs: Sequence[Arrays]
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(float32, dequantized) per tensor, as qdq_loss_debug matches them."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix="onnxtwin-qdq-debug-") as folder:
        full, low = Path(folder, "float.onnx"), Path(folder, "qdq.onnx")
        modify_model_output_intermediate_tensors(str(source), str(full))
        modify_model_output_intermediate_tensors(str(reduced), str(low))
        matching = create_activation_matching(
            collect_activations(str(low), batch_reader(inputs)),
            collect_activations(str(full), batch_reader(inputs)))
    return {name: (np.concatenate([a.ravel() for a in m["float"]]),
                   np.concatenate([a.ravel() for a in m["post_qdq"]]))
            for name, m in matching.items() if m.get("float") and m.get("post_qdq")}
