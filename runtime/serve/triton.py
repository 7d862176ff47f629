"""`onnxtwin deploy --to triton`: a Triton Inference Server model repository for one export.

The config is built with Triton's own model-config protobuf (shipped with tritonclient),
so it cannot name a field Triton does not know, then parsed back and checked against the
ONNX signature before anything is written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.serve.batching import batch_dim
from onnxtwin.runtime.serve.oip import PROTOCOL_DATATYPE, protocol_shape
from onnxtwin.runtime.session import Session, TensorInfo

KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}


@dataclass(frozen=True)
class TritonOptions:
    """What config.pbtxt says beyond the signature."""

    provider: str = "cpu"  # cpu -> KIND_CPU instances, cuda -> KIND_GPU
    max_batch: int = 64  # Triton's max_batch_size; 0 turns batching off
    max_delay_us: int = 0  # dynamic_batching's max_queue_delay_microseconds
    instances: int = 1  # model instances (each an onnxruntime session)
    version: int = 1


def model_config(name: str, session: Session, options: TritonOptions) -> Any:
    """The ModelConfig message for `session`: batched if every tensor shares a first dim."""
    from tritonclient.grpc import model_config_pb2 as pb

    if options.provider not in KINDS:
        raise OnnxtwinError(f"provider: expected one of {list(KINDS)}, got {options.provider!r}")
    if options.max_batch < 0 or options.instances < 1 or options.max_delay_us < 0:
        raise OnnxtwinError(f"expected max batch >= 0, instances >= 1 and delay >= 0, got "
                            f"{options.max_batch}, {options.instances}, {options.max_delay_us}")
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
    """REPO/NAME/{config.pbtxt, VERSION/model.onnx}; returns the model folder.

    The folder is assembled beside its final place and renamed into it, so Triton never
    sees half a model; an existing model folder is refused, not overwritten.
    """
    from google.protobuf import text_format

    session = Session(model, "cpu")  # loads and checks the file; reads the signature
    name = name or model.name.removesuffix(".onnx").replace(".", "_")
    if not name or "/" in name or name.startswith("."):
        raise OnnxtwinError(f"name: expected a folder name for the model, got {name!r}")
    target = repo / name
    if target.exists():
        raise OnnxtwinError(f"{target}: expected a new model folder, got an existing one "
                            f"(remove it, or choose another --name)")
    text = text_format.MessageToString(model_config(name, session, options))
    check_config(text, session)
    repo.mkdir(parents=True, exist_ok=True)
    staging = repo / f".tmp-{os.getpid()}-{name}"
    try:
        (staging / str(options.version)).mkdir(parents=True)
        shutil.copyfile(model, staging / str(options.version) / "model.onnx")
        (staging / "config.pbtxt").write_text(text)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
