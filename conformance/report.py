"""The conformance run as one result object, serialised to report.json (the single source)."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from onnxtwin.builders import Twins, build_twins
from onnxtwin.builders.datasets import Dataset, load_dataset
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.builders.training import load_trained
from onnxtwin.conformance.matrix import (
    MATRIX_BATCHES,
    MATRIX_SEQS,
    TIMING_BATCH,
    TIMING_SEQ,
    ModelResult,
    run_matrix,
    step_count,
)
from onnxtwin.conformance.tolerances import Tolerances
from onnxtwin.export import DEFAULT_OPSET
from onnxtwin.export.metadata import TOOLS, tool_versions
from onnxtwin.runtime import OnnxtwinError, ProviderStatus, probe, usable_aliases
from onnxtwin.runtime import providers as probe_all

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
                         "batches": list(MATRIX_BATCHES), "seq_lengths": list(MATRIX_SEQS),
                         "timing": {"batch": TIMING_BATCH, "seq": TIMING_SEQ},
                         "tolerances": self.tolerances.to_dict()},
            "providers": [{**asdict(p), "ran": p.alias in self.ran_on} for p in self.providers],
            "models": [_model_dict(m) for m in self.models],
            "summary": {"passed": self.passed, "models": len(self.models),
                        "comparisons": len(checks),
                        "failed": sum(not c.passed for c in checks),
                        "seconds": round(self.seconds, 3)},
        }


def select_providers(requested: list[str] | None) -> list[str]:
    """Every usable provider by default; a requested one that cannot run is a usage error."""
    if not requested:
        return usable_aliases()
    chosen = []
    for alias in requested:
        status = probe(alias.strip().lower())
        if not status.usable:
            raise OnnxtwinError(f"provider {status.alias!r}: expected it to run here, got: "
                                f"{status.reason}")
        chosen.append(status.alias)
    return list(dict.fromkeys(chosen))


def check(specs: list[ModelSpec], out_dir: str | Path, providers: list[str] | None = None,
          tolerances: Tolerances | None = None, opset: int = DEFAULT_OPSET, seed: int = 0,
          use_cache: bool = True, timing_runs: int = 20,
          on_model: Callable[[ModelSpec, int], Callable[[str], None]] = lambda *_: lambda _: None,
          trained: str | Path | None = None) -> Report:
    """Run the matrix for every spec and collect it.

    The twins are built with `seed` (torch initialisation), or with `trained` they are
    loaded from TRAINED/NAME (written by `onnxtwin train`) and checked on their test data.
    Exported files go to `out_dir`; write the reports with `write_reports`.
    """
    start = time.perf_counter()
    ran_on = select_providers(providers)
    tolerances = tolerances or Tolerances()
    results = []
    for spec in specs:
        step = on_model(spec, step_count(spec, trained is not None) + 1)  # +1: building the twins
        step(f"{spec.name}: " + ("loading trained twins and their data" if trained
                                 else "building twins"))
        twins, data = (_trained(Path(trained) / spec.name) if trained
                       else (build_twins(spec, seed=seed), None))
        results.append(run_matrix(twins, out_dir, ran_on, tolerances, opset, seed, use_cache,
                                  timing_runs, step, data))
    return Report(datetime.now(UTC).isoformat(timespec="seconds"), tuple(sys.argv), seed, opset,
                  tolerances, tuple(probe_all()), tuple(ran_on), tuple(results),
                  time.perf_counter() - start, None if trained is None else str(trained))


def _trained(folder: Path) -> tuple[Twins, Dataset]:
    """Trained twins, and their dataset split and tokenized exactly as in training."""
    trained = load_trained(folder)
    return trained.twins, load_dataset(trained.data, seed=trained.seed,
                                       tokenizer=trained.tokenizer)


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
        "passed": m.passed,
        "seconds": round(m.seconds, 3),
        "tolerance": {c.output: c.tolerance for c in m.checks},
        "min_passing_tolerance": {o: (v if v != float("inf") else None)
                                  for o, v in needed.items()},
        "paths": [asdict(p) for p in m.paths],
        "exports": [{**e.to_dict(), "path": e.path.name} for e in m.exports],
        "graph_differences": list(m.differences),
        "comparisons": [c.to_dict() for c in m.checks],
        "latency": [{"path": t.path, "seq": t.seq, **asdict(t.timing)} for t in m.latency],
        "localisation": None if m.localisation is None else asdict(m.localisation),
        "accuracy": None if m.accuracy is None else m.accuracy.to_dict(),
    }
