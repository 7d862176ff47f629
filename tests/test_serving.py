"""`onnxtwin serve` (Open Inference Protocol v2) and `onnxtwin deploy --to triton`.

The client is tritonclient.http, written by NVIDIA for Triton, not by this project.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
import tritonclient.http as triton
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from onnxtwin.export import export_model
from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime.serve.oip import HEADER_LENGTH, infer_response, parse_infer_request
from onnxtwin.runtime.serve.server import ServeOptions, create_app, listen
from onnxtwin.runtime.serve.triton import TritonOptions, check_config
from tests.cli_runner import CLI, onnxtwin


@pytest.fixture(scope="module")
def files(tmp_path_factory, twins_of):
    """cnn.torch, transformer.torch and transformer.keras exports."""
    out = tmp_path_factory.mktemp("served")
    for name, framework in (("cnn", "torch"), ("transformer", "torch"),
                            ("transformer", "keras")):
        export_model(twins_of(name), framework, out)
    return out


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def tokens(rows: int, seq: int = 50, seed: int = 0) -> np.ndarray:
    t = np.random.default_rng(seed).integers(1, 10_000, (rows, seq))
    t[::3, : seq // 4] = 0  # left padding in every third row
    return t


@contextmanager
def serving(sessions, options: ServeOptions | None = None):
    """The app on uvicorn in a thread, on a free port; yields "127.0.0.1:PORT"."""
    import uvicorn

    socket = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(sessions, options or ServeOptions()),
                                           log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [socket]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{socket.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def infer(url: str, model: str, name: str, array: np.ndarray, binary: bool = True):
    client = triton.InferenceServerClient(url)
    tensor = triton.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32
                               else "INT64")
    tensor.set_data_from_numpy(array, binary_data=binary)
    wanted = [triton.InferRequestedOutput("logits", binary_data=binary)]
    return client.infer(model, [tensor], outputs=wanted).as_numpy("logits")


def post(url: str, path: str, body: bytes, headers=None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{url}{path}", body, headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- the protocol codec, against tritonclient's own encoder and decoder ---

def test_requests_that_tritonclient_encodes_decode_to_the_same_arrays():
    x, t = images(3), tokens(2)
    inputs = [triton.InferInput("image", list(x.shape), "FP32"),
              triton.InferInput("tokens", list(t.shape), "INT64")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    inputs[1].set_data_from_numpy(t, binary_data=False)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=[triton.InferRequestedOutput("logits", binary_data=True)],
        request_id="r7")
    parsed = parse_infer_request(body, str(json_size))
    assert parsed.id == "r7" and parsed.outputs == ("logits",) and parsed.binary == {
        "logits": True}
    np.testing.assert_array_equal(parsed.inputs["image"], x)
    np.testing.assert_array_equal(parsed.inputs["tokens"], t)
    assert parsed.inputs["image"].dtype == np.float32 and parsed.inputs["tokens"].dtype == np.int64


@pytest.mark.parametrize("binary", [True, False])
def test_responses_decode_with_tritonclient_bit_for_bit(binary):
    logits = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    logits[0, 0] = np.nextafter(np.float32(1), np.float32(2))  # one ulp above 1
    request = parse_infer_request(json.dumps({"inputs": [], "parameters": {
        "binary_data_output": binary}}).encode(), None)
    body, headers = infer_response("m", "1", request, {"logits": logits})
    result = triton.InferenceServerClient.parse_response_body(
        body, header_length=int(headers[HEADER_LENGTH]) if binary else None)
    assert result.as_numpy("logits").tobytes() == logits.tobytes()
    assert (HEADER_LENGTH in headers) == binary


@pytest.mark.parametrize(("request_json", "message"), [
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2, 3]}]},
     "input 'x': expected 2 values for shape [2], got 3"),
    ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [2.5]}]},
     "input 'x': expected 'data' as a (nested) list of INT64 values, got list"),
    ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [2**40]}]},
     "input 'x': expected 'data' as a (nested) list of INT32 values, got list"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]}]},
     "input 'x': expected 'data' as a (nested) list of FP32 values, got list"),
    ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
     "input 'x': expected datatype one of ['BOOL', "),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]},
     "input 'x': expected 'shape' as a list of non-negative integers, got [-1]"),
    ({"inputs": {"x": 1}}, "infer request: expected a JSON object with an 'inputs' list, got "
                           "dict"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2},
     "infer request: expected each input once, got 'x' twice"),
    ({"inputs": [], "outputs": "logits"}, "infer request: expected 'outputs' to be a list"),
])
def test_malformed_requests_fail_in_one_line(request_json, message):
    with pytest.raises(OnnxtwinError) as e:
        parse_infer_request(json.dumps(request_json).encode(), None)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_binary_data_must_match_its_declared_size():
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    assert parse_infer_request(head + bytes(8), str(len(head))).inputs["x"].tolist() == [0, 0]
    for body, length, message in [
            (head + bytes(4), str(len(head)), "expected 8 bytes of binary data for FP32[2], "
                                              "got binary_data_size 8 with 4 bytes left"),
            (head + bytes(12), str(len(head)), "expected binary data only for inputs that "
                                               "declare binary_data_size, got 4 bytes more"),
            (head, "99999", "Inference-Header-Content-Length: expected a byte count"),
            (b"{not json", None, "infer request: expected a JSON object, got invalid JSON")]:
        with pytest.raises(OnnxtwinError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_infer_request(body, length)


# --- the server, with tritonclient ---

def test_tritonclient_reads_metadata_and_infers_bit_for_bit(files):
    cnn = Session(files / "cnn.torch.onnx")
    transformer = Session(files / "transformer.keras.onnx")
    with serving({"cnn": cnn, "transformer": transformer}) as url:
        client = triton.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("cnn") and client.is_model_ready("transformer", "1")
        assert client.get_model_metadata("cnn") == {
            "name": "cnn", "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
        assert client.get_model_metadata("transformer")["inputs"] == [
            {"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}]
        for binary in (True, False):
            x, t = images(5), tokens(3, seq=17)
            assert infer(url, "cnn", "image", x, binary).tobytes() == \
                cnn.run({"image": x})["logits"].tobytes()
            assert infer(url, "transformer", "tokens", t, binary).tobytes() == \
                transformer.run({"tokens": t})["logits"].tobytes()


def test_errors_are_protocol_errors_not_500(files):
    with serving({"cnn": Session(files / "cnn.torch.onnx")},
                 ServeOptions(max_request_bytes=10_000)) as url:
        with pytest.raises(InferenceServerException) as e:
            infer(url, "cnn", "image", images(2)[:, 0])
        assert e.value.status() == "400" and e.value.message() == (
            "input 'image': expected float32[batch, 1, 28, 28], got float32[2, 28, 28]")
        with pytest.raises(InferenceServerException) as e:
            triton.InferenceServerClient(url).get_model_metadata("nope")
        assert e.value.status() == "404" and "expected one of ['cnn'], got 'nope'" in str(e.value)
        assert post(url, "/v2/models/cnn/infer", b"[1, 2")[0] == 400
        assert post(url, "/v2/models/cnn/infer", bytes(10_001)) == (413, {
            "error": "request: expected at most 10000 bytes, got 10001"})
        status, body = post(url, "/v2/models/cnn/versions/2/infer", b"{}")
        assert status == 404 and body["error"] == "model 'cnn': expected version 1, got '2'"


class SlowSession:
    """A Session whose runs take `delay` seconds longer, and count themselves."""

    def __init__(self, session: Session, delay: float) -> None:
        self.session, self.delay, self.batches = session, delay, []
        self.path, self.inputs, self.outputs = session.path, session.inputs, session.outputs
        self.validate = session.validate

    def __getattr__(self, name):  # run_dims, needed_bytes, memory_limit: the session's
        return getattr(self.session, name)

    def run(self, inputs):
        time.sleep(self.delay)
        self.batches.append(len(next(iter(inputs.values()))))
        return self.session.run(inputs)


def test_concurrent_requests_batch_into_fewer_runs_with_identical_results(files):
    """Rows of two sequence lengths arrive mixed; only rows of one length batch together."""
    transformer = Session(files / "transformer.torch.onnx")
    slow = SlowSession(transformer, 0.05)
    rows = [tokens(1, seq=23 if k % 2 else 11, seed=k) for k in range(48)]
    with serving({"transformer": slow}, ServeOptions(max_batch=16, max_delay_ms=20)) as url, \
            ThreadPoolExecutor(48) as pool:
        served = list(pool.map(lambda r: infer(url, "transformer", "tokens", r), rows))
    alone = [transformer.run({"tokens": r})["logits"] for r in rows]
    assert [s.tobytes() for s in served] == [a.tobytes() for a in alone]
    assert sum(slow.batches) == 48 and max(slow.batches) <= 16 and len(slow.batches) <= 16


def test_full_queue_answers_503_and_the_rest_are_served(files):
    slow = SlowSession(Session(files / "cnn.torch.onnx"), 0.3)
    with serving({"cnn": slow}, ServeOptions(max_batch=0, max_queue=2)) as url, \
            ThreadPoolExecutor(8) as pool:
        def status(k):
            try:
                infer(url, "cnn", "image", images(1, k))
                return 200
            except InferenceServerException as e:
                return int(e.status())
        statuses = sorted(pool.map(status, range(8)))
    assert set(statuses) == {200, 503} and 3 <= statuses.count(200) <= 4, statuses


def test_readiness_fails_when_the_session_cannot_run(files):
    class Broken(SlowSession):
        def run(self, inputs):
            raise RuntimeError("CUDA failure 700: an illegal memory access was encountered")

    with serving({"cnn": Broken(Session(files / "cnn.torch.onnx"), 0)}) as url:
        client = triton.InferenceServerClient(url)
        assert client.is_server_live()
        assert not client.is_server_ready() and not client.is_model_ready("cnn")
        request = urllib.request.Request(f"http://{url}/v2/health/ready")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request)
        assert e.value.code == 503 and json.loads(e.value.read()) == {
            "error": "CUDA failure 700: an illegal memory access was encountered"}


def test_serve_cli_imports_no_framework_and_finishes_in_flight_requests_on_sigterm(files):
    """A real `onnxtwin serve` process: SIGTERM while a 2048 x 200-token request runs (its
    memory bound raised to admit it)."""
    command = [sys.executable, "-X", "importtime", *CLI[1:], "serve",
               str(files / "transformer.torch.onnx"), "--port", "0", "--max-batch", "0",
               "--max-run-mb", "4096"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("serving transformer.torch at http://127.0.0.1:"), line
        url = line.split("http://")[1].split("/")[0]
        big = tokens(2048, seq=200)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(infer, url, "transformer.torch", "tokens", big)
            time.sleep(0.5)  # the request is in flight
            process.send_signal(signal.SIGTERM)
            served = pending.result(timeout=60)
        assert process.wait(60) == 128 + signal.SIGTERM
    finally:
        process.kill()
    expected = Session(files / "transformer.torch.onnx").run({"tokens": big})["logits"]
    assert served.tobytes() == expected.tobytes()
    stderr = process.stderr.read()
    imported = {line.split("|")[-1].strip() for line in stderr.splitlines()
                if line.startswith("import time:")}
    assert "onnxruntime" in imported and "uvicorn" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "tensorflow", "keras")}
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("args", "message"), [
    (["missing.onnx"], "missing.onnx: expected an ONNX model file, got a path that does not"),
    (["{cnn}", "--port", "70000"], "127.0.0.1:70000: expected an address to listen on"),
    (["{cnn}", "--max-queue", "0"], "max_queue: expected a number >= 1, got 0"),
    (["{cnn}", "{cnn}"], "expected model files with different names, got 'cnn.torch' twice"),
])
def test_serve_usage_errors_are_one_line(files, args, message):
    result = onnxtwin("serve", *[a.format(cnn=files / "cnn.torch.onnx") for a in args],
                      timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


# --- a Triton model repository ---

def parse_config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_deploy_writes_a_triton_repository_that_triton_protobuf_parses(files, tmp_path):
    repo = tmp_path / "repo"
    result = onnxtwin("deploy", str(files / "cnn.torch.onnx"), "--to", "triton", "--out",
                      str(repo), timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "cnn_torch", "cnn_torch/1", "cnn_torch/1/model.onnx", "cnn_torch/config.pbtxt"]
    assert (repo / "cnn_torch/1/model.onnx").read_bytes() == \
        (files / "cnn.torch.onnx").read_bytes()
    config = parse_config(repo / "cnn_torch/config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("cnn_torch", "onnxruntime", 64)
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims))
            for t in (*config.input, *config.output)] == [
        ("image", "TYPE_FP32", [1, 28, 28]), ("logits", "TYPE_FP32", [10])]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    (group,) = config.instance_group
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (
        1, "KIND_CPU")
    again = onnxtwin("deploy", str(files / "cnn.torch.onnx"), "--out", str(repo), timeout=120)
    assert again.returncode == 2 and "expected a new model folder, got an existing one" in \
        again.stderr
    assert parse_config(repo / "cnn_torch/config.pbtxt") == config


def test_deploy_options_gpu_unbatched_and_dynamic_dims(files, tmp_path):
    from onnxtwin.runtime.serve.triton import write_repository

    folder = write_repository(files / "transformer.keras.onnx", tmp_path, "tf",
                              TritonOptions("cuda", max_batch=0, instances=2))
    config = parse_config(folder / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in (*config.input, *config.output)] == [[-1, -1], [-1, 10]]
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == \
        "KIND_GPU" and config.instance_group[0].count == 2
    with pytest.raises(OnnxtwinError, match="provider: expected one of"):
        write_repository(files / "cnn.torch.onnx", tmp_path, None, TritonOptions("tpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tf"]  # nothing half-written


def test_check_config_refuses_configs_that_do_not_match_the_model(files):
    session = Session(files / "cnn.torch.onnx")
    good = ('backend: "onnxruntime" max_batch_size: 8 '
            'input { name: "image" data_type: TYPE_FP32 dims: [1, 28, 28] } '
            'output { name: "logits" data_type: TYPE_FP32 dims: [10] }')
    assert check_config(good, session).max_batch_size == 8
    with pytest.raises(OnnxtwinError, match=r"config.pbtxt: expected outputs \[\('logits', 11"):
        check_config(good.replace("dims: [10]", "dims: [11]"), session)
    with pytest.raises(OnnxtwinError, match="expected Triton's ModelConfig text format"):
        check_config(good.replace("backend", "backnd"), session)


def test_listening_socket_says_tcp_so_responses_are_not_held_by_nagle():
    """asyncio sets TCP_NODELAY on accepted connections only if the listening socket's proto
    is IPPROTO_TCP; without it every response waited for a delayed ACK (44 ms measured)."""
    import socket

    listener = listen("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
    finally:
        listener.close()


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras"])
@pytest.mark.parametrize("name", ["cnn", "lstm", "gru", "bilstm", "transformer",
                                  "transformer-gelu"])
def test_a_rows_result_does_not_depend_on_its_batch(tmp_path, twins_of, name, framework):
    """Measured before the fixes: the Transformer's ReduceSum pooling (2.4e-7) and the
    Keras GRU's tf2onnx Loop (1.3e-7) gave a row different bits in a batch."""
    from onnxtwin.builders import sample_inputs

    session = Session(export_model(twins_of(name), framework, tmp_path).path)
    batch = sample_inputs(twins_of(name).spec, batch=64, seq=50, seed=3)
    together = session.run(batch)["logits"]
    alone = np.concatenate([session.run({k: v[i:i + 1] for k, v in batch.items()})["logits"]
                            for i in range(64)])
    assert together.tobytes() == alone.tobytes()  # what dynamic batching relies on
