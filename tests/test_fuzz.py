"""Property-based fuzzing: whatever a user feeds the runtime, the loader, the spec builder or
the server, the answer is a result or one OnnxtwinError (over HTTP: never a 500), never
another exception. Each test states the number of cases hypothesis runs (derandomised, so
CI runs the same cases every time)."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxtwin.builders import make_spec
from onnxtwin.export import export_model
from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime.serve.oip import HEADER_LENGTH, parse_infer_request
from onnxtwin.runtime.serve.server import ServeOptions
from tests.test_hostile_serve import call, serving

CASES = 300
FUZZ = settings(max_examples=CASES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
DTYPES = ["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"]


@pytest.fixture(scope="module")
def models(twins_of, tmp_path_factory):
    """The cnn and transformer torch exports and their sessions."""
    out = tmp_path_factory.mktemp("fuzz")
    paths = {name: export_model(twins_of(name), "torch", out).path
             for name in ("cnn", "transformer")}
    return {name: (path, Session(path)) for name, path in paths.items()}


def arrays():
    """A dict of 0-2 named arrays of any of DTYPES, rank 0-4, dims 0-9, values of any sign
    and size (NaN and Inf included for floats)."""
    def array(dtype, shape, seed):
        rng = np.random.default_rng(seed)
        values = rng.normal(0, 1e4, size=shape)
        if dtype.startswith("float") and values.size:
            values.flat[0] = rng.choice([np.nan, np.inf, 0.5])
        return values.astype(dtype) if dtype != "bool" else values > 0

    one = st.builds(array, st.sampled_from(DTYPES),
                    st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
                    st.integers(0, 2**32 - 1))
    names = st.sampled_from(["image", "tokens", "x", ""])
    return st.dictionaries(names, one, min_size=0, max_size=2)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_random_inputs_give_outputs_or_one_line_errors(models, name):
    _, session = models[name]
    outcomes = {"ran": 0, "refused": 0}

    @FUZZ
    @given(inputs=arrays())
    def run(inputs):
        try:
            out = session.run(inputs)
        except OnnxtwinError as e:
            assert "\n" not in str(e) and str(e)
            outcomes["refused"] += 1
        else:
            assert set(out) == {"logits"}
            outcomes["ran"] += 1

    run()
    assert sum(outcomes.values()) == CASES and outcomes["refused"] > 0


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_valid_shapes_of_any_size_run_and_match_the_signature(models, name):
    _, session = models[name]

    @settings(max_examples=60, derandomize=True, deadline=None, database=None)
    @given(batch=st.integers(1, 9), seq=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
    def run(batch, seq, seed):
        rng = np.random.default_rng(seed)
        if name == "cnn":
            inputs = {"image": rng.random((batch, 1, 28, 28), dtype=np.float32)}
        else:
            inputs = {"tokens": rng.integers(1, 10000, (batch, seq), dtype=np.int64)}
        logits = session.run(inputs)["logits"]
        assert logits.shape == (batch, 10) and np.isfinite(logits).all()

    run()


def test_random_bytes_and_mutated_models_are_refused_in_one_line(models, tmp_path):
    valid = models["cnn"][0].read_bytes()
    outcomes = {"loaded": 0, "refused": 0}

    @FUZZ
    @given(kind=st.sampled_from(["random", "mutated", "truncated"]), data=st.data())
    def load(kind, data):
        if kind == "random":
            content = data.draw(st.binary(min_size=0, max_size=4096))
        elif kind == "truncated":
            content = valid[: data.draw(st.integers(0, len(valid) - 1))]
        else:
            content = bytearray(valid)
            for _ in range(data.draw(st.integers(1, 20))):
                content[data.draw(st.integers(0, len(valid) - 1))] = data.draw(
                    st.integers(0, 255))
        path = tmp_path / "fuzzed.onnx"
        path.write_bytes(bytes(content))
        try:
            session = Session(path)
            session.run({"image": np.zeros((2, 1, 28, 28), np.float32)})
        except OnnxtwinError as e:
            assert "\n" not in str(e) and str(e)
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1  # a byte that changed a weight: still a valid model

    load()
    assert sum(outcomes.values()) == CASES and outcomes["refused"] > CASES // 2


def test_random_specs_build_or_are_refused_in_one_line():
    outcomes = {"built": 0, "refused": 0}
    small = st.one_of(st.integers(-2, 6), st.just(0), st.floats(-1, 4),
                      st.lists(st.integers(-1, 4), max_size=3), st.text(max_size=3),
                      st.booleans())
    params = st.dictionaries(st.sampled_from(
        ["cell", "vocab", "embed_dim", "hidden", "bidirectional", "classes", "channels",
         "image_size", "kernel_size", "dense", "in_channels", "d_model", "heads", "layers",
         "ff", "activation", "norm_eps", "max_len", "colour"]), small, max_size=4)

    @FUZZ
    @given(family=st.sampled_from(["cnn", "rnn", "transformer", "mlp"]), params=params)
    def build(family, params):
        try:
            spec = make_spec(family, "fuzzed", **params)
            spec.torch_model()
        except OnnxtwinError as e:
            assert "\n" not in str(e) and str(e)
            outcomes["refused"] += 1
        else:
            outcomes["built"] += 1

    build()
    assert sum(outcomes.values()) == CASES and outcomes["built"] > 0


# --- the server: any JSON body, any header values, never a 500 ---

def json_values():
    """Any JSON value: null, booleans, integers beyond int64, floats (huge ones too),
    short strings, nested lists and objects."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
        max_leaves=12)


def token_requests(high: int = 10_200):
    """The transformer's tokens input, well formed, with ids up to `high` (its vocabulary
    has 10000)."""
    return st.lists(st.integers(0, high), min_size=1, max_size=8).map(
        lambda ids: {"name": "tokens", "datatype": "INT64", "shape": [1, len(ids)], "data": ids})


def infer_bodies():
    """(JSON, binary tail) of an infer request: any JSON value, or the protocol's keys
    holding well-formed or any values, sometimes followed by binary tensor data."""
    anything = json_values()
    numbers = st.lists(st.one_of(st.integers(-2**40, 2**40), st.floats(-1e40, 1e40),
                                 st.booleans()), max_size=12)
    params = st.dictionaries(st.sampled_from(["binary_data_size", "binary_data",
                                              "binary_data_output", "classification"]),
                             st.one_of(st.integers(-8, 3200), st.booleans(), anything),
                             max_size=2)
    tensor = st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["image", "tokens", "x", "logits"]), anything),
         "datatype": st.one_of(st.sampled_from(["FP32", "INT64", "FP16", "BOOL", "BYTES"]),
                               anything),
         "shape": st.one_of(st.lists(st.integers(-1, 30), max_size=4), anything)},
        optional={"data": st.one_of(numbers, anything), "parameters": st.one_of(params,
                                                                                anything)})
    request = st.fixed_dictionaries(
        {"inputs": st.one_of(st.lists(st.one_of(token_requests(), tensor), max_size=2),
                             anything)},
        optional={"outputs": st.one_of(st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["logits", "x"])}, optional={"parameters": params}),
            max_size=2), anything), "parameters": st.one_of(params, anything),
            "id": anything})
    head = st.one_of(anything, request).map(lambda v: json.dumps(v).encode())
    return st.tuples(head, st.one_of(st.just(b""), st.binary(max_size=64)))


def header_values():
    """Inference-Header-Content-Length values: none, plausible counts, non-ASCII digits,
    numbers of any size, any text that HTTP can carry."""
    return st.one_of(st.none(), st.integers(0, 400).map(str), st.integers(10**17, 10**60).map(
        str), st.sampled_from(["٣", "²", "-1", " 5", "0x10", "1e3", "\U0001d7d7"]),
        st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12))


def test_parser_answers_any_body_and_header_with_a_request_or_one_line():
    outcomes = {"parsed": 0, "refused": 0}

    @FUZZ
    @given(body=infer_bodies(), header=header_values())
    def parse(body, header):
        head, tail = body
        try:
            parse_infer_request(head + tail, header)
        except OnnxtwinError as e:
            assert "\n" not in str(e) and str(e)
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1

    parse()
    assert sum(outcomes.values()) == CASES and outcomes["parsed"] > 0


def test_server_never_answers_500(models):
    """Any body and header values, through HTTP to the app on uvicorn, mixed with
    well-formed requests so that runs happen meanwhile: a result or the
    protocol's one-line error, never a 500; the server is ready afterwards."""
    bounds = ServeOptions().session_bounds
    sessions = {name: Session(path, **bounds) for name, (path, _) in models.items()}
    statuses: collections.Counter = collections.Counter()
    with serving(sessions) as port:
        hostile = st.tuples(st.sampled_from(["cnn", "transformer", "cnn/versions/1", "nope"]),
                            infer_bodies(), header_values())
        valid = token_requests(9_999).map(
            lambda t: ("transformer", (json.dumps({"inputs": [t]}).encode(), b""), None))

        @FUZZ
        @given(case=st.one_of(hostile, valid))
        def post(case):
            model, (head, tail), header = case
            extra = () if header is None else ((HEADER_LENGTH, header.encode()),)
            status, answer = call(port, "POST", f"/v2/models/{model}/infer", head + tail,
                                  extra)
            assert status != 500, answer
            assert status == 200 or (set(answer) == {"error"} and "\n" not in answer["error"])
            statuses[status] += 1

        post()
        assert call(port, "GET", "/v2/health/ready")[0] == 200
    assert sum(statuses.values()) == CASES and statuses[400] and statuses[200], statuses
