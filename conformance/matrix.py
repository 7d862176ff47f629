"""The cross-check matrix: every path of one model at every shape, vs the oracle and each other.

Paths: the torch twin, the Keras twin, and onnxruntime on each exported file on each
provider. The float64 torch run is the oracle. Every path is compared with the oracle
and every pair of paths directly, per output, at batch 1 and 7 (and, for token models,
sequence 1, 12, 50 and 256). Given a dataset (trained twins), the inputs are real test
samples instead of random ones, and every path also classifies the whole test set.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxtwin.builders import Twins, has_seq, sample_inputs
from onnxtwin.builders.datasets import Dataset
from onnxtwin.builders.signature import ModelSpec
from onnxtwin.conformance.accuracy import AccuracyResult, evaluate
from onnxtwin.conformance.localise import Localisation, localise
from onnxtwin.conformance.tolerances import Tolerances
from onnxtwin.export import FRAMEWORKS, ExportResult, export_model, graph_differences
from onnxtwin.runtime import Comparison, Session, Timing, compare, measure
from onnxtwin.runtime.metrics import json_ready

MATRIX_BATCHES = (1, 7)
MATRIX_SEQS = (1, 12, 50, 256)
TIMING_BATCH, TIMING_SEQ = 7, 50
ORACLE = "oracle"

Outputs = dict[str, np.ndarray]
Runner = Callable[[dict[str, np.ndarray]], Outputs]
Inputs = Callable[..., dict[str, np.ndarray]]
"""(spec, batch, seq, seed=) -> inputs: `sample_inputs`, or a dataset's `inputs`."""


@dataclass(frozen=True)
class PathInfo:
    """One way to compute the model: a framework twin, or an exported file on a provider."""

    name: str
    framework: str
    provider: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class Check:
    """`actual` against `expected` (a path or the oracle) on one output at one shape."""

    actual: str
    expected: str
    output: str
    batch: int
    seq: int | None
    metrics: Comparison
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.metrics.passed(self.tolerance)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "metrics"},
                **json_ready(asdict(self.metrics)), "passed": self.passed}


@dataclass(frozen=True)
class Latency:
    """Timing of one path at the timing shape."""

    path: str
    seq: int | None
    timing: Timing


@dataclass(frozen=True)
class ModelResult:
    """Everything the matrix found for one model."""

    spec: ModelSpec
    paths: tuple[PathInfo, ...]
    exports: tuple[ExportResult, ...]
    differences: tuple[str, ...]
    checks: tuple[Check, ...]
    latency: tuple[Latency, ...]
    localisation: Localisation | None
    seconds: float
    accuracy: AccuracyResult | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and (self.accuracy is None
                                                       or self.accuracy.passed)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def needed(self) -> dict[str, float]:
        """Per output: the smallest tolerance every comparison would have passed."""
        worst: dict[str, float] = {}
        for c in self.checks:
            error = c.metrics.max_abs if c.metrics.nonfinite == 0 else float("inf")
            worst[c.output] = max(worst.get(c.output, 0.0), error)
        return worst

    def worst_against_oracle(self, path: str) -> float:
        return max(c.metrics.max_abs for c in self.checks
                   if c.actual == path and c.expected == ORACLE)


def matrix_shapes(spec: ModelSpec) -> list[tuple[int, int | None]]:
    seqs = MATRIX_SEQS if has_seq(spec) else (None,)
    return [(b, s) for b in MATRIX_BATCHES for s in seqs]


def step_count(spec: ModelSpec, with_data: bool = False) -> int:
    """How many times run_matrix calls `on_step` for this spec (for progress bars)."""
    return len(FRAMEWORKS) + len(matrix_shapes(spec)) + 1 + with_data


def run_matrix(twins: Twins, out_dir: str | Path, providers: list[str],
               tolerances: Tolerances, opset: int = 18, seed: int = 0, use_cache: bool = True,
               timing_runs: int = 20, on_step: Callable[[str], None] = lambda _: None,
               data: Dataset | None = None) -> ModelResult:
    """Export both twins into `out_dir`, run every path at every shape, compare, time.

    With `data`, inputs are its test samples and `accuracy` covers its whole test set.
    """
    spec, start = twins.spec, time.perf_counter()
    inputs = data.inputs if data is not None else sample_inputs
    exports = []
    for framework in FRAMEWORKS:
        on_step(f"{spec.name}: exporting from {framework}")
        exports.append(export_model(twins, framework, out_dir, opset=opset, use_cache=use_cache))
    paths, runners = path_runners(twins, exports, providers)
    outputs = [o.name for o in spec.signature.outputs]
    dtypes = {o.name: o.dtype for o in spec.signature.outputs}
    checks: list[Check] = []
    for batch, seq in matrix_shapes(spec):
        on_step(f"{spec.name}: running {len(paths)} paths at batch {batch}"
                + (f", seq {seq}" if seq else ""))
        x = inputs(spec, batch, seq, seed=seed)
        results = {p.name: runners[p.name](x) for p in paths}
        results[ORACLE] = runners[ORACLE](x)
        pairs = [(p.name, ORACLE) for p in paths] + \
            list(itertools.combinations([p.name for p in paths], 2))
        checks += [Check(a, e, o, batch, seq, compare(results[a][o], results[e][o]),
                         tolerances.get(spec.name, o, dtypes[o]))
                   for a, e in pairs for o in outputs]
    on_step(f"{spec.name}: timing {len(paths)} paths")
    latency = tuple(_time(spec, paths, runners, inputs, seed, timing_runs))
    accuracy = None
    if data is not None:
        on_step(f"{spec.name}: classifying {len(data.y_test)} test samples on {len(paths)} paths")
        output = outputs[0]
        accuracy = evaluate({p.name: runners[p.name] for p in paths}, runners[ORACLE],
                            lambda x: {output: twins.run_oracle(x, jitter=seed)},
                            data.x_test, data.y_test, spec.signature.inputs[0].name, output,
                            tolerances.get(spec.name, output, dtypes[output]), data.name)
    localisation = _localise_if_twins_differ(twins, checks, tolerances, inputs, seed)
    return ModelResult(spec, tuple(paths), tuple(exports), tuple(graph_differences(exports)),
                       tuple(checks), latency, localisation, time.perf_counter() - start,
                       accuracy)


def path_runners(twins: Twins, exports: list[ExportResult],
           providers: list[str]) -> tuple[list[PathInfo], dict[str, Runner]]:
    output = twins.spec.signature.outputs[0].name
    paths = [PathInfo("torch", "torch"), PathInfo("keras", "keras")]
    runners: dict[str, Runner] = {
        "torch": lambda x: {output: twins.run_torch(x)},
        "keras": lambda x: {output: twins.run_keras_compiled(x)},
        ORACLE: lambda x: {output: twins.run_oracle(x)},
    }
    for alias, export in itertools.product(providers, exports):
        session = Session(export.path, alias, strict=True)
        path = PathInfo(f"{export.framework}.onnx@{alias}", export.framework, session.provider,
                        export.path.name)
        paths.append(path)
        runners[path.name] = session.run
    return paths, runners


def _time(spec: ModelSpec, paths: list[PathInfo], runners: dict[str, Runner], inputs: Inputs,
          seed: int, runs: int) -> list[Latency]:
    seq = TIMING_SEQ if has_seq(spec) else None
    x = inputs(spec, TIMING_BATCH, seq, seed=seed)
    return [Latency(p.name, seq, measure(lambda run=runners[p.name]: run(x), TIMING_BATCH,
                                         runs=runs, warmup=3)) for p in paths]


def _localise_if_twins_differ(twins: Twins, checks: list[Check], tolerances: Tolerances,
                              inputs: Inputs, seed: int) -> Localisation | None:
    """Localise at the first shape where torch and Keras disagree; None if they never do."""
    failing = next((c for c in checks if not c.passed and {c.actual, c.expected} ==
                    {"torch", "keras"}), None)
    if failing is None:
        return None
    x = inputs(twins.spec, failing.batch, failing.seq, seed=seed)
    return localise(twins, x, failing.tolerance)

