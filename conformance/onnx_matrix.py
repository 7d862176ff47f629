"""The matrix of an ONNX entry: the user's file on each provider, with onnxruntime's graph
optimisation off and at its highest level, against onnx.reference and each other.

The entry has no twins and no exports: every path runs the same file, so a difference is
onnxruntime's (a kernel, a provider, a fusion) or the reference's. When a comparison
fails, node localisation names the first node where that pair parts ways.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from onnxtwin.builders import sample_inputs
from onnxtwin.builders.onnx_entry import OnnxSpec
from onnxtwin.conformance.matrix import Latency, ModelResult
from onnxtwin.conformance.nodes import Side, localise_nodes
from onnxtwin.conformance.reference import REFERENCE, ReferencePath
from onnxtwin.runtime import OnnxtwinError, Session, measure
from onnxtwin.runtime.comparison import Case, compare_paths, describe
from onnxtwin.runtime.paths import ModelPath, OnnxPath

if TYPE_CHECKING:
    from onnxtwin.conformance.orchestrator import CheckOptions

LEVELS = {"opt-none": "disable", "opt-all": "all"}
"""Path name suffix -> Session optimization level: onnxruntime's graph as written, and
after every fusion it makes."""


def step_count(spec: OnnxSpec, providers: list[str]) -> int:
    """How many times run_onnx_matrix calls `on_step`: opening the reference and each
    path, each point, timing."""
    return 1 + len(providers) * len(LEVELS) + len(spec.matrix_points()) + 1


def sides(spec: OnnxSpec, providers: list[str]) -> list[Side]:
    """The reference, then the file on each provider at each optimisation level."""
    found = [Side(REFERENCE, ReferencePath)]
    for alias in providers:
        for suffix, level in LEVELS.items():
            name = f"{spec.path.name}@{alias}:{suffix}"
            found.append(Side(name, lambda file, name=name, alias=alias, level=level: OnnxPath(
                Session(file, alias, strict=True, optimization=level), name)))
    return found


def run_onnx_matrix(spec: OnnxSpec, providers: list[str], options: CheckOptions,
                    on_step: Callable[[str], None] = lambda _: None) -> ModelResult:
    """Run every path and the reference at every point of the entry's grid, compare them,
    time the paths, and localise the first failing comparison to a node."""
    start = time.perf_counter()
    ways = sides(spec, providers)
    opened: list[ModelPath] = []
    for side in ways:
        on_step(f"{spec.name}: opening {side.name}")
        opened.append(side.open(spec.path))
    reference, *paths = opened
    comparisons = compare_paths(
        paths, reference,
        (Case(dims, sample_inputs(spec, dims, seed=options.seed))
         for dims in spec.matrix_points()),
        options.tolerances.for_model(spec),
        on_case=lambda case: on_step(f"{spec.name}: running {len(paths)} paths at "
                                     f"{describe(case.dims)}"))
    on_step(f"{spec.name}: timing {len(paths)} paths")
    dims = spec.timing_dims()
    x = sample_inputs(spec, dims, seed=options.seed)
    latency = tuple(Latency(p.name, dims, measure(lambda p=p: p.run(x), dims.get("batch", 1),
                                                  runs=options.timing_runs, warmup=3))
                    for p in paths)
    localisation = None
    if failed := comparisons.failed:
        named = {s.name: s for s in ways}
        c = failed[0]
        try:
            localisation = localise_nodes(spec.path, named[c.actual], named[c.expected],
                                          sample_inputs(spec, c.dims, seed=options.seed),
                                          c.tolerance, c.dims)
        except OnnxtwinError:  # the marked copy cannot run: the verdict stands without it
            localisation = None
    return ModelResult(spec, tuple(p.info for p in paths), (), (), comparisons, latency,
                       localisation, time.perf_counter() - start)
