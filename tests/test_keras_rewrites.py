"""export/keras_rewrites.py: Einsum lowered to MatMul, TF's LayerNorm and tensordot fused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxtwin.export import export_model
from onnxtwin.export.keras_rewrites import lower_einsums, simplify

RNG = np.random.default_rng(0)


def _einsum_model(equation: str, a_dims: list, b: np.ndarray | list) -> onnx.ModelProto:
    """One Einsum of input `a` and either a weight (array) or a second input (dims)."""
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_dims)]
    initializer = []
    if isinstance(b, np.ndarray):
        initializer.append(numpy_helper.from_array(b, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, b))
    graph = helper.make_graph([helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)],
                              "einsum", inputs,
                              [helper.make_tensor_value_info(
                                  "y", TensorProto.FLOAT, [None] * len(equation.split(">")[1]))],
                              initializer)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


# Keras MultiHeadAttention's four einsums (q/k/v projection, scores, weighted values,
# output projection), with the sizes of the built-in Transformer (D 64, 4 heads of 16).
CASES = [
    ("abc,cde->abde", ["batch", "seq", 64], RNG.standard_normal((64, 4, 16), np.float32)),
    ("abcd,cde->abe", ["batch", "seq", 4, 16], RNG.standard_normal((4, 16, 64), np.float32)),
    ("btnh,bsnh->bnts", ["batch", "seq", 4, 16], ["batch", "seq", 4, 16]),
    ("bnts,bsnh->btnh", ["batch", 4, "seq", "seq"], ["batch", "seq", 4, 16]),
]


# The weight operand as MatMul's right operand [contracted, right], derived by hand:
# abc,cde->abde: y[a,b,(d e)] = sum_c A[a,b,c] B[c,(d e)], so B' is b as (c=64, d*e=64);
# abcd,cde->abe: y[a,b,e] = sum_(c d) A[a,b,(c d)] B[(c d),e], so B' is b as (c*d=64, e=64).
ARRANGED = {"abc,cde->abde": lambda b: b.reshape(64, 4 * 16),
            "abcd,cde->abe": lambda b: b.reshape(4 * 16, 64)}


def _assert_weight_held_once_arranged(lowered: onnx.ModelProto, original: np.ndarray,
                                      arranged: np.ndarray) -> None:
    """The original initializer is gone (by name, by shape, by size), exactly one float
    initializer remains, it holds `arranged` bit for bit, and it is the MatMul's weight."""
    initializers = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
    read = [name for node in lowered.graph.node for name in node.input]
    assert "b" not in initializers and "b" not in read
    assert all(v.shape != original.shape for v in initializers.values())
    weights = {n: v for n, v in initializers.items() if v.dtype == np.float32}
    assert len(weights) == 1, sorted(weights)
    (name, value), = weights.items()
    assert value.shape == arranged.shape
    np.testing.assert_array_equal(value, arranged)
    # the rest are int64 shape vectors, not a second copy of the weight
    assert sum(v.size for v in initializers.values() if v.dtype != np.int64) == original.size
    assert all(v.dtype == np.int64 and v.ndim == 1 for n, v in initializers.items()
               if n != name)
    matmul, = [n for n in lowered.graph.node if n.op_type == "MatMul"]
    assert matmul.input[1] == name  # the arranged copy is what the MatMul multiplies by
    assert set(initializers) <= set(read)  # and nothing is held that no node reads


@pytest.mark.parametrize(("equation", "a_dims", "b"), CASES, ids=[c[0] for c in CASES])
def test_einsum_lowered_to_matmul_agrees_at_every_shape(equation, a_dims, b):
    model = _einsum_model(equation, a_dims, b)
    lowered = lower_einsums(_einsum_model(equation, a_dims, b))
    onnx.checker.check_model(lowered, full_check=True)
    ops = [n.op_type for n in lowered.graph.node]
    assert "Einsum" not in ops and ops.count("MatMul") == 1
    if isinstance(b, np.ndarray):  # the weight is held once, already arranged for MatMul
        _assert_weight_held_once_arranged(lowered, b, ARRANGED[equation](b))
    for batch, seq in ((1, 1), (3, 7), (16, 50)):
        size = {"batch": batch, "seq": seq}
        feeds = {"a": RNG.standard_normal([size.get(d, d) for d in a_dims], np.float32)}
        if not isinstance(b, np.ndarray):
            feeds["b"] = RNG.standard_normal([size.get(d, d) for d in b], np.float32)
        expected = np.einsum(equation, feeds["a"], feeds.get("b", b)).astype(np.float32)
        got = _run(lowered, feeds)
        assert got.shape == expected.shape
        # float32 sums of up to 64 products: within a few ulps of the largest product sum
        assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
        assert np.abs(_run(model, feeds) - expected).max() <= \
            1e-5 * max(1.0, np.abs(expected).max())  # the Einsum it replaces, alike


@pytest.mark.parametrize("equation", ["ab,bc,cd->ad", "ii->i", "ab,ab->a", "...c,cd->...d"])
def test_einsum_that_is_not_one_matmul_is_left_alone(equation):
    operands = equation.split("->")[0].split(",")
    graph = helper.make_graph(
        [helper.make_node("Einsum", [f"x{i}" for i in range(len(operands))], ["y"],
                          equation=equation)], "einsum",
        [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [4] * len(o.strip(".")))
         for i, o in enumerate(operands)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert [n.op_type for n in lower_einsums(model).graph.node] == ["Einsum"]


def test_keras_transformer_file_is_lean_and_gated(twins_of, tmp_path):
    """Before the rewrites: 321 nodes (Einsum decomposed with run-time shape arithmetic,
    LayerNorm as 13 ops, Select as 5); after: under 100, no shape arithmetic per MatMul."""
    result = export_model(twins_of("transformer"), "keras", tmp_path)
    assert sum(result.ops.values()) < 100
    assert result.ops["LayerNormalization"] == 4 and result.ops["Where"] == 3
    for absent in ("Einsum", "ReduceProd", "ReduceMean", "Reciprocal", "And", "Expand"):
        assert absent not in result.ops
    assert result.max_abs <= 1e-5


def _masked_softmax_model(fill: float) -> onnx.ModelProto:
    """Keras MultiHeadAttention's masked softmax as tf2onnx writes it."""
    nodes = [helper.make_node("Shape", ["scores"], ["shape"]),
             helper.make_node("Expand", ["true", "shape"], ["ones"]),
             helper.make_node("And", ["ones", "keep"], ["mask"]),
             helper.make_node("Where", ["mask", "scores", "fill"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["y"])]
    graph = helper.make_graph(
        nodes, "masked_softmax",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", 4, "t", "s"]),
         helper.make_tensor_value_info("keep", TensorProto.BOOL, ["b", 1, 1, "s"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, "t", "s"])],
        [numpy_helper.from_array(np.array(True), "true"),
         numpy_helper.from_array(np.array(fill, np.float32), "fill")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_masked_softmax_becomes_an_additive_mask_with_the_same_bits():
    """Where(ones & keep, s, -1e9) -> s + Where(keep, 0, -1e9): bit-identical softmax for
    every row with a kept key (left padding as the tokenizer makes it, scores up to 1e3)."""
    rewritten = simplify(_masked_softmax_model(-1e9))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "And" not in ops and "Expand" not in ops and "Add" in ops
    for b, t, s in ((1, 1, 1), (7, 12, 12), (64, 50, 50)):
        keep = np.ones((b, 1, 1, s), bool)
        for row in range(b):
            keep[row, ..., : RNG.integers(0, s)] = False  # at least the last key is kept
        scores = (RNG.standard_normal((b, 4, t, s)) * 10.0 ** RNG.integers(-3, 4)).astype(
            np.float32)
        feeds = {"scores": scores, "keep": keep}
        assert np.array_equal(_run(rewritten, feeds), _run(_masked_softmax_model(-1e9), feeds))


def test_a_small_fill_is_not_an_additive_mask():
    """With fill -1, s + fill is not -1 and the softmax would change: left alone."""
    ops = [n.op_type for n in simplify(_masked_softmax_model(-1.0)).graph.node]
    assert "And" in ops and "Where" in ops and "Add" not in ops
