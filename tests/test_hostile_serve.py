"""`onnxtwin serve` against hostile and careless clients (issue 17).

Every request and model file is built here; each test asserts the status and the one-line
error, and that the server still answers afterwards. Models are tiny graphs made with
onnx.helper; their outputs are computed here with numpy, not by the code under test.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from cli_runner import CLI
from onnx import TensorProto, helper

from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime.serve.batching import Scheduler, Unavailable
from onnxtwin.runtime.serve.oip import HEADER_LENGTH, error_body, parse_infer_request
from onnxtwin.runtime.serve.server import (
    ServeOptions,
    create_app,
    listen,
    model_names,
    serve,
    uvicorn_config,
)

DATATYPE_NAMES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                  "INT64", "FP16", "FP32", "FP64"]


def save(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 refuses
    onnx.save(model, path)
    return path


def info(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


TABLE = np.arange(8, dtype=np.float32).reshape(4, 2)
F, B = TensorProto.FLOAT, TensorProto.BOOL


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models, one per signature the server must handle."""
    out = tmp_path_factory.mktemp("hostile")
    node = helper.make_node
    return {
        "rows": save(out / "rows.onnx", [node("Neg", ["x"], ["y"])],
                     [info("x", F, ["batch", 4])], [info("y", F, ["batch", 4])]),
        "scalar": save(out / "scalar.onnx", [node("Neg", ["x"], ["y"])],
                       [info("x", F, [])], [info("y", F, [])]),
        "constant": save(out / "constant.onnx", [node("Constant", [], ["y"], value=(
            helper.make_tensor("c", F, [2], [1, 2])))], [], [info("y", F, [2])]),
        "text": save(out / "text.onnx", [node("Cast", ["x"], ["y"], to=TensorProto.STRING)],
                     [info("x", F, ["batch", 2])], [info("y", TensorProto.STRING,
                                                         ["batch", 2])]),
        "flags": save(out / "flags.onnx", [node("Not", ["x"], ["y"])],
                      [info("x", B, ["batch", 3])], [info("y", B, ["batch", 3])]),
        "total": save(out / "total.onnx", [node("ReduceSum", ["x"], ["y"], keepdims=0)],
                      [info("x", F, ["batch", 4])], [info("y", F, [])]),
        "log": save(out / "log.onnx", [node("Log", ["x"], ["y"])],
                    [info("x", F, ["batch", 2])], [info("y", F, ["batch", 2])]),
        "lookup": save(out / "lookup.onnx", [node("Gather", ["table", "x"], ["y"])],
                       [info("x", TensorProto.INT64, ["batch", 1])],
                       [info("y", F, ["batch", 1, 2])],
                       [onnx.numpy_helper.from_array(TABLE, "table")]),
        "attention": save(out / "attention.onnx", [
            node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), node("MatMul", ["x", "t"], ["s"]),
            node("Softmax", ["s"], ["p"], axis=-1),
            node("ReduceSum", ["p", "axes"], ["y"], keepdims=0)],
            [info("x", F, ["batch", "seq", 8])], [info("y", F, ["batch", "seq"])],
            [helper.make_tensor("axes", TensorProto.INT64, [1], [2])]),
        "coupled": save(out / "coupled.onnx", [  # x - mean over the batch: rows interact
            node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
            node("Sub", ["x", "m"], ["y"])],
            [info("x", F, ["batch", 3])], [info("y", F, ["batch", 3])],
            [helper.make_tensor("axes", TensorProto.INT64, [1], [0])]),
        "words": save(out / "words.onnx", [node("Identity", ["x"], ["y"])],
                      [info("x", TensorProto.STRING, [2])], [info("y", TensorProto.STRING, [2])]),
    }


def attention_bytes(batch: int, seq: int) -> int:
    """Peak live bytes of `attention`: t [b,8,s] and scores [b,s,s] at the MatMul, scores
    and p at the Softmax, p and y at the ReduceSum."""
    t, scores, p, y = (4 * batch * n for n in (8 * seq, seq * seq, seq * seq, seq))
    return max(t, t + scores, scores + p, p + y)


class Slow(Session):
    """A Session whose runs take `delay` s longer, record their rows, and may fail once."""

    def __init__(self, *args, delay: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay, self.batches, self.fail_once = delay, [], None

    def run(self, inputs):
        time.sleep(self.delay)
        self.batches.append(len(next(iter(inputs.values()))))
        if self.fail_once is not None:
            error, self.fail_once = self.fail_once, None
            raise error
        return super().run(inputs)


DEFAULTS = ServeOptions()


def opened(path: Path, options: ServeOptions = DEFAULTS, kind=Session, **fields) -> Session:
    """A session as the server opens it (`options.session_bounds`)."""
    return kind(path, **options.session_bounds, **fields)


@contextmanager
def serving(sessions, options: ServeOptions = DEFAULTS):
    """The app on uvicorn, with the server's own connection settings, in a thread."""
    import uvicorn

    listener = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(create_app(sessions, options), options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)


def call(port: int, method: str, path: str, body: bytes = b"", headers=()) -> tuple[int, dict]:
    """One request; the status and the JSON body ({} when empty)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest(method, path)
    for name, value in (("Content-Length", str(len(body))), *headers):
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data) if data else {}


def infer(port: int, model: str, request: dict, **kw) -> tuple[int, dict]:
    return call(port, "POST", f"/v2/models/{model}/infer", json.dumps(request).encode(), **kw)


def x_input(**fields) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4],
                        **fields}]}


def binary_request(name: str, array: np.ndarray, datatype: str = "FP32",
                   binary_output: bool = False) -> tuple[bytes, str]:
    head = json.dumps({"inputs": [{"name": name, "datatype": datatype,
                                   "shape": list(array.shape),
                                   "parameters": {"binary_data_size": array.nbytes}}],
                       "parameters": {"binary_data_output": binary_output}}).encode()
    return head + array.tobytes(), str(len(head))


def ready(port: int) -> int:
    return call(port, "GET", "/v2/health/ready")[0]


@pytest.fixture(scope="module")
def port(models):
    """A server of every servable tiny model, with the default options."""
    names = ("rows", "scalar", "constant", "text", "flags", "total", "log")
    with serving({n: opened(models[n]) for n in names}) as port:
        yield port


# --- small bad requests: 400 in one line, never a 500, and the server stays ready ---

NESTED = b"[" * 100_000
TOO_DEEP = ("infer request: expected JSON nested a few levels deep, got nesting deeper than "
            "the parser's recursion limit")


@pytest.mark.parametrize(("body", "headers", "message"), [
    (x_input(shape=[0, 10**30]), (), "input 'x': expected 'shape' of at most 4294967296 "
     "elements (a dim of 0 counted as 1), got [0, 1000000000000000000000000000000]"),
    (x_input(shape=[True, 4]), (), "input 'x': expected 'shape' as a list of non-negative "
     "integers, got [True, 4]"),
    (x_input(shape=[1] * 33), (), "input 'x': expected 'shape' with at most 32 dims, got 33"),
    (x_input(datatype=["FP32"]), (), f"input 'x': expected datatype one of {DATATYPE_NAMES}, "
     "got list"),
    (x_input(data=[1e39, 0, 0, 0]), (), "input 'x': expected FP32 values of magnitude at most "
     "3.40282e+38, got 1e+39"),
    (x_input(datatype="FP16", data=[70000, 0, 0, 0]), (), "input 'x': expected FP16 values of "
     "magnitude at most 65504, got 70000"),
    ({**x_input(), "parameters": {"binary_data_output": "false"}}, (), "infer request: "
     "expected parameter 'binary_data_output' to be true or false, got \"false\""),
    ({**x_input(), "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, (),
     "output 'y': expected parameter 'binary_data' to be true or false, got 1"),
    ({**x_input(), "outputs": [{"name": "y"}, {"name": "y"}]}, (),
     "infer request: expected each output once, got 'y' twice"),
    ({**x_input(), "outputs": [{"name": "z"}]}, (),
     "infer request: expected outputs among ['y'], got ['z']"),
    ({**x_input(), "outputs": [{"name": "y", "parameters": {"classification": 3}}]}, (),
     "output 'y': expected no 'classification' parameter (that protocol extension is not "
     "served), got one"),
    ({**x_input(), "id": 5}, (), "infer request: expected 'id' to be a string, got 5"),
    (x_input(name=""), (), "infer request: expected each input to be an object with a 'name' "
     "of 1 to 256 characters, got dict"),
    ({"inputs": [{"name": f"x{k}"} for k in range(1025)]}, (),
     "infer request: expected at most 1024 inputs, got 1025"),
    (x_input(), ((HEADER_LENGTH, b"\xb2"),),  # '²' in latin-1: str.isdigit says yes
     "Inference-Header-Content-Length: expected a byte count in ASCII digits, got '²'"),
    (x_input(), ((HEADER_LENGTH, "9" * 40),),
     "Inference-Header-Content-Length: expected a byte count in ASCII digits, got '" +
     "9" * 36 + "..."),
    (x_input(), (("Content-Encoding", "gzip"),),
     "request: expected an uncompressed body, got Content-Encoding 'gzip'"),
    (NESTED, (), TOO_DEEP),
], ids=lambda v: None)
def test_small_bad_requests_get_400_in_one_line(port, body, headers, message):
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, answer = call(port, "POST", "/v2/models/rows/infer", body, headers)
    assert (status, answer) == (400, {"error": message})
    assert ready(port) == 200


def test_binary_sizes_must_be_integers_and_bools_bytes_0_or_1(port):
    body, length = binary_request("x", np.ones((1, 4), np.float32))
    as_float = body.replace(b'"binary_data_size": 16', b'"binary_data_size": 16.0')
    assert call(port, "POST", "/v2/models/rows/infer", as_float, ((HEADER_LENGTH,
                                                                     str(int(length) + 2)),)) == (
        400, {"error": "input 'x': expected 16 bytes of binary data for FP32[1, 4], got "
                       "binary_data_size 16.0 with 16 bytes left"})
    body, length = binary_request("x", np.array([[1, 2, 0]], np.uint8), "BOOL")
    assert call(port, "POST", "/v2/models/flags/infer", body, ((HEADER_LENGTH, length),)) == (
        400, {"error": "input 'x': expected BOOL bytes 0 or 1, got others"})
    assert ready(port) == 200


def test_parser_refuses_non_ascii_digits_and_deep_json_in_one_line():
    for value in ("٣", "²", "1" * 19):
        with pytest.raises(OnnxtwinError) as e:
            parse_infer_request(b"{}", value)
        assert str(e.value) == (f"Inference-Header-Content-Length: expected a byte count in "
                                f"ASCII digits, got {value!r}")
    with pytest.raises(OnnxtwinError, match="^" + TOO_DEEP.replace("'", ".") + "$"):
        parse_infer_request(b'{"inputs": ' + NESTED, None)


# --- any signature: probes, scalars, no inputs, strings, bools ---

def test_models_of_any_signature_are_ready_and_answer(port):
    assert ready(port) == 200
    for model in ("scalar", "constant", "text", "flags", "total", "log"):
        assert call(port, "GET", f"/v2/models/{model}/ready")[0] == 200
    cases = [
        ("scalar", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [], "data": [2.5]}]},
         {"datatype": "FP32", "shape": [], "data": [-2.5]}),
        ("constant", {"inputs": []}, {"datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}),
        ("text", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                              "data": [1.5, -2, 0.25, 1e10]}]},
         {"datatype": "BYTES", "shape": [2, 2], "data": ["1.5", "-2", "0.25", "1e+10"]}),
        ("flags", {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1, 3],
                               "data": [True, False, True]}]},
         {"datatype": "BOOL", "shape": [1, 3], "data": [False, True, False]}),
        ("total", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                               "data": list(range(8))}]},
         {"datatype": "FP32", "shape": [], "data": [28.0]}),
    ]
    for model, request, output in cases:
        status, answer = infer(port, model, request)
        assert (status, answer["outputs"]) == (200, [{"name": "y", **output}]), model
    assert call(port, "GET", "/v2/models/text")[1]["outputs"] == [
        {"name": "y", "datatype": "BYTES", "shape": [-1, 2]}]


def test_string_outputs_as_binary_data_decode_with_tritonclient(port):
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                           "data": [0.5, 3]}], "parameters": {"binary_data_output": True}}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v2/models/text/infer", json.dumps(request).encode())
    response = connection.getresponse()
    result = triton.InferenceServerClient.parse_response_body(
        response.read(), header_length=int(response.getheader(HEADER_LENGTH)))
    assert result.as_numpy("y").tolist() == [[b"0.5", b"3"]]


# --- strict JSON out ---

def test_non_finite_outputs_are_refused_as_json_and_sent_as_binary(port):
    x = np.array([[0, -1], [1, math.e]], np.float32)
    request = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                           "data": x.ravel().tolist()}]}
    assert infer(port, "log", request) == (400, {"error": (
        "output 'y': expected finite values to write as JSON, got 2 NaN/Inf of 4 (ask for it "
        "with binary_data: true, which carries them)")})
    body, length = binary_request("x", x, binary_output=True)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v2/models/log/infer", body, {HEADER_LENGTH: length})
    response = connection.getresponse()
    result = triton.InferenceServerClient.parse_response_body(
        response.read(), header_length=int(response.getheader(HEADER_LENGTH)))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(result.as_numpy("y"), np.log(x), rtol=1e-6)


def test_error_bodies_are_strict_json_on_one_line(port):
    assert error_body("two\nlines \ud800") == b'{"error": "two lines ?"}'
    status, answer = call(port, "GET", "/v2/a%0Ab")
    assert (status, answer) == (404, {"error": "GET /v2/a b: expected a v2 route (Not Found)"})


# --- memory: a run over the bound gets 413 before it runs; batches stay within it ---

def test_a_run_over_the_memory_bound_gets_413_before_it_runs(models):
    options = ServeOptions(max_run_bytes=attention_bytes(2, 512))
    session = opened(models["attention"], options, Slow)
    with serving({"attention": session}, options) as port:
        answers = {}
        for batch in (3, 2):
            body, length = binary_request("x", np.ones((batch, 512, 8), np.float32))
            answers[batch] = call(port, "POST", "/v2/models/attention/infer", body,
                                  ((HEADER_LENGTH, length),))
        assert session.batches == [2]  # the refused request never ran
        assert ready(port) == 200
    status, answer = answers[3]
    assert status == 413 and answer["error"].startswith(
        f"attention.onnx: expected a run that needs at most "
        f"{attention_bytes(2, 512) / 2**20:.0f} MiB, got batch=3, seq=512, which needs about "
        f"{attention_bytes(3, 512) / 2**20:.0f} MiB")
    assert "\n" not in answer["error"]
    assert answers[2][0] == 200 and answers[2][1]["outputs"][0]["shape"] == [2, 512]


def test_batches_stay_within_the_memory_bound(models):
    """Twelve one-row requests wait together; only four rows fit one run's memory."""
    options = ServeOptions(max_batch=64, max_delay_ms=200,
                           max_run_bytes=attention_bytes(4, 64))
    session = opened(models["attention"], options, Slow, delay=0.05)
    rows = [np.random.default_rng(k).random((1, 64, 8), dtype=np.float32) for k in range(12)]
    with serving({"attention": session}, options) as port, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda x: infer(port, "attention", {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 64, 8],
             "data": x.ravel().tolist()}]}), rows))
    assert attention_bytes(5, 64) > options.max_run_bytes
    assert sum(session.batches) == 12 and max(session.batches) == 4, session.batches
    for status, answer in answers:  # a softmax's rows sum to 1
        assert status == 200
        np.testing.assert_allclose(answer["outputs"][0]["data"], np.ones(64), rtol=1e-6)


# --- a failing run: only its own request fails, and the worker goes on ---

def test_a_failing_run_fails_only_its_own_request(models):
    options = ServeOptions(max_batch=8, max_delay_ms=300)
    session = opened(models["lookup"], options, Slow, delay=0.05)
    indices = [0, 3, 7, 1, 2, 0]  # 7 is out of the table's 4 rows
    with serving({"lookup": session}, options) as port, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: infer(port, "lookup", {"inputs": [
            {"name": "x", "datatype": "INT64", "shape": [1, 1], "data": [i]}]}), indices))
        assert max(session.batches) > 1, session.batches  # they did batch
        for i, (status, answer) in zip(indices, answers, strict=True):
            if i == 7:
                assert status == 400 and answer["error"].startswith(
                    "lookup.onnx: expected onnxruntime to run it on x int64[1, 1], got:")
            else:
                assert (status, answer["outputs"][0]["data"]) == (200, TABLE[i].tolist())
        session.fail_once = RuntimeError("device lost\nsecond line")
        assert infer(port, "lookup", {"inputs": [{"name": "x", "datatype": "INT64",
                                                  "shape": [1, 1], "data": [1]}]}) == (
            503, {"error": "device lost"})
        assert ready(port) == 200


def test_requests_while_the_server_stops_get_503(models):
    session = opened(models["rows"], kind=Slow, delay=0.2)
    x = {"x": np.ones((1, 4), np.float32)}

    async def main():
        scheduler = Scheduler(session, 0, 0, 8)
        scheduler.start()
        first = asyncio.ensure_future(scheduler.submit(x))
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(scheduler.stop())
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match=r"^server: expected to accept requests, got a "
                                               r"server shutting down$"):
            await scheduler.submit(x)
        await stopping
        return await first

    assert asyncio.run(main())["y"].tolist() == [[-1, -1, -1, -1]]


# --- connections: deadlines for headers, bodies and idling; a budget for bodies ---

def closed_after(sock: socket.socket, limit: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes `sock` (reading what it sends), sending one byte of
    `trickle` every 0.1 s meanwhile; fails after `limit` seconds."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            if trickle:
                try:
                    sock.sendall(trickle[:1])
                except OSError:  # closed while sending
                    return time.monotonic() - start
                trickle = trickle[1:]
        except ConnectionResetError:
            return time.monotonic() - start
    raise AssertionError(f"still open after {limit} s")


def test_stalled_and_idle_connections_are_closed_within_their_deadlines(models):
    options = ServeOptions(header_timeout_s=0.5, idle_timeout_s=0.5)
    with serving({"rows": opened(models["rows"])}, options) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")
        assert 0.4 < closed_after(silent, 3) < 1.5 and closed_after(half, 3) < 1.5
        slowloris = socket.create_connection(("127.0.0.1", port))
        assert 0.4 < closed_after(slowloris, 3, b"GET /v2/health/live HTTP/1.1\r\n" +
                                  b"X" * 100) < 1.5  # bytes keep coming, the deadline holds
        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
        assert 0.4 < closed_after(idle, 3) < 1.5
        assert call(port, "GET", "/v2/health/live")[0] == 200


def test_connections_past_the_cap_are_closed_at_once_and_the_rest_served(models):
    options = ServeOptions(max_connections=3, header_timeout_s=5)
    with serving({"rows": opened(models["rows"])}, options) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)  # accepted
        extra = socket.create_connection(("127.0.0.1", port))
        assert closed_after(extra, 1) < 0.5
        for sock in held[:2]:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert call(port, "GET", "/v2/health/live")[0] == 200


def test_a_slow_body_gets_408_and_its_connection_closes(models):
    with serving({"rows": opened(models["rows"])}, ServeOptions(body_timeout_s=0.5)) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v2/models/rows/infer HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Length: 100\r\n\r\n0123456789")
        sock.settimeout(3)
        start, answer = time.monotonic(), b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert time.monotonic() - start < 1.5
        head, body = answer.split(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and json.loads(body) == {
            "error": "request: expected the body within 0.5 s, got 10 bytes by then"}
        assert ready(port) == 200


def test_bodies_in_flight_have_a_budget(models):
    """Two stalled uploads hold the whole budget: a third is refused with 503, the server
    stays live, and once they go the budget is free again."""
    options = ServeOptions(max_request_bytes=2**20, max_inflight_bytes=2**21)
    body = json.dumps(x_input()).encode()
    with serving({"rows": opened(models["rows"])}, options) as port:
        stalled = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /v2/models/rows/infer HTTP/1.1\r\nHost: a\r\n"
                         b"Content-Length: 1048576\r\n\r\n" + bytes(1000))
            stalled.append(sock)
        time.sleep(0.3)
        assert call(port, "POST", "/v2/models/rows/infer", body) == (503, {"error": (
            f"server: expected request bodies in flight to total at most 2097152 bytes, got "
            f"2097152 held and {len(body)} more asked (retry later)")})
        assert call(port, "GET", "/v2/health/live")[0] == 200
        for sock in stalled:
            sock.close()
        time.sleep(0.3)
        assert call(port, "POST", "/v2/models/rows/infer", body)[0] == 200


@pytest.mark.parametrize(("framing", "status", "expected"), [
    (b"Transfer-Encoding: chunked\r\n", 200, {"outputs": [
        {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [-1.0, -2.0, -3.0, -4.0]}]}),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400,
     {"error": "request: expected Content-Length or Transfer-Encoding, got both"}),
])
def test_chunked_bodies_are_read_and_double_framing_is_refused(port, framing, status,
                                                               expected):
    body = json.dumps(x_input()).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v2/models/rows/infer HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" +
                 framing + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    sock.settimeout(5)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, answer = answer.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert json.loads(answer).items() >= expected.items()


# --- what the server is given: names, signatures, bounds ---

@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-x", "a b", "ü", "x" * 65, "a\nb"])
def test_model_names_must_be_safe_url_path_parts(name):
    with pytest.raises(OnnxtwinError) as e:
        model_names([Path(f"/models/{name}.onnx")])
    assert str(e.value) == ("model name: expected 1 to 64 ASCII letters, digits, '_', '.' or "
                            f"'-', starting with a letter or digit, got {name!r}")
    assert "\n" not in str(e.value)


def test_safe_names_are_kept():
    paths = [Path("/m/cnn.torch.onnx"), Path("/m/My-model_2.onnx")]
    assert model_names(paths) == {"cnn.torch": paths[0], "My-model_2": paths[1]}


def test_models_the_server_cannot_serve_are_refused_at_startup(models):
    with pytest.raises(OnnxtwinError) as e:
        create_app({"words": opened(models["words"])})
    assert str(e.value) == (f"model 'words': expected inputs of the protocol's datatypes "
                            f"{DATATYPE_NAMES}, got 'x' of tensor(string)")
    with pytest.raises(OnnxtwinError, match=r"^model name: expected 1 to 64"):
        create_app({"a/b": opened(models["rows"])})
    with pytest.raises(OnnxtwinError) as e:
        serve({"rows": Session(models["rows"])}, "127.0.0.1", 0, ServeOptions())
    assert str(e.value) == ("model 'rows': expected a session with memory_limit at most "
                            "1073741824, got None")


@pytest.mark.parametrize(("fields", "message"), [
    ({"header_timeout_s": math.nan}, "header_timeout_s: expected a number of seconds > 0, got nan"),
    ({"body_timeout_s": 0}, "body_timeout_s: expected a number of seconds > 0, got 0"),
    ({"max_run_bytes": 0}, "max_run_bytes: expected a number >= 1, got 0"),
    ({"max_request_bytes": 100, "max_inflight_bytes": 50},
     "max_inflight_bytes: expected a number >= 100, got 50"),
])
def test_serve_options_out_of_bounds_are_refused(fields, message):
    with pytest.raises(OnnxtwinError) as e:
        ServeOptions(**fields)
    assert str(e.value) == message


def test_the_default_bounds():
    options = ServeOptions()
    assert options.session_bounds == {"memory_limit": 2**30, "arena": False,
                                      "time_limit_s": 60.0}
    assert options.inflight_budget == 4 * 64 * 2**20


def test_a_model_whose_rows_interact_is_served_unbatched_with_right_answers(models):
    from onnxtwin.runtime.serve.batching import batch_invariant

    assert batch_invariant(opened(models["rows"])) is None
    assert batch_invariant(opened(models["coupled"])) == (
        "rows run together change each other's 'y'")
    process = subprocess.Popen([*CLI, "serve", str(models["coupled"]), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.endswith("; coupled unbatched: rows run together change each other's "
                             "'y')\n"), line
        url = line.split("http://")[1].split("/")[0]
        port = int(url.split(":")[1])
        rows = [np.full((1, 3), k, np.float32) for k in range(32)]
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda r: infer(port, "coupled", {"inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 3],
                 "data": r.ravel().tolist()}]}), rows))
        # alone, x - mean(x) over one row is 0
        assert answers == [(200, answers[0][1])] * 32
        assert all(a[1]["outputs"][0]["data"] == [0.0, 0.0, 0.0] for a in answers)
    finally:
        process.terminate()
        process.wait(30)


def test_a_request_that_would_run_for_ever_is_stopped_and_the_model_answers_after(tmp_path):
    from test_memory import counting_loop

    options = ServeOptions(max_run_s=0.3)
    with serving({"loop": opened(counting_loop(tmp_path / "loop.onnx"), options)},
                 options) as port:
        def count(m: int) -> tuple[int, dict]:
            return infer(port, "loop", {"inputs": [
                {"name": "M", "datatype": "INT64", "shape": [], "data": m}]})

        start = time.monotonic()
        assert count(10**12) == (413, {"error": "loop.onnx: expected a run within 0.3 s, got "
                                                "one stopped after that on M int64[]"})
        assert time.monotonic() - start < 2
        status, body = count(3)
        assert status == 200 and body["outputs"][0]["data"] == [3.0]
        assert ready(port) == 200
