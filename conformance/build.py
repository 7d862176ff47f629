"""`onnxtwin build` as a library call: twins built and saved, native parity, parity.json.

    from onnxtwin.builders import get_spec
    from onnxtwin.conformance.build import build_all
    results = build_all([get_spec("gru")], seed=0, source="torch", out="build/")
    all(r.passed for r in results)         # torch vs Keras vs float64 oracle, each point
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from onnxtwin.builders import ModelSpec, build_twins, grids
from onnxtwin.conformance.native import NativeParity, native_parity
from onnxtwin.runtime.files import folder_lock, inside, write_json


def build_all(specs: Sequence[ModelSpec], seed: int = grids.WEIGHT_SEED,
              source: str | None = None,
              out: str | Path = "onnxtwin-build",
              on_step: Callable[[str], None] = lambda _: None) -> list[NativeParity]:
    """For each spec: build its twins from `source`'s initialisation (`seed`; default each
    spec's own source), save them to
    OUT/NAME (spec.json and both weight files) and check native parity; then write
    OUT/parity.json. OUT is held (folder_lock) against a second writer; `on_step` is told
    each step (for a progress display)."""
    out = Path(out)
    results = []
    with folder_lock(out):
        for spec in (s for s in specs if s.frameworks):  # an ONNX file has no twins
            on_step(f"building {spec.name} ...")
            twins = build_twins(spec, seed=seed, source=source)
            twins.save(inside(out, spec.name))
            on_step(f"checking {spec.name} ...")
            results.append(native_parity(twins, source=source or spec.default_source))
        write_parity(results, out, seed, source)
    return results


def write_parity(results: Sequence[NativeParity], out: str | Path, seed: int,
                 source: str | None) -> Path:
    """OUT/parity.json, atomically: the settings and every model's comparisons."""
    return write_json(Path(out) / "parity.json", {
        "seed": seed, "source": source, "models": [r.to_dict() for r in results]})
