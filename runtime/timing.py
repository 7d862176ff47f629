"""Latency and throughput of any callable: warm-up, then percentiles, as data."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Latency percentiles (ms) of `runs` calls after `warmup`, and samples per second."""

    batch: int
    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float


def measure(call: Callable[[], object], batch: int, runs: int = 50, warmup: int = 5) -> Timing:
    """Call `call` warmup times untimed, then `runs` times timed with perf_counter."""
    if runs < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"measure: expected runs >= 1, warmup >= 0, batch >= 1, got "
                         f"runs={runs}, warmup={warmup}, batch={batch}")
    for _ in range(warmup):
        call()
    seconds = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        seconds[i] = time.perf_counter() - start
    p50, p90, p99 = np.percentile(seconds, (50, 90, 99)) * 1e3
    return Timing(batch, runs, warmup, float(p50), float(p90), float(p99),
                  float(seconds.mean() * 1e3), float(batch / seconds.mean()))
