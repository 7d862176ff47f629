"""Benchmark: the GPU half of issue 7, on exported files, without TensorFlow.

    python benchmarks/bench_device.py FILE.onnx [FILE.onnx ...] [--device cuda] [--out DIR]

torch on the device (float32 and float16) against onnxruntime's CUDA provider with IO
binding on each file and on its float16 copy, at batch 1 and 64 (sequence 50), with each
path's fraction of the device's measured matmul peak (conformance/bench/device.py).
Writes DIR/bench_device.json (default benchmarks/results/bench_device/). Export the
files first (`onnxtwin export --out DIR`): a GPU machine needs torch and onnxruntime-gpu,
not TensorFlow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onnxtwin.conformance.bench.device import run_device_bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_device"))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    document = run_device_bench(args.files, args.out, args.device, rounds=args.rounds)
    (args.out / "bench_device.json").write_text(json.dumps(document, indent=2) + "\n")
    for m in document["models"]:
        for c in m["contenders"]:
            peak = "" if c["fraction_of_peak"] is None else f"{c['fraction_of_peak']:6.1%} of peak"
            print(f"{m['file']:28s} b{m['batch']:<3d} {c['name']:40s} {c['p50_ms']:8.3f} ms "
                  f"{peak:>14s}  max abs {c['max_abs_vs_torch']:.1e}")
        for name, why in m["skipped"].items():
            print(f"{m['file']:28s} b{m['batch']:<3d} {name:40s} not timed: {why}")
