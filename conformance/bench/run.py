"""`onnxtwin bench`: onnxruntime against PyTorch and TensorFlow, interleaved, with targets.

Every contender of one model and batch is a path (onnxtwin.runtime.paths): torch eager,
torch.compile, Keras through its tf.function, onnxruntime on each file and provider,
default and tuned. All run in the same rounds, in a rotating order, so a noisy machine
slows them all alike and the ratios hold. Before its time counts, every contender is
compared with torch eager on every output by the comparison engine.

Reduced-precision files join the race: each plain export's fp16 and int8 copies
(export/precision.py, gated against it; int8 of a graph with a Conv is calibrated on seeded
random inputs, the weights being random), validated within a fraction of the outputs' scale,
and each reported against its own float32 file (`vs_float32_file`) besides the natives.

The exploration (every file, default and tuned) is not the headline: its minimum over many
paths favours a lucky sample. Per model, `choose_deploy` takes the one CPU file and settings
onnxtwin would deploy, and a confirmation pass times just that choice, in a fresh session,
interleaved against the natives again at each batch; the headline target
(onnx_cpu_vs_fastest_native) is the confirmed ratio. bench.json gains:

- `models[i]["contenders"][j]["vs_float32_file"]` for a reduced contender: its p50 / the
  p50 of its float32 file with the same settings kind (default or tuned, same provider);
- `models[i]["confirmed"]`: that batch's confirmation record (see `confirm`), or None;
- `"deploy": {model: {"contender", "file", "precision", "provider", "settings": {"threads",
  "optimization", "spinning"}, "exploration_geomean_vs_fastest_native", "confirmed": [{"batch",
  "contender", "p50_ms", "p90_ms", "runs", "max_abs_vs_torch", "fastest_native",
  "fastest_native_p50_ms", "vs_fastest_native"}]}}`; OUT/deploy.json (`deploy_settings`:
  {"benchmark", "models": {model: {"file", "precision", "provider", "settings",
  "confirmed_vs_fastest_native": {batch: ratio}}}}) is read by `onnxtwin serve --settings`
  and `onnxtwin deploy --settings`;
- `"reduced": [{"model", "source", "file", "precision", "method", "relative_error",
  "agreement", "calibration", "refused"}]`: how each reduced file was made, or why not.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxtwin.builders import grids
from onnxtwin.runtime import FLOAT32_ABS_TOLERANCE, Session
from onnxtwin.runtime.comparison import Case, compare_paths
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.paths import ModelPath, OnnxPath

Inputs = dict[str, np.ndarray]
BATCHES = grids.BENCH_BATCHES
SEQ = grids.BENCH_SEQ
REFERENCE = "torch eager"
"""The name of the reference every contender is validated against: torch eager in float32,
or Keras eager for a model with no torch side (its "max_abs_vs_torch" is then vs Keras;
the result's "reference" says which)."""
TARGET_ONNX_VS_NATIVE = 0.8  # the faster ONNX path on CPU / the fastest native framework
TARGET_KERAS_VS_TORCH_FILE = 1.15  # the Keras-exported file / the torch-exported one
TARGET_CNN_PEAK = 0.6  # CNN at batch 64: fraction of the measured float32 matmul peak
TARGET_INT8_VS_FLOAT32 = 0.6  # an int8 file / its float32 file, tuned, at TARGET_BATCH
INT8_TARGET_MODELS = ("cnn", "lstm", "transformer")
TARGET_BATCH = 64
REDUCED = ("fp16", "int8")
CALIBRATION_DRAWS, HELD_OUT_DRAWS, CALIBRATION_BATCH = 4, 2, 16
"""int8 calibration of a bench file (random weights, no data): seeded random input batches at
the bench dims (seeds BENCH_SEED + 1, + 2, ...: not the timed inputs), 4 to set the activation
ranges and 2 held out to choose the calibration method."""
DEPLOY_KEYS = ("threads", "optimization", "spinning")
"""The session settings a deploy choice fixes (runtime.Session keywords)."""
TARGET_HELP_S, TARGET_FIRST_INFERENCE_S = 0.5, 1.0
"""`onnxtwin --help`, and `run` / `serve` to their first inference, in a fresh process."""
SETTLE_S = 0.1
TUNING = [{"optimization": level, "threads": threads, "spinning": spinning}
          for level in ("extended", "all") for threads in (0, 1) for spinning in (True, False)]
"""onnxruntime settings tried per file and batch: optimisation level x intra-op threads
(0: one per core) x idle threads spinning."""


@dataclass(frozen=True)
class BenchOptions:
    """What `run_bench` measures: batches, the token models' sequence length, onnxruntime
    providers, interleaved rounds and timed calls per round, and the optional parts."""

    batches: tuple[int, ...] = BATCHES
    seq: int = SEQ
    providers: tuple[str, ...] = ("cpu",)
    rounds: int = 10
    calls: int = 10
    compile_torch: bool = True
    startup: bool = True
    precisions: tuple[str, ...] = REDUCED  # reduced copies of each export to race; () none


@dataclass
class Contender:
    """One way to run a model in the race: a path, native or onnx, its settings, the
    tolerance (max abs vs torch eager, every output) it must meet to be timed."""

    path: ModelPath = field(repr=False)
    kind: str  # "native" or "onnx"
    settings: dict = field(default_factory=dict)
    tolerance: float = FLOAT32_ABS_TOLERANCE
    seconds: list[float] = field(default_factory=list, repr=False)
    max_abs_vs_torch: float = 0.0

    @property
    def name(self) -> str:
        return self.path.name

    def summary(self, batch: int) -> dict:
        ms = np.array(self.seconds) * 1e3
        return {"name": self.name, "kind": self.kind, "settings": self.settings,
                "runs": len(ms), "p50_ms": float(np.median(ms)),
                "p90_ms": float(np.percentile(ms, 90)),
                "throughput": float(batch / np.mean(ms) * 1e3),
                "max_abs_vs_torch": self.max_abs_vs_torch, "tolerance": self.tolerance}


def interleave(contenders: list[Contender], inputs: Inputs, rounds: int, calls: int,
               settle_s: float = SETTLE_S) -> None:
    """`rounds` rounds; in each, every contender (in a rotated order) runs one untimed call,
    then `calls` timed calls. Before each block the machine settles for `settle_s`: the
    previous contender's idle threads (onnxruntime's spin for a while after each run)
    would otherwise steal the cores from this one and make a session's time depend on
    what ran before it."""
    for r in range(rounds):
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            time.sleep(settle_s)
            c.path.run(inputs)
            for _ in range(calls):
                start = time.perf_counter()
                c.path.run(inputs)
                c.seconds.append(time.perf_counter() - start)


def tuned_session(path: Path, provider: str, inputs: Inputs, calls: int = 10
                  ) -> tuple[Session, dict]:
    """The fastest of TUNING's settings for this file and input shape, by median latency."""
    best = None
    for settings in TUNING:
        session = Session(path, provider, strict=True, **settings)
        candidate = Contender(OnnxPath(session, "candidate"), "onnx")
        interleave([candidate], inputs, rounds=2, calls=calls // 2)
        median = float(np.median(candidate.seconds))
        if best is None or median < best[0]:
            best = (median, session, settings)
    return best[1], best[2]


def precision_of(label: str) -> str:
    """"torch.int8.onnx" -> "int8"; a float32 file ("torch.onnx", "torch.opt.onnx") -> "fp32"."""
    parts = label.split(".")
    return parts[-2] if len(parts) > 2 and parts[-2] in REDUCED else "fp32"


def onnx_contenders(files: dict[str, Path], providers: list[str], inputs: Inputs,
                    tolerances: dict[str, float] | None = None) -> list[Contender]:
    """Per file and provider: the tuned settings, and for plain exports and their reduced
    copies also onnxruntime's defaults (an offline-optimised file is only worth its tuned
    run). `tolerances`: a file label's own tolerance (reduced files), else float32's."""
    contenders = []
    for label, path in files.items():
        tolerance = (tolerances or {}).get(label, FLOAT32_ABS_TOLERANCE)
        kind = {"file": path.name, "precision": precision_of(label)}
        for provider in providers:
            if not label.endswith(".opt.onnx"):
                default = Session(path, provider, strict=True)
                contenders.append(Contender(
                    OnnxPath(default, f"{label}@{provider}"), "onnx",
                    {"optimization": "all", "threads": 0, "spinning": True, **kind}, tolerance))
            tuned, settings = tuned_session(path, provider, inputs)
            contenders.append(Contender(OnnxPath(tuned, f"{label}@{provider} tuned"), "onnx",
                                        {**settings, **kind}, tolerance))
    return contenders


def bench_dims(spec, batch: int, seq: int) -> dict[str, int]:
    """The dims of a bench input: `batch` and `seq` where the signature has them, any other
    dim at its largest matrix value."""
    return {**spec.matrix_points()[-1],
            **grids.restrict({"batch": batch, "seq": seq}, spec.signature.dims)}


def reduced_files(source: Path, spec, precisions: tuple[str, ...], seq: int,
                  on_step: Callable[[str], None]) -> tuple[dict[str, Path], list[dict]]:
    """The `precisions` copies of float32 `source` ({label: path}, e.g. "torch.int8.onnx"),
    each written only if export/precision.py's gate passes on the matrix inputs, and a record
    of each: how it was made, or why it was refused (then it does not race).

    The weights are random, so there is no data to calibrate int8 on: a graph with a Conv
    is calibrated on CALIBRATION_DRAWS seeded random batches at the bench dims (the record
    says "calibrated on random inputs"); dynamic int8 needs none.
    """
    from onnxtwin.builders import sample_inputs
    from onnxtwin.export.precision import reduce_precision, reduced_name
    from onnxtwin.export.precision_data import gate_data
    from onnxtwin.export.quantize import Calibration

    dims = bench_dims(spec, CALIBRATION_BATCH, seq)
    draws = tuple(sample_inputs(spec, dims, seed=grids.BENCH_SEED + 1 + i)
                  for i in range(CALIBRATION_DRAWS + HELD_OUT_DRAWS))
    calibration = Calibration(
        f"{CALIBRATION_DRAWS} x {CALIBRATION_BATCH} seeded random inputs (calibrated on "
        f"random inputs: random weights have no data)", draws[:CALIBRATION_DRAWS],
        draws[CALIBRATION_DRAWS:])
    gate = gate_data(spec, None)
    made, records = {}, []
    for precision in precisions:
        on_step(f"{spec.name}: {precision} copy of {source.name}")
        record = {"model": spec.name, "source": source.name,
                  "file": reduced_name(source, precision).name, "precision": precision,
                  "method": None, "relative_error": None, "agreement": None,
                  "calibration": None, "refused": None}
        try:
            result = reduce_precision(source, precision, gate, calibration)
        except Exception as e:  # refused by its gate or not made: reported, not raced
            why = str(e) if isinstance(e, OnnxtwinError) else f"{type(e).__name__}: {e}"
            records.append({**record, "refused": why.splitlines()[0]})
            continue
        made[precision_label(source, precision)] = result.path
        records.append({**record, "method": result.method,
                        "relative_error": result.gate.relative_error,
                        "agreement": result.gate.agreement,
                        "calibration": result.calibration and result.calibration["data"]})
    return made, records


def precision_label(source: Path, precision: str) -> str:
    """NAME.torch.onnx -> "torch.int8.onnx": the contender label of a reduced copy."""
    framework = source.name.removesuffix(".onnx").rsplit(".", 1)[-1]
    return f"{framework}.{precision}.onnx"


def reduced_tolerances(files: dict[str, Path], outputs: dict[str, np.ndarray]
                       ) -> dict[str, float]:
    """Each reduced file's tolerance vs the reference, relative to the outputs' scale: fp16
    FLOAT16_REL_TOLERANCE, int8 the int8 gate's relative error, each x max(1, scale)."""
    from onnxtwin.export.float16 import FLOAT16_REL_TOLERANCE
    from onnxtwin.export.precision import LIMITS

    scale = max(float(np.abs(v).max(initial=0.0)) for v in outputs.values()
                if np.issubdtype(v.dtype, np.floating))
    relative = {"fp16": FLOAT16_REL_TOLERANCE, "int8": LIMITS["int8"].relative_error}
    return {label: relative[precision_of(label)] * max(1.0, scale)
            for label in files if precision_of(label) != "fp32"}


def native_contenders(twins, compile_torch: bool) -> list[Contender]:
    """torch eager, torch.compile and Keras through its tf.function (the sides the twins
    have). torch.compile compiles on its first call, in `validate`, which reports it if it
    cannot compile here."""
    contenders = []
    if twins.torch_model is not None:
        contenders.append(Contender(twins.torch, "native"))
        if compile_torch:
            import torch

            from onnxtwin.builders.paths import TorchPath

            signature = twins.spec.signature
            contenders.append(Contender(TorchPath(torch.compile(twins.torch_model),
                                                  signature.input_names,
                                                  signature.output_names,
                                                  name="torch.compile"), "native"))
    if twins.keras_model is not None:
        contenders.append(Contender(twins.keras_compiled, "native"))
    return contenders


def validate(contenders: list[Contender], inputs: Inputs, reference: ModelPath,
             dims: dict[str, int] | None = None) -> dict[str, str]:
    """Drop, with the reason, each contender that cannot run or is further from `reference`
    than its tolerance on any output; record the others' max abs error.

    Each contender first runs once on its own (the warm-up, where torch.compile compiles),
    so one that fails is reported rather than ending the benchmark; then the comparison
    engine compares every survivor with the reference on every output.
    """
    dropped = {}
    for c in list(contenders):
        try:
            c.path.run(inputs)
        except Exception as e:  # a path that cannot run here is reported, not fatal
            why = str(e) if isinstance(e, OnnxtwinError) else f"{type(e).__name__}: {e}"
            dropped[c.name] = why.splitlines()[0]
            contenders.remove(c)
    case = Case(dict(dims or {}), inputs)
    for tolerance in dict.fromkeys(c.tolerance for c in contenders):
        group = [c for c in contenders if c.tolerance == tolerance]
        checks = compare_paths([c.path for c in group], reference, [case], tolerance,
                               pairs="reference").checks
        for c in group:
            own = [k for k in checks if k.actual == c.name]
            c.max_abs_vs_torch = max(k.metrics.max_abs for k in own)
            failed = [k for k in own if not k.passed]
            if failed:
                dropped[c.name] = "; ".join(_why(k) for k in failed)
                contenders.remove(c)
    return dropped


def _why(check) -> str:
    if check.detail:
        return f"{check.output}: {check.detail} (this path vs torch)"
    if check.metrics.nonfinite:
        return f"{check.output}: {check.metrics.nonfinite} non-finite values vs torch"
    return f"{check.output}: max abs {check.metrics.max_abs:.2e} vs torch > {check.tolerance:g}"


def relative_to_fastest_native(timed: list[dict]) -> None:
    """Add each contender summary's `vs_fastest_native`: its p50 / the fastest native p50."""
    fastest = min(r["p50_ms"] for r in timed if r["kind"] == "native")
    for r in timed:
        r["vs_fastest_native"] = r["p50_ms"] / fastest


def relative_to_float32_file(timed: list[dict]) -> None:
    """Add each reduced contender summary's `vs_float32_file`: its p50 / the p50 of its
    float32 file with the same settings kind ("torch.int8.onnx@cpu tuned" ->
    "torch.onnx@cpu tuned"); None if that one was not timed."""
    by_name = {r["name"]: r for r in timed}
    for r in timed:
        precision = r.get("settings", {}).get("precision", "fp32")
        if r["kind"] == "onnx" and precision != "fp32":
            base = by_name.get(r["name"].replace(f".{precision}.onnx", ".onnx", 1))
            r["vs_float32_file"] = r["p50_ms"] / base["p50_ms"] if base else None


def _on_cpu(r: dict) -> bool:
    return r["kind"] == "onnx" and "@cpu" in r["name"]


def _fp32(r: dict) -> bool:
    return r.get("settings", {}).get("precision", "fp32") == "fp32"


def targets(model: str, batch: int, results: list[dict], flops: float | None,
            peak_gflops: float, confirmed: dict | None = None) -> list[dict]:
    """The issue's targets for one model and batch: met or not, with the measured ratio.

    The headline, onnx_cpu_vs_fastest_native, is the confirmation pass's ratio of the deploy
    choice (`confirmed`; no target without one), never the exploration's minimum. The file
    comparisons and the CNN's fraction of the float32 peak use the float32 files of the
    exploration; int8_vs_float32_file is the better file's tuned int8 / tuned float32 ratio.
    """
    def best(predicate) -> float | None:
        times = [r["p50_ms"] for r in results if predicate(r)]
        return min(times) if times else None

    onnx_cpu = best(lambda r: _on_cpu(r) and _fp32(r))
    torch_file = best(lambda r: _on_cpu(r) and _fp32(r) and r["name"].startswith("torch."))
    keras_file = best(lambda r: _on_cpu(r) and _fp32(r) and r["name"].startswith("keras."))
    found = []
    if confirmed and confirmed.get("vs_fastest_native") is not None:
        found.append({**_target("onnx_cpu_vs_fastest_native", confirmed["vs_fastest_native"],
                                TARGET_ONNX_VS_NATIVE),
                      "contender": confirmed["contender"], "measured_in": "confirmation pass"})
    if torch_file and keras_file:
        found.append(_target("keras_file_vs_torch_file", keras_file / torch_file,
                             TARGET_KERAS_VS_TORCH_FILE))
    if model == "cnn" and batch == TARGET_BATCH and flops and onnx_cpu:
        fraction = flops / (onnx_cpu / 1e3) / 1e9 / peak_gflops
        found.append({"target": "cnn_fraction_of_matmul_peak", "value": fraction,
                      "limit": TARGET_CNN_PEAK, "met": fraction >= TARGET_CNN_PEAK})
    int8 = [r for r in results if _on_cpu(r) and r["name"].endswith(" tuned")
            and r.get("settings", {}).get("precision") == "int8"
            and r.get("vs_float32_file") is not None]
    if model in INT8_TARGET_MODELS and batch == TARGET_BATCH and int8:
        better = min(int8, key=lambda r: r["vs_float32_file"])
        found.append({**_target("int8_vs_float32_file", better["vs_float32_file"],
                                TARGET_INT8_VS_FLOAT32), "contender": better["name"]})
    return found


def _target(name: str, ratio: float, limit: float) -> dict:
    return {"target": name, "value": ratio, "limit": limit, "met": ratio <= limit}


def choose_deploy(results: list[dict]) -> dict | None:
    """The one CPU onnx contender onnxtwin would deploy for a model, from the exploration at
    each batch: the lowest geometric mean of vs_fastest_native over the batches (only those
    timed at every batch compete). A tuned contender's settings can differ per batch: the
    choice fixes those of the largest batch (where serving's batching runs), and the
    confirmation pass then measures them at every batch. Float32 files only: the bench's
    reduced files are judged on random weights, and a reduced file is deployable once
    `export --trained` has gated it on real data. None if nothing qualifies."""
    scores = {}
    for name in (c["name"] for c in results[0]["contenders"]
                 if _on_cpu(c) and c["settings"].get("precision", "fp32") == "fp32"):
        ratios = [next((c["vs_fastest_native"] for c in r["contenders"] if c["name"] == name),
                       None) for r in results]
        if None not in ratios:
            scores[name] = float(np.exp(np.mean(np.log(ratios))))
    if not scores:
        return None
    name = min(scores, key=scores.get)
    largest = max(results, key=lambda r: r["batch"])
    settings = next(c["settings"] for c in largest["contenders"] if c["name"] == name)
    return {"contender": name, "file": settings["file"], "precision": settings["precision"],
            "provider": "cpu", "settings": {k: settings[k] for k in DEPLOY_KEYS},
            "exploration_geomean_vs_fastest_native": scores[name], "confirmed": []}


def confirm(choice: dict, path: Path, natives: list[Contender], inputs: Inputs,
            reference: ModelPath, dims: dict[str, int], tolerance: float, batch: int,
            options: BenchOptions) -> dict:
    """The confirmation pass at one batch: the deploy choice in a fresh session with its
    settings, validated, then interleaved against the natives (their times reset) with the
    exploration's rounds and calls. Returns {"batch", "contender", "p50_ms", "p90_ms", "runs",
    "max_abs_vs_torch", "fastest_native", "fastest_native_p50_ms", "vs_fastest_native"}, or
    {"batch", "contender", "skipped": why} if the choice fails validation here."""
    session = Session(path, choice["provider"], strict=True, **choice["settings"])
    chosen = Contender(OnnxPath(session, choice["contender"]), "onnx",
                       {**choice["settings"], "file": path.name,
                        "precision": choice["precision"]}, tolerance)
    record = {"batch": batch, "contender": choice["contender"]}
    if skipped := validate([chosen], inputs, reference, dims):
        return {**record, "skipped": skipped[chosen.name]}
    for native in natives:
        native.seconds = []
    interleave([*natives, chosen], inputs, options.rounds, options.calls)
    timed = [c.summary(batch) for c in [*natives, chosen]]
    relative_to_fastest_native(timed)
    fastest = min(timed[:-1], key=lambda r: r["p50_ms"])
    mine = timed[-1]
    return {**record, **{k: mine[k] for k in ("p50_ms", "p90_ms", "runs", "max_abs_vs_torch")},
            "fastest_native": fastest["name"], "fastest_native_p50_ms": fastest["p50_ms"],
            "vs_fastest_native": mine["vs_fastest_native"]}


def deploy_settings(document: dict) -> dict:
    """OUT/deploy.json: per model, the file and session settings chosen and confirmed by the
    benchmark, for `onnxtwin serve --settings` and `onnxtwin deploy --settings`."""
    return {"benchmark": document["benchmark"], "models": {
        name: {"file": d["file"], "precision": d["precision"], "provider": d["provider"],
               "settings": d["settings"],
               "confirmed_vs_fastest_native": {str(c["batch"]): c.get("vs_fastest_native")
                                               for c in d["confirmed"]}}
        for name, d in document["deploy"].items()}}


def torch_flops(spec, model, inputs: Inputs) -> float | None:
    """Floating-point operations of one forward pass, counted by torch's FlopCounterMode;
    None for models with LSTM/GRU layers, whose fused kernels it has no formula for.

    Counted with grad enabled and SDPA's math backend: in inference mode
    nn.TransformerEncoderLayer runs a fused kernel the counter does not see either.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
        return None
    names = spec.signature.input_names
    with FlopCounterMode(display=False) as counter, torch.enable_grad(), \
            sdpa_kernel([SDPBackend.MATH]):
        model(*(torch.from_numpy(inputs[n]) for n in names))
    return float(counter.get_total_flops())


def matmul_peak_gflops(size: int = 1024, calls: int = 20) -> float:
    """Float32 GEMM throughput of this machine: the best of onnxruntime's MatMul and numpy's."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a = np.random.default_rng(grids.BENCH_SEED).random((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    best = 0.0
    for run in (lambda: session.run(None, {"a": a, "b": a}), lambda: a @ a):
        run()
        for _ in range(calls):
            start = time.perf_counter()
            run()
            best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def machine() -> dict:
    """What the numbers were measured on."""
    import onnxruntime
    import tensorflow as tf
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "versions": {"torch": torch.__version__, "tensorflow": tf.__version__,
                         "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
            "threads": {"torch": torch.get_num_threads(),
                        "tensorflow_intra_op":
                            tf.config.threading.get_intra_op_parallelism_threads(),
                        "onnxruntime": "per contender (0 = one per core)"}}


def bench_model(twins, out: Path, options: BenchOptions, providers: list[str],
                peak_gflops: float, on_step: Callable[[str], None]) -> dict:
    """One model: the exploration at each batch (every contender validated, timed
    interleaved), the deploy choice, its confirmation pass at each batch, then the targets.
    Returns {"batches": [one record per batch], "deploy": choice or None, "reduced": [...]}."""
    from onnxtwin.builders import sample_inputs
    from onnxtwin.builders.paths import KerasPath, TorchPath
    from onnxtwin.export import export_model
    from onnxtwin.export.optimize import optimize_offline

    spec = twins.spec
    signature = spec.signature
    reference = TorchPath(twins.torch_model, signature.input_names, signature.output_names,
                          name=REFERENCE) if twins.torch_model is not None else KerasPath(
        twins.keras_model, signature.input_names, signature.output_names, name="keras eager",
        channels_last=signature.channels_last)
    files, reduced = {}, []
    for fw in twins.frameworks:
        on_step(f"{spec.name}: exporting and optimising the {fw} twin")
        files[f"{fw}.onnx"] = export_model(twins, fw, out).path
        files[f"{fw}.opt.onnx"] = optimize_offline(files[f"{fw}.onnx"], twins, fw)[0]
        made, records = reduced_files(files[f"{fw}.onnx"], spec, options.precisions,
                                      options.seq, on_step)
        files.update(made)
        reduced += records
    results, kept = [], {}
    for batch in options.batches:
        on_step(f"{spec.name}: batch {batch}")
        dims = bench_dims(spec, batch, options.seq)
        inputs = sample_inputs(spec, dims, seed=grids.BENCH_SEED)
        tolerances = reduced_tolerances(files, reference.run(inputs))
        contenders = [*native_contenders(twins, options.compile_torch),
                      *onnx_contenders(files, providers, inputs, tolerances)]
        skipped = validate(contenders, inputs, reference, dims)
        interleave(contenders, inputs, options.rounds, options.calls)
        timed = [c.summary(batch) for c in contenders]
        relative_to_fastest_native(timed)
        relative_to_float32_file(timed)
        flops = None if twins.torch_model is None else torch_flops(spec, twins.torch_model,
                                                                    inputs)
        results.append({"name": spec.name, "batch": batch, "seq": dims.get("seq"),
                        "reference": reference.info.framework,  # torch eager, else keras
                        "flops": flops, "contenders": timed, "skipped": skipped,
                        "confirmed": None, "targets": []})
        kept[batch] = (dims, inputs, [c for c in contenders if c.kind == "native"],
                       tolerances)
    deploy = choose_deploy(results) if results else None
    for r in results:
        if deploy:
            on_step(f"{spec.name}: confirming {deploy['contender']} at batch {r['batch']}")
            dims, inputs, natives, tolerances = kept[r["batch"]]
            label = deploy["contender"].split("@")[0]
            r["confirmed"] = confirm(deploy, files[label], natives, inputs, reference, dims,
                                     tolerances.get(label, FLOAT32_ABS_TOLERANCE), r["batch"],
                                     options)
            deploy["confirmed"].append(r["confirmed"])
        r["targets"] = targets(spec.name, r["batch"], r["contenders"], r["flops"],
                               peak_gflops, r["confirmed"])
    return {"batches": results, "deploy": deploy, "reduced": reduced}


def run_bench(specs: list, out: Path, options: BenchOptions = BenchOptions(),
              on_step: Callable[[str], None] = lambda _: None) -> dict:
    """Benchmark `specs`; returns the document that bench.json holds."""
    from onnxtwin.builders import build_twins
    from onnxtwin.runtime import usable_aliases

    usable = [p for p in options.providers if p in usable_aliases()]
    on_step("measuring the float32 matmul peak")
    peak = matmul_peak_gflops()
    models, deploy, reduced = [], {}, []
    for spec in (s for s in specs if s.frameworks):  # an ONNX file has no native to race
        done = bench_model(build_twins(spec), out, options, usable, peak, on_step)
        models += done["batches"]
        reduced += done["reduced"]
        if done["deploy"]:
            deploy[spec.name] = done["deploy"]
    found = [t for m in models for t in m["targets"]]
    document = {"benchmark": "onnxtwin bench", "machine": machine(),
                "matmul_peak_gflops": peak,
                "settings": {"batches": list(options.batches), "seq": options.seq,
                             "rounds": options.rounds, "calls_per_round": options.calls,
                             "providers": usable, "providers_asked": list(options.providers),
                             "precisions": list(options.precisions), "tuning": TUNING},
                "models": models, "deploy": deploy, "reduced": reduced,
                "startup": startup_seconds(out, specs[0].name) if options.startup else None,
                "summary": {"targets": len(found), "met": sum(t["met"] for t in found)}}
    if document["startup"]:
        document["summary"]["targets"] += len(document["startup"]["targets"])
        document["summary"]["met"] += sum(t["met"] for t in document["startup"]["targets"])
    return document


def startup_seconds(out: Path, model: str, repeats: int = 3) -> dict:
    """Wall time of fresh processes: `onnxtwin --help`, and `onnxtwin run` and `onnxtwin
    serve` from start to their first inference; whether they import torch or TensorFlow."""
    import subprocess
    import sys
    import urllib.request

    from onnxtwin.runtime.arrays import save_arrays
    from onnxtwin.runtime.serve.server import probe_inputs

    path = out / f"{model}.torch.onnx"
    arrays = out / "startup-inputs.npz"
    inputs = Session(path).inputs
    save_arrays(arrays, probe_inputs(inputs))
    body = _json_infer_body(inputs)
    cli = [sys.executable, "-X", "importtime", "-c",
           "from onnxtwin.conformance.cli import main; main()"]

    def frameworks(stderr: str) -> list[str]:
        return sorted({line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines()
                       if line.startswith("import time:")} & {"torch", "tensorflow", "keras"})

    def timed(args: list[str]) -> tuple[float, list[str]]:
        start = time.perf_counter()
        done = subprocess.run([*cli, *args], capture_output=True, text=True, check=True)
        return time.perf_counter() - start, frameworks(done.stderr)

    def serve_once() -> tuple[float, list[str]]:
        start = time.perf_counter()
        process = subprocess.Popen([*cli, "serve", str(path), "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = process.stdout.readline().split("http://")[1].split()[0]
            urllib.request.urlopen(urllib.request.Request(
                f"http://{url}/models/{path.name.removesuffix('.onnx')}/infer", body)).read()
            seconds = time.perf_counter() - start
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=60)
        return seconds, frameworks(stderr)

    measured = {
        "help": [timed(["--help"]) for _ in range(repeats)],
        "run_first_inference": [timed(["run", str(path), "-i", str(arrays), "-o",
                                       str(out / "startup-outputs.npz")])
                                for _ in range(repeats)],
        "serve_first_inference": [serve_once() for _ in range(repeats)]}
    result = {name: {"best_s": min(s for s, _ in runs), "runs_s": [s for s, _ in runs],
                     "imports": sorted({m for _, ms in runs for m in ms})}
              for name, runs in measured.items()}
    limits = {"help": TARGET_HELP_S, "run_first_inference": TARGET_FIRST_INFERENCE_S,
              "serve_first_inference": TARGET_FIRST_INFERENCE_S}
    result["targets"] = [
        {"target": f"{name}_s", "value": result[name]["best_s"], "limit": limit,
         "met": result[name]["best_s"] <= limit and not result[name]["imports"]}
        for name, limit in limits.items()]
    return result


def _json_infer_body(inputs) -> bytes:
    import json

    from onnxtwin.runtime.serve.oip import tensor_metadata
    from onnxtwin.runtime.serve.server import probe_inputs

    arrays = probe_inputs(inputs)
    return json.dumps({"inputs": [
        {**tensor_metadata(i), "shape": list(arrays[i.name].shape),
         "data": arrays[i.name].ravel().tolist()} for i in inputs]}).encode()
