"""Float16 copies of exported models: onnxruntime's converter, with the nodes that overflow
float16 found by running them and kept in float32; accepted only within a stated tolerance
of float32."""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.export.graphs import mark_all_outputs
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
BLOCKING_ROUNDS = 8
"""How many times overflowing nodes are looked for and blocked before giving up."""
OVERFLOW = "overflows float16 (|x| > 65504) on the validation inputs"


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


def convert_float16(source: onnx.ModelProto, inputs: Sequence[dict[str, np.ndarray]],
                    block: Sequence[str] = ()) -> Float16Model:
    """Weights and activations in float16, inputs and outputs float32 (keep_io_types), ops of
    onnxruntime's DEFAULT_OP_BLOCK_LIST and `block` (op types) in float32.

    Then every node's output is run on `inputs` in float32 and float16 (a copy with every
    output marked): a node whose float16 output is not finite where float32's is finite
    overflows, and is converted again in float32 (node_block_list), round by round, until
    none does.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    blocked: dict[str, str] = {n.name: "in onnxruntime's float16 block list"
                               for n in source.graph.node
                               if n.op_type in {*DEFAULT_OP_BLOCK_LIST, *block}}
    reference = _node_outputs(source, inputs)
    for _ in range(BLOCKING_ROUNDS):
        model = _converted(source, blocked)
        found = _overflowing(source, _node_outputs(model, inputs), reference)
        if not found:
            return Float16Model(model, blocked)
        blocked |= dict.fromkeys(found, OVERFLOW)
    raise OnnxtwinError(f"float16 of graph {source.graph.name!r}: expected the overflowing "
                        f"nodes to be found in {BLOCKING_ROUNDS} rounds, still got {found}")


def _converted(source: onnx.ModelProto, blocked: dict[str, str]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(source)
    for node in copy.graph.node:  # the converter skips nameless nodes in node_block_list
        node.name = node.name or f"node_{id(node)}"
    return convert_float_to_float16(copy, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST,
                                    node_block_list=list(blocked))


def _node_outputs(model: onnx.ModelProto, inputs: Sequence[dict[str, np.ndarray]]
                  ) -> list[dict[str, np.ndarray]]:
    """Every node output of `model` on each input set (onnxruntime CPU)."""
    with tempfile.TemporaryDirectory(prefix="onnxtwin-fp16-") as folder:
        marked = Path(folder) / "marked.onnx"
        onnx.save(mark_all_outputs(model), str(marked))
        session = Session(marked, "cpu", strict=True)
        return [session.run(x) for x in inputs]


def _overflowing(source: onnx.ModelProto, runs: list[dict[str, np.ndarray]],
                 reference: list[dict[str, np.ndarray]]) -> list[str]:
    """Nodes of `source` with an output finite in float32 but not in float16, first ones
    only: what they feed overflows because they do, and blocking them mends it."""
    found = []
    poisoned: set[str] = set()
    for node in source.graph.node:
        inputs_bad = any(i in poisoned for i in node.input)
        for name in node.output:
            if any(name in half and name in full and _overflows(half[name], full[name])
                   for half, full in zip(runs, reference, strict=True)):
                poisoned.add(name)
                if not inputs_bad:
                    found.append(node.name)
                    break
    return found


def _overflows(half: np.ndarray, full: np.ndarray) -> bool:
    if half.dtype.kind != "f" or full.dtype.kind != "f":
        return False
    return bool((~np.isfinite(half) & np.isfinite(full)).any())


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
