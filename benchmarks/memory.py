"""Benchmark: the per-run memory bound of `onnxtwin run` and `serve`.

    .venv/bin/python benchmarks/memory.py [--out benchmarks/results/memory.json]

Two parts, on the built-in exports:
1. Estimate against measurement: for each file and shape, a fresh process runs the shape
   once (onnxruntime's arena off, as `run` and `serve` do) and reports its peak RSS above
   the RSS after loading; the ratio to `Session.needed_bytes` says how well the estimate
   bounds the real peak.
   The largest Transformer point runs once more with the arena on, for comparison.
2. What the arena costs in speed: sessions with onnxruntime's arena on and off timed
   interleaved (10 rounds of 20 calls each, a quiet 0.1 s before each), p50 ratio off/on.
3. The server: `onnxtwin serve` on the Transformer, its RSS (/proc) before, at its peak
   and after the largest request the default bound admits, and after one that the bound
   refuses (413).
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
from functools import partial
from pathlib import Path

import numpy as np

POINTS = {"cnn": [{"batch": 64}, {"batch": 1024}],
          "lstm": [{"batch": 64, "seq": 50}, {"batch": 8, "seq": 2048}],
          "gru": [{"batch": 64, "seq": 50}, {"batch": 512, "seq": 2048}],
          "transformer": [{"batch": 64, "seq": 50}, {"batch": 64, "seq": 200},
                          {"batch": 2, "seq": 2048}, {"batch": 7, "seq": 2048}]}


def status_mib(pid: int | str, field: str) -> float:
    """VmRSS or VmHWM (peak) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure_one(path: str, dims: dict[str, int], arena: bool) -> dict:
    """In this (fresh) process: load, run once at `dims`; peak RSS growth of the run."""
    from onnxtwin.builders import get_spec, sample_inputs
    from onnxtwin.runtime import Session
    from onnxtwin.runtime.session import DEFAULT_MEMORY_LIMIT

    session = Session(path, memory_limit=DEFAULT_MEMORY_LIMIT, arena=arena)
    spec = get_spec(Path(path).name.split(".")[0])
    inputs = sample_inputs(spec, batch=dims["batch"], seq=dims.get("seq"), seed=0)
    loaded = status_mib("self", "VmRSS")
    os.system(f"echo 5 > /proc/{os.getpid()}/clear_refs 2>/dev/null")  # reset VmHWM to now
    session.run(inputs)
    return {"estimate_mib": round(session.needed_bytes(dims) / 2**20, 1),
            "peak_growth_mib": round(status_mib("self", "VmHWM") - loaded, 1),
            "after_growth_mib": round(status_mib("self", "VmRSS") - loaded, 1)}


def estimates(folder: Path) -> list[dict]:
    runs = [(name, dims, False) for name, points in POINTS.items() for dims in points]
    runs.append(("transformer", POINTS["transformer"][-1], True))
    rows = []
    for name, dims, arena in runs:
        path = folder / f"{name}.torch.onnx"
        result = subprocess.run([sys.executable, __file__, "--measure", str(path),
                                 json.dumps(dims), str(int(arena))], capture_output=True,
                                text=True, check=True)
        row = {"model": path.name, "dims": dims, "arena": arena,
               **json.loads(result.stdout)}
        row["measured_over_estimate"] = round(row["peak_growth_mib"]
                                              / max(row["estimate_mib"], 1e-9), 2)
        print(row)
        rows.append(row)
    return rows


def arena_speed(folder: Path) -> list[dict]:
    """p50 latency with the arena off over on, interleaved, at batch 1 and 64."""
    from onnxtwin.builders import get_spec, sample_inputs
    from onnxtwin.runtime import Session, measure

    rows = []
    for name in ("cnn", "transformer"):
        sessions = {arena: Session(folder / f"{name}.torch.onnx", arena=arena)
                    for arena in (True, False)}
        for batch in (1, 64):
            inputs = sample_inputs(get_spec(name), batch=batch, seq=50, seed=0)
            p50s: dict[bool, list[float]] = {True: [], False: []}
            for round_ in range(10):
                for arena in (True, False) if round_ % 2 else (False, True):
                    time.sleep(0.1)  # onnxruntime's idle threads spin after a run
                    call = partial(sessions[arena].run, inputs)
                    p50s[arena].append(measure(call, batch, runs=20, warmup=2).p50_ms)
            on, off = (float(np.median(p50s[a])) for a in (True, False))
            rows.append({"model": f"{name}.torch.onnx", "batch": batch, "seq": 50,
                         "p50_ms_arena_on": round(on, 3), "p50_ms_arena_off": round(off, 3),
                         "off_over_on": round(off / on, 3)})
            print(rows[-1])
    return rows


def serve_rss(path: Path) -> dict:
    """Server RSS around the largest admitted Transformer request and a refused one."""
    import urllib.error
    import urllib.request

    from onnxtwin.runtime import Session
    from onnxtwin.runtime.session import DEFAULT_MEMORY_LIMIT

    session = Session(path, memory_limit=DEFAULT_MEMORY_LIMIT)
    rows = max(b for b in range(1, 65)
               if session.needed_bytes({"batch": b, "seq": 2048}) <= DEFAULT_MEMORY_LIMIT)
    server = subprocess.Popen([Path(sys.executable).with_name("onnxtwin"), "serve", str(path),
                               "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split(" at ")[1].split()[0]
        model = path.name.removesuffix(".onnx")

        def infer(batch: int) -> int:
            tokens = np.random.default_rng(0).integers(1, 10_000, (batch, 2048))
            body = json.dumps({"inputs": [{"name": "tokens", "datatype": "INT64",
                                           "shape": list(tokens.shape),
                                           "data": tokens.ravel().tolist()}]}).encode()
            request = urllib.request.Request(f"{url}/models/{model}/infer", body,
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status
            except urllib.error.HTTPError as e:
                return e.code

        time.sleep(0.5)
        before = status_mib(server.pid, "VmRSS")
        admitted = infer(rows)
        peak = status_mib(server.pid, "VmHWM")
        time.sleep(0.5)
        after = status_mib(server.pid, "VmRSS")
        refused = infer(rows + 1)
        time.sleep(0.5)
        return {"largest_admitted": [rows, 2048], "status": admitted,
                "estimate_mib": round(session.needed_bytes({"batch": rows, "seq": 2048})
                                      / 2**20, 1),
                "rss_mib_before": round(before, 1), "rss_mib_peak": round(peak, 1),
                "rss_mib_after": round(after, 1), "refused": [rows + 1, 2048],
                "refused_status": refused,
                "rss_mib_after_refused": round(status_mib(server.pid, "VmRSS"), 1),
                "peak_after_refused": round(status_mib(server.pid, "VmHWM"), 1)}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_one(args.measure[0], json.loads(args.measure[1]),
                                     args.measure[2] == "1")))
        return
    from onnxtwin.builders import build_twins
    from onnxtwin.export import export_model
    from onnxtwin.runtime.session import DEFAULT_MEMORY_LIMIT

    with tempfile.TemporaryDirectory() as out:
        for name in POINTS:
            export_model(build_twins(name), "torch", out)
        rows = estimates(Path(out))
        speed = arena_speed(Path(out))
        server = serve_rss(Path(out) / "transformer.torch.onnx")
    print(server)
    document = {"benchmark": "memory", "machine": {"platform": platform.platform(),
                                                   "cpus": os.cpu_count()},
                "default_limit_mib": DEFAULT_MEMORY_LIMIT / 2**20, "estimates": rows,
                "arena_speed": speed, "server": server}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
