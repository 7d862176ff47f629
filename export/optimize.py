"""Offline optimisation for deployment: onnxruntime's graph optimisations applied once and
saved, so a server loads the optimised graph; the file passes the same gate as the export."""

from __future__ import annotations

from pathlib import Path

from onnxtwin.builders import Twins
from onnxtwin.export.exporter import framework_path
from onnxtwin.export.gate import GateCase, run_against
from onnxtwin.runtime.errors import OnnxtwinError, first_line
from onnxtwin.runtime.files import atomic_path
from onnxtwin.runtime.metrics import FLOAT32_ABS_TOLERANCE
from onnxtwin.runtime.session import disabled_optimizers


def optimize_offline(path: Path, twins: Twins, framework: str,
                     tolerance: float = FLOAT32_ABS_TOLERANCE) -> tuple[Path, list[GateCase]]:
    """Save onnxruntime's ORT_ENABLE_EXTENDED graph of NAME.FRAMEWORK.onnx as
    NAME.FRAMEWORK.opt.onnx beside it, gated against the twin.

    Extended is the portable level: ORT_ENABLE_ALL adds NCHWc layouts for the CPU that
    writes the file (onnxruntime warns that such a file belongs to that machine). Fusions
    slower on CPU (session.CPU_SLOW_FUSIONS) are left out, as in every CPU session. The
    fused ops (FusedConv, FusedMatMul ...) are onnxruntime's com.microsoft
    domain: the file is for onnxruntime, the plain export for everything else.
    """
    import onnxruntime as ort

    target = path.with_name(path.name.removesuffix(".onnx") + ".opt.onnx")
    what = f"optimised {path.name}"
    with atomic_path(target) as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp)
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=disabled_optimizers("CPUExecutionProvider"))
        except Exception as e:  # onnxruntime raises its own pybind types
            raise OnnxtwinError(f"{what}: expected onnxruntime to optimise it, got: "
                                f"{first_line(e)}") from None
        gate = run_against(tmp, twins.spec, framework_path(twins, framework), tolerance, what)
    return target, gate
