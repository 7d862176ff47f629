"""Reduced-precision files (float16, int8) of an exported float32 file, written only when
their accuracy, measured against the float32 file, passes the gate.

    from onnxtwin.export.precision import reduce_precision
    from onnxtwin.export.precision_data import gate_data
    result = reduce_precision(Path("out/cnn.torch.onnx"), "fp16", gate_data(spec, dataset))
    result.path           # out/cnn.torch.fp16.onnx, signature unchanged
    result.gate.agreement # argmax agreement with the float32 file on the whole test set

The gate, on a labelled test set: test accuracy within LIMITS' accuracy_drop points of the
float32 file's, and argmax agreement with it at least `agreement`. Without labels (random
weights) it can only judge the outputs: their max abs error over their scale at most
`relative_error`. Both are reported either way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.export import metadata
from onnxtwin.export.divergence import TensorError, divergence, relative_error
from onnxtwin.export.float16 import FLOAT16_REL_TOLERANCE, convert_float16
from onnxtwin.export.quantize import Calibration, int8_summary, quantize_int8
from onnxtwin.export.signature import read_signature
from onnxtwin.runtime.errors import OnnxtwinError, failures
from onnxtwin.runtime.files import atomic_path
from onnxtwin.runtime.metrics import json_ready
from onnxtwin.runtime.session import Session

Arrays = dict[str, np.ndarray]
PRECISIONS = ("fp32", "fp16", "int8")
REDUCED = ("fp16", "int8")
DEBUG_ROWS = 64
"""Samples the divergence debug and the float16 range search
run on: they keep every intermediate tensor, so memory grows with each row."""


class GateRefused(OnnxtwinError):
    """A reduced file missed its gate: the one line holds the figures (nothing written)."""


@dataclass(frozen=True)
class Limits:
    """What a reduced file must meet against its float32 file: accuracy_drop in percentage
    points, agreement a fraction; relative_error (max abs over the outputs' scale) is
    gated only when there are no labels."""

    accuracy_drop: float
    agreement: float
    relative_error: float


LIMITS = {"fp16": Limits(0.1, 0.999, FLOAT16_REL_TOLERANCE), "int8": Limits(0.5, 0.99, 0.1)}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise OnnxtwinError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def reduced_options(precisions, calibration: Path | None, gate: list[str] | None) -> None:
    """Refuse, before any work, --calibration without int8 and --gate without a reduced
    precision: either would otherwise be ignored without a word."""
    from onnxtwin.runtime.files import existing_file

    if calibration is not None:
        if "int8" not in precisions:
            raise OnnxtwinError(f"--calibration {calibration}: expected --precision int8 to use "
                                f"it, got precisions {list(precisions)}")
        existing_file(Path(calibration), "an .npz of input samples")
    if gate and not set(precisions) & set(REDUCED):
        raise OnnxtwinError(f"--gate {gate[0]}: expected --precision fp16 or int8 to gate, got "
                            f"precisions {list(precisions)}")


def limits_with(overrides: list[str] | tuple[str, ...]) -> dict[str, Limits]:
    """LIMITS with overrides written PRECISION.FIELD=VALUE, e.g. int8.agreement=0.98."""
    limits = dict(LIMITS)
    fields = list(asdict(LIMITS["fp16"]))
    for item in overrides:
        key, _, value = item.partition("=")
        precision, _, name = key.strip().partition(".")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if precision not in REDUCED or name not in fields or not np.isfinite(number) or \
                number < 0 or (name == "agreement" and number > 1):
            raise OnnxtwinError(f"--gate: expected PRECISION.FIELD=VALUE with PRECISION in "
                                f"{list(REDUCED)}, FIELD in {fields} and a finite value >= 0 "
                                f"(agreement <= 1), got {item!r}")
        limits[precision] = replace(limits[precision], **{name: number})
    return limits


@dataclass(frozen=True)
class GateData:
    """Where reduced files are judged: input batches, with labels for a real test set."""

    name: str
    batches: tuple[Arrays, ...]
    labels: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)


@dataclass(frozen=True)
class PrecisionGate:
    """A reduced file against its float32 file on `data`: accuracies (None without labels),
    argmax agreement of the first output (None unless its last dim holds 2 classes or more),
    and the largest max abs error over an output's scale (per input batch, every output).
    A non-finite error (NaN or inf where float32 has none) fails whatever the accuracy."""

    data: str
    samples: int
    accuracy_fp32: float | None
    accuracy: float | None
    agreement: float | None
    relative_error: float
    limits: Limits

    @property
    def drop(self) -> float | None:
        """Percentage points of test accuracy lost (negative: gained)."""
        if self.accuracy is None or self.accuracy_fp32 is None:
            return None
        return (self.accuracy_fp32 - self.accuracy) * 100

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.relative_error):
            return False
        if self.drop is not None:
            return (self.drop <= self.limits.accuracy_drop
                    and (self.agreement is None or self.agreement >= self.limits.agreement))
        return self.relative_error <= self.limits.relative_error

    def figures(self) -> str:
        """The measured figures in words, for the report and the refusal."""
        parts = []
        if self.drop is not None:
            parts.append(f"test accuracy {self.accuracy:.2%} vs {self.accuracy_fp32:.2%} "
                         f"({-self.drop:+.2f} points)")
        if self.agreement is not None:
            parts.append(f"agreement {self.agreement:.2%}")
        parts.append(f"error {self.relative_error:.3g} of the outputs' scale")
        return ", ".join(parts) + f" on {self.samples} samples of {self.data}"

    def expected(self) -> str:
        if self.drop is not None:
            return (f"test accuracy within {self.limits.accuracy_drop:g} points of float32 and "
                    f"agreement >= {self.limits.agreement:.2%}")
        return (f"outputs within {self.limits.relative_error:g} of their scale (no labels: "
                "outputs only)")

    def to_dict(self) -> dict:
        return json_ready({**asdict(self), "limits": asdict(self.limits),
                           "drop_points": self.drop, "passed": self.passed})


@dataclass(frozen=True)
class ReducedResult:
    """One accepted reduced file: what it is, how it was made, which ops it runs in reduced
    precision and which stayed float32 (and why), its gate, and where it diverges most."""

    source: Path
    path: Path
    precision: str
    method: str
    reduced_ops: dict[str, int]
    kept_ops: dict[str, str]
    gate: PrecisionGate
    divergence: tuple[TensorError, ...]
    size: int
    source_size: int
    calibration: dict | None
    seconds: float

    def to_dict(self) -> dict:
        return {"source": self.source.name, "path": self.path.name, "precision": self.precision,
                "method": self.method, "reduced_ops": self.reduced_ops,
                "kept_ops": self.kept_ops, "gate": self.gate.to_dict(),
                "divergence": [t.to_dict() for t in self.divergence], "size": self.size,
                "source_size": self.source_size, "calibration": self.calibration,
                "seconds": self.seconds}


def reduced_name(source: Path, precision: str) -> Path:
    """NAME.FRAMEWORK.onnx -> NAME.FRAMEWORK.PRECISION.onnx, beside it."""
    return source.with_name(f"{source.name.removesuffix('.onnx')}.{precision}.onnx")


def reduce_precision(source: str | Path, precision: str, data: GateData,
                     calibration: Calibration | None = None, limits: Limits | None = None,
                     target: str | Path | None = None) -> ReducedResult:
    """Write the `precision` file of float32 `source` (default NAME.FRAMEWORK.PRECISION.onnx
    beside it) if it passes the gate on `data`; otherwise raise OnnxtwinError with the
    figures and the tensor where the error grows most, and write nothing."""
    source, start = Path(source), time.perf_counter()
    if check_precision(precision) == "fp32":
        raise OnnxtwinError(f"precision for {source.name}: expected fp16 or int8 (fp32 is the "
                            f"export itself), got {precision!r}")
    limits = limits or LIMITS[precision]
    target = Path(target) if target else reduced_name(source, precision)
    what = f"{precision} file of {source.name}"
    full = _outputs(Session(source, "cpu", strict=True), data.batches)
    with atomic_path(target) as tmp:
        if precision == "fp16":
            with failures(f"{what}: expected onnxruntime's float16 converter to take it"):
                converted = convert_float16(onnx.load(str(source)), _debug_inputs(data))
            onnx.save(converted.model, str(tmp))
            reduced, kept = converted.summary()
            method = (f"float16 weights and activations, float32 inputs and outputs; "
                      f"{len(converted.blocked)} nodes kept in float32")
            compared = None
        else:
            chosen = quantize_int8(source, tmp, calibration,
                                   lambda file: _score(source, file, calibration))
            reduced, kept = int8_summary(onnx.load(str(tmp)))
            method, compared = chosen.describe(), chosen.compared
        _stamp(source, tmp, precision, method, what)
        gate = _gate(full, _outputs(Session(tmp, "cpu", strict=True), data.batches), data,
                     limits)
        try:
            worst = divergence(source, tmp, _debug_inputs(data))
        except Exception:  # a debug aid: the gate's verdict stands without it
            worst = ()
        if not gate.passed:
            where = f"; error grows most at {worst[0].describe()}" if worst else ""
            raise GateRefused(f"{what}: expected {gate.expected()}, got {gate.figures()}"
                              f"{where}; not written")
        size = tmp.stat().st_size
    used = None if calibration is None or precision != "int8" or compared is None else {
        "data": calibration.name, "samples": calibration.samples, "methods": compared}
    return ReducedResult(source, target, precision, method, reduced, kept, gate, worst, size,
                         source.stat().st_size, used, time.perf_counter() - start)


def _debug_inputs(data: GateData) -> tuple[Arrays, ...]:
    """The largest gate batch (the matrix's grid has batch 1, seq 1 first), cut to
    DEBUG_ROWS samples, as one input set."""
    batch = max(data.batches, key=lambda b: sum(a.size for a in b.values()))
    return ({name: array[:DEBUG_ROWS] for name, array in batch.items()},)


def _stamp(source: Path, file: Path, precision: str, method: str, what: str) -> None:
    """The source's metadata plus the precision; the signature must be the source's."""
    model = onnx.load(str(file))
    original = onnx.load(str(source), load_external_data=False)
    if read_signature(model) != read_signature(original):
        raise OnnxtwinError(f"{what}: expected the float32 file's signature "
                            f"{read_signature(original)}, got {read_signature(model)}")
    metadata.stamp(model, {**metadata.read_metadata(original), metadata.PRECISION: precision,
                           metadata.PRECISION_METHOD: method})
    onnx.save(model, str(file))


def _outputs(session: Session, batches: tuple[Arrays, ...]) -> list[Arrays]:
    """Every output of every batch (batches may differ in more than the batch: the matrix
    inputs vary `seq`)."""
    return [session.run(b) for b in batches]


def _gate(full: list[Arrays], low: list[Arrays], data: GateData,
          limits: Limits) -> PrecisionGate:
    relative = max(relative_error(f[n], w[n]) for f, w in zip(full, low, strict=True)
                   for n in f)
    first = next(iter(full[0]))
    classes = full[0][first].ndim >= 2 and full[0][first].shape[-1] >= 2

    def predicted(runs: list[Arrays]) -> np.ndarray:
        return np.concatenate([r[first].argmax(-1).ravel() for r in runs])

    agreement = float(np.mean(predicted(full) == predicted(low))) if classes else None
    accuracy_fp32 = accuracy = None
    if data.labels is not None and classes:
        accuracy_fp32 = float(np.mean(predicted(full) == data.labels))
        accuracy = float(np.mean(predicted(low) == data.labels))
    return PrecisionGate(data.name, data.samples, accuracy_fp32, accuracy, agreement, relative,
                         limits)


def _score(source: Path, candidate: Path, calibration: Calibration) -> tuple[float, float]:
    """(argmax agreement, relative error) of a candidate int8 file with float32 on the
    calibration's held-out samples (on the calibration samples if none are held out); a
    non-finite error counts as infinite."""
    held_out = calibration.held_out or calibration.batches
    full = _outputs(Session(source, "cpu", strict=True), held_out)
    low = _outputs(Session(candidate, "cpu", strict=True), held_out)
    gate = _gate(full, low, GateData("held-out", held_out), LIMITS["int8"])
    error = gate.relative_error if np.isfinite(gate.relative_error) else float("inf")
    return (gate.agreement if gate.agreement is not None else 1.0), error
