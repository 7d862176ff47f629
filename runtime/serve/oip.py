"""The Open Inference Protocol v2 (KServe v2 REST, Triton's HTTP API) as pure functions.

A request body is JSON, optionally followed by raw tensor bytes (the binary tensor data
extension: the header `Inference-Header-Content-Length` says where the JSON ends). Here it
becomes named numpy arrays, and outputs become a response body. No web framework is
imported; `server.py` puts these on HTTP.

Every field is checked for its JSON type (an integer is never a bool or a float, a flag
is a JSON boolean) and sane size before anything is sized from it. Responses are strict
JSON: a float output holding NaN or Infinity is refused in JSON form (the protocol's JSON
has no such numbers) with a message that asks for it as binary data, which carries them.
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

# The protocol's tensor data types -> numpy dtype names (BYTES, strings, only as outputs).
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
             "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
             "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
PROTOCOL_DATATYPE = {v: k for k, v in DATATYPES.items()}
ORT_DATATYPE = {"tensor(string)": "BYTES"}
"""Protocol types of onnxruntime element types that TensorInfo keeps as onnxruntime names
(session.ORT_DTYPES maps every numeric one to numpy's)."""
HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header giving the JSON part's length when binary tensor data follows it."""
MAX_RANK = 32  # numpy 1's limit, which clients written for Triton assume
MAX_ELEMENTS = 2**32  # per tensor, a dim of 0 counted as 1: no body carries more
MAX_NAME = 256  # characters in a tensor name
MAX_TENSORS = 1024  # inputs or outputs in one request
MAX_DIGITS = 18  # a byte count in a header: below 10**18, so int() never meets a huge string
UNSUPPORTED = ("classification", "shared_memory_region")
"""Parameters of protocol extensions not served here: ignoring them would answer a
different question than the one asked."""


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


def protocol_datatype(info: TensorInfo) -> str | None:
    """The protocol's datatype of a graph input or output; None if it has none."""
    return PROTOCOL_DATATYPE.get(info.dtype) or ORT_DATATYPE.get(info.dtype)


def tensor_metadata(info: TensorInfo) -> dict[str, Any]:
    """A tensor as the protocol describes it."""
    return {"name": info.name, "datatype": protocol_datatype(info) or info.dtype.upper(),
            "shape": protocol_shape(info)}


def model_metadata(name: str, version: str, inputs: tuple[TensorInfo, ...],
                   outputs: tuple[TensorInfo, ...]) -> dict[str, Any]:
    """The body of GET /v2/models/NAME."""
    return {"name": name, "versions": [version], "platform": "onnxruntime_onnx",
            "inputs": [tensor_metadata(i) for i in inputs],
            "outputs": [tensor_metadata(o) for o in outputs]}


def byte_count(header: str, value: str) -> int:
    """A header's byte count: ASCII digits only (str.isdigit also takes '٣' and '²')."""
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS):
        raise OnnxtwinError(f"{header}: expected a byte count in ASCII digits, got "
                            f"{_short(repr(value))}")
    return int(value)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode POST .../infer; raise OnnxtwinError (one line) on anything malformed."""
    json_end = len(body) if header_length is None else _header_length(header_length, len(body))
    request = _json(body[:json_end])
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OnnxtwinError("infer request: expected a JSON object with an 'inputs' list, got "
                            f"{_kind(request)}")
    _count("inputs", request["inputs"])
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
    default = _flag(_parameters(request, "infer request"), "binary_data_output", False,
                    "infer request")
    wanted = request.get("outputs")
    if wanted is None:
        return InferRequest(_request_id(request), inputs, None, {}, default)
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and _is_name(
            o.get("name")) for o in wanted):
        raise OnnxtwinError("infer request: expected 'outputs' to be a list of objects with a "
                            f"'name', got {_kind(wanted)}")
    _count("outputs", wanted)
    flags: dict[str, bool] = {}
    for o in wanted:
        if o["name"] in flags:
            raise OnnxtwinError(f"infer request: expected each output once, got {o['name']!r} "
                                f"twice")
        flags[o["name"]] = _flag(_parameters(o, f"output {o['name']!r}"), "binary_data",
                                 default, f"output {o['name']!r}")
    return InferRequest(_request_id(request), inputs, tuple(flags), flags, default)


def wanted_outputs(request: InferRequest, available: list[str]) -> tuple[str, ...]:
    """The names of the outputs to return, each one of `available` (checked before a run)."""
    names = request.outputs if request.outputs is not None else tuple(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise OnnxtwinError(f"infer request: expected outputs among {available}, got {unknown}")
    return names


def infer_response(model: str, version: str, request: InferRequest,
                   outputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """Encode the requested outputs; returns the body and its HTTP headers."""
    described, chunks = [], []
    for name in wanted_outputs(request, list(outputs)):
        array = outputs[name]
        datatype = "BYTES" if array.dtype == object else PROTOCOL_DATATYPE[array.dtype.name]
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.binary.get(name, request.binary_default):
            chunk = _binary(array)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = _json_data(name, array)
        described.append(tensor)
    header = {"model_name": model, "model_version": version, "outputs": described}
    if request.id is not None:
        header["id"] = request.id
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return b"".join([head, *chunks]), {"content-type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(head))}


def error_body(message: str) -> bytes:
    """The protocol's error object: strict JSON on one line, whatever the message quotes (a
    line break, or a lone surrogate that strict parsers refuse, becomes a space or '?')."""
    line = " ".join(str(message).splitlines()).encode("utf-8", "replace").decode()
    return json.dumps({"error": line}).encode()


def _json(text: bytes) -> Any:
    """JSON text as Python values; nesting deeper than Python's recursion allows is refused."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise OnnxtwinError(f"infer request: expected a JSON object, got invalid JSON "
                            f"({_short(str(e))})") from None
    except RecursionError:
        raise OnnxtwinError("infer request: expected JSON nested a few levels deep, got "
                            "nesting deeper than the parser's recursion limit") from None


def _binary(array: np.ndarray) -> bytes:
    """An output as the binary extension writes it: little-endian values, or for BYTES each
    element's UTF-8 preceded by its length as a little-endian uint32."""
    if array.dtype != object:
        return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    items = [str(v).encode() for v in array.ravel()]
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def _json_data(name: str, array: np.ndarray) -> list:
    """An output's values as a flat JSON list; NaN and Infinity have no JSON form."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise OnnxtwinError(f"output {name!r}: expected finite values to write as JSON, got "
                            f"{bad} NaN/Inf of {array.size} (ask for it with binary_data: "
                            f"true, which carries them)")
    return [str(v) for v in array.ravel()] if array.dtype == object else array.ravel().tolist()


def _input_array(tensor: Any, binary: memoryview) -> tuple[str, np.ndarray, int]:
    """One input tensor as (name, array, binary bytes consumed)."""
    if not isinstance(tensor, dict) or not _is_name(tensor.get("name")):
        raise OnnxtwinError(f"infer request: expected each input to be an object with a "
                            f"'name' of 1 to {MAX_NAME} characters, got {_kind(tensor)}")
    name = tensor["name"]
    datatype, shape = tensor.get("datatype"), _shape(name, tensor.get("shape"))
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise OnnxtwinError(f"input {name!r}: expected datatype one of {list(DATATYPES)}, got "
                            f"{_kind(datatype)}")
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    count = math.prod(shape)
    params = _parameters(tensor, f"input {name!r}")
    size = params.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size != count * dtype.itemsize or size > len(binary):
            raise OnnxtwinError(f"input {name!r}: expected {count * dtype.itemsize} bytes of "
                                f"binary data for {datatype}{shape}, got binary_data_size "
                                f"{_kind(size)} with {len(binary)} bytes left")
        raw = np.frombuffer(binary[:size], dtype)
        if dtype.kind == "b" and (raw.view(np.uint8) > 1).any():
            raise OnnxtwinError(f"input {name!r}: expected BOOL bytes 0 or 1, got others")
        return name, raw.reshape(shape).astype(dtype.newbyteorder("=")), size
    array = _json_array(name, datatype, tensor.get("data"))
    if array.size != count:
        raise OnnxtwinError(f"input {name!r}: expected {count} values for shape {shape}, got "
                            f"{array.size}")
    return name, array.reshape(shape), 0


def _shape(name: str, shape: Any) -> list[int]:
    """A tensor's 'shape': at most MAX_RANK integers >= 0 (not bools or floats), at most
    MAX_ELEMENTS elements."""
    if isinstance(shape, list) and len(shape) > MAX_RANK:
        raise OnnxtwinError(f"input {name!r}: expected 'shape' with at most {MAX_RANK} dims, "
                            f"got {len(shape)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise OnnxtwinError(f"input {name!r}: expected 'shape' as a list of non-negative "
                            f"integers, got {_short(repr(shape))}")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise OnnxtwinError(f"input {name!r}: expected 'shape' of at most {MAX_ELEMENTS} "
                            f"elements (a dim of 0 counted as 1), got {_short(repr(shape))}")
    return shape


def _json_array(name: str, datatype: str, data: Any) -> np.ndarray:
    """JSON numbers as `datatype`; strings, ragged lists and values the type cannot hold
    (2.5 or 2**40 as INT32, 1 as BOOL, 1e39 as FP32) are refused, not converted."""
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
    with np.errstate(over="ignore"):
        array = raw.astype(dtype)
    if dtype.kind == "f" and raw.size:
        overflow = np.isinf(array) & np.isfinite(raw)
        if overflow.any():
            raise OnnxtwinError(f"input {name!r}: expected {datatype} values of magnitude at "
                                f"most {float(np.finfo(dtype).max):g}, got "
                                f"{float(raw[overflow].flat[0]):g}")
    return array


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise OnnxtwinError(f"{where}: expected 'parameters' to be an object, got "
                            f"{_kind(params)}")
    unsupported = [p for p in UNSUPPORTED if p in params]
    if unsupported:
        raise OnnxtwinError(f"{where}: expected no {unsupported[0]!r} parameter (that protocol "
                            f"extension is not served), got one")
    return params


def _flag(params: dict, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise OnnxtwinError(f"{where}: expected parameter {key!r} to be true or false, got "
                            f"{_kind(value)}")
    return value


def _request_id(request: dict) -> str | None:
    rid = request.get("id")
    if rid is not None and not isinstance(rid, str):
        raise OnnxtwinError(f"infer request: expected 'id' to be a string, got {_kind(rid)}")
    return rid


def _count(key: str, items: list) -> None:
    if len(items) > MAX_TENSORS:
        raise OnnxtwinError(f"infer request: expected at most {MAX_TENSORS} {key}, got "
                            f"{len(items)}")


def _header_length(value: str, body_length: int) -> int:
    if byte_count(HEADER_LENGTH, value) > body_length:
        raise OnnxtwinError(f"{HEADER_LENGTH}: expected a byte count of at most the body's "
                            f"{body_length}, got {value!r}")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _kind(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | float | bool | None) else \
        str(value) if _is_int(value) and value.bit_length() < 128 else type(value).__name__
    return _short(text)


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
