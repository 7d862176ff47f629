"""How much memory one onnxruntime run of a model needs, estimated from its shapes alone.

A request is small on the wire and large in memory: a Transformer's attention scores grow
with batch x seq^2, so a 131 KB request can ask for gigabytes. `MemoryModel` bounds a run
before anything is allocated. It runs onnx shape inference (with data propagation, so
Shape/Reshape chains resolve) at a base point and once more per named input dim doubled;
each tensor's size is then a monomial in the dims (batch x seq x 64, batch x 4 x seq x seq)
whose exponents the two sizes give. The estimate is the peak of the bytes live at once when
the nodes run in the graph's order, each tensor freed after its last consumer: the plan
onnxruntime's memory planner follows, before the fusions that make it smaller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BASE_DIM = 4
"""Every named dim takes this value at the base point, and twice it when probed (small, so
that inference is cheap; not 1, which broadcasting can treat specially)."""
SHAPE_OPERANDS = {"Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "Reshape": (1,),
                  "ConstantOfShape": (0,), "Resize": (2, 3), "Upsample": (1,), "Pad": (1,),
                  "OneHot": (1,), "TopK": (1,), "NonZero": (0,), "Compress": (1,),
                  "Unique": (0,), "Loop": (0, 1), "Scan": (), "If": (0,)}
"""Operands whose values (not shapes) set the size of an op's output: an input value that
reaches one makes memory depend on what a request holds, which shapes cannot bound."""
SHAPE_ONLY = {"Shape", "Size"}
"""Ops whose output depends on their input's shape alone."""
INLINE_ELEMENTS = 1024
"""Initializers up to this size stay in the graph for shape inference (Reshape targets and
the like); larger ones become typed graph inputs, so that inference copies no weights."""


@dataclass(frozen=True)
class Term:
    """One tensor: its bytes, `bytes_at_base` x prod((dim / BASE_DIM) ** exponent), live
    from the step of the node that makes it to the step of its last consumer."""

    bytes_at_base: float
    exponents: tuple[tuple[str, int], ...]
    made: int
    last_used: int


class MemoryModel:
    """Bytes a run needs as a function of the input dims, from the graph at `path`.

    Dims are the inputs' dim names; a dynamic dim without a name is called by
    `unnamed_dim(input, axis)`. `value_dependent` names the ops whose output size an
    input's values set (an Expand to a shape read from an input): the estimate cannot
    see them.
    """

    def __init__(self, path: Path) -> None:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        dims = _name_dims(model.graph)
        _weights_as_inputs(model.graph)
        base = {d: BASE_DIM for d in dims}
        at_base = _tensor_bytes(model, base)
        doubled = {d: _tensor_bytes(model, {**base, d: 2 * BASE_DIM}) for d in dims}
        lifetimes = _lifetimes(model.graph)
        self.value_dependent = _value_dependent(model.graph)
        self.dims = tuple(dims)
        self.terms = tuple(
            Term(size, tuple((d, _exponent(size, doubled[d].get(name, size))) for d in dims),
                 *lifetimes[name])
            for name, size in at_base.items() if name in lifetimes)

    def estimate(self, dims: Mapping[str, int]) -> int:
        """Peak bytes live at once in a run at these named dims."""
        change = np.zeros(max((t.last_used for t in self.terms), default=0) + 2)
        for term in self.terms:
            size = term.bytes_at_base * math.prod(
                (dims.get(d, BASE_DIM) / BASE_DIM) ** e for d, e in term.exponents)
            change[term.made] += size
            change[term.last_used + 1] -= size
        return int(np.cumsum(change).max(initial=0))


def unnamed_dim(input_name: str, axis: int) -> str:
    """The name the memory model gives a dynamic input dim that has none."""
    return f"{input_name}[{axis}]"


def _name_dims(graph) -> tuple[str, ...]:
    """The named dynamic dims of the graph's inputs, naming those that have no name."""
    names = []
    for value in graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") and not dim.dim_param:
                dim.dim_param = unnamed_dim(value.name, axis)
            if dim.dim_param:
                names.append(dim.dim_param)
    return tuple(dict.fromkeys(names))


def _exponent(base: float, doubled: float) -> int:
    """The power of a dim in a tensor's size, from its size at the dim and at twice it."""
    return max(0, round(math.log2(doubled / base))) if base and doubled else 0


def _value_dependent(graph) -> tuple[str, ...]:
    """Ops that an input's values reach through a shape operand ("Expand 'name'")."""
    tainted = {value.name for value in graph.input}
    tainted -= {tensor.name for tensor in graph.initializer}
    found = []
    for node in graph.node:
        reached = [i for i, name in enumerate(node.input) if name in tainted]
        if any(i in SHAPE_OPERANDS.get(node.op_type, ()) for i in reached) or (
                node.op_type in ("Scan", "If", "Loop") and reached):
            found.append(f"{node.op_type} {node.name or node.output[0]!r}")
        if reached and node.op_type not in SHAPE_ONLY:
            tainted.update(node.output)
    return tuple(found)


def _lifetimes(graph) -> dict[str, tuple[int, int]]:
    """Each node output's (step made, step of its last consumer); graph outputs live on."""
    made, last = {}, {}
    for step, node in enumerate(graph.node):
        for name in node.input:
            last[name] = step
        for name in node.output:
            made[name] = step
    end = len(graph.node)
    for value in graph.output:
        last[value.name] = end
    return {name: (step, max(last.get(name, step), step)) for name, step in made.items()}


def _weights_as_inputs(graph) -> None:
    """Replace large initializers by typed graph inputs (same name, dtype and shape)."""
    from onnx import helper

    kept = []
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= INLINE_ELEMENTS:
            kept.append(tensor)
        else:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                             list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _tensor_bytes(model, dims: Mapping[str, int]) -> dict[str, float]:
    """Bytes of each produced tensor whose shape inference resolves, at these dims."""
    import onnx
    from onnx import helper, shape_inference

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
    del probe.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # a graph onnx cannot infer: no tensor is known, the estimate is 0
        return {}
    sizes = {}
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not tensor.HasField("shape") or None in shape or tensor.elem_type == 0:
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        sizes[value.name] = float(math.prod(shape) * itemsize)
    return sizes
