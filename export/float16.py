"""Float16 copies of exported models: onnxruntime's converter, with the nodes whose values
leave float16's range kept in float32; accepted only within a stated tolerance of float32."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.export.graphs import run_all_outputs
from onnxtwin.runtime.comparison import Case, compare_paths
from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import atomic_path
from onnxtwin.runtime.paths import OnnxPath
from onnxtwin.runtime.session import Session

FLOAT16_REL_TOLERANCE = 5e-3
"""Max abs error over the output's scale for a float16 model against its float32 source.

float16 has an 11-bit significand (rounding step 4.9e-4 of a value); a few roundings
through matmuls and activations stay well inside 1% of the logits' scale.
"""
FLOAT16_MAX = 65504.0
OVERFLOW = "a value beyond float16's range (|x| > 65504) on the validation inputs"


@dataclass(frozen=True)
class Float16Model:
    """The converted model and the nodes kept in float32, {node name: why}."""

    model: onnx.ModelProto
    blocked: dict[str, str]

    def summary(self) -> tuple[dict[str, int], dict[str, str]]:
        """({op: count} computing in float16, {op: why it stayed float32})."""
        halves = {v.name for v in (*self.model.graph.value_info, *self.model.graph.output)
                  if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
        reduced: collections.Counter[str] = collections.Counter()
        kept = {}
        for node in self.model.graph.node:
            if node.name in self.blocked:
                kept[node.op_type] = self.blocked[node.name]
            elif node.op_type != "Cast" and any(o in halves for o in node.output):
                reduced[node.op_type] += 1
        return dict(sorted(reduced.items())), dict(sorted(kept.items()))


def convert_float16(source: onnx.ModelProto, inputs: Sequence[dict[str, np.ndarray]]
                    ) -> Float16Model:
    """Weights and activations in float16, inputs and outputs float32 (keep_io_types), and in
    float32: the ops of onnxruntime's DEFAULT_OP_BLOCK_LIST, and every node that reads or
    writes a value beyond float16's range when the float32 model runs on `inputs` (an
    activation that would overflow to inf, or a constant the converter would clamp).

    The range is judged on float32 values, not by running the float16 file: onnxruntime's
    CPU provider has no float16 kernel for most ops, computes them in float32 and drops the
    Casts between them, so a float16 overflow does not show on CPU (it does on CUDA).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    source = _named(source)
    out_of_range = _out_of_range(source, inputs)
    blocked: dict[str, str] = {}
    for node in source.graph.node:
        if node.op_type in DEFAULT_OP_BLOCK_LIST:
            blocked[node.name] = "in onnxruntime's float16 block list"
        elif out_of_range & {*node.input, *node.output}:
            blocked[node.name] = OVERFLOW
    return Float16Model(_converted(source, blocked), blocked)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have names (node_block_list matches by name)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index, node in enumerate(copy.graph.node):
        node.name = node.name or f"{node.op_type}_{index}"
    return copy


def _converted(source: onnx.ModelProto, blocked: dict[str, str]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return _without_round_trips(convert_float_to_float16(
        source, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST,
        node_block_list=list(blocked)))


def _without_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converted model with its float32 -> float16 -> float32 Cast pairs removed.

    Workaround (onnxruntime 1.31.1, onnxruntime.transformers.float16): each blocked node is
    an island, its outputs cast to float16 and cast back for the next blocked node, so a
    value kept in float32 because it overflows float16 still passes through float16 between
    two blocked nodes (inf); and a blocked node that reads one input twice (x * x) gets two
    identical Casts writing one value, which onnxruntime refuses. Here each consumer of
    such a pair of the converter's Casts reads the float32 value directly, and duplicate
    nodes are dropped.
    """
    graph = model.graph
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) \
            if node.op_type == "Cast" else None

    def made(node: onnx.NodeProto, suffixes: tuple[str, ...]) -> bool:
        """A Cast the converter inserted (not one of the model's own, which may read ints)."""
        return node.name.endswith(suffixes) or node.name.startswith("graph_input_cast")

    rename, dropped = {}, set()
    for back in nodes:
        front = producer.get(back.input[0]) if cast_to(back) == onnx.TensorProto.FLOAT else None
        if front is not None and cast_to(front) == onnx.TensorProto.FLOAT16 and \
                made(back, ("_cast_to_fp32_node",)) and made(front, ("_cast_to_fp16_node",)) \
                and back.output[0] not in outputs:
            rename[back.output[0]] = front.input[0]
            dropped.add(id(back))
    seen, kept = set(), []
    for n in nodes:
        if id(n) in dropped or tuple(n.output) in seen:
            continue
        seen.add(tuple(n.output))
        n.input[:] = [rename.get(i, i) for i in n.input]
        kept.append(n)
    used = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if cast_to(n) != onnx.TensorProto.FLOAT16
            or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _out_of_range(model: onnx.ModelProto, inputs: Sequence[dict[str, np.ndarray]]) -> set[str]:
    """Names of the float inputs, weights and node outputs with a finite value beyond
    FLOAT16_MAX, on onnxruntime CPU in float32."""
    runs = [{**x, **outputs} for x, outputs in zip(inputs, run_all_outputs(model, inputs),
                                                    strict=True)]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {name for values in (*runs, weights) for name, value in values.items()
            if _beyond(value)}


def _beyond(value: np.ndarray) -> bool:
    value = np.asarray(value)
    if value.dtype.kind != "f":
        return False
    finite = value[np.isfinite(value)]
    return bool(finite.size and np.abs(finite).max() > FLOAT16_MAX)


@dataclass(frozen=True)
class Float16Result:
    """The written file, the provider that validated it, and its worst error against float32."""

    path: Path
    provider: str
    max_abs: float
    max_rel: float


def to_float16(source: str | Path, destination: str | Path, inputs: list[dict[str, np.ndarray]],
               provider: str = "cuda", tolerance: float = FLOAT16_REL_TOLERANCE) -> Float16Result:
    """Convert weights and activations to float16 (inputs and outputs stay float32).

    Every input set is run through both models on `provider` (strict); the file is
    written only if each output's max_rel error stays within `tolerance`.
    """
    model = convert_float16(onnx.load(str(source)), inputs).model
    reference = Session(source, provider, strict=True)
    with atomic_path(destination) as tmp:
        onnx.save(model, str(tmp))
        half = Session(tmp, provider, strict=True)
        checks = compare_paths([OnnxPath(half, "float16")], OnnxPath(reference, "float32"),
                               [Case({}, x) for x in inputs], float("inf"),
                               pairs="reference").checks  # judged relative to scale below
        max_abs = max(c.metrics.max_abs for c in checks)
        max_rel = max(c.metrics.max_rel for c in checks)
        if not max_rel <= tolerance:
            raise OnnxtwinError(f"float16 copy of {Path(source).name}: expected max error within "
                                f"{tolerance:g} of the output scale, got {max_rel:.3g}")
    return Float16Result(Path(destination), half.provider, max_abs, max_rel)
