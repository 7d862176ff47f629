"""Node localisation: the first node of an ONNX file whose output differs between two ways
of running it.

Polygraphy's "mark all outputs": a copy of the model whose graph outputs are every node's
outputs runs on both sides, and the node outputs are compared in graph order (ONNX keeps
nodes in topological order). A node diverges when max abs > tolerance x max(1, output
scale); the first one is named with its op type, its name and, where the exporter recorded
it, where it came from (torch's exporter keeps the module path in node metadata_props;
tf2onnx names nodes after their TF ops). A marked output keeps onnxruntime from fusing its
node away, so a difference that only a fusion makes may not reproduce on the copy: then no
node diverges (first_divergent None).
"""

from __future__ import annotations

import ast
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxtwin.export.graphs import TORCH_SCOPES, mark_all_outputs, origin
from onnxtwin.runtime.paths import ModelPath


@dataclass(frozen=True)
class Side:
    """One way of running a file: its path's name, and how to open that path on any file
    (the marked copy)."""

    name: str
    open: Callable[[Path], ModelPath]


@dataclass(frozen=True)
class NodeDiff:
    """One node: its name, op type, origin, and its outputs' largest max abs difference."""

    node: str
    op: str
    origin: str | None
    max_abs: float | None
    """None when an output is not finite on one side only, or its shapes differ."""
    diverged: bool


@dataclass(frozen=True)
class NodeLocalisation:
    """`actual` against `expected` node by node, at one point of the grid."""

    actual: str
    expected: str
    dims: dict[str, int]
    tolerance: float
    first_divergent: str | None
    nodes: tuple[NodeDiff, ...]


def localise_nodes(file: Path, actual: Side, expected: Side, inputs: Mapping[str, np.ndarray],
                   tolerance: float, dims: dict[str, int]) -> NodeLocalisation:
    """Run the marked copy of `file` on both sides with `inputs` (drawn at `dims`) and
    compare every node's outputs in graph order."""
    model = onnx.load(file)
    with tempfile.TemporaryDirectory(prefix="onnxtwin-nodes-") as folder:
        copy = Path(folder, file.name)
        onnx.save_model(mark_all_outputs(model), copy, save_as_external_data=True,
                        location=f"{copy.name}.data")  # any size, as the original
        got = actual.open(copy).run(inputs)
        want = expected.open(copy).run(inputs)
    nodes, first = [], None
    for index, node in enumerate(model.graph.node):
        errors = [_difference(got[o], want[o]) for o in node.output if o in got and o in want]
        if not errors:
            continue
        worst = max(error for error, _ in errors)
        diff = NodeDiff(node.name or f"#{index}", node.op_type, origin(node),
                        worst if math.isfinite(worst) else None,
                        any(error > tolerance * max(1.0, scale) for error, scale in errors))
        nodes.append(diff)
        if diff.diverged and first is None:
            first = describe(diff)
    return NodeLocalisation(actual.name, expected.name, dict(dims), tolerance, first,
                            tuple(nodes))


def localise_against_torch(file: Path, actual: Side, module, args: list[np.ndarray],
                           inputs: Mapping[str, np.ndarray], tolerance: float,
                           dims: dict[str, int]) -> NodeLocalisation:
    """A torch-exported `file` (run on `actual`) against the torch `module` it came from,
    module by module: each module's captured output is compared with the output of the
    last node the exporter scoped to that module (its name_scopes). Modules the exporter
    folded away (a Conv fused into its BatchNorm) have no node and are not compared."""
    from onnxtwin.builders.matching import run_torch, torch_hooks

    model = onnx.load(file)
    last: dict[str, tuple[int, onnx.NodeProto]] = {}
    for index, node in enumerate(model.graph.node):
        for scope in _scopes(node)[1:-1]:  # '' (the root) first, the aten op last
            last[scope] = (index, node)
    captured: dict[str, np.ndarray | None] = {}
    modules = {n: m for n, m in module.named_modules() if n in last}
    name_of = {id(m): n for n, m in modules.items()}
    with torch_hooks(modules.values(), lambda *_: None,  # the last call: the last node's
                     lambda m, out: captured.__setitem__(name_of[id(m)], _first_tensor(out))):
        run_torch(module, args)
    with tempfile.TemporaryDirectory(prefix="onnxtwin-nodes-") as folder:
        copy = Path(folder, file.name)
        onnx.save_model(mark_all_outputs(model), copy, save_as_external_data=True,
                        location=f"{copy.name}.data")
        got = actual.open(copy).run(inputs)
    nodes, first = [], None
    for scope, (_, node) in sorted(last.items(), key=lambda item: item[1][0]):
        if scope not in captured or node.output[0] not in got:
            continue
        value = captured[scope]
        if value is None or np.shape(got[node.output[0]]) != value.shape:
            continue  # a module whose last node's output is not what the module returns
        error, scale = _difference(got[node.output[0]], value)
        diff = NodeDiff(node.name, node.op_type, origin(node),
                        error if math.isfinite(error) else None,
                        error > tolerance * max(1.0, scale))  # NaN on one side only: inf
        nodes.append(diff)
        if diff.diverged and first is None:
            first = describe(diff)
    return NodeLocalisation(actual.name, "torch", dict(dims), tolerance, first, tuple(nodes))


def _scopes(node: onnx.NodeProto) -> list[str]:
    """torch's name_scopes of a node ([] when the exporter recorded none)."""
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get(TORCH_SCOPES, "[]"))
    except (ValueError, SyntaxError):
        return []
    return [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else []


def _first_tensor(output) -> np.ndarray | None:
    first = output[0] if isinstance(output, tuple | list) else output
    return first.detach().numpy().copy() if hasattr(first, "detach") else None


def describe(diff: NodeDiff) -> str:
    """A node in words: op type, name, and origin where known."""
    return f"{diff.op} node {diff.node!r}" + (f" ({diff.origin})" if diff.origin else "")


def _difference(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs difference, max finite |expected|); equal values (infinities, NaN in the
    same place) differ by 0, a shape or finiteness mismatch by inf."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        return math.inf, 0.0
    if a.dtype.kind not in "biuf" or e.dtype.kind not in "biuf":
        return (0.0 if np.array_equal(a, e) else math.inf), 0.0
    a, e = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: equal, so masked out below
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        diff = np.where(same, 0.0, np.abs(a - e))
    diff[np.isnan(diff)] = math.inf
    return float(diff.max(initial=0.0)), float(np.abs(e[np.isfinite(e)]).max(initial=0.0))
