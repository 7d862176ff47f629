"""int8 files with onnxruntime's quantization tools, each called in one place here.

`quant_pre_process` first (shape inference and onnxruntime's float optimisations), then:
- **static QDQ** where the graph has a Conv (`quantize_static`, per-channel int8 weights,
  int8 activations): activation ranges are calibrated on real samples with each of
  CALIBRATION_METHODS, and the file that agrees best with float32 on held-out samples is
  kept and named;
- **dynamic** otherwise (`quantize_dynamic`, int8 weights, activations quantized at run
  time): MatMuls with a weight, LSTM (as DynamicQuantizeLSTM, only for a native `LSTM`
  op), the embedding Gather. onnxruntime has no quantized GRU (its issue #9796), and a
  MatMul of two activations (attention scores) has no weight to quantize.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.export.graphs import node_ops
from onnxtwin.runtime.errors import OnnxtwinError, failures, first_line

Arrays = dict[str, np.ndarray]
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
HISTOGRAM_BINS = 2048
"""Histogram bins of the Entropy and Percentile calibrators (TensorRT's choice for entropy)."""
STATIC_OPS = frozenset({"Conv", "ConvTranspose"})
"""A graph with one of these is quantized statically (QDQ): onnxruntime's dynamic mode has
no int8 convolution worth running (ConvInteger is slower than float32 on CPU)."""
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN",
                         "Attention", "Gather"})
"""The ops whose precision the summary reports: where a model's arithmetic is."""
INT8_OPS = frozenset({"DynamicQuantizeLSTM", "MatMulInteger", "ConvInteger", "QLinearConv",
                      "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                      "QAttention", "QGemm"})
INT8_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
KEPT_REASONS = {
    "GRU": "onnxruntime has no quantized GRU (onnxruntime issue #9796)",
    "RNN": "onnxruntime has no quantized RNN",
    "LSTM": "DynamicQuantizeLSTM takes only a native LSTM op with constant weights",
    "MatMul": "both inputs are activations (attention): quantize_dynamic needs a weight",
}
"""Why a compute op stayed float32, by op type (the default: not quantized by onnxruntime)."""


@dataclass(frozen=True)
class Calibration:
    """Real samples for static quantization: `batches` set the activation ranges, `held_out`
    (other samples) choose among the calibration methods. `name` says where they came from."""

    name: str
    batches: tuple[Arrays, ...]
    held_out: tuple[Arrays, ...]

    @property
    def samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)


@dataclass(frozen=True)
class Int8Method:
    """How a file was quantized; for static, every calibration method's held-out figures
    ({method: {"agreement", "relative_error"}}, or {"failed": why}) and the one kept."""

    mode: str  # "static QDQ" or "dynamic"
    calibration: str | None = None
    compared: dict | None = None

    def describe(self) -> str:
        if self.mode == "dynamic":
            return "dynamic int8 (weights int8, activations quantized at run time)"
        return (f"static int8 QDQ, per-channel weights, {self.calibration} calibration "
                f"(best of {', '.join(self.compared or ())})")


def needs_calibration(model: onnx.ModelProto) -> bool:
    """True when the graph is quantized statically, which needs calibration samples."""
    return any(op in STATIC_OPS for _, op in node_ops(model.graph))


def quantize_int8(source: Path, target: Path, calibration: Calibration | None,
                  score: Callable[[Path], tuple[float, float]]) -> Int8Method:
    """Write the int8 file of `source` to `target`.

    `score(file)` -> (agreement, relative error) of a candidate against float32 on the
    held-out samples: static quantization keeps the calibration method that scores best.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="onnxtwin-int8-") as folder:
        prepared = _preprocessed(source, Path(folder) / "prepared.onnx")
        if not needs_calibration(onnx.load(str(prepared))):
            expected = f"int8 of {source.name}: expected quantize_dynamic to quantize it"
            with _quiet_quantizer(), failures(expected):
                quantize_dynamic(_without_value_info(prepared), str(target),
                                 weight_type=QuantType.QInt8)
            return Int8Method("dynamic")
        if calibration is None or not calibration.batches:
            raise OnnxtwinError(f"int8 of {source.name}: expected calibration samples for "
                                "static quantization (its graph has a Conv): a trained model "
                                "(--trained) or --calibration FILE.npz, got none")
        compared, best, failure = {}, None, None
        for method in CALIBRATION_METHODS:
            candidate = Path(folder) / f"{method}.onnx"
            try:
                _quantize_static(prepared, candidate, calibration, method, source)
            except OnnxtwinError as e:  # e.g. Entropy's histogram on constant samples
                compared[method] = {"failed": str(e)}
                failure = e
                continue
            agreement, relative = score(candidate)
            compared[method] = {"agreement": agreement, "relative_error": relative}
            if best is None or (-agreement, relative) < (-compared[best]["agreement"],
                                                         compared[best]["relative_error"]):
                best = method
        if best is None:
            raise failure
        shutil.move(Path(folder, f"{best}.onnx"), target)
    return Int8Method("static QDQ", best, compared)


def _quantize_static(prepared: Path, target: Path, calibration: Calibration, method: str,
                     source: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    folder = target.parent
    ranges = folder / f"{method}.ranges.json"
    expected = f"int8 of {source.name}: expected quantize_static ({method}) to quantize it"
    with _quiet_quantizer(), failures(expected):
        _calibrate(prepared, calibration, getattr(CalibrationMethod, method), ranges)
        quantize_static(str(prepared), str(target), None, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method),
                        calibration_cache_path=str(ranges))


def _calibrate(prepared: Path, calibration: Calibration, method, ranges: Path) -> None:
    """Activation ranges of `method` on the calibration samples, saved where quantize_static
    reads them (its calibration_cache_path).

    Workaround (onnxruntime 1.31.1): quantize_static passes no histogram size to its
    calibrator, and the Entropy calibrator's default of 128 bins equals its 128 quantized
    bins, so its threshold search has one candidate, the full range: Entropy gave scales
    identical to MinMax's. Calibrating here with TensorRT's 2048 bins restores the search.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {} if method == CalibrationMethod.MinMax else {"num_bins": HISTOGRAM_BINS}
    calibrator = create_calibrator(prepared, augmented_model_path=str(
        ranges.with_suffix(".augmented.onnx")), calibrate_method=method,
        extra_options=options)
    calibrator.collect_data(batch_reader(calibration.batches))
    save_tensors_data(calibrator.compute_data(), ranges)


def batch_reader(batches: Sequence[Arrays]):
    """onnxruntime's CalibrationDataReader over `batches` (its calibrators and
    qdq_loss_debug read input sets through one)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.sets = iter(batches)

        def get_next(self) -> Arrays | None:
            return next(self.sets, None)

    return Reader()


def _preprocessed(source: Path, target: Path) -> Path:
    """quant_pre_process's output: with symbolic shape inference, or, where that cannot
    infer every shape (the Transformers' attention reshapes), with onnx's alone."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    paths = str(source.resolve()), str(target.resolve())  # before the working folder moves
    for symbolic in (True, False):
        try:
            # Its symbolic shape inference saves sym_shape_infer_temp.onnx and a uuid-named
            # .data file into the working directory when it gives up: run it in target's.
            with _quiet_quantizer(), contextlib.chdir(target.parent):
                quant_pre_process(*paths, skip_symbolic_shape=not symbolic)
            _keep_signature(source, target)
            return target
        except Exception as e:  # onnxruntime raises plain Exception for incomplete inference
            reason = first_line(e)
    raise OnnxtwinError(f"int8 of {source.name}: expected quant_pre_process to prepare it, "
                        f"got: {reason}")


def _keep_signature(source: Path, target: Path) -> None:
    """Give the prepared model the source's graph inputs and outputs back: symbolic shape
    inference renames a dynamic dim it derives (textcnn's output batch became
    'Gemm_5_o0__d0'), and a deployment reads dims by name."""
    original = onnx.load(str(source), load_external_data=False)
    model = onnx.load(str(target))
    for mine, theirs in ((model.graph.input, original.graph.input),
                         (model.graph.output, original.graph.output)):
        wanted = {v.name: v for v in theirs}
        for value in mine:
            if value.name in wanted:
                value.CopyFrom(wanted[value.name])
    onnx.save(model, str(target))


def _without_value_info(path: Path) -> onnx.ModelProto:
    """The model with its inferred intermediate shapes dropped.

    Workaround (onnxruntime 1.31.1, files from torch 2.13's dynamo exporter): quantize_dynamic
    re-runs shape inference and fails with "[ShapeInferenceError] Inferred shape and existing
    shape differ in dimension 0" on value_info that strict onnx inference accepts; without
    the value_info it infers them again and quantizes.
    """
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    return model


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice through the root logger at WARNING ("Please consider to run
    pre-processing ...") and its Entropy and Percentile calibrators print their progress to
    stdout: both would land in every CLI run's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def int8_summary(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, str]]:
    """({op: count} computing in int8, {op: why it stayed float32}) of a quantized model.

    A QDQ op counts as int8 when each of its float inputs comes from a DequantizeLinear
    (onnxruntime then runs it on int8); a DynamicQuantizeLSTM or MatMulInteger is int8.
    """
    graph = model.graph
    weights = {i.name: i.data_type for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    reduced: collections.Counter[str] = collections.Counter()
    kept: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in INT8_OPS:
            reduced[node.op_type] += 1
        elif node.op_type == "Gather":  # an embedding: a table among the weights
            table = weights.get(node.input[0])
            source = producers.get(node.input[0])
            if table in INT8_TYPES or (source is not None
                                       and source.op_type == "DequantizeLinear"):
                reduced["Gather (int8 table)"] += 1
            elif table == onnx.TensorProto.FLOAT:
                kept["Gather"] = "onnxruntime's quantizer leaves this embedding float32"
        elif node.op_type in COMPUTE_OPS:
            sources = [producers.get(i) for i in node.input if i and i not in weights]
            if sources and all(p is not None and p.op_type == "DequantizeLinear"
                               for p in sources[:2]):
                reduced[f"{node.op_type} (QDQ)"] += 1
            else:
                kept[node.op_type] = KEPT_REASONS.get(
                    node.op_type, "onnxruntime's quantizer leaves it float32")
    if "MatMul" in kept and not _activation_matmuls(graph, weights):
        kept["MatMul"] = "onnxruntime's quantizer leaves it float32"
    return dict(sorted(reduced.items())), dict(sorted(kept.items()))


def _activation_matmuls(graph: onnx.GraphProto, weights: dict[str, int]) -> bool:
    return any(n.op_type == "MatMul" and not set(n.input) & weights.keys() for n in graph.node)
