"""Small readers of ONNX graphs shared by the signature stamp and the gate."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node holds in its attributes (Loop, If and Scan bodies)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def node_ops(graph: onnx.GraphProto) -> list[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs included."""
    ops = []
    for node in graph.node:
        ops.append((node.domain or "", node.op_type))
        for sub in subgraphs(node):
            ops.extend(node_ops(sub))
    return ops


def written_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default ONNX domain the model imports."""
    return {o.domain or "": o.version for o in model.opset_import}.get("")
