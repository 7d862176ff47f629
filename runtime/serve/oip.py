"""The Open Inference Protocol v2 (KServe v2 REST, Triton's HTTP API) as pure functions.

A request body is JSON, optionally followed by raw tensor bytes (the binary tensor data
extension: the header `Inference-Header-Content-Length` says where the JSON ends). Here it
becomes named numpy arrays, and outputs become a response body. No web framework is
imported; `server.py` puts these on HTTP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxtwin.runtime.errors import OnnxtwinError
from onnxtwin.runtime.session import TensorInfo

# The protocol's tensor data types -> numpy dtype names (BYTES, strings, is not supported).
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
             "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
             "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
PROTOCOL_DATATYPE = {v: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header giving the JSON part's length when binary tensor data follows it."""


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request: input arrays, and which outputs to return in which form."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None  # None: every output
    binary: Mapping[str, bool]  # output name -> return as binary data
    binary_default: bool


def protocol_shape(info: TensorInfo) -> list[int]:
    """The tensor's dims as the protocol (and Triton's config) writes them: dynamic is -1."""
    return [d if isinstance(d, int) else -1 for d in info.shape]


def tensor_metadata(info: TensorInfo) -> dict[str, Any]:
    """A tensor as the protocol describes it."""
    return {"name": info.name, "datatype": PROTOCOL_DATATYPE.get(info.dtype, info.dtype.upper()),
            "shape": protocol_shape(info)}


def model_metadata(name: str, version: str, inputs: tuple[TensorInfo, ...],
                   outputs: tuple[TensorInfo, ...]) -> dict[str, Any]:
    """The body of GET /v2/models/NAME."""
    return {"name": name, "versions": [version], "platform": "onnxruntime_onnx",
            "inputs": [tensor_metadata(i) for i in inputs],
            "outputs": [tensor_metadata(o) for o in outputs]}


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode POST .../infer; raise OnnxtwinError (one line) on anything malformed."""
    json_end = len(body) if header_length is None else _header_length(header_length, len(body))
    try:
        request = json.loads(body[:json_end])
    except (ValueError, UnicodeDecodeError) as e:
        raise OnnxtwinError(f"infer request: expected a JSON object, got invalid JSON ({e})") \
            from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OnnxtwinError("infer request: expected a JSON object with an 'inputs' list, got "
                            f"{_kind(request)}")
    binary = memoryview(body)[json_end:]
    inputs: dict[str, np.ndarray] = {}
    for tensor in request["inputs"]:
        name, array, used = _input_array(tensor, binary)
        if name in inputs:
            raise OnnxtwinError(f"infer request: expected each input once, got {name!r} twice")
        inputs[name] = array
        binary = binary[used:]
    if len(binary):
        raise OnnxtwinError(f"infer request: expected binary data only for inputs that declare "
                            f"binary_data_size, got {len(binary)} bytes more")
    params = _parameters(request, "infer request")
    default = bool(params.get("binary_data_output", False))
    wanted = request.get("outputs")
    if wanted is None:
        return InferRequest(_request_id(request), inputs, None, {}, default)
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(
            o.get("name"), str) for o in wanted):
        raise OnnxtwinError("infer request: expected 'outputs' to be a list of objects with a "
                            f"'name', got {_kind(wanted)}")
    flags = {o["name"]: bool(_parameters(o, o["name"]).get("binary_data", default))
             for o in wanted}
    return InferRequest(_request_id(request), inputs, tuple(flags), flags, default)


def infer_response(model: str, version: str, request: InferRequest,
                   outputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """Encode the requested outputs; returns the body and its HTTP headers."""
    names = request.outputs if request.outputs is not None else tuple(outputs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise OnnxtwinError(f"infer request: expected outputs among {list(outputs)}, got "
                            f"{unknown}")
    described, chunks = [], []
    for name in names:
        array = outputs[name]
        tensor = {"name": name, "datatype": PROTOCOL_DATATYPE[array.dtype.name],
                  "shape": list(array.shape)}
        if request.binary.get(name, request.binary_default):
            chunk = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = array.ravel().tolist()
        described.append(tensor)
    header = {"model_name": model, "model_version": version, "outputs": described}
    if request.id is not None:
        header["id"] = request.id
    head = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return b"".join([head, *chunks]), {"content-type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(head))}


def error_body(message: str) -> bytes:
    """The protocol's error object."""
    return json.dumps({"error": message}).encode()


def _input_array(tensor: Any, binary: memoryview) -> tuple[str, np.ndarray, int]:
    """One input tensor as (name, array, binary bytes consumed)."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise OnnxtwinError(f"infer request: expected each input to be an object with a "
                            f"'name', got {_kind(tensor)}")
    name = tensor["name"]
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in DATATYPES:
        raise OnnxtwinError(f"input {name!r}: expected datatype one of {list(DATATYPES)}, got "
                            f"{datatype!r}")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise OnnxtwinError(f"input {name!r}: expected 'shape' as a list of non-negative "
                            f"integers, got {shape!r}")
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    count = math.prod(shape)
    size = _parameters(tensor, name).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or size > len(binary):
            raise OnnxtwinError(f"input {name!r}: expected {count * dtype.itemsize} bytes of "
                                f"binary data for {datatype}{shape}, got binary_data_size "
                                f"{size!r} with {len(binary)} bytes left")
        array = np.frombuffer(binary[:size], dtype).reshape(shape).astype(dtype.newbyteorder("="))
        return name, array, size
    array = _json_array(name, datatype, tensor.get("data"))
    if array.size != count:
        raise OnnxtwinError(f"input {name!r}: expected {count} values for shape {shape}, got "
                            f"{array.size}")
    return name, array.reshape(shape), 0


def _json_array(name: str, datatype: str, data: Any) -> np.ndarray:
    """JSON numbers as `datatype`; strings, ragged lists and values the type cannot hold
    exactly (2.5 or 2**40 as INT32, 1 as BOOL) are refused, not converted."""
    dtype = np.dtype(DATATYPES[datatype])
    kinds = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]
    try:
        raw = np.asarray(data)
        exact = raw.size == 0 or (raw.dtype.kind in kinds and (
            dtype.kind == "f" or np.array_equal(raw.astype(dtype), raw)))
    except (ValueError, TypeError, OverflowError):
        exact = False
    if not exact:
        raise OnnxtwinError(f"input {name!r}: expected 'data' as a (nested) list of "
                            f"{datatype} values, got {_kind(data)}")
    return raw.astype(dtype)


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise OnnxtwinError(f"{where}: expected 'parameters' to be an object, got "
                            f"{_kind(params)}")
    return params


def _request_id(request: dict) -> str | None:
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise OnnxtwinError(f"infer request: expected 'id' to be a string, got {_kind(rid)}")
    return rid


def _header_length(value: str, body_length: int) -> int:
    if not value.isdigit() or int(value) > body_length:
        raise OnnxtwinError(f"{HEADER_LENGTH}: expected a byte count of at most the body's "
                            f"{body_length}, got {value!r}")
    return int(value)


def _kind(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else \
        type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
