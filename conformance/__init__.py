"""Conformance: the matrix and native and accuracy parity over the comparison engine
(onnxtwin.runtime.comparison; grids in onnxtwin.builders.grids), localisation,
tolerances, reports, the benchmark, the CLI and the pytest plugin.

    from onnxtwin.builders import get_spec
    from onnxtwin.conformance.orchestrator import CheckOptions, check
    from onnxtwin.conformance.render import write_reports
    report = check([get_spec("gru")], "report/", CheckOptions(seed=0))
    report.passed, report.models[0].needed()       # verdict, tightest passing tolerance
    write_reports(report.to_dict(), "report/")      # report.json, report.md, report.html

Import from the submodules: this package imports nothing, so `onnxtwin --help` (its
cli) loads no framework.
"""
