"""`onnxtwin deploy --to triton`: a Triton Inference Server model repository for one export.

The config is built with Triton's own model-config protobuf (shipped with tritonclient),
so it cannot name a field Triton does not know, then parsed back and checked against the
ONNX signature before anything is written. The model's external data files travel with it,
and the staged repository must load in onnxruntime before it is renamed into place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.files import existing_file, make_folder, safe_name, temporary_name
from onnxtwin.runtime.serve.batching import batch_dim
from onnxtwin.runtime.serve.oip import PROTOCOL_DATATYPE, protocol_shape
from onnxtwin.runtime.session import Session, TensorInfo

KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}
INT32_MAX = 2**31 - 1  # Triton's max_batch_size and instance count are int32 fields
LIMITS = {"max_batch": (0, INT32_MAX), "max_delay_us": (0, 60_000_000),
          "instances": (1, 1024), "version": (1, INT32_MAX), "threads": (0, 1024)}
"""Bounds of the numeric options: what the protobuf fields hold, a minute of queue delay
(longer is a mistake, not a setting), and instances (each a session) a machine can hold."""
GRAPH_LEVELS = {"basic": -1, "extended": 1, "disable": 2, "all": None}
"""runtime.Session's optimisation levels as Triton's onnxruntime backend reads
optimization.graph.level (its src/onnxruntime.cc): -1 basic, 1 extended, 2 none; absent:
all. Neither `spinning` (session.intra_op.allow_spinning) nor the CPU fusions a Session leaves
out (runtime.session.CPU_SLOW_FUSIONS) can be set through that backend's config."""


@dataclass(frozen=True)
class TritonOptions:
    """What config.pbtxt says beyond the signature; checked when made, before any write."""

    provider: str = "cpu"  # cpu -> KIND_CPU instances, cuda -> KIND_GPU
    max_batch: int = 64  # Triton's max_batch_size; 0 turns batching off
    max_delay_us: int = 0  # dynamic_batching's max_queue_delay_microseconds
    instances: int = 1  # model instances (each an onnxruntime session)
    version: int = 1
    threads: int = 0  # onnxruntime intra-op threads (0: one per core): intra_op_thread_count
    optimization: str = "all"  # onnxruntime graph optimisation level (GRAPH_LEVELS)

    def __post_init__(self) -> None:
        if self.provider not in KINDS:
            raise OnnxtwinError(f"provider: expected one of {list(KINDS)}, got "
                                f"{self.provider!r}")
        if self.optimization not in GRAPH_LEVELS:
            raise OnnxtwinError(f"optimization: expected one of {list(GRAPH_LEVELS)}, got "
                                f"{self.optimization!r}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise OnnxtwinError(f"{name}: expected an integer from {low} to {high}, got "
                                    f"{value!r}")


def model_config(name: str, session: Session, options: TritonOptions) -> Any:
    """The ModelConfig message for `session`: batched if every tensor shares a first dim."""
    from tritonclient.grpc import model_config_pb2 as pb

    batched = options.max_batch > 0 and batch_dim(session) is not None
    config = pb.ModelConfig(name=name, backend="onnxruntime",
                            max_batch_size=options.max_batch if batched else 0)
    for info in session.inputs:
        config.input.append(pb.ModelInput(name=info.name, data_type=_data_type(info),
                                          dims=_dims(info, batched)))
    for info in session.outputs:
        config.output.append(pb.ModelOutput(name=info.name, data_type=_data_type(info),
                                            dims=_dims(info, batched)))
    if batched:
        config.dynamic_batching.SetInParent()  # present even with every field at its default
        config.dynamic_batching.max_queue_delay_microseconds = options.max_delay_us
    config.instance_group.append(pb.ModelInstanceGroup(
        count=options.instances, kind=pb.ModelInstanceGroup.Kind.Value(KINDS[options.provider])))
    if options.threads:  # the backend's default (0) is onnxruntime's: one per core
        config.parameters["intra_op_thread_count"].string_value = str(options.threads)
    if (level := GRAPH_LEVELS[options.optimization]) is not None:
        config.optimization.graph.level = level
    return config


def check_config(text: str, session: Session) -> Any:
    """Parse config.pbtxt text with Triton's protobuf; its tensors must match `session`."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    try:
        config = text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as e:
        raise OnnxtwinError(f"config.pbtxt: expected Triton's ModelConfig text format, got: "
                            f"{e}") from None
    batched = config.max_batch_size > 0
    for kind, declared, infos in (("input", config.input, session.inputs),
                                  ("output", config.output, session.outputs)):
        want = [(i.name, _data_type(i), _dims(i, batched)) for i in infos]
        got = [(t.name, t.data_type, list(t.dims)) for t in declared]
        if got != want:
            raise OnnxtwinError(f"config.pbtxt: expected {kind}s {want} from "
                                f"{session.path.name}, got {got}")
    return config


def write_repository(model: Path, repo: Path, name: str | None,
                     options: TritonOptions) -> Path:
    """REPO/NAME/{config.pbtxt, VERSION/model.onnx and its external data}; returns the
    model folder. `name` defaults to the file name without .onnx, dots as underscores.

    The folder is assembled beside its final place, loaded with onnxruntime, and only then
    renamed into it, so Triton never sees half a model or one that cannot load; an
    existing model folder is refused, not overwritten.
    """
    from google.protobuf import text_format

    name = _model_name(model, name)
    session = Session(model, "cpu")  # loads and checks the file; reads the signature
    target = repo / name
    if target.exists():
        raise OnnxtwinError(f"{target}: expected a new model folder, got an existing one "
                            f"(remove it, or choose another --name)")
    data = external_data(model)
    text = text_format.MessageToString(model_config(name, session, options))
    check_config(text, session)
    make_folder(repo)
    staging = repo / temporary_name(name)
    try:
        version = staging / str(options.version)
        version.mkdir(parents=True)
        shutil.copyfile(model, version / "model.onnx")
        for location in data:
            (version / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model.parent / location, version / location)
        (staging / "config.pbtxt").write_text(text)
        _check_loads(version / "model.onnx", model)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _model_name(model: Path, name: str | None) -> str:
    """`name`, or the default from the file name; either held to the safe alphabet."""
    if name is not None:
        return safe_name(name, "name")
    return safe_name(model.name.removesuffix(".onnx").replace(".", "_"),
                     f"{model.name}: the model name (choose one with --name)")


def external_data(model: Path) -> list[Path]:
    """The external data files `model` names, relative to its folder; each must be a file
    inside that folder (no absolute path, no `..` or symbolic link leading out of it)."""
    import onnx

    folder = model.parent.resolve()
    found = []
    for location in sorted(_locations(onnx.load(str(model), load_external_data=False))):
        relative = Path(os.path.normpath(location))
        source = model.parent / relative
        if "\0" in location or relative.is_absolute() or \
                not source.resolve().is_relative_to(folder):
            raise OnnxtwinError(f"{model}: expected external data inside the model's folder "
                                f"{folder}, got location {location!r}")
        existing_file(source, f"the external data file {location!r} of {model.name}")
        found.append(relative)
    return found


def _locations(model: Any) -> set[str]:
    """Every external data location the tensors of `model` name."""
    from onnx import TensorProto

    return {entry.value for tensor in _tensors(model)
            if tensor.data_location == TensorProto.EXTERNAL
            for entry in tensor.external_data if entry.key == "location"}


def _tensors(model: Any) -> Iterator[Any]:
    """Every tensor of `model`: initializers and attributes, in subgraphs and functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for graph in (*([attribute.g] if attribute.HasField("g") else []),
                          *attribute.graphs):
                yield from _graph_tensors(graph)


def _check_loads(staged: Path, model: Path) -> None:
    """The staged model (with its copied external data) must load in onnxruntime."""
    try:
        Session(staged, "cpu")
    except OnnxtwinError as e:
        raise OnnxtwinError(f"{model}: expected a Triton repository whose model onnxruntime "
                            f"loads, got: {e}") from None


def _data_type(info: TensorInfo) -> int:
    from tritonclient.grpc import model_config_pb2 as pb

    if info.dtype not in PROTOCOL_DATATYPE:
        raise OnnxtwinError(f"{info.name}: expected a tensor type Triton serves, got "
                            f"{info.dtype}")
    return pb.DataType.Value(f"TYPE_{PROTOCOL_DATATYPE[info.dtype]}")


def _dims(info: TensorInfo, batched: bool) -> list[int]:
    """Triton's dims: without the batch dim when Triton batches."""
    dims = protocol_shape(info)
    return dims[1:] if batched else dims
