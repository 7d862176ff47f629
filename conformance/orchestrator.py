"""`onnxtwin check` as a library call: build or load each model's twins, run its matrix, and
collect one Report."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from onnxtwin.builders import Twins, build_twins, grids
from onnxtwin.builders.datasets import Dataset
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.builders.training import load_trained
from onnxtwin.conformance.matrix import ModelResult, run_matrix, step_count
from onnxtwin.conformance.report import Report
from onnxtwin.conformance.tolerances import Tolerances
from onnxtwin.export import DEFAULT_OPSET
from onnxtwin.runtime import OnnxtwinError, probe, usable_aliases
from onnxtwin.runtime import providers as probe_all
from onnxtwin.runtime.files import inside

OnModel = Callable[[ModelSpec, int], Callable[[str], None]]
"""(spec, number of steps) -> a callback told each step's description (progress bars)."""


@dataclass(frozen=True)
class CheckOptions:
    """How `check` runs: providers (None: every usable one), tolerances, opset, seeds, cache."""

    providers: tuple[str, ...] | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    opset: int = DEFAULT_OPSET
    seed: int = grids.MATRIX_SEED
    """Seed of the weights and of the matrix inputs."""
    use_cache: bool = True
    timing_runs: int = 20
    trained: Path | None = None
    """A folder written by `onnxtwin train`: its trained twins, checked on their test data."""
    precisions: tuple[str, ...] = ()
    """Reduced precisions (fp16, int8) whose files join the matrix as paths."""
    calibration: Path | None = None
    """Samples (.npz) for int8 static quantization of random-weight models."""
    limits: dict | None = None
    """Reduced-precision gate limits ({precision: export.precision.Limits}; None: LIMITS)."""


def select_providers(requested: list[str] | tuple[str, ...] | None) -> list[str]:
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


class Runner(Protocol):
    """Where `check` runs its models; conformance.cluster.RayRunner runs them as Ray tasks.
    Without one they run here, one after another."""

    def providers(self, requested: tuple[str, ...] | None) -> list[str]:
        """The providers every model runs on, each usable where the models run."""

    def run(self, specs: list[ModelSpec], out_dir: Path, ran_on: list[str],
            options: CheckOptions, on_model: OnModel) -> list[ModelResult]:
        """check_model of every spec, in spec order, its exported files in `out_dir`."""


def check(specs: list[ModelSpec], out_dir: str | Path, options: CheckOptions = CheckOptions(),
          on_model: OnModel = lambda *_: lambda _: None, runner: Runner | None = None) -> Report:
    """Run the matrix for every spec and collect it.

    The twins are built with `options.seed` (torch initialisation), or loaded from
    TRAINED/NAME with `options.trained`. Exported files go to `out_dir`; write the
    reports with onnxtwin.conformance.render.write_reports. With `runner`, the models run
    where it runs them; the report is made here, the same way, from its results.
    """
    start = time.perf_counter()
    if runner is None:
        ran_on = select_providers(options.providers)
        results = [check_model(s, out_dir, ran_on, options, on_model) for s in specs]
    else:
        ran_on = runner.providers(options.providers)
        results = runner.run(specs, Path(out_dir), ran_on, options, on_model)
    return Report(datetime.now(UTC).isoformat(timespec="seconds"), tuple(sys.argv),
                  options.seed, options.opset, options.tolerances, tuple(probe_all()),
                  tuple(ran_on), tuple(results), time.perf_counter() - start,
                  None if options.trained is None else str(options.trained))


def check_model(spec: ModelSpec, out_dir: str | Path, ran_on: list[str], options: CheckOptions,
                on_model: OnModel) -> ModelResult:
    """One model's matrix on the providers `ran_on`, its files exported into `out_dir`:
    what a local check runs for each model, and what a Ray task runs for one."""
    if spec.family == "onnx":  # an ONNX file: no twins, onnx.reference is the oracle
        from onnxtwin.conformance.onnx_matrix import run_onnx_matrix
        from onnxtwin.conformance.onnx_matrix import step_count as onnx_steps

        return run_onnx_matrix(spec, ran_on, options, on_model(spec, onnx_steps(spec, ran_on)))
    trained = options.trained
    steps = step_count(spec, trained is not None, len(options.precisions))
    step = on_model(spec, steps + 1)  # +1: the twins
    step(f"{spec.name}: " + ("loading trained twins and their data" if trained
                             else "building twins"))
    twins, data = (_trained(inside(trained, spec.name)) if trained
                   else (build_twins(spec, seed=options.seed), None))
    return run_matrix(twins, out_dir, ran_on, options, step, data)


def _trained(folder: Path) -> tuple[Twins, Dataset]:
    """Trained twins, and their dataset split and tokenized exactly as in training."""
    trained = load_trained(folder)
    return trained.twins, trained.dataset()
