"""Rewrites of tf2onnx's Keras 3 graphs into the few ops onnxruntime runs fast.

tf2onnx 1.17 writes Keras 3 layers as TF's kernels decomposed: LayerNormalization as
13 elementwise ops (TF's moments and batch_normalization), Dense on a 3-D input as TF's
tensordot (a Reshape to 2-D and back, with the shape rebuilt at run time from Shape,
Gather, Concat and Casts), and MultiHeadAttention's einsums through tf2onnx's einsum
optimizer, which wraps every MatMul in the same run-time shape arithmetic. The
Transformer's Keras file had 321 nodes against the torch file's 128 and ran 1.3x slower
at batch 1 (benchmarks/results/bench). Here:

- `einsum_kept()` turns tf2onnx's einsum optimizer off during the conversion, so each
  einsum reaches ONNX as one Einsum node;
- `lower_einsums` writes each two-operand Einsum as Transpose / MatMul / Reshape with
  static shapes (0 = keep this dim), so nothing is computed from Shape at run time;
- `simplify` fuses TF's LayerNorm into LayerNormalization, drops the tensordot's
  Reshape pair around a MatMul (MatMul broadcasts over leading dims), and turns Keras'
  masked softmax (a Where over the full [batch, heads, query, key] scores) into an
  additive [batch, 1, 1, key] mask, with onnxscript's pattern rewriter.

Each rewrite is exact algebra (the masked softmax's bits are unchanged, see
`_is_last_axis_mask`); the rounding order of LayerNormalization and the MatMuls differs
from TF's, and the export gate checks the result against the Keras twin.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import helper, numpy_helper


@contextmanager
def einsum_kept() -> Iterator[None]:
    """Leave tf2onnx's `einsum_optimizer` out of its optimizer passes (tf2onnx 1.17 keeps
    them in the module-level dict `tf2onnx.optimizer._optimizers`)."""
    from tf2onnx import optimizer

    passes = optimizer._optimizers
    saved = dict(passes)  # the order matters to tf2onnx
    del passes["einsum_optimizer"]
    try:
        yield
    finally:
        passes.clear()
        passes.update(saved)


def lower_einsums(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every two-operand Einsum whose merged dims are known as Transpose/MatMul/Reshape."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.value_info, *inferred.input]}
    dims.update({name: list(value.shape) for name, value in constants.items()})
    names = (f"einsum_lowered_{i}" for i in itertools.count())
    nodes, replaced = [], set()
    for node in graph.node:
        lowered = None
        if node.op_type == "Einsum" and len(node.input) == 2:
            lowered = _lowered(node, dims, constants, names, graph.initializer)
        if lowered is not None:
            replaced.update(node.input)
        nodes += lowered if lowered is not None else [node]
    del graph.node[:]
    graph.node.extend(nodes)
    unused = (replaced & constants.keys()) - _referenced(graph)  # weights now held reshaped
    kept = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _referenced(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of `graph` or of its subgraphs reads, and the graph outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                names |= _referenced(sub)
    return names


def _lowered(node, dims, constants, names, initializer) -> list[onnx.NodeProto] | None:
    """The nodes computing `node`'s Einsum with one MatMul, or None where that does not fit.

    Indices in both operands and the output are batch dims, in both operands only are
    contracted, in one operand and the output are free (left from A, right from B).
    A' = A as [batch, left..., contracted], B' = B as [batch, contracted, right]: MatMul
    broadcasts over several left dims (without batch dims); several contracted or right
    dims are merged into one, which needs their sizes.
    """
    equation = helper.get_attribute_value(node.attribute[0]).decode().replace(" ", "")
    if "..." in equation or "->" not in equation:
        return None
    (a, b), out = equation.split("->")[0].split(","), equation.split("->")[1]
    batch = [c for c in out if c in a and c in b]
    left = [c for c in out if c in a and c not in b]
    right = [c for c in out if c in b and c not in a]
    contracted = [c for c in a if c in b and c not in out]
    if any(len(set(s)) != len(s) for s in (a, b, out)) \
            or sorted(a) != sorted([*batch, *left, *contracted]) \
            or sorted(b) != sorted([*batch, *contracted, *right]) \
            or not (left and right and contracted) or (batch and len(left) > 1):
        return None
    size = {letter: d for operand, letters in zip(node.input, (a, b), strict=True)
            for letter, d in zip(letters, dims.get(operand) or [None] * len(letters),
                                 strict=True) if d}
    merged = [g for g in (contracted, right) if len(g) > 1]
    if any(c not in size for g in merged for c in g):
        return None
    k, r = (int(np.prod([size[c] for c in g])) if len(g) > 1 else None
            for g in (contracted, right))
    made: list[onnx.NodeProto] = []

    def constant(value: np.ndarray) -> str:
        name = next(names)
        initializer.append(numpy_helper.from_array(value, name))
        return name

    def op(op_type: str, inputs: list[str], **attrs) -> str:
        output = next(names)
        made.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def arranged(name: str, letters: str, order: list[str], axis: int, tail: list[int],
                 merge: bool) -> str:
        """`name` transposed into `order`, its dims from `axis` on reshaped to `tail`."""
        perm = [letters.index(c) for c in order]
        if name in constants:  # a weight: transposed and reshaped once, here
            value = constants[name].transpose(perm)
            return constant(value.reshape(*value.shape[:axis], *tail))
        if perm != sorted(perm):
            name = op("Transpose", [name], perm=perm)
        if merge:  # Reshape: 0 keeps the dim, -1 takes what is left
            name = op("Reshape", [name, constant(np.array([0] * axis + tail, np.int64))])
        return name

    a_name = arranged(node.input[0], a, [*batch, *left, *contracted], len(batch) + len(left),
                      [-1], k is not None)
    b_name = arranged(node.input[1], b, [*batch, *contracted, *right], len(batch),
                      [k or size.get(contracted[0], 0), -1], k is not None or r is not None)
    product = op("MatMul", [a_name, b_name])
    if r:
        product = op("Reshape", [product, constant(np.array(
            [0] * (len(batch) + len(left)) + [size[c] for c in right], np.int64))])
    produced = [*batch, *left, *right]
    perm = [produced.index(c) for c in out]
    if perm != sorted(perm):
        made.append(helper.make_node("Transpose", [product], list(node.output), perm=perm,
                                     name=node.name))
    else:
        made[-1].output[0] = node.output[0]
    return made


def _layer_norm(op, x, axes, epsilon, gamma, beta):
    """Keras 3's LayerNormalization through TF: moments, then batch_normalization."""
    mean = op.ReduceMean(x, axes, _allow_other_attributes=True)
    diff = op.Sub(x, mean)
    variance = op.ReduceMean(op.Mul(diff, diff), axes, _allow_other_attributes=True)
    scale = op.Mul(op.Reciprocal(op.Sqrt(op.Add(variance, epsilon))), gamma)
    return op.Add(op.Mul(x, scale), op.Add(op.Mul(op.Neg(mean), scale), beta))


def _layer_norm_fused(op, x, axes, epsilon, gamma, beta):
    def vector(v):
        return _constant(op, v.const_value.numpy().reshape(-1))
    return op.LayerNormalization(x, vector(gamma), vector(beta), axis=-1,
                                 epsilon=float(epsilon.const_value.numpy()))


def _normalises_last_axis(context, x, axes, epsilon, gamma, beta, **_) -> bool:
    values = [v.const_value for v in (axes, epsilon, gamma, beta)]
    if any(v is None for v in values) or values[0].numpy().reshape(-1).tolist() != [-1]:
        return False
    width = x.shape[-1] if x.shape is not None and len(x.shape) else None
    return isinstance(width, int) and values[1].numpy().size == 1 and \
        all(v.numpy().size == width for v in values[2:])


def _tensordot(op, x, flat, w, free, n):
    """TF's tensordot for Dense on a 3-D input: x to [-1, K], MatMul, back to x's dims."""
    shape = op.Cast(op.Shape(x), _allow_other_attributes=True)
    dims = op.Cast(op.Concat(op.Gather(shape, free, _allow_other_attributes=True), n,
                             _allow_other_attributes=True), _allow_other_attributes=True)
    return op.Reshape(op.MatMul(op.Reshape(x, flat), w), dims)


def _matmul(op, x, flat, w, free, n):
    return op.MatMul(x, w)


def _is_tensordot(context, x, flat, w, free, n, **_) -> bool:
    values = [v.const_value for v in (flat, w, free, n)]
    if any(v is None for v in values) or x.shape is None or len(values[1].shape) != 2:
        return False
    flat, free, n = (v.numpy().reshape(-1).tolist() for v in (values[0], *values[2:]))
    rows, columns = values[1].shape
    return flat == [-1, rows] and free == list(range(len(x.shape) - 1)) and n == [columns]


def _masked_softmax(op, scores, ones, shape, keep, fill):
    """Keras' masked softmax: scores where ones_like(scores) & keep, else `fill` (-1e9)."""
    return op.Softmax(op.Where(op.And(op.Expand(ones, shape), keep), scores, fill),
                      _allow_other_attributes=True)


def _additive_mask(op, scores, ones, shape, keep, fill):
    zero = _constant(op, np.array(0.0, np.float32))
    return op.Softmax(op.Add(scores, op.Where(keep, zero, fill)), axis=-1)


def _is_last_axis_mask(context, scores, ones, shape, keep, fill, **_) -> bool:
    """A large negative `fill`, an all-true `ones`, the softmax over the last (key) axis.

    The softmax is then the same bit for bit: a masked score becomes s - 1e9 instead of
    -1e9, and exp of either, less the row's max, is 0 in float32. That needs one kept
    key per row, which the builders require (an all-padding row attends to nothing).
    """
    axis = context.root.attributes.get_int("axis", -1)  # the matched Softmax
    rank = len(scores.shape) if scores.shape is not None else None
    values = [v.const_value for v in (ones, fill)]
    return all(v is not None for v in values) and bool(values[0].numpy().all()) and \
        values[1].numpy().size == 1 and float(values[1].numpy().reshape(-1)[0]) <= -1e9 and \
        (axis == -1 or (rank is not None and axis == rank - 1))


def _constant(op, value: np.ndarray):
    """A Constant node holding `value`, lifted to an initializer by `simplify`."""
    from onnx_ir import tensor

    return op.Constant(value=tensor(value))


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """LayerNormalization for TF's LayerNorm; a plain MatMul for TF's tensordot; an
    additive key mask for Keras' masked softmax."""
    import onnx_ir as ir
    from onnx_ir.passes.common import LiftConstantsToInitializersPass
    from onnxscript.rewriter import pattern, rewrite

    rules = [pattern.RewriteRule(_layer_norm, _layer_norm_fused, _normalises_last_axis),
             pattern.RewriteRule(_tensordot, _matmul, _is_tensordot),
             pattern.RewriteRule(_masked_softmax, _additive_mask, _is_last_axis_mask)]
    rewritten = rewrite(ir.from_proto(onnx.shape_inference.infer_shapes(model)),
                        pattern_rewrite_rules=rules)
    LiftConstantsToInitializersPass(size_limit=0)(rewritten)  # the new gamma/beta vectors
    return ir.to_proto(rewritten)
