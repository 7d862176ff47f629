"""Export a twin pair to two ONNX files with one signature, each accepted only by the gate."""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from onnxtwin.builders import Twins
from onnxtwin.builders.weights import weights_hash
from onnxtwin.export import cache
from onnxtwin.export.gate import GateCase, check_file, run_against
from onnxtwin.export.graphs import node_ops
from onnxtwin.export.metadata import export_props, stamp
from onnxtwin.export.signature import apply_signature
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path, inside
from onnxtwin.runtime.metrics import FLOAT32_ABS_TOLERANCE
from onnxtwin.runtime.paths import ModelPath

FRAMEWORKS = ("torch", "keras")
OPSETS = {"torch": (17, 18, 19, 20), "keras": (17, 18)}  # tf2onnx 1.17 stops at 18
DEFAULT_OPSET = 18
# Ops that make a graph different in kind (recurrence as a native op or a loop, fused norms).
KIND_OPS = frozenset({"LSTM", "GRU", "RNN", "Loop", "Scan", "If", "LayerNormalization",
                      "Attention"})
IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; 10 is what every tool here can write


@dataclass(frozen=True)
class ExportResult:
    """One accepted file: where, what it contains, how it passed the gate, and its cost."""

    model: str
    framework: str
    path: Path
    opset: int
    ops: dict[str, int]
    gate: tuple[GateCase, ...]
    cache_hit: bool
    seconds: float

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.gate)

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path), "gate": [c.to_dict() for c in self.gate]}


def framework_path(twins: Twins, framework: str) -> ModelPath:
    """The path a file exported from `framework` is gated against: the twin it came from."""
    return twins.path(framework)


def check_request(framework: str, opset: int) -> None:
    """Refuse an unknown framework or an opset its exporter cannot write."""
    if framework not in FRAMEWORKS:
        raise OnnxtwinError(f"framework: expected one of {FRAMEWORKS}, got {framework!r}")
    if opset not in OPSETS[framework]:
        raise OnnxtwinError(f"opset for {framework}: expected one of {list(OPSETS[framework])}"
                            f", got {opset}")


def _export(twins: Twins, framework: str, opset: int) -> onnx.ModelProto:
    """The exporter's model, or one line: a user's model an exporter cannot trace raises
    pages of its own (torch.export's UserError, tf2onnx's conversion errors)."""
    if framework == "torch":
        from onnxtwin.export.torch_export import export_torch as export
    else:
        from onnxtwin.export.keras_export import export_keras as export
    try:
        return export(twins, opset)
    except OnnxtwinError:
        raise
    except Exception as e:  # any exporter failure: its type and the line that says why
        raise OnnxtwinError(f"{framework} export of {twins.spec.name!r}: expected the "
                            f"exporter to trace the model, got {type(e).__name__}: "
                            f"{_reason(e)}") from None


def _reason(error: Exception) -> str:
    """The exporter's own summary line: torch.onnx wraps torch.export's error in a report
    whose first lines are boilerplate, so prefer the line naming the original exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if line.startswith("<class ")), None)
    return (cause or (lines[0] if lines else ""))[:400]


def export_model(twins: Twins, framework: str, out_dir: str | Path, opset: int = DEFAULT_OPSET,
                 tolerance: float = FLOAT32_ABS_TOLERANCE, use_cache: bool = True) -> ExportResult:
    """Write OUT/NAME.FRAMEWORK.onnx: exported, signed, stamped, gated, then renamed into place."""
    check_request(framework, opset)
    framework_path(twins, framework)  # one line if the twins have no such side
    spec, start = twins.spec, time.perf_counter()
    path = inside(out_dir, f"{spec.name}.{framework}.onnx")
    # The file holds the exported twin's own weights: for Keras, what the layer maps made of
    # the torch weights. Hash those too, so a changed mapping never hits a stale entry; by
    # position, not path: Keras numbers auto-named layers per process (dense_3 ...).
    exported_weights = weights_hash(twins.weights) if framework == "torch" else weights_hash(
        {f"{i:06d}": v.numpy() for i, v in enumerate(twins.keras_model.weights)})
    weights = weights_hash(twins.weights) if twins.torch_model is not None \
        else exported_weights  # a Keras-only entry's canonical weights are its own
    props = export_props(spec, framework, weights, opset)
    key = cache.cache_key(props=props, exported_weights=exported_weights, ir=IR_VERSION,
                          tolerance=tolerance)
    if use_cache and (hit := cache.fetch(key, path)):
        gate = tuple(GateCase.from_dict(c) for c in hit["gate"])
        return ExportResult(spec.name, framework, path, opset, hit["ops"], gate, True,
                            time.perf_counter() - start)

    what = f"{framework} export of {spec.name!r} (opset {opset})"
    model = apply_signature(_export(twins, framework, opset), spec.signature)
    model.ir_version = min(model.ir_version, IR_VERSION)
    stamp(model, props)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        checked = check_file(tmp, opset, what)
        gate = tuple(run_against(tmp, spec, framework_path(twins, framework), tolerance, what))
        ops = dict(sorted(collections.Counter(op for _, op in node_ops(checked.graph)).items()))
        if use_cache:
            cache.store(key, tmp, {"gate": [c.to_dict() for c in gate], "ops": ops})
    return ExportResult(spec.name, framework, path, opset, ops, gate, False,
                        time.perf_counter() - start)


def graph_differences(results: list[ExportResult]) -> list[str]:
    """Where the twins' files differ in kind: KIND_OPS one file has and the other lacks."""
    by_framework = {r.framework: set(r.ops) & KIND_OPS for r in results}
    if set(by_framework) != set(FRAMEWORKS):
        return []
    notes = []
    for a, b in (("torch", "keras"), ("keras", "torch")):
        only = sorted(by_framework[a] - by_framework[b])
        if only:
            notes.append(f"only the {a} file has {', '.join(only)}")
    return notes
