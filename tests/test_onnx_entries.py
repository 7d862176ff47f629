"""An ONNX file as a user entry: its spec and refusals, its matrix against onnx.reference,
node localisation (a hand-built graph and a torch export), and its reports."""

from __future__ import annotations

import hashlib
import json
from importlib.resources import files
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxtwin.builders import sample_inputs
from onnxtwin.builders.entries import EntryError
from onnxtwin.builders.onnx_entry import OnnxSpec, onnx_spec
from onnxtwin.conformance import onnx_matrix
from onnxtwin.conformance.nodes import Side, localise_nodes
from onnxtwin.conformance.onnx_matrix import run_onnx_matrix, sides, step_count
from onnxtwin.conformance.orchestrator import CheckOptions
from onnxtwin.conformance.reference import REFERENCE, ReferencePath
from onnxtwin.conformance.render import failures, markdown, page
from onnxtwin.conformance.report import Report
from onnxtwin.conformance.tolerances import Tolerances
from onnxtwin.export.graphs import mark_all_outputs
from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime import providers as probe_all
from onnxtwin.runtime.paths import OnnxPath

SCHEMA = json.loads(files("onnxtwin.conformance").joinpath("report.schema.json").read_text())
OPTIONS = CheckOptions(timing_runs=2)
RNG = np.random.default_rng(3)
W1, B1 = RNG.normal(size=(4, 8)).astype(np.float32), RNG.normal(size=8).astype(np.float32)
W2, E = RNG.normal(size=(8, 3)).astype(np.float32), RNG.normal(size=(10, 3)).astype(np.float32)
PERTURBED = "W2"
"""The initializer a deliberately wrong path changes: only node `mm2` reads it."""


def mlp() -> onnx.ModelProto:
    """softmax(relu(x @ W1 + B1) @ W2 + E[ids]): x float32 [batch, 4], ids int64 [batch]."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "B1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["z"], name="mm2"),
             helper.make_node("Gather", ["E", "ids"], ["g"], name="gather"),
             helper.make_node("Add", ["z", "g"], ["zg"], name="add2"),
             helper.make_node("Softmax", ["zg"], ["probs"], name="softmax", axis=-1)]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"),
                                                     (E, "E"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def numpy_mlp(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The same graph in float64 numpy: the test's own expectation."""
    z = np.maximum(x.astype(np.float64) @ W1 + B1, 0) @ W2 + E[ids]
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "mlp.onnx"
    onnx.save(mlp(), path)
    return path


def perturbed(name: str) -> Side:
    """onnxruntime on a copy of any file whose initializer `name` is scaled by 1.01: a path
    that is wrong on purpose, in one known place."""
    def open_path(file: Path) -> OnnxPath:
        model = onnx.load(file)
        weight = next(i for i in model.graph.initializer if i.name == name)
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.01),
                                                name))
        copy = file.with_name(f"perturbed-{file.name}")
        onnx.save(model, copy)
        return OnnxPath(Session(copy, "cpu", optimization="disable"), "perturbed")
    return Side("perturbed", open_path)


def test_the_spec_reads_the_signature_and_draws_inputs_where_told(mlp_file):
    spec = onnx_spec("mlp", {"onnx": mlp_file.name, "dims": {"batch": [1, 4]},
                             "inputs": [{"name": "ids", "range": [2, 5]}]}, mlp_file.parent)
    assert isinstance(spec, OnnxSpec) and spec.family == "onnx"
    assert [(t.name, t.dtype, t.shape, t.range) for t in spec.signature.inputs] == [
        ("x", "float32", ("batch", 4), (0.0, 1.0)), ("ids", "int64", ("batch",), (2, 5))]
    assert [(t.name, t.dtype, t.shape) for t in spec.signature.outputs] == [
        ("probs", "float32", ("batch", 3))]
    assert spec.matrix_points() == [{"batch": 1}, {"batch": 4}]
    assert spec.hyperparameters() == {"grid": {"batch": [1, 4]}, "file": "mlp.onnx",
                                      "sha256": hashlib.sha256(mlp_file.read_bytes())
                                      .hexdigest()}
    x = sample_inputs(spec, {"batch": 64}, seed=1)
    assert x["ids"].dtype == np.int64 and set(np.unique(x["ids"])) == {2, 3, 4}
    assert x["x"].dtype == np.float32 and x["x"].min() >= 0 and x["x"].max() < 1
    default = onnx_spec("mlp", {"onnx": str(mlp_file)}, Path("/elsewhere"))  # absolute path
    assert default.grid == (("batch", (1, 7)),)  # grids.MATRIX's batches
    assert sample_inputs(default, {"batch": 64}, seed=1)["ids"].max() < 10


def test_every_path_matches_an_independent_numpy_evaluation(mlp_file):
    spec = onnx_spec("mlp", {"onnx": mlp_file.name, "dims": {"batch": [1, 4]}},
                     mlp_file.parent)
    steps: list[str] = []
    result = run_onnx_matrix(spec, ["cpu"], OPTIONS, steps.append)
    names = ["mlp.onnx@cpu:opt-none", "mlp.onnx@cpu:opt-all"]
    assert [p.name for p in result.paths] == names and result.exports == ()
    assert len(steps) == step_count(spec, ["cpu"]) == 6
    assert {(c.actual, c.expected, c.dims["batch"]) for c in result.checks} == {
        (a, e, b) for b in (1, 4) for a, e in [(names[0], REFERENCE), (names[1], REFERENCE),
                                               tuple(names)]}
    assert result.passed and result.localisation is None
    # the engine's numbers, recomputed from runs of the same paths outside it
    opened = {s.name: s.open(mlp_file) for s in sides(spec, ["cpu"])}
    for c in result.checks:
        x = sample_inputs(spec, c.dims, seed=OPTIONS.seed)
        expected = numpy_mlp(x["x"], x["ids"])
        runs = {n: p.run(x)["probs"] for n, p in opened.items()}
        direct = ort.InferenceSession(str(mlp_file), providers=["CPUExecutionProvider"])
        assert np.abs(direct.run(None, x)[0] - expected).max() < 1e-6
        for out in runs.values():
            assert np.abs(out - expected).max() < 1e-6
        assert c.metrics.max_abs == np.abs(runs[c.actual] - runs[c.expected]).max() < 1e-6
    assert [t.dims for t in result.latency] == [{"batch": 4}] * 2  # 7 is not in its grid


def test_node_localisation_names_the_node_that_reads_the_wrong_weight(mlp_file):
    spec = onnx_spec("mlp", {"onnx": mlp_file.name}, mlp_file.parent)
    x = sample_inputs(spec, {"batch": 3}, seed=0)
    found = localise_nodes(mlp_file, perturbed(PERTURBED), Side(REFERENCE, ReferencePath), x,
                           1e-5, {"batch": 3})
    assert found.first_divergent == "MatMul node 'mm2'"
    by_node = {n.node: n for n in found.nodes}
    assert list(by_node) == ["mm1", "add1", "relu", "mm2", "gather", "add2", "softmax"]
    assert [n.node for n in found.nodes if n.diverged] == ["mm2", "add2", "softmax"]
    r = np.maximum(x["x"].astype(np.float64) @ W1 + B1, 0)
    assert by_node["mm2"].max_abs == pytest.approx(np.abs(r @ W2).max() * 0.01, rel=1e-3)
    assert all(by_node[n].max_abs < 1e-6 for n in ("mm1", "add1", "relu", "gather"))


def test_marked_copy_keeps_its_outputs_first_and_types_the_rest():
    marked = mark_all_outputs(mlp())
    assert [o.name for o in marked.graph.output] == ["probs", "h", "hb", "r", "z", "g", "zg"]
    assert {o.type.tensor_type.elem_type for o in marked.graph.output} == {TensorProto.FLOAT}
    assert len(mlp().graph.output) == 1  # the model given is left as it was


def test_a_failing_matrix_localises_and_every_report_shows_it(mlp_file, tmp_path, monkeypatch):
    """A path made wrong on purpose fails its comparisons; the result names the node, and
    report.json (valid), report.md and report.html show it, for dims other than batch."""
    real = onnx_matrix.sides
    monkeypatch.setattr(onnx_matrix, "sides",
                        lambda spec, providers: [*real(spec, providers), perturbed(PERTURBED)]
                        if spec.name == "mlp" else real(spec, providers))
    spec = onnx_spec("mlp", {"onnx": mlp_file.name, "dims": {"batch": [2]}}, mlp_file.parent)
    # failure and its localisation come from the perturbed path, not onnxruntime itself
    result = run_onnx_matrix(spec, ["cpu"], OPTIONS)
    assert not result.passed
    assert (result.failed[0].actual, result.failed[0].expected) == ("perturbed", REFERENCE)
    assert all("perturbed" in (c.actual, c.expected) for c in result.failed)
    assert result.localisation.first_divergent == "MatMul node 'mm2'"
    rows = tmp_path / "rows.onnx"
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["v"], ["w"])], "rows",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["rows", 3])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["rows", 3])]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=10), rows)
    other = run_onnx_matrix(onnx_spec("rows", {"onnx": "rows.onnx", "dims": {"rows": [2, 5]}},
                                      tmp_path), ["cpu"], OPTIONS)
    assert other.passed and [c.dims for c in other.checks[::3]] == [{"rows": 2}, {"rows": 5}]
    report = Report("2026-01-01T00:00:00+00:00", ("test",), 0, 18, Tolerances(),
                    tuple(probe_all()), ("cpu",), (result, other), 1.0)
    document = report.to_dict()
    jsonschema.validate(document, SCHEMA)
    model = document["models"][0]
    assert model["reference"] == REFERENCE and model["dims"] == {"batch": [2]}
    assert model["localisation"] is None and model["exports"] == []
    assert model["node_localisation"]["first_divergent"] == "MatMul node 'mm2'"
    assert document["models"][1]["dims"] == {"rows": [2, 5]}
    assert document["models"][1]["comparisons"][0]["rows"] == 2
    assert document["models"][1]["latency"][0]["dims"] == {"rows": 5}
    lines = failures(document)
    assert "mlp: perturbed and onnx.reference first differ at MatMul node 'mm2' (batch 2)" \
        in lines
    assert any(line.startswith("mlp: perturbed vs onnx.reference at batch 2: max abs ")
               for line in lines)
    text = markdown(document)
    assert "## Localisation of mlp: perturbed vs onnx.reference, node by node at batch 2" in text
    assert "| mm2 | MatMul |  |" in text and "| rows | rows.onnx@cpu:opt-all | rows 5 |" in text
    worst = max(c.metrics.max_abs for c in result.checks if c.expected == REFERENCE)
    assert f"| mlp | 3 | 6 | {worst:.2e} |" in text  # paths, comparisons, worst vs reference
    assert "MatMul node &#x27;mm2&#x27;" in page(document)


def test_a_torch_export_is_localised_to_its_module(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return torch.softmax(self.head(self.body(x)), -1)

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.rand(3, 4),), path, dynamo=True, external_data=False,
                      input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    spec = onnx_spec("net", {"onnx": "net.onnx"}, tmp_path)
    assert spec.signature.dims == ("batch",)
    assert run_onnx_matrix(spec, ["cpu"], OPTIONS).passed
    found = localise_nodes(path, perturbed("head.weight"), Side(REFERENCE, ReferencePath),
                           sample_inputs(spec, {"batch": 2}), 1e-5, {"batch": 2})
    first = next(n for n in found.nodes if n.diverged)
    assert first.origin.startswith("torch module 'head' (torch.nn.modules.linear.Linear)")
    assert found.first_divergent == f"{first.op} node {first.node!r} ({first.origin})"
    assert [n.diverged for n in found.nodes[:found.nodes.index(first)]] == \
        [False] * found.nodes.index(first)


def _refusal(table: dict, base: Path) -> str:
    with pytest.raises(EntryError) as caught:
        onnx_spec("m", table, base)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_refusals_are_one_line_naming_the_entry(mlp_file, tmp_path):
    base = mlp_file.parent
    assert _refusal({"onnx": "nope.onnx"}, tmp_path) == \
        f"model 'm': expected onnx naming an existing file, got '{tmp_path / 'nope.onnx'}'"
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(256))
    assert _refusal({"onnx": "junk.onnx"}, tmp_path).startswith(
        "model 'm': expected onnx naming an ONNX model that onnx.checker accepts, got "
        "'junk.onnx: Unable to parse proto")
    assert _refusal({"onnx": "mlp.onnx", "family": "cnn"}, base) == \
        "model 'm': expected keys among ['onnx', 'dims', 'inputs'], got ['family']"
    assert _refusal({"onnx": "mlp.onnx", "dims": {"seq": [3]}}, base) == \
        "model 'm': expected dims naming only the signature's dims ['batch'], got ['seq']"
    assert _refusal({"onnx": "mlp.onnx", "inputs": [{"name": "y", "range": [0, 1]}]},
                    base) == ("model 'm': expected inputs naming each of the file's inputs "
                              "['x', 'ids'] once, got 'y'")
    assert _refusal({"onnx": "mlp.onnx", "inputs": [{"name": "ids", "range": [0.5, 3]}]},
                    base) == ("model 'm': expected range of input 'ids' as [low, high], low < "
                              "high, integers within int64, got [0.5, 3]")
    model = mlp()
    model.graph.input[0].type.tensor_type.shape.dim[1].Clear()  # x: [batch, ?]
    onnx.save(model, tmp_path / "unnamed.onnx")
    assert _refusal({"onnx": "unnamed.onnx"}, tmp_path) == (
        "model 'm': expected sizes for dim 'x[1]' in dims (it has no default), got {}")
    assert onnx_spec("m", {"onnx": "unnamed.onnx", "dims": {"x[1]": [4]}},
                     tmp_path).signature.dims == ("batch", "x[1]")


def test_a_reference_that_cannot_load_the_file_says_so_in_one_line(tmp_path):
    model = mlp()
    model.graph.node[2].domain, model.graph.node[2].op_type = "vendor.ops", "FastRelu"
    model.opset_import.append(helper.make_opsetid("vendor.ops", 1))
    onnx.save(model, tmp_path / "custom.onnx")
    with pytest.raises(OnnxtwinError, match=r"^onnx.reference: expected onnx.reference to load "
                                            r"custom.onnx, got [^\n]*$"):
        ReferencePath(tmp_path / "custom.onnx")
