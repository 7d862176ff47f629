"""The cross-check matrix: every path of one model at every point of its grid, against the
oracle and each other.

Paths: the torch twin, the Keras twin (its tf.function), and onnxruntime on each exported
file on each provider. The float64 torch run is the oracle. The comparison engine
compares every path with the oracle and every pair of paths directly, on every output.
Given a dataset (trained twins), the inputs are real test samples instead of random
ones, and every path also classifies the whole test set.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxtwin.builders import Twins, sample_inputs
from onnxtwin.builders.datasets import Dataset
from onnxtwin.builders.paths import ORACLE
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.conformance.accuracy import AccuracyResult, evaluate
from onnxtwin.conformance.localise import Localisation, localise
from onnxtwin.conformance.nodes import NodeLocalisation
from onnxtwin.conformance.reduced import ReducedPaths, run_reduced
from onnxtwin.export import ExportResult, export_model, graph_differences
from onnxtwin.runtime import OnnxtwinError, Session, Timing, measure
from onnxtwin.runtime.comparison import Case, Check, Comparisons, compare_paths, describe
from onnxtwin.runtime.paths import ModelPath, OnnxPath, PathInfo

if TYPE_CHECKING:
    from onnxtwin.conformance.orchestrator import CheckOptions

Inputs = Callable[..., dict[str, np.ndarray]]
"""(spec, dims, seed=) -> inputs: `sample_inputs`, or a dataset's `inputs`."""


@dataclass(frozen=True)
class Latency:
    """Timing of one path at the timing point."""

    path: str
    dims: dict[str, int]
    timing: Timing


@dataclass(frozen=True)
class ModelResult:
    """Everything the matrix found for one model."""

    spec: ModelSpec
    paths: tuple[PathInfo, ...]
    exports: tuple[ExportResult, ...]
    differences: tuple[str, ...]
    comparisons: Comparisons
    latency: tuple[Latency, ...]
    localisation: Localisation | NodeLocalisation | None
    """Where twins part (layers), or where two runs of an ONNX file part (nodes)."""
    seconds: float
    accuracy: AccuracyResult | None = None
    reduced: ReducedPaths | None = None
    """The fp16 / int8 files (check --precision) and their paths against the oracle."""

    @property
    def checks(self) -> tuple[Check, ...]:
        return self.comparisons.checks

    @property
    def passed(self) -> bool:
        return (self.comparisons.passed and (self.accuracy is None or self.accuracy.passed)
                and (self.reduced is None or self.reduced.passed))

    @property
    def failed(self) -> list[Check]:
        return self.comparisons.failed

    def needed(self) -> dict[str, float]:
        """Per output: the smallest tolerance every comparison would have passed."""
        return self.comparisons.needed()

    def worst_against_oracle(self, path: str) -> float:
        return self.comparisons.worst(path, ORACLE)


def step_count(spec: ModelSpec, with_data: bool = False, precisions: int = 0) -> int:
    """How many times run_matrix calls `on_step` for this spec (for progress bars)."""
    return ((len(spec.frameworks) + 1) * (1 + precisions) + len(spec.matrix_points())
            + with_data)


def run_matrix(twins: Twins, out_dir: str | Path, providers: list[str], options: CheckOptions,
               on_step: Callable[[str], None] = lambda _: None,
               data: Dataset | None = None) -> ModelResult:
    """Export both twins into `out_dir`, run every path at every point, compare, time.

    With `data`, inputs are its test samples and `accuracy` covers its whole test set.
    """
    spec, start = twins.spec, time.perf_counter()
    inputs: Inputs = data.inputs if data is not None else sample_inputs
    exports = []
    for framework in twins.frameworks:
        on_step(f"{spec.name}: exporting from {framework}")
        exports.append(export_model(twins, framework, out_dir, opset=options.opset,
                                    use_cache=options.use_cache))
    paths = model_paths(twins, exports, providers)
    tolerances = options.tolerances.for_model(spec)

    def cases():
        return (Case(dims, inputs(spec, dims, seed=options.seed))
                for dims in spec.matrix_points())

    reduced = run_reduced(spec, exports, options.precisions, providers, twins.oracle(), cases,
                          data, options, on_step) if options.precisions else None
    comparisons = compare_paths(
        paths, twins.oracle(), cases(), tolerances,
        on_case=lambda case: on_step(f"{spec.name}: running {len(paths)} paths at "
                                     f"{describe(case.dims)}"))
    on_step(f"{spec.name}: timing {len(paths)} paths")
    timing_dims = spec.timing_dims()
    x = inputs(spec, timing_dims, seed=options.seed)
    latency = tuple(Latency(p.name, timing_dims,
                            measure(lambda p=p: p.run(x), timing_dims.get("batch", 1),
                                    runs=options.timing_runs, warmup=3)) for p in paths)
    accuracy = None
    if data is not None:
        on_step(f"{spec.name}: classifying {len(data.y_test)} test samples on {len(paths)} paths")
        accuracy = evaluate(paths, twins.oracle(), twins.oracle(jitter=options.seed),
                            data.x_test, data.y_test, tolerances, data.name)
    try:
        localisation = (
            _localise_if_twins_differ(twins, comparisons.checks, inputs, options.seed)
            or _localise_if_a_file_differs(twins, paths, comparisons.checks, inputs,
                                           options.seed))
    except OnnxtwinError:  # e.g. an op onnx.reference lacks: the verdict stands without it
        localisation = None
    return ModelResult(spec, tuple(p.info for p in paths), tuple(exports),
                       tuple(graph_differences(exports)), comparisons, latency, localisation,
                       time.perf_counter() - start, accuracy, reduced)


def model_paths(twins: Twins, exports: list[ExportResult],
                providers: list[str]) -> list[ModelPath]:
    """torch, keras (its tf.function), and each exported file on each provider (an entry
    with one framework: its side only)."""
    paths: list[ModelPath] = [twins.path(f, compiled=True) for f in twins.frameworks]
    for alias, export in itertools.product(providers, exports):
        session = Session(export.path, alias, strict=True)
        paths.append(OnnxPath(session, f"{export.framework}.onnx@{alias}", export.framework))
    return paths


def _localise_if_a_file_differs(twins: Twins, paths: list[ModelPath], checks: tuple[Check, ...],
                                inputs: Inputs, seed: int) -> NodeLocalisation | None:
    """When an exported file disagrees with its own framework twin (the twins agreeing),
    name the first node that parts: a torch file against the torch modules' outputs
    (through the exporter's name scopes), a Keras file on onnxruntime against the ONNX
    reference implementation."""
    from onnxtwin.conformance.nodes import Side, localise_against_torch, localise_nodes
    from onnxtwin.conformance.reference import REFERENCE, ReferencePath

    files = {p.name: p for p in paths if isinstance(p, OnnxPath)}
    failing = next((c for c in checks if not c.passed and c.actual in files
                    and c.expected == files[c.actual].info.framework), None)
    if failing is None:
        return None
    path = files[failing.actual]
    session = path.session
    actual = Side(path.name, lambda file: OnnxPath(Session(file, session.requested,
                                                           strict=True), path.name))
    x = inputs(twins.spec, failing.dims, seed=seed)
    if path.info.framework == "torch":
        args = [x[n] for n in twins.spec.signature.input_names]
        return localise_against_torch(session.path, actual, twins.torch_model, args, x,
                                      failing.tolerance, failing.dims)
    return localise_nodes(session.path, actual, Side(REFERENCE, ReferencePath), x,
                          failing.tolerance, failing.dims)


def _localise_if_twins_differ(twins: Twins, checks: tuple[Check, ...], inputs: Inputs,
                              seed: int) -> Localisation | None:
    """Localise at the first point where torch and Keras disagree; None if they never do."""
    if len(twins.frameworks) < 2:
        return None
    failing = next((c for c in checks if not c.passed and {c.actual, c.expected} ==
                    {"torch", "keras"}), None)
    if failing is None:
        return None
    return localise(twins, inputs(twins.spec, failing.dims, seed=seed), failing.tolerance)
