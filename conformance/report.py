"""The conformance run as one result object, serialised to report.json (the single source).

Each model names its reference (the float64 oracle, or onnx.reference for an ONNX entry)
and its dims with the sizes they ran; each comparison carries its point's dims as fields
(`batch` and `seq` always, None where the model has no such dim).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from onnxtwin.builders import grids
from onnxtwin.conformance.localise import Localisation
from onnxtwin.conformance.matrix import ModelResult
from onnxtwin.conformance.nodes import NodeLocalisation
from onnxtwin.conformance.tolerances import Tolerances
from onnxtwin.export.metadata import TOOLS, tool_versions
from onnxtwin.runtime import ProviderStatus

SCHEMA_ID = "onnxtwin-report/1"
REPORTED_TOOLS = (*TOOLS, "keras", "onnxruntime-gpu", "onnxruntime", "numpy")


@dataclass(frozen=True)
class Report:
    """One `onnxtwin check`: settings, machine, providers that ran, and each model's result."""

    created: str
    command: tuple[str, ...]
    seed: int
    opset: int
    tolerances: Tolerances
    providers: tuple[ProviderStatus, ...]
    ran_on: tuple[str, ...]
    models: tuple[ModelResult, ...]
    seconds: float
    trained: str | None = None
    """The folder of trained weights the models came from; None: random weights of `seed`."""

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.models)

    def to_dict(self) -> dict:
        """The JSON document described by conformance/report.schema.json."""
        checks = [c for m in self.models for c in m.checks]
        return {
            "schema": SCHEMA_ID,
            "created": self.created,
            "command": list(self.command),
            "versions": versions(),
            "machine": machine(),
            "settings": {"seed": self.seed, "opset": self.opset, "trained": self.trained,
                         "batches": list(grids.MATRIX["batch"]),
                         "seq_lengths": list(grids.MATRIX["seq"]),
                         "timing": dict(grids.TIMING),
                         "tolerances": self.tolerances.to_dict()},
            "providers": [{**asdict(p), "ran": p.alias in self.ran_on} for p in self.providers],
            "models": [_model_dict(m) for m in self.models],
            "summary": {"passed": self.passed, "models": len(self.models),
                        "comparisons": len(checks),
                        "failed": sum(not c.passed for c in checks),
                        "seconds": round(self.seconds, 3)},
        }


TIMINGS = frozenset({"created", "seconds", "latency", "cache_hit"})


def without_timings(value):
    """report.json without its wall-clock figures (and cache hits, which change them): what
    two runs with the same arguments must share, to the last bit."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def versions() -> dict[str, str]:
    """Python and every installed tool of REPORTED_TOOLS."""
    installed = {k: v for k, v in tool_versions(REPORTED_TOOLS).items() if v != "absent"}
    return {"python": platform.python_version(), **installed}


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "processor": platform.machine(),
            "cpus": os.cpu_count()}


def _model_dict(m: ModelResult) -> dict:
    needed = m.needed()
    return {
        "name": m.spec.name,
        "family": m.spec.family,
        "hyperparameters": m.spec.hyperparameters(),
        "reference": m.comparisons.reference,
        "dims": _grid(m),
        "passed": m.passed,
        "seconds": round(m.seconds, 3),
        "tolerance": {c.output: c.tolerance for c in m.checks},
        "min_passing_tolerance": {o: (v if v != float("inf") else None)
                                  for o, v in needed.items()},
        "paths": [asdict(p) for p in m.paths],
        "exports": [{**e.to_dict(), "path": e.path.name} for e in m.exports],
        "graph_differences": list(m.differences),
        "comparisons": [c.to_dict() for c in m.checks],
        "latency": [{"path": t.path, "seq": t.dims.get("seq"), "dims": t.dims,
                     **asdict(t.timing)} for t in m.latency],
        "localisation": _of_kind(m.localisation, Localisation),
        "node_localisation": _of_kind(m.localisation, NodeLocalisation),
        "accuracy": None if m.accuracy is None else m.accuracy.to_dict(),
        "reduced": None if m.reduced is None else m.reduced.to_dict(),
    }


def _grid(m: ModelResult) -> dict[str, list[int]]:
    """Each named dim of the model and the sizes its matrix ran, in grid order."""
    points = m.spec.matrix_points()
    return {d: list(dict.fromkeys(p[d] for p in points)) for d in m.spec.signature.dims}


def _of_kind(localisation: object, kind: type) -> dict | None:
    """A localisation as JSON under the key of its kind (twins' layers, a file's nodes)."""
    return _lists(asdict(localisation)) if isinstance(localisation, kind) else None


def _lists(value):
    """`value` with every tuple a list, as json.loads would give it back."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return [_lists(v) for v in value] if isinstance(value, list | tuple) else value
