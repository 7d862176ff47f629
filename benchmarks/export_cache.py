"""Benchmark: export time of every built-in twin pair, cold (empty cache) and warm (cache hit).

    .venv/bin/python benchmarks/export_cache.py [--out benchmarks/results/export_cache.json]

Writes a JSON with per-file seconds and the machine; prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export_cache.json"))
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        os.environ["ONNXTWIN_CACHE"] = cache
        from onnxtwin.builders import build_twins, builtins
        from onnxtwin.export import FRAMEWORKS, export_model
        from onnxtwin.export.metadata import tool_versions
        from onnxtwin.runtime.files import atomic_path

        rows = []
        for spec in builtins():
            twins = build_twins(spec)
            for framework in FRAMEWORKS:
                timings = {}
                for run in ("cold", "warm"):
                    start = time.perf_counter()
                    result = export_model(twins, framework, Path(out) / run, opset=args.opset)
                    timings[run] = time.perf_counter() - start
                    assert result.cache_hit == (run == "warm"), (spec.name, framework, run)
                rows.append({"model": spec.name, "framework": framework, **timings,
                             "speedup": timings["cold"] / timings["warm"]})
                print(f"{spec.name:18} {framework:6} cold {timings['cold']:6.2f} s   "
                      f"warm {timings['warm']:7.4f} s   x{rows[-1]['speedup']:.0f}")
    report = {"benchmark": "export_cache", "opset": args.opset, "machine": platform.machine(),
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "versions": tool_versions(), "rows": rows,
              "total_cold_s": sum(r["cold"] for r in rows),
              "total_warm_s": sum(r["warm"] for r in rows)}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total cold {report['total_cold_s']:.1f} s, warm {report['total_warm_s']:.2f} s "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
