"""Accuracy parity: every path classifies a whole test set; predictions must agree sample by sample.

Each path's logits are compared with the float64 oracle's per sample, and its predicted
classes with the labels (accuracy) and with every other path's (agreement).

Trained weights make float32 error grow past the 1e-5 that random weights never reach,
for two measured reasons, so a path's error on a sample passes if it is within the
tolerance, or within either allowance:
- scale: trained logits reach tens, and float32 sums over hundreds of terms land a few
  ulps of the logit away. Allowed: RELATIVE_ULPS float32 ulps of the sample's largest
  |logit|.
- conditioning: a few inputs amplify rounding (their output moves when the weights alone
  move by half a float32 ulp, in float64). Each sample's *sensitivity* is measured so
  (the oracle with every weight jittered by at most 2**-24 relative). Allowed:
  CONDITIONING_FACTOR times the sensitivity.
The report counts the samples over the tolerance and those no allowance explains.

Passing: 100.0% agreement between all paths and no unexplained error.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from onnxtwin.runtime.comparison import Case, OutputTolerances, compare_paths, tolerance_for
from onnxtwin.runtime.metrics import json_ready
from onnxtwin.runtime.paths import ModelPath

EVAL_BATCH = 250
CONDITIONING_FACTOR = 4.0
RELATIVE_ULPS = 32


@dataclass(frozen=True)
class PathAccuracy:
    """One path on the test set: accuracy, error vs the oracle, and samples beyond tolerance
    (`over_tolerance`), of which `unexplained` are not explained by their sensitivity."""

    path: str
    accuracy: float
    max_abs_vs_oracle: float
    max_ulps: float
    """The largest error in float32 ulps of its sample's largest |logit|."""
    over_tolerance: int
    unexplained: int


@dataclass(frozen=True)
class Agreement:
    """Two paths: the fraction of samples given the same class, and their max abs difference."""

    a: str
    b: str
    agreement: float
    disagreements: int
    max_abs: float


@dataclass(frozen=True)
class AccuracyResult:
    data: str
    samples: int
    tolerance: float
    max_sensitivity: float
    sensitive_samples: int
    """Samples whose conditioning allowance exceeds the tolerance."""
    paths: tuple[PathAccuracy, ...]
    pairs: tuple[Agreement, ...]

    @property
    def passed(self) -> bool:
        return (all(p.disagreements == 0 for p in self.pairs)
                and all(p.unexplained == 0 for p in self.paths))

    def to_dict(self) -> dict:
        return {**json_ready(asdict(self)), "passed": self.passed,
                "paths": [json_ready(asdict(p)) for p in self.paths],
                "pairs": [json_ready(asdict(p)) for p in self.pairs]}


def evaluate(paths: Sequence[ModelPath], oracle: ModelPath, jittered_oracle: ModelPath,
             x: np.ndarray, y: np.ndarray, tolerances: OutputTolerances, data: str,
             batch: int = EVAL_BATCH) -> AccuracyResult:
    """Run every path and both oracles over `x` in batches (the comparison engine, keeping the
    outputs); score the first output (the logits) sample by sample."""
    name, output = oracle.input_names[0], oracle.output_names[0]
    tolerance = tolerance_for(tolerances, output)
    cases = [Case({"batch": len(x[i: i + batch])}, {name: x[i: i + batch]})
             for i in range(0, len(x), batch)]
    runs = compare_paths([*paths, jittered_oracle], oracle, cases,
                         tolerances, pairs="reference", keep_outputs=True).outputs

    def logits(path: str) -> np.ndarray:
        return np.concatenate([r[output] for r in runs[path]]).astype(np.float64)

    reference = logits(oracle.name)
    sensitivity = _row_max_abs(logits(jittered_oracle.name), reference)
    scale = np.abs(reference).reshape(len(reference), -1).max(axis=1)
    ulp = np.spacing(scale.astype(np.float32)).astype(np.float64)
    allowed = np.maximum.reduce([np.full(len(reference), tolerance), RELATIVE_ULPS * ulp,
                                 CONDITIONING_FACTOR * sensitivity])
    results = {p.name: logits(p.name) for p in paths}
    predicted = {name: r.argmax(axis=-1) for name, r in results.items()}
    scored = []
    for name, r in results.items():
        error = _row_max_abs(r, reference)
        scored.append(PathAccuracy(name, float((predicted[name] == y).mean()), float(error.max()),
                                   float((error / ulp).max()), int((error > tolerance).sum()),
                                   int((error > allowed).sum())))
    pairs = tuple(Agreement(a, b, float((predicted[a] == predicted[b]).mean()),
                            int((predicted[a] != predicted[b]).sum()),
                            float(_row_max_abs(results[a], results[b]).max()))
                  for a, b in itertools.combinations(results, 2))
    return AccuracyResult(data, len(y), tolerance, float(sensitivity.max()),
                          int((CONDITIONING_FACTOR * sensitivity > tolerance).sum()),
                          tuple(scored), pairs)


def _row_max_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per sample: the largest absolute difference (NaN/Inf count as infinitely far)."""
    diff = np.abs(a - b).reshape(len(a), -1).max(axis=1)
    return np.where(np.isfinite(diff), diff, np.inf)
