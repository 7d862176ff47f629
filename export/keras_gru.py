"""Keras 3 GRU -> the native ONNX GRU op, in tf2onnx.

Workaround for tf2onnx 1.17 with Keras 3 (measured with Keras 3.15.1): tf2onnx matches
Keras 2's GRU cell (the recurrent projection split with `Split` after a `BiasAdd`, the
(2, 3*units) bias unstacked outside the loop), but Keras 3's GRUCell adds the recurrent
bias with `AddV2`, slices the gates with `StridedSlice`, and splits the bias inside the
loop body. No pattern matches, so the layer became an ONNX `Loop` running one step per
token: 11x slower than the torch twin's GRU op at batch 1 (benchmarks/results/bench).
`keras3_gru_rewriter()` adds a pattern for the Keras 3 cell next to tf2onnx's own and
builds the GRU op with tf2onnx's GRUUnitRewriter (Keras gate order z, r, h and
linear_before_reset=1, i.e. reset_after=True). The export gate checks the result like
any other file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

CONTEXT = "keras3_gru_context"  # attribute set on a loop body graph that is a Keras 3 GRU


def _pattern():
    from tf2onnx.graph_matcher import OpTypePattern as P

    weight = "Placeholder|PlaceholderV2|Identity"

    def bias_half():  # input bias (row 0) or recurrent bias (row 1) of the (2, 3u) bias
        return P("Squeeze", inputs=[P("Split", inputs=[P("Const"), P(weight, name="bias")])])

    x_gates = P("Split", inputs=[P("Const"), P("BiasAdd", inputs=[
        P("MatMul", inputs=[P("TensorListGetItem", name="gru_input"),
                            P(weight, name="gate_kernel")], allow_reorder=False),
        bias_half()])])
    state = P("Placeholder|PlaceholderV2", name="state")
    h_gates = P("AddV2|Add", inputs=[
        P("MatMul", inputs=[state, P(weight, name="hidden_kernel")], allow_reorder=False),
        bias_half()])

    def gate(name: str):
        return P("Sigmoid", name=name, inputs=[P("AddV2|Add", inputs=[
            x_gates, P("StridedSlice", inputs=[h_gates, "Const", "Const", "Const"])])])

    z = gate("z")
    candidate = P("Tanh", inputs=[P("AddV2|Add", inputs=[x_gates, P("Mul", inputs=[
        gate("r"), P("StridedSlice", inputs=[h_gates, "Const", "Const", "Const"])])])])
    return P("AddV2|Add", name="cell_output", inputs=[
        P("Mul", inputs=[z, state]),
        P("Mul", inputs=[P("Sub", inputs=[P("Const"), z], allow_reorder=False), candidate])])


def _graph_input(g, op) -> int | None:
    while op.type == "Identity":
        op = op.inputs[0]
    return g.input_names.index(op.output[0]) if op.is_graph_input() else None


def _match_body(g, ops) -> None:
    """In a loop body: find the Keras 3 GRU cell and note which body inputs feed it."""
    from tf2onnx.graph_matcher import GraphMatcher

    for match in GraphMatcher(_pattern(), allow_reorder=True).match_ops(ops):
        get_item = match.get_op("gru_input")
        if not get_item.inputs[0].is_graph_input():
            continue
        consumers = g.find_output_consumers(match.get_op("cell_output").output[0])
        writes = [n for n in consumers if n.type == "TensorListSetItem"]
        indices = {name: _graph_input(g, match.get_op(name))
                   for name in ("state", "gate_kernel", "hidden_kernel", "bias")}
        if len(writes) != 1 or not writes[0].inputs[0].is_graph_input() or \
                None in indices.values():
            continue
        setattr(g, CONTEXT, {
            **indices, "x": g.input_names.index(get_item.input[0]),
            "out": g.input_names.index(writes[0].input[0])})


def _rewrite_loops(g, ops) -> None:
    """In the graph holding the while loop: replace a matched loop with one GRU node."""
    from tf2onnx.graph_builder import GraphBuilder
    from tf2onnx.rewriter.gru_rewriter import GRUUnitRewriter
    from tf2onnx.rewriter.unit_rnn_rewriter_base import UnitRnnContext
    from tf2onnx.tf_loader import find_function

    for op in ops:
        if not op.is_while():
            continue
        found = getattr(find_function(op.get_attr_str("body")), CONTEXT, None)
        if found is None:
            continue
        weights = {k: op.input[found[k]] for k in ("gate_kernel", "hidden_kernel", "bias")}
        x_list = op.inputs[found["x"]]
        if not all(g.is_const(w) for w in weights.values()) or \
                x_list.type != "TensorListFromTensor":
            continue
        bias = g.get_tensor_value(weights["bias"], as_list=False)  # (2, 3 * units)
        context = UnitRnnContext()
        context.from_keras = True
        context.weights.update({
            "gate_kernel": g.get_tensor_value(weights["gate_kernel"], as_list=False),
            "hidden_kernel": g.get_tensor_value(weights["hidden_kernel"], as_list=False),
            "gate_bias": bias[0], "hidden_bias": bias[1]})
        context.attributes["activations"] = ["Sigmoid", "Tanh"]
        context.attributes["linear_before_reset"] = 1
        context.onnx_input_ids["X"] = x_list.input[0]
        context.onnx_input_ids["sequence_lens"] = ""
        context.onnx_input_ids["initial_state"] = GraphBuilder(g).make_unsqueeze(
            {"data": op.input[found["state"]], "axes": [0]})
        rewriter = GRUUnitRewriter(g)
        rewriter.process_weights_and_bias(context)
        gru = rewriter.create_rnn_node(context)
        sequence = GraphBuilder(g).make_squeeze({"data": gru.output[0], "axes": [1]})
        for stack in g.find_output_consumers(op.output[found["out"]]):
            if stack.type == "TensorListStack":
                g.replace_all_inputs(stack.output[0], sequence)
        final = GraphBuilder(g).make_squeeze({"data": gru.output[1], "axes": [0]})
        g.replace_all_inputs(op.output[found["state"]], final)


@contextmanager
def keras3_gru_rewriter() -> Iterator[None]:
    """While converting, run the Keras 3 GRU rewrite right after tf2onnx's own GRU rewrite
    (before its generic loop rewrite turns the while loop into a Loop)."""
    import tf2onnx.tfonnx as tfonnx

    original = tfonnx.rewrite_gru_tf2

    def rewrite(g, ops):
        ops = original(g, ops)
        _match_body(g, ops)
        _rewrite_loops(g, ops)
        return g.get_nodes()

    tfonnx.rewrite_gru_tf2 = rewrite
    try:
        yield
    finally:
        tfonnx.rewrite_gru_tf2 = original
