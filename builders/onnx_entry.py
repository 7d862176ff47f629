"""An ONNX file as a user entry: its signature read from the graph, its grid from `dims`.

    [models.vendor-model]
    onnx = "vendor/model.onnx"                       # relative to the TOML file
    dims = { batch = [1, 4] }                        # sizes of the file's dynamic dims
    inputs = [{ name = "ids", range = [0, 1000] }]   # where an input's values are drawn

The file has no twins: `onnxtwin check` runs it on each provider against onnx.reference
(onnxtwin.conformance.onnx_matrix). Its dynamic dims are the graph's `dim_param` names;
a dim with neither a name nor a size is called `INPUT[AXIS]`, as a Session calls it
(runtime.memory.unnamed_dim), and, having no default size, needs an entry in `dims`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper

from onnxtwin.builders.entries import EntrySpec, file_hash, parse_dims, refuse
from onnxtwin.builders.signature import Dim, Signature, TensorSpec
from onnxtwin.runtime.errors import first_line
from onnxtwin.runtime.memory import unnamed_dim
from onnxtwin.runtime.session import ORT_DTYPES

KEYS = ("onnx", "dims", "inputs")
"""The keys of an ONNX entry's table."""
DTYPES = frozenset(ORT_DTYPES.values())
"""Element types an input or output may have: those a Session runs."""
DEFAULT_RANGES = {"f": (0.0, 1.0), "i": (0, 10), "u": (0, 10), "b": (0, 2)}
"""Where an input without a declared range is drawn, by numpy dtype kind: floats in
[0, 1) as every built-in input, integers in [0, 10) (small enough to be a valid index or
id in most models), booleans as fair coins."""


@dataclass(frozen=True, kw_only=True)
class OnnxSpec(EntrySpec):
    """An ONNX file checked on its own: its path and the sha256 of its bytes (external
    data files are not hashed)."""

    family: ClassVar[str] = "onnx"
    path: Path
    sha256: str
    file_signature: Signature
    """Read from the file's graph inputs and outputs."""

    @property
    def signature(self) -> Signature:
        return self.file_signature

    def hyperparameters(self) -> dict[str, object]:
        return {**super().hyperparameters(), "file": self.path.name, "sha256": self.sha256}

    def described(self) -> str:
        return f"file {self.path}, {super().described()}"


def onnx_spec(name: str, table: Mapping[str, object], base: Path) -> OnnxSpec:
    """The spec of a `[models.NAME]` table with an `onnx` key; `base` is the folder a
    relative path is read from (the TOML file's). Refusals are one line naming the entry."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise refuse(name, f"keys among {list(KEYS)}", unknown)
    given = table.get("onnx")
    if not isinstance(given, str) or not given:
        raise refuse(name, "onnx as the path of an ONNX file", given)
    path = Path(base, given)
    if not path.is_file():
        raise refuse(name, "onnx naming an existing file", str(path))
    try:
        onnx.checker.check_model(str(path))  # by path: external data and files over 2 GiB
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises protobuf's and its checker's own types
        raise refuse(name, "onnx naming an ONNX model that onnx.checker accepts",
                     f"{path.name}: {first_line(e)}") from None
    initializers = {i.name for i in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers]
    ranges = _ranges(name, table.get("inputs"), {v.name: _dtype(name, v) for v in values})
    signature = Signature(inputs=tuple(_input(name, v, ranges.get(v.name)) for v in values),
                          outputs=tuple(_tensor(name, v) for v in model.graph.output))
    return OnnxSpec(name=name, file_signature=signature,
                    grid=parse_dims(name, table.get("dims"), signature.dims),
                    path=path, sha256=file_hash(path))


def _dtype(entry: str, value: onnx.ValueInfoProto) -> str:
    """The numpy dtype name of a graph tensor, refused unless a Session runs it."""
    if value.type.WhichOneof("value") != "tensor_type":
        raise refuse(entry, f"{value.name!r} to be a tensor", value.type.WhichOneof("value"))
    elem = value.type.tensor_type.elem_type
    dtype = (helper.tensor_dtype_to_np_dtype(elem).name
             if elem in helper.get_all_tensor_dtypes() else None)
    if dtype not in DTYPES:
        raise refuse(entry, f"{value.name!r} of a dtype among {sorted(DTYPES)}",
                     onnx.TensorProto.DataType.Name(elem)
                     if elem in onnx.TensorProto.DataType.values() else elem)
    return dtype


def _input(entry: str, value: onnx.ValueInfoProto,
           draw: tuple[float, float] | None) -> TensorSpec:
    """A graph input of declared rank, drawn in `draw` (else DEFAULT_RANGES)."""
    if not value.type.tensor_type.HasField("shape"):
        raise refuse(entry, f"input {value.name!r} with a declared shape", "no shape")
    tensor = _tensor(entry, value)
    return dataclasses.replace(tensor, range=draw or DEFAULT_RANGES[np.dtype(tensor.dtype).kind])


def _tensor(entry: str, value: onnx.ValueInfoProto) -> TensorSpec:
    """A graph input or output as a TensorSpec (an output of undeclared rank: shape ())."""
    dims: tuple[Dim, ...] = tuple(
        d.dim_param if d.dim_param else d.dim_value if d.dim_value > 0
        else unnamed_dim(value.name, axis)
        for axis, d in enumerate(value.type.tensor_type.shape.dim))
    return TensorSpec(value.name, _dtype(entry, value), dims)


def _ranges(entry: str, value: object, dtypes: Mapping[str, str]) -> dict[str, tuple]:
    """The `inputs` list ([{ name, range = [low, high] }]) as {input: (low, high)}."""
    if value is None:
        return {}
    shape = "inputs as a list of tables { name = INPUT, range = [low, high] }"
    if not isinstance(value, list) or not all(isinstance(i, Mapping) for i in value):
        raise refuse(entry, shape, value)
    ranges: dict[str, tuple] = {}
    for item in value:
        if set(item) != {"name", "range"}:
            raise refuse(entry, shape, item)
        input_name, draw = item["name"], item["range"]
        if not isinstance(input_name, str) or input_name not in dtypes or input_name in ranges:
            raise refuse(entry, f"inputs naming each of the file's inputs {list(dtypes)} once",
                         input_name)
        ranges[input_name] = _range(entry, input_name, dtypes[input_name], draw)
    return ranges


def _range(entry: str, input_name: str, dtype: str, draw: object) -> tuple:
    """[low, high) with low < high, within `dtype` (integers for an integer input)."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        raise refuse(entry, f"no range for boolean input {input_name!r} (drawn as fair coins)",
                     draw)
    number = int if kind in "iu" else int | float
    info = np.iinfo(dtype) if kind in "iu" else np.finfo(dtype)
    ok = (isinstance(draw, list) and len(draw) == 2
          and all(isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v)
                  for v in draw)
          and info.min <= draw[0] < draw[1] <= info.max + (kind in "iu"))
    if not ok:
        raise refuse(entry, f"range of input {input_name!r} as [low, high], low < high, "
                     f"{'integers ' if kind in 'iu' else ''}within {dtype}", draw)
    return tuple(draw)
