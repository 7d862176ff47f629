"""The cross-check matrix, its report, and parity assertions for users' own models.

    from onnxtwin.builders import get_spec
    from onnxtwin.conformance import check, write_reports
    report = check([get_spec("gru")], out_dir="report/")
    report.passed, report.models[0].needed()       # verdict, tightest passing tolerance
    write_reports(report.to_dict(), "report/")      # report.json, report.md, report.html

Names resolve lazily, so `onnxtwin --help` (this package's cli) imports no framework.
"""

import importlib

_EXPORTS = {
    "Check": "matrix", "ModelResult": "matrix", "run_matrix": "matrix",
    "Report": "report", "check": "report", "write_reports": "render",
    "Tolerances": "tolerances", "load_tolerances": "tolerances",
    "assert_onnx_matches": "parity", "assert_twins_agree": "parity",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
