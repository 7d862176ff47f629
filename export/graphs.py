"""Small readers of ONNX graphs shared by the signature stamp, the gate, node localisation
and the reduced-precision debug."""

from __future__ import annotations

import ast
from collections.abc import Iterator

import onnx
from onnx import helper

TORCH_SCOPES = "pkg.torch.onnx.name_scopes"
"""torch.onnx (dynamo) node metadata: the module path, then the FX node, as a list literal."""
TORCH_CLASSES = "pkg.torch.onnx.class_hierarchy"
"""torch.onnx node metadata: each scope's module class, then the aten op, as a list literal."""
NAMESPACE = "namespace"
"""torch.onnx node metadata: both of the above in one 'scope: class/...' string."""


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


def run_all_outputs(model: onnx.ModelProto, inputs) -> list[dict]:
    """Every node output (and the graph's own) of `model` on each input set: its
    mark_all_outputs copy on onnxruntime CPU, optimisations off so no node is fused away."""
    import tempfile
    from pathlib import Path

    from onnxtwin.runtime.session import Session

    with tempfile.TemporaryDirectory(prefix="onnxtwin-marked-") as folder:
        marked = Path(folder) / "marked.onnx"
        onnx.save(mark_all_outputs(model), str(marked))
        session = Session(marked, "cpu", strict=True, optimization="disable")
        return [session.run(x) for x in inputs]


def mark_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph outputs are its own, then every top-level node's tensor outputs.

    Each added output carries its element type where onnx shape inference knows it, and no
    shape (onnxruntime and onnx.reference infer the rest); outputs inferred to be
    sequences or maps are left out.
    """
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    try:
        inferred = {v.name: v.type for v in onnx.shape_inference.infer_shapes(model)
                    .graph.value_info}
    except Exception:  # inference is a hint here: onnxruntime infers types itself
        inferred = {}
    known = {v.name for v in (*marked.graph.input, *marked.graph.output)}
    for node in marked.graph.node:
        for name in node.output:
            kind = inferred[name].WhichOneof("value") if name in inferred else None
            if not name or name in known or kind not in (None, "tensor_type"):
                continue
            known.add(name)
            elem = inferred[name].tensor_type.elem_type if kind else 0
            marked.graph.output.append(helper.make_tensor_value_info(name, elem, None) if elem
                                       else onnx.ValueInfoProto(name=name))
    return marked


def origin(node: onnx.NodeProto) -> str | None:
    """Where the exporter says a node came from: torch's module path and class, and its
    aten op; else the node's `namespace` metadata; None when it says nothing."""
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props[TORCH_SCOPES])
        classes = ast.literal_eval(props[TORCH_CLASSES])
    except (KeyError, ValueError, TypeError, SyntaxError):
        return props.get(NAMESPACE)
    if not isinstance(scopes, list) or not isinstance(classes, list) or \
            len(scopes) < 2 or len(classes) != len(scopes):
        return props.get(NAMESPACE)
    module = f"module {scopes[-2]!r}" if scopes[-2] else "root module"
    return f"torch {module} ({classes[-2]}), {classes[-1]}"
