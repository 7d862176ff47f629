"""Benchmark: what fp16 and int8 files cost and give on the trained built-in models.

    .venv/bin/python benchmarks/precision.py [--trained onnxtwin-trained] [--frameworks torch keras]
        [--out benchmarks/results/precision.json]

For each trained built-in model (`onnxtwin train --out DIR` writes them) and each exported
file: the float32 file and its fp16 and int8 files, made as `onnxtwin export --precision`
makes them (int8 calibrated on training samples) and gated on the whole test set. Per
file: test accuracy, argmax agreement with float32, size, and onnxruntime CPU latency at
batch 1 and 64 relative to float32. The files of one model and batch run in the same
interleaved rounds (onnxtwin bench's `interleave`), so a ratio of medians is not skewed
by a noisy machine. Inputs are real test rows; token models run at the dataset's own
length. A file the gate refuses is recorded with the refusal, not fatal: the table shows
what reduced precision would have cost.

Writes the JSON (with the machine's cpu, cores and versions) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_TRAINED = Path("onnxtwin-trained")  # where `onnxtwin train` writes by default


def accuracy(path: Path, gate) -> float:
    """Test accuracy of a file's first output's argmax over the gate's batches."""
    from onnxtwin.runtime import Session

    session = Session(path, "cpu", strict=True)
    predicted = np.concatenate([next(iter(session.run(b).values())).argmax(-1)
                                for b in gate.batches])
    return float(np.mean(predicted == gate.labels))


def latency(files: dict[str, Path], data, rounds: int, calls: int) -> dict[str, dict]:
    """Median ms per file at each batch, all files interleaved; `ratio` is vs fp32."""
    from onnxtwin.builders import grids
    from onnxtwin.conformance.bench.run import Contender, interleave
    from onnxtwin.runtime import Session
    from onnxtwin.runtime.paths import OnnxPath

    found = {p: {} for p in files}
    for batch in grids.BENCH_BATCHES:
        contenders = {p: Contender(OnnxPath(Session(f, "cpu", strict=True), p), "onnx")
                      for p, f in files.items()}
        name = contenders["fp32"].path.input_names[0]
        interleave(list(contenders.values()), {name: data.x_test[:batch]}, rounds, calls)
        medians = {p: float(np.median(c.seconds)) * 1e3 for p, c in contenders.items()}
        for p, ms in medians.items():
            found[p][f"batch_{batch}"] = {"p50_ms": ms, "ratio": ms / medians["fp32"]}
    return found


def measure(spec, trained: Path, frameworks: list[str], out: Path, rounds: int, calls: int,
            say) -> list[dict]:
    """One record per exported file of a trained model: fp32, fp16 and int8 side by side."""
    from onnxtwin.builders.training import load_trained
    from onnxtwin.export import export_model
    from onnxtwin.export.precision import REDUCED, reduce_precision
    from onnxtwin.export.precision_data import dataset_calibration, gate_data
    from onnxtwin.runtime.errors import OnnxtwinError

    loaded = load_trained(trained / spec.name)
    data = loaded.dataset()
    gate, calibration = gate_data(spec, data), dataset_calibration(spec, data)
    records = []
    for framework in (f for f in frameworks if f in loaded.twins.frameworks):
        say(f"{spec.name}: exporting from {framework}, reducing, gating")
        fp32 = export_model(loaded.twins, framework, out).path
        files = {"fp32": fp32}
        rows = {"fp32": {"accuracy": accuracy(fp32, gate), "agreement": 1.0,
                         "size": fp32.stat().st_size}}
        for precision in REDUCED:
            try:
                reduced = reduce_precision(fp32, precision, gate, calibration)
            except OnnxtwinError as e:
                rows[precision] = {"refused": str(e)}
                continue
            files[precision] = reduced.path
            rows[precision] = {"accuracy": reduced.gate.accuracy,
                               "agreement": reduced.gate.agreement, "size": reduced.size,
                               "method": reduced.method}
        say(f"{spec.name}: timing the {framework} files")
        for precision, timing in latency(files, data, rounds, calls).items():
            rows[precision]["latency"] = timing
        for row in rows.values():
            if "size" in row:
                row["size_ratio"] = row["size"] / rows["fp32"]["size"]
        records.append({"model": spec.name, "framework": framework, "data": data.name,
                        "test_samples": len(data.y_test),
                        "seq": int(data.x_test.shape[1]) if data.tokenizer else None,
                        "precisions": rows})
    return records


def markdown(records: list[dict]) -> str:
    """The table: fp32 rows in absolute units, fp16/int8 rows relative to them."""
    lines = ["| model | file | precision | test accuracy | agreement | size | "
             "latency batch 1 | latency batch 64 |", "|" + "---|" * 8]
    notes, sets = [], {}
    for r in records:
        sets[r["data"]] = f"{r['data']} ({r['test_samples']} samples" + (
            f", seq {r['seq']})" if r["seq"] else ")")
        base = r["precisions"]["fp32"]
        for precision, row in r["precisions"].items():
            cells = [r["model"], r["framework"], precision]
            if "refused" in row:
                notes.append(row["refused"])
                cells += [f"refused [{len(notes)}]", "", "", "", ""]
            elif precision == "fp32":
                cells += [f"{row['accuracy']:.2%}", "", f"{row['size'] / 1e6:.2f} MB",
                          *(f"{row['latency'][b]['p50_ms']:.2f} ms"
                            for b in ("batch_1", "batch_64"))]
            else:
                points = (row["accuracy"] - base["accuracy"]) * 100
                cells += [f"{row['accuracy']:.2%} ({points:+.2f})", f"{row['agreement']:.2%}",
                          f"{row['size'] / 1e6:.2f} MB ({row['size_ratio']:.2f}x)",
                          *(f"{row['latency'][b]['ratio']:.2f}x"
                            for b in ("batch_1", "batch_64"))]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "fp16 and int8 rows: accuracy change in points; agreement: argmax equal to "
              "the fp32 file's; size and median latency as a ratio to the fp32 file "
              "(onnxruntime CPU, files interleaved in the same rounds, real test rows). "
              f"Test sets, whole: {'; '.join(sets.values())}."]
    lines += [f"[{i}] {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=Path,
                        default=DEFAULT_TRAINED if DEFAULT_TRAINED.is_dir() else None)
    parser.add_argument("--models", nargs="+", help="built-in names (default: all)")
    parser.add_argument("--frameworks", nargs="+", default=["torch", "keras"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision.json"))
    args = parser.parse_args()
    if args.trained is None or not args.trained.is_dir():
        print(f"--trained: expected a folder of trained models (make one with `onnxtwin train "
              f"--out DIR`), got {args.trained or 'none, and no ' + str(DEFAULT_TRAINED)}",
              file=sys.stderr)
        sys.exit(2)
    from onnxtwin.builders import grids
    from onnxtwin.builders.registry import builtins
    from onnxtwin.conformance.bench.run import machine
    from onnxtwin.conformance.report import versions
    from onnxtwin.runtime.errors import OnnxtwinError
    from onnxtwin.runtime.files import write_json

    start = time.perf_counter()
    records = []
    try:
        with tempfile.TemporaryDirectory() as out:
            for spec in (s for s in builtins() if not args.models or s.name in args.models):
                records += measure(spec, args.trained, args.frameworks, Path(out),
                                   args.rounds, args.calls,
                                   lambda s: print(s, file=sys.stderr, flush=True))
    except OnnxtwinError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    document = {"benchmark": "precision", "trained": str(args.trained),
                "machine": {**machine(), "versions": versions()},
                "settings": {"provider": "cpu", "batches": list(grids.BENCH_BATCHES),
                             "rounds": args.rounds, "calls_per_round": args.calls,
                             "inputs": "the first test rows; token models at the dataset's "
                                       "length", "gate": "the whole test set"},
                "wall_s": round(time.perf_counter() - start, 1), "results": records}
    write_json(args.out, document)
    print(markdown(records))
    print(f"-> {args.out} ({document['wall_s']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
