"""Benchmark: `onnxtwin bench` on every built-in model, results kept in the repository.

    .venv/bin/python benchmarks/bench.py [--no-compile]

Same as `onnxtwin bench --out benchmarks/results/bench` (bench.json, bench.md,
bench.html): torch eager, torch.compile, Keras's tf.function and onnxruntime on each
export, interleaved, at batch 1 and 64 (sequence 50), with the targets of issue 7. A
missed target is reported, not raised.
"""

from __future__ import annotations

import sys

from onnxtwin.conformance.cli import main

if __name__ == "__main__":
    sys.argv = ["onnxtwin", "bench", "--out", "benchmarks/results/bench", *sys.argv[1:]]
    main()
