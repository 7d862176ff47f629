"""Twin -> ONNX: one file per framework, the spec's signature on both, accepted by a gate.

    from onnxtwin.builders import build_twins
    from onnxtwin.export import export_model
    result = export_model(build_twins("gru"), "torch", "out/", opset=18)
"""

from onnxtwin.export.exporter import (
    DEFAULT_OPSET,
    FRAMEWORKS,
    OPSETS,
    ExportResult,
    check_request,
    export_model,
    graph_differences,
)

__all__ = ["DEFAULT_OPSET", "FRAMEWORKS", "OPSETS", "ExportResult", "check_request",
           "export_model",
           "graph_differences"]
