"""Benchmark: wall time of a full `onnxtwin check` on the built-in models, cold and warm.

    .venv/bin/python benchmarks/check_wall.py [--out benchmarks/results/check_wall.json]

Cold: an empty export cache (every file exported and gated). Warm: the same command
again, the cache now full. Each run is a fresh process, as a user runs it, so the wall
time includes importing torch and TensorFlow. Targets (issue 5): cold < 90 s, warm < 20 s
on 2 cores; a missed target is reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"cold": 90.0, "warm": 20.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/check_wall.json"))
    args = parser.parse_args()
    command = [sys.executable, "-c", "from onnxtwin.conformance.cli import main; main()",
               "check"]
    runs = {}
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "ONNXTWIN_CACHE": cache}
        for run in ("cold", "warm"):
            start = time.perf_counter()
            done = subprocess.run([*command, "--out", f"{out}/{run}"], env=env,
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"{run} check failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            summary = json.loads(Path(f"{out}/{run}/report.json").read_text())["summary"]
            runs[run] = {"wall_s": round(seconds, 2), "in_process_s": summary["seconds"],
                         "comparisons": summary["comparisons"], "passed": summary["passed"],
                         "target_s": TARGETS_S[run], "met": seconds < TARGETS_S[run]}
            print(f"{run}: {seconds:6.1f} s wall ({summary['comparisons']} comparisons, "
                  f"target < {TARGETS_S[run]:.0f} s: {'met' if runs[run]['met'] else 'MISSED'})")
    from onnxtwin.conformance.report import versions
    from onnxtwin.runtime.files import atomic_path

    report = {"benchmark": "check_wall", "command": "onnxtwin check", "cpus": os.cpu_count(),
              "machine": platform.machine(), "versions": versions(), "runs": runs}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
