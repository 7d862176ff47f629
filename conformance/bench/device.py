"""The GPU half of the benchmark: torch on the device against onnxruntime with IO binding,
in float32 and float16, with the fraction of the device's measured matmul peak.

Runs without TensorFlow (a GPU machine need not have it): the ONNX files come from
`onnxtwin export`, and the torch twin is rebuilt from the spec stamped in each file and
checked against the file's weights hash. Contenders, per model and batch, each a path:

- `torch@DEVICE` and `torch@DEVICE float16` (TorchPath, the module in half precision);
- `FILE@PROVIDER bound`: onnxruntime with IO binding (BoundPath, outputs allocated on
  the device), for the plain file and for its float16 copy (export/float16.py, inputs
  and outputs stay float32).

Each call includes copying the inputs to the device and the outputs back, on both sides.
Every path is compared with torch eager float32 on the CPU, on every output, before it
is timed: float32 paths within FLOAT32_ABS_TOLERANCE, float16 paths within
FLOAT16_REL_TOLERANCE of the outputs' scale. TF32 is off in torch here and in
onnxruntime's CUDA sessions (runtime.session), so float32 means float32 on both sides.
`device="cpu"` runs the same code on the CPU (the tests do).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from onnxtwin.builders import grids
from onnxtwin.conformance.bench.run import REFERENCE, Contender, interleave, validate
from onnxtwin.runtime import FLOAT32_ABS_TOLERANCE, Session
from onnxtwin.runtime.paths import OnnxPath


class BoundPath(OnnxPath):
    """An ONNX file run with IO binding: inputs copied to `device` once per call, outputs
    allocated there and copied back (`Session.run_bound`)."""

    def __init__(self, session: Session, device: str, name: str | None = None) -> None:
        super().__init__(session, name)
        self.device = device

    def _run(self, args: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run_bound(dict(zip(self.input_names, args, strict=True)),
                                         device=self.device)
        return [outputs[n] for n in self.output_names]


def torch_twin(path: Path):
    """The torch twin an exported file was made from: its stamped spec, seed-0 weights,
    refused unless they hash to the file's `onnxtwin.weights_hash`."""
    import json

    import onnx

    from onnxtwin.builders import make_spec
    from onnxtwin.builders.twins import seeded_torch_model
    from onnxtwin.builders.weights import torch_state, weights_hash
    from onnxtwin.export import metadata
    from onnxtwin.runtime.errors import OnnxtwinError

    meta = metadata.read_metadata(onnx.load(str(path), load_external_data=False))
    keys = (metadata.FAMILY, metadata.VARIANT, metadata.HYPERPARAMETERS, metadata.WEIGHTS_HASH)
    if missing := [k for k in keys if k not in meta]:
        raise OnnxtwinError(f"{path.name}: expected a file exported by onnxtwin (metadata "
                            f"{list(keys)}), got none of {missing}")
    spec = make_spec(meta[metadata.FAMILY], meta[metadata.VARIANT],
                     **json.loads(meta[metadata.HYPERPARAMETERS]))
    model = seeded_torch_model(spec, grids.WEIGHT_SEED).eval()
    stamped = meta[metadata.WEIGHTS_HASH]
    if weights_hash(torch_state(model)) != stamped:
        raise OnnxtwinError(f"{path.name}: expected the seed-{grids.WEIGHT_SEED} weights of "
                            f"{spec.name}, got a file of other weights (hash {stamped[:12]})")
    return spec, model


def torch_contender(model, spec, device: str, half: bool, tolerance: float) -> Contender:
    """A copy of the module on `device` (float16 weights and float inputs if `half`)."""
    import copy

    import torch

    from onnxtwin.builders.paths import TorchPath

    dtype = torch.float16 if half else torch.float32
    module = copy.deepcopy(model).to(device=device, dtype=dtype)
    path = TorchPath(module, spec.signature.input_names, spec.signature.output_names,
                     name=f"torch@{device}" + (" float16" if half else ""), dtype=dtype,
                     device=device)
    return Contender(path, "native", {"dtype": "float16" if half else "float32"}, tolerance)


def onnx_contender(path: Path, device: str, half: bool, tolerance: float) -> Contender:
    """onnxruntime on `device`'s provider (the same alias), inputs bound and outputs
    allocated there."""
    name = f"{path.name.removesuffix('.onnx')}@{device} bound"
    return Contender(BoundPath(Session(path, device, strict=True), device, name), "onnx",
                     {"dtype": "float16" if half else "float32", "io_binding": True},
                     tolerance)


def matmul_peak_tflops(device: str, dtype: str, calls: int = 20) -> float:
    """Best measured throughput of a square matmul on `device` in `dtype` (8192 on a GPU,
    large enough to fill an H100; 512 on a CPU, where it only serves the tests)."""
    import torch

    size = 8192 if device == "cuda" else 512
    generator = torch.Generator(device).manual_seed(grids.BENCH_SEED)
    a = torch.randn(size, size, generator=generator, device=device, dtype=getattr(torch, dtype))
    best = 0.0
    for _ in range(calls + 1):
        _sync(device)
        start = time.perf_counter()
        a @ a
        _sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e12)
    return best


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_file(path: Path, out: Path, device: str, batches: tuple[int, ...], seq: int,
               rounds: int, calls: int, peaks: dict[str, float]) -> list[dict]:
    """One exported file at each batch: torch and onnxruntime, float32 and float16."""
    from onnxtwin.builders import sample_inputs
    from onnxtwin.builders.paths import TorchPath
    from onnxtwin.conformance.bench.run import torch_flops
    from onnxtwin.export.float16 import FLOAT16_REL_TOLERANCE, to_float16

    spec, model = torch_twin(path)
    signature = spec.signature
    reference = TorchPath(model, signature.input_names, signature.output_names, REFERENCE)
    points = {batch: grids.restrict({"batch": batch, "seq": seq}, signature.dims)
              for batch in batches}
    shaped = {batch: sample_inputs(spec, dims, seed=grids.BENCH_SEED)
              for batch, dims in points.items()}
    half_path = to_float16(path, out / f"{path.name.removesuffix('.onnx')}.float16.onnx",
                           list(shaped.values()), provider=device).path
    results = []
    for batch, inputs in shaped.items():
        scale = max(float(np.abs(v).max()) for v in reference.run(inputs).values()
                    if np.issubdtype(v.dtype, np.floating))
        half = FLOAT16_REL_TOLERANCE * max(1.0, scale)
        contenders = [torch_contender(model, spec, device, False, FLOAT32_ABS_TOLERANCE),
                      torch_contender(model, spec, device, True, half),
                      onnx_contender(path, device, False, FLOAT32_ABS_TOLERANCE),
                      onnx_contender(half_path, device, True, half)]
        skipped = validate(contenders, inputs, reference, points[batch])
        interleave(contenders, inputs, rounds, calls)
        flops = torch_flops(spec, model, inputs)
        timed = [c.summary(batch) for c in contenders]
        for c in timed:
            c["fraction_of_peak"] = None if flops is None else \
                flops / (c["p50_ms"] / 1e3) / 1e12 / peaks[c["settings"]["dtype"]]
        results.append({"name": spec.name, "file": path.name, "batch": batch,
                        "seq": points[batch].get("seq"), "flops": flops,
                        "reference_max_abs": scale,
                        "contenders": timed, "skipped": skipped})
    return results


def run_device_bench(files: list[Path], out: Path, device: str = "cuda",
                     batches: tuple[int, ...] = grids.BENCH_BATCHES,
                     seq: int = grids.BENCH_SEQ, rounds: int = 10, calls: int = 10) -> dict:
    """Benchmark `files` on `device`; returns the document bench_device.json holds."""
    import onnxruntime
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out.mkdir(parents=True, exist_ok=True)
    peaks = {dtype: matmul_peak_tflops(device, dtype) for dtype in ("float32", "float16")}
    models = [r for path in files
              for r in bench_file(path, out, device, batches, seq, rounds, calls, peaks)]
    return {"benchmark": "onnxtwin device bench", "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            "matmul_peak_tflops": peaks,
            "settings": {"batches": list(batches), "seq": seq, "rounds": rounds,
                         "calls_per_round": calls, "tf32": False},
            "models": models}
