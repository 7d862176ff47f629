"""One onnxruntime session: loaded safely, on the providers that really run, inputs validated."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError, ResourceLimit, first_line
from onnxtwin.runtime.files import existing_file
from onnxtwin.runtime.memory import MemoryModel, unnamed_dim
from onnxtwin.runtime.providers import refuse_or_warn, resolve

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# onnxruntime's element type strings -> numpy dtype names.
ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
              "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
              "tensor(int16)": "int16", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
              "tensor(uint64)": "uint64"}
MAX_MODEL_BYTES = 2**31  # a protobuf message cannot be larger: such a file is never a model
CPU_SLOW_FUSIONS = ("SkipLayerNormFusion",)
"""onnxruntime graph fusions left off for CPU sessions: the fused kernel is slower.

onnxruntime 1.31.1's CPU SkipLayerNormalization is slower than the Add +
LayerNormalization it replaces (measured in ../shared/PITFALLS.md and the README's
benchmark). CUDA's SkipLayerNormalization is kept.
Seen with it off: onnxruntime 1.31.1 crashes (SIGSEGV creating the session, level all,
through MatmulTransposeFusion and NchwcTransformer) on a float16 copy of the graph of
torch's seq-first MultiheadAttention; the torch twin now exports batch-first
(builders/transformer.py), and both Transformer files' float16 copies are tested on CPU.
"""
PROVIDER_OPTIONS = {"CUDAExecutionProvider": {"use_tf32": "0"}}
"""Options per provider. onnxruntime's CUDA provider computes float32 MatMul and Conv in
TF32 (10-bit mantissa) unless told not to (`use_tf32` defaults to true in 1.31's
cuda_execution_provider_info.h): a relative rounding step of 4.9e-4 instead of
float32's 6e-8."""
DEFAULT_MEMORY_LIMIT = 2**30
"""Bytes one run of `onnxtwin run` or `serve` may need (estimated before it runs): a
Transformer at batch 64 and seq 200 needs about 90 MB, at batch 8 and seq 2048 about 1.1 GB,
and a small machine serves several models at once."""
SIGNATURE_KEY = "onnxtwin.signature"
"""metadata_props key under which an export stamps its signature (JSON, with token vocab
and the largest size of dims that have one, e.g. a Transformer's positions)."""


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: numpy dtype name, dims (int, a dim name, or None), vocab."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]
    vocab: int | None = None

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


class Session:
    """An onnxruntime.InferenceSession with providers, options and validation chosen once.

    `run` is safe to call from many threads at once (onnxruntime's Run is; the wrapper
    keeps no per-call state). With `memory_limit` (bytes), a run whose estimated peak
    memory (`needed_bytes`) exceeds it is refused before anything is allocated; with
    `arena` off, onnxruntime returns a large run's memory to the system afterwards instead
    of keeping it in its CPU arena. With `time_limit_s`, a longer run is stopped.
    """

    def __init__(self, path: str | os.PathLike[str], provider: str = "cpu", *,
                 strict: bool = False, threads: int = 0, optimization: str = "all",
                 check_finite: bool = False, spinning: bool = True,
                 memory_limit: int | None = None, arena: bool = True,
                 time_limit_s: float | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.requested = provider.lower()
        self.check_finite = check_finite
        for name, limit in (("memory_limit", memory_limit), ("time_limit_s", time_limit_s)):
            if limit is not None and not 0 < limit < float("inf"):  # NaN too
                raise OnnxtwinError(f"{name}: expected a positive number or None, got {limit}")
        self.memory_limit = memory_limit
        self.time_limit_s = time_limit_s
        wanted = resolve(self.requested, strict)
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = arena
        options.intra_op_num_threads = threads
        # Idle intra-op threads spin for a while after each run (onnxruntime's default):
        # lower latency for back-to-back runs, but cores taken from everything else.
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
        options.graph_optimization_level = _optimization_level(optimization)
        options.log_severity_level = 4  # fatal only: failures reach the caller as OnnxtwinError
        self._session = _create(ort, self.path, options, wanted)
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        if self.providers[0] != wanted[0]:
            refuse_or_warn(self.requested, f"the session chose {self.providers[0]}", strict)
        try:
            self.metadata: dict[str, str] = dict(
                self._session.get_modelmeta().custom_metadata_map)
        except UnicodeDecodeError as e:  # onnxruntime decodes metadata_props as UTF-8 here
            raise OnnxtwinError(f"{self.path}: expected UTF-8 metadata_props, got bytes that "
                                f"do not decode ({e.reason})") from None
        vocab, self.max_dims = _stamped_limits(self.metadata)
        self.inputs = tuple(_info(v, vocab.get(v.name)) for v in self._session.get_inputs())
        self.outputs = tuple(_info(v) for v in self._session.get_outputs())
        self._memory = MemoryModel(self.path) if memory_limit is not None else None

    @property
    def provider(self) -> str:
        """The provider that runs the graph (the first one the session kept)."""
        return self.providers[0]

    def validate(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Check names, dtypes, ranks, fixed and shared dims, token range, (optionally)
        NaN/Inf, and the memory the run needs against `memory_limit`.

        Returns the inputs as numpy arrays in native byte order (onnxruntime reads raw
        bytes: a big-endian array would run as garbage); raises OnnxtwinError naming the
        input, what was expected and what was given (ResourceLimit for memory).
        """
        if not isinstance(inputs, Mapping):
            raise OnnxtwinError(f"{self.path.name}: expected a mapping of input names to arrays,"
                                f" got {type(inputs).__name__}")
        expected = [i.name for i in self.inputs]
        missing = [n for n in expected if n not in inputs]
        extra = sorted(set(inputs) - set(expected), key=str)
        if missing or extra:
            raise OnnxtwinError(f"{self.path.name}: expected inputs {expected}, got "
                                f"{sorted(inputs, key=str)} (missing {missing}, unexpected "
                                f"{extra})")
        named: dict[str, tuple[int, str]] = {}
        arrays = {}
        for info in self.inputs:
            arrays[info.name] = _as_array(info, inputs[info.name])
            _check_array(info, arrays[info.name], named, self.max_dims, self.check_finite)
        self.check_memory(self.run_dims(arrays))  # before a byte-order copy doubles them
        return {name: native_order(array) for name, array in arrays.items()}

    def run_dims(self, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
        """The size of each dynamic input dim in a run on `arrays` (validated), by name
        (dims without a name are called as `memory.unnamed_dim` calls them)."""
        dims = {}
        for info in self.inputs:
            for axis, (want, size) in enumerate(zip(info.shape, arrays[info.name].shape,
                                                    strict=True)):
                if not isinstance(want, int):
                    dims[want or unnamed_dim(info.name, axis)] = size
        return dims

    @property
    def value_dependent(self) -> tuple[str, ...]:
        """Ops whose output size an input's values set, which `memory_limit` cannot bound
        (empty without a memory limit)."""
        return self._memory.value_dependent if self._memory is not None else ()

    def needed_bytes(self, dims: Mapping[str, int]) -> int:
        """Estimated peak memory of a run at these dims (0 without a memory limit)."""
        return self._memory.estimate(dims) if self._memory is not None else 0

    def check_memory(self, dims: Mapping[str, int]) -> None:
        """Raise ResourceLimit if a run at these dims would need more than `memory_limit`."""
        needed = self.needed_bytes(dims)
        if self.memory_limit is not None and needed > self.memory_limit:
            given = ", ".join(f"{k}={v}" for k, v in dims.items())
            raise ResourceLimit(f"{self.path.name}: expected a run that needs at most "
                                f"{self.memory_limit / 2**20:.0f} MiB, got {given}, which "
                                f"needs about {needed / 2**20:.0f} MiB (fewer rows or a "
                                f"shorter sequence fit)")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate, run, and return every output by name. A run past `time_limit_s` is
        stopped (onnxruntime's terminate flag) and refused with ResourceLimit."""
        arrays = self.validate(inputs)
        options = timer = None
        if self.time_limit_s is not None:  # no RunOptions on the hot path otherwise
            import onnxruntime as ort

            options = ort.RunOptions()
            options.log_severity_level = 4  # fatal only, as the session's
            timer = threading.Timer(self.time_limit_s, setattr, (options, "terminate", True))
            timer.start()
        try:
            values = self._session.run(None, arrays, options)
        except Exception as e:  # onnxruntime raises its own pybind types
            if options is not None and options.terminate:
                raise ResourceLimit(f"{self.path.name}: expected a run within "
                                    f"{self.time_limit_s} s, got one stopped after that on "
                                    f"{_shapes(arrays)}") from None
            raise OnnxtwinError(f"{self.path.name}: expected onnxruntime to run it on "
                                f"{_shapes(arrays)}, got: {first_line(e)}") from None
        finally:
            if timer is not None:
                timer.cancel()
        return {o.name: v for o, v in zip(self.outputs, values, strict=True)}

    def run_bound(self, inputs: Mapping[str, Any], device: str = "cuda",
                  device_id: int = 0) -> dict[str, np.ndarray]:
        """Run with IO binding: inputs copied to `device` once, outputs allocated there.

        Inputs may be numpy arrays (validated, then copied) or onnxruntime.OrtValue already
        on the device (name, dtype and shape checked). Outputs are copied back to numpy.
        """
        import onnxruntime as ort

        device_values = {k: v for k, v in inputs.items() if isinstance(v, ort.OrtValue)}
        stand_ins = {k: np.zeros(v.shape(), ORT_DTYPES.get(v.data_type(), "object"))
                     for k, v in device_values.items()}  # shape/dtype checks only
        host = self.validate({**inputs, **stand_ins})
        binding = self._session.io_binding()
        for name, array in host.items():
            value = device_values[name] if name in device_values else \
                ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
            binding.bind_ortvalue_input(name, value)
        for o in self.outputs:
            binding.bind_output(o.name, device, device_id)
        self._session.run_with_iobinding(binding)
        return {o.name: v for o, v in zip(self.outputs, binding.copy_outputs_to_cpu(),
                                          strict=True)}


def _as_array(info: TensorInfo, value: Any) -> np.ndarray:
    """`value` as a numpy array, or one line (a ragged list has no shape)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise OnnxtwinError(f"input {info.name!r}: expected an array of {info}, got a value "
                            f"numpy cannot make one of ({first_line(e)})") from None


def native_order(array: np.ndarray) -> np.ndarray:
    """`array` with its bytes in this machine's order (a copy only if they were not)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _create(ort: Any, path: Path, options: Any, providers: list[str]) -> Any:
    """InferenceSession on a checked path; any onnxruntime failure becomes one line."""
    size = existing_file(path, "an ONNX model file").stat().st_size
    if size > MAX_MODEL_BYTES:
        raise OnnxtwinError(f"{path}: expected a single-file ONNX model of at most 2 GiB "
                            f"(protobuf's limit; larger models keep weights as external "
                            f"data), got {size} bytes")
    try:
        return ort.InferenceSession(str(path), options, providers=providers,
                                    provider_options=[PROVIDER_OPTIONS.get(p, {})
                                                      for p in providers],
                                    disabled_optimizers=disabled_optimizers(providers[0]))
    except Exception as e:  # onnxruntime raises its own pybind types
        raise OnnxtwinError(f"{path}: expected an ONNX model onnxruntime can load, got: "
                            f"{first_line(e)}") from None


def disabled_optimizers(provider: str) -> list[str]:
    """The onnxruntime optimizers to leave off for a session whose first provider is this."""
    return list(CPU_SLOW_FUSIONS) if provider == "CPUExecutionProvider" else []


def _shapes(arrays: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in arrays.items())


def _optimization_level(name: str) -> Any:
    import onnxruntime as ort

    levels = dict(zip(OPTIMIZATION_LEVELS, (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        strict=True))
    if name not in levels:
        raise OnnxtwinError(f"optimization: expected one of {list(OPTIMIZATION_LEVELS)}, "
                            f"got {name!r}")
    return levels[name]


def _stamped_limits(metadata: Mapping[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """Token inputs' vocab sizes and dims' largest sizes from the stamped signature; empty
    for foreign models."""
    try:
        stamped = json.loads(metadata.get(SIGNATURE_KEY, "{}"))
        vocab = {i["name"]: int(i["vocab"]) for i in stamped.get("inputs", ())
                 if i.get("vocab") is not None}
        return vocab, {str(d): int(n) for d, n in stamped.get("max_dims", ())}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}, {}


def _info(value: Any, vocab: int | None = None) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) or d is None else str(d) for d in value.shape)
    return TensorInfo(value.name, ORT_DTYPES.get(value.type, value.type), shape, vocab)


def _check_array(info: TensorInfo, array: np.ndarray, named: dict[str, tuple[int, str]],
                 max_dims: Mapping[str, int], check_finite: bool) -> None:
    given = f"got {array.dtype}{list(array.shape)}"
    if array.dtype.name != info.dtype or array.ndim != len(info.shape):
        raise OnnxtwinError(f"input {info.name!r}: expected {info}, {given}")
    for axis, (want, size) in enumerate(zip(info.shape, array.shape, strict=True)):
        if size == 0:
            raise OnnxtwinError(f"input {info.name!r}: expected {info} with no empty dim, "
                                f"{given}")
        if isinstance(want, int) and size != want:
            raise OnnxtwinError(f"input {info.name!r}: expected size {want} in dim {axis} "
                                f"({info}), {given}")
        if isinstance(want, str):
            if size > max_dims.get(want, size):
                raise OnnxtwinError(f"input {info.name!r}: expected {want} <= {max_dims[want]} "
                                    f"(the largest the model takes), {given}")
            seen = named.setdefault(want, (size, info.name))
            if seen[0] != size:
                raise OnnxtwinError(f"input {info.name!r}: expected {want}={seen[0]} as in "
                                    f"input {seen[1]!r}, {given}")
    if info.vocab is not None:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= info.vocab:
            raise OnnxtwinError(f"input {info.name!r}: expected token ids in [0, {info.vocab}),"
                                f" got ids from {low} to {high}")
    if check_finite and array.dtype.kind == "f":
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise OnnxtwinError(f"input {info.name!r}: expected finite values, got {bad} "
                                f"NaN/Inf of {array.size}")
