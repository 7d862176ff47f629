"""Benchmark: memory over long runs. One session per model runs 10,000 times (8 threads
sharing it); RSS is sampled every 250 runs and its growth after warm-up is reported.

    .venv/bin/python benchmarks/reliability.py [--out benchmarks/results/reliability.json]

Target (issue 8): RSS flat after warm-up, i.e. growth over the last 9,000 runs below
1 MiB; outputs bit-identical to the sequential run of the same input. A missed target is
reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
from pathlib import Path

import numpy as np

RUNS, THREADS, WARMUP, EVERY = 10_000, 8, 1_000, 250
TARGET_GROWTH_MIB = 1.0


def rss_mib() -> float:
    """Resident set size of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(session, batches: list[dict], expected: list[np.ndarray]) -> dict:
    """RUNS runs over THREADS threads; RSS samples by completed runs; mismatches counted."""
    lock, state = threading.Lock(), {"done": 0, "differing": 0, "samples": []}

    def worker(t: int) -> None:
        for run in range(RUNS // THREADS):
            i = (t + run * THREADS) % len(batches)
            same = np.array_equal(session.run(batches[i])["logits"], expected[i])
            with lock:
                state["done"] += 1
                state["differing"] += not same
                if state["done"] % EVERY == 0:
                    state["samples"].append((state["done"], round(rss_mib(), 2)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after_warmup = next(mib for done, mib in state["samples"] if done >= WARMUP)
    growth = state["samples"][-1][1] - after_warmup
    return {"runs": state["done"], "threads": THREADS, "differing": state["differing"],
            "rss_mib_after_warmup": after_warmup, "rss_mib_end": state["samples"][-1][1],
            "growth_mib": round(growth, 2), "target_met": growth < TARGET_GROWTH_MIB
            and state["differing"] == 0, "samples": state["samples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/reliability.json"))
    args = parser.parse_args()
    from onnxtwin.builders import build_twins, sample_inputs
    from onnxtwin.export import export_model
    from onnxtwin.runtime import Session

    results = {}
    with tempfile.TemporaryDirectory() as out:
        for name in ("cnn", "transformer"):
            twins = build_twins(name)
            session = Session(export_model(twins, "torch", out).path)
            batches = [sample_inputs(twins.spec, batch=1 + i % 4, seq=5 + i % 11, seed=i)
                       for i in range(64)]
            expected = [session.run(x)["logits"] for x in batches]
            results[name] = soak(session, batches, expected)
            print(f"{name}: {results[name]['runs']} runs, {results[name]['differing']} "
                  f"differing, RSS {results[name]['rss_mib_after_warmup']} -> "
                  f"{results[name]['rss_mib_end']} MiB after warm-up "
                  f"(growth {results[name]['growth_mib']} MiB)")
    document = {"benchmark": "reliability", "machine": {"platform": platform.platform(),
                                                        "cpus": os.cpu_count()},
                "target_growth_mib": TARGET_GROWTH_MIB, "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
