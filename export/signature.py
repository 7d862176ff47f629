"""Stamp a spec's signature on an ONNX graph, and read a graph's signature back."""

from __future__ import annotations

import onnx
from onnx import helper

from onnxtwin.builders.signature import Signature, TensorSpec
from onnxtwin.export.graphs import subgraphs
from onnxtwin.runtime.errors import OnnxtwinError

Described = tuple[str, str, tuple[int | str, ...]]


def describe(value: onnx.ValueInfoProto) -> Described:
    """(name, numpy dtype name, dims) of a graph input or output; dims are ints or names."""
    t = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
    dims = tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim)
    return value.name, dtype, dims


def read_signature(model: onnx.ModelProto) -> tuple[list[Described], list[Described]]:
    """The graph's inputs (initializers excluded) and outputs, described."""
    initializers = {i.name for i in model.graph.initializer}
    return ([describe(v) for v in model.graph.input if v.name not in initializers],
            [describe(v) for v in model.graph.output])


def apply_signature(model: onnx.ModelProto, signature: Signature) -> onnx.ModelProto:
    """Rename the graph's inputs, outputs and dynamic dims to the spec's, in place.

    Values are matched by position; a dtype or fixed dim that differs is an error.
    """
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    renames: dict[str, str] = {}
    dim_names: dict[str, str] = {}
    for values, specs in ((inputs, signature.inputs), (list(graph.output), signature.outputs)):
        if len(values) != len(specs):
            raise OnnxtwinError(f"exported graph: expected {len(specs)} values "
                                f"{[s.name for s in specs]}, got {[v.name for v in values]}")
        for value, spec in zip(values, specs, strict=True):
            _match(value, spec, dim_names)
            if value.name != spec.name:
                renames[value.name] = spec.name
    _rename_values(graph, renames)
    for value in (*graph.input, *graph.output, *graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dim_names:
                d.dim_param = dim_names[d.dim_param]
    return model


def _match(value: onnx.ValueInfoProto, spec: TensorSpec, dim_names: dict[str, str]) -> None:
    name, dtype, dims = describe(value)
    if dtype != spec.dtype or len(dims) != len(spec.shape):
        raise OnnxtwinError(f"exported graph value {name!r}: expected "
                            f"{spec.dtype}{list(spec.shape)}, got {dtype}{list(dims)}")
    for given, wanted in zip(dims, spec.shape, strict=True):
        if isinstance(wanted, str):
            if not isinstance(given, str) or not given:
                raise OnnxtwinError(f"exported graph value {name!r}: expected dynamic dim "
                                    f"{wanted!r}, got fixed size {given}")
            dim_names[given] = wanted
        elif given != wanted:
            raise OnnxtwinError(f"exported graph value {name!r}: expected size {wanted}, "
                                f"got {given!r}")


def _rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    if not renames:
        return
    for value in (*graph.input, *graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        for sub in subgraphs(node):  # Loop/If bodies may read outer values by name
            _rename_values(sub, renames)
