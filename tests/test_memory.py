"""The per-run memory estimate, the memory bound of a Session, and byte order.

Expectations are computed by hand from the graphs built here, not by the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime.errors import ResourceLimit
from onnxtwin.runtime.memory import MemoryModel
from onnxtwin.runtime.session import SIGNATURE_KEY

WIDTH = 8


def save(graph, path, props=None):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 refuses
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, path)
    return path


@pytest.fixture
def attention(tmp_path):
    """x [batch, seq, 8] -> Transpose -> MatMul (scores [batch, seq, seq]) -> Softmax ->
    ReduceSum over the last axis -> y [batch, seq]."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "t"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
             helper.make_node("ReduceSum", ["p", "axes"], ["y"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [2])])
    return save(graph, tmp_path / "attention.onnx")


def by_hand(batch: int, seq: int) -> int:
    """Peak live bytes of the `attention` graph: t [b,8,s] and scores [b,s,s] live at the
    MatMul, scores and p at the Softmax, p and y at the ReduceSum."""
    t, scores, p, y = (4 * batch * n for n in (WIDTH * seq, seq * seq, seq * seq, seq))
    return max(t, t + scores, scores + p, p + y)


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (3, 5), (3, 100), (64, 2048), (7, 9)])
def test_estimate_is_the_peak_of_live_tensors(attention, batch, seq):
    assert MemoryModel(attention).estimate({"batch": batch, "seq": seq}) == by_hand(batch, seq)


def test_dynamic_dims_without_a_name_are_estimated_too(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    session = Session(save(graph, tmp_path / "g.onnx"), memory_limit=2**20)
    dims = session.run_dims({"x": np.zeros((10, 3), np.float32)})
    assert dims == {"x[0]": 10}
    assert session.needed_bytes(dims) == 2 * 10 * 3 * 4


def test_a_run_over_the_memory_limit_is_refused_before_it_runs(attention):
    limit = by_hand(4, 64)
    session = Session(attention, memory_limit=limit)
    session.run({"x": np.ones((4, 64, WIDTH), np.float32)})  # exactly at the limit
    with pytest.raises(ResourceLimit) as refused:
        session.run({"x": np.ones((4, 65, WIDTH), np.float32)})
    assert str(refused.value) == (
        f"attention.onnx: expected a run that needs at most {limit / 2**20:.0f} MiB, got "
        f"batch=4, seq=65, which needs about {by_hand(4, 65) / 2**20:.0f} MiB (fewer rows or "
        f"a shorter sequence fit)")
    assert isinstance(refused.value, OnnxtwinError)
    assert Session(attention).needed_bytes({"batch": 4, "seq": 65}) == 0  # no limit, no model


@pytest.fixture
def embedding(tmp_path):
    """tokens int64 [batch, seq] (vocab 16 and seq <= 4, stamped) -> Gather from a [16, 2]
    table."""
    table = np.arange(32, dtype=np.float32).reshape(16, 2)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["vectors"])], "embedding",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", "seq", 2])],
        [helper.make_tensor("table", TensorProto.FLOAT, [16, 2], table.ravel())])
    signature = {"inputs": [{"name": "tokens", "vocab": 16}], "max_dims": [["seq", 4]]}
    return save(graph, tmp_path / "embedding.onnx", {SIGNATURE_KEY: json.dumps(signature)})


@pytest.mark.parametrize("order", [">", "<"])
def test_inputs_in_either_byte_order_give_the_native_result(attention, embedding, order):
    x = np.random.default_rng(0).random((2, 3, WIDTH), dtype=np.float32)
    expected = np.exp(x @ x.transpose(0, 2, 1))
    expected = (expected / expected.sum(-1, keepdims=True)).sum(-1)
    got = Session(attention).run({"x": x.astype(f"{order}f4")})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-6)

    tokens = np.array([[1, 15], [0, 7]])
    vectors = Session(embedding).run({"tokens": tokens.astype(f"{order}i8")})["vectors"]
    np.testing.assert_array_equal(vectors, np.stack([tokens * 2, tokens * 2 + 1], -1))


def test_big_endian_token_ids_are_checked_by_value(embedding):
    with pytest.raises(OnnxtwinError, match=r"expected token ids in \[0, 16\), got ids from "
                                            r"0 to 16$"):
        Session(embedding).run({"tokens": np.array([[0, 16]], ">i8")})


def test_a_dim_over_its_stamped_maximum_is_refused_in_one_line(embedding):
    session = Session(embedding)
    assert session.run({"tokens": np.ones((3, 4), np.int64)})["vectors"].shape == (3, 4, 2)
    with pytest.raises(OnnxtwinError) as refused:
        session.run({"tokens": np.ones((3, 5), np.int64)})
    assert str(refused.value) == ("input 'tokens': expected seq <= 4 (the largest the model "
                                  "takes), got int64[3, 5]")


def expand_model(path, shape_from_values: bool):
    """x float32 [batch] expanded to a shape read from the input `n` (its values) or from
    `n`'s own shape (Shape(n))."""
    nodes = [helper.make_node("Shape", ["n"], ["n_shape"])] if not shape_from_values else []
    nodes.append(helper.make_node("Expand", ["x", "n" if shape_from_values else "n_shape"],
                                  ["y"], name="big"))
    graph = helper.make_graph(
        nodes, "expand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return save(graph, path)


def test_sizes_set_by_input_values_are_named_and_warned_of(tmp_path):
    from cli_runner import onnxtwin

    by_values = expand_model(tmp_path / "values.onnx", shape_from_values=True)
    assert Session(by_values, memory_limit=2**20).value_dependent == ("Expand 'big'",)
    by_shape = expand_model(tmp_path / "shape.onnx", shape_from_values=False)
    assert Session(by_shape, memory_limit=2**20).value_dependent == ()
    np.savez(tmp_path / "in.npz", x=np.ones(1, np.float32), n=np.array([3]))
    result = onnxtwin("run", str(by_values), "-i", str(tmp_path / "in.npz"), "-o",
                      str(tmp_path / "out.npz"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: values.onnx: expected output sizes set by input shapes, got 1 set by "
        "input values (Expand 'big'): the memory bound cannot cover them"]
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["y"], np.ones(3, np.float32))


@pytest.mark.parametrize("dtype", ["int16", "uint16", "uint32", "uint64"])
def test_every_integer_width_is_a_known_input_type(tmp_path, dtype):
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "same",
                              [helper.make_tensor_value_info("x", element, ["batch", 3])],
                              [helper.make_tensor_value_info("y", element, ["batch", 3])])
    session = Session(save(graph, tmp_path / "same.onnx"))
    assert str(session.inputs[0]) == f"{dtype}[batch, 3]"
    x = np.arange(6, dtype=dtype).reshape(2, 3)
    np.testing.assert_array_equal(session.run({"x": x})["y"], x)


def counting_loop(path):
    """v = 0; repeat M times: v += 1 (M a scalar input): a request sets how long it runs."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Add", ["v", "one"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "zero"], ["count"], body=body)], "loop",
        [helper.make_tensor_value_info("M", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("count", TensorProto.FLOAT, [])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return save(graph, path)


def test_a_run_past_its_time_limit_is_stopped(tmp_path):
    import time

    session = Session(counting_loop(tmp_path / "loop.onnx"), time_limit_s=0.3)
    assert session.run({"M": np.array(5)})["count"] == 5.0
    start = time.monotonic()
    with pytest.raises(ResourceLimit) as stopped:
        session.run({"M": np.array(10**12)})
    assert time.monotonic() - start < 2
    assert str(stopped.value) == ("loop.onnx: expected a run within 0.3 s, got one stopped "
                                  "after that on M int64[]")
    assert session.run({"M": np.array(7)})["count"] == 7.0  # the session still runs


def test_odd_arguments_to_a_session_are_one_line(attention):
    for name, value in (("memory_limit", float("nan")), ("memory_limit", -1),
                        ("time_limit_s", 0)):
        with pytest.raises(OnnxtwinError, match=f"^{name}: expected a positive number or "
                                                f"None, got {value}$"):
            Session(attention, **{name: value})
    session = Session(attention)
    x = np.ones((1, 2, WIDTH), np.float32)
    with pytest.raises(OnnxtwinError, match=r"^attention.onnx: expected inputs \['x'\], got "
                                            r"\[1, 'x'\] \(missing \[\], unexpected \[1\]\)$"):
        session.run({"x": x, 1: x})
    with pytest.raises(OnnxtwinError, match="^input 'x': expected an array of "
                                            r"float32\[batch, seq, 8\], got a value numpy"):
        session.run({"x": [[1.0], [1.0, 2.0]]})
