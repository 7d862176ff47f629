"""Reduced precision: float16 and int8 files, their accuracy gate against float32, where they
diverge, their place in the matrix, and what serve and deploy make of them.

Expected figures are computed here with onnxruntime and numpy directly, not through the
gate's code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxtwin.builders import get_spec, sample_inputs
from onnxtwin.export import export_model, metadata
from onnxtwin.export.float16 import convert_float16
from onnxtwin.export.precision import LIMITS, GateData, reduce_precision
from onnxtwin.export.precision_data import file_calibration, gate_data
from onnxtwin.export.quantize import Calibration
from onnxtwin.export.signature import read_signature
from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime.arrays import save_arrays
from tests.cli_runner import onnxtwin


@pytest.fixture(scope="module")
def files(tmp_path_factory, twins_of):
    """Float32 exports (random weights): CNN (torch, keras), LSTM, GRU (torch), Transformer
    (keras: its padding mask fills with -1e9, beyond float16; torch's fills with -inf)."""
    out = tmp_path_factory.mktemp("precision")
    for name, framework in (("cnn", "torch"), ("cnn", "keras"), ("lstm", "torch"),
                            ("gru", "torch"), ("transformer", "keras")):
        export_model(twins_of(name), framework, out)
    return out


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    """A CNN trained briefly on a Fashion-MNIST subset, its torch file and its test data."""
    from onnxtwin.builders.datasets import fashion_mnist
    from onnxtwin.builders.training import Recipe, train

    data = fashion_mnist().subset(1500, 1000, seed=0)
    trained = train("cnn", data, recipe=Recipe(epochs=2, batch_size=50, learning_rate=2e-3))
    path = export_model(trained.twins, "torch", tmp_path_factory.mktemp("trained")).path
    return path, gate_data(trained.twins.spec, data), data


LOOSER = replace(LIMITS["int8"], agreement=0.95)


def run(path, x: dict) -> np.ndarray:
    """The first output of `path` on plain onnxruntime (not onnxtwin's Session)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, x)[0]


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def labelled(path, n: int = 600, flipped: int = 60) -> GateData:
    """Random images labelled with the float32 file's own classes, `flipped` of them
    changed, so float32 scores (n - flipped) / n."""
    x = images(n)
    labels = run(path, {"image": x}).argmax(-1)
    labels[:flipped] = (labels[:flipped] + 1) % 10
    return GateData("labelled random images", tuple({"image": x[i: i + 200]}
                                                    for i in range(0, n, 200)), labels)


def calibration(x: np.ndarray) -> Calibration:
    return Calibration("test samples", tuple({"image": x[i: i + 32]} for i in range(0, 96, 32)),
                       ({"image": x[96:128]},))


def test_fp16_gate_figures_are_those_counted_independently(files, tmp_path):
    source = files / "cnn.torch.onnx"
    data = labelled(source)
    result = reduce_precision(source, "fp16", data, target=tmp_path / "cnn.torch.fp16.onnx")
    x = np.concatenate([b["image"] for b in data.batches])
    full, half = run(source, {"image": x}), run(result.path, {"image": x})
    assert result.gate.accuracy_fp32 == pytest.approx(np.mean(full.argmax(-1) == data.labels))
    assert result.gate.accuracy_fp32 == pytest.approx(540 / 600)
    assert result.gate.accuracy == pytest.approx(np.mean(half.argmax(-1) == data.labels))
    assert result.gate.agreement == pytest.approx(np.mean(half.argmax(-1) == full.argmax(-1)))
    assert result.gate.relative_error == pytest.approx(
        np.abs(half.astype(np.float64) - full).max() / np.abs(full).max(), rel=1e-6)
    assert 0 < result.gate.relative_error < LIMITS["fp16"].relative_error  # really float16
    assert result.gate.passed and result.gate.drop <= LIMITS["fp16"].accuracy_drop
    model = onnx.load(str(result.path))
    assert {i.data_type for i in model.graph.initializer} >= {TensorProto.FLOAT16}
    assert result.reduced_ops["Conv"] == 3 and result.size < 0.6 * result.source_size


def test_int8_calibrated_on_all_zero_inputs_is_refused_with_figures_and_nothing_written(
        trained_cnn, tmp_path):
    source, data, dataset = trained_cnn
    target = tmp_path / "cnn.torch.int8.onnx"
    with pytest.raises(OnnxtwinError) as refused:
        reduce_precision(source, "int8", data, calibration(np.zeros((128, 1, 28, 28),
                                                                    np.float32)),
                         target=target)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(
        "int8 file of cnn.torch.onnx: expected test accuracy within 0.5 points of float32 and "
        "agreement >= 99.00%, got test accuracy ")
    assert message.endswith("on 1000 samples of the fashion-mnist test set; error grows most at "
                            + message.split("error grows most at ")[1])
    agreement = float(message.split("agreement ")[2].split("%")[0]) / 100
    assert agreement < 0.99
    tensor = message.split("error grows most at '")[1].split("'")[0]
    assert tensor in {o for n in onnx.load(str(source)).graph.node for o in n.output}
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # Calibrated on training images it passes (a briefly trained model has many near-ties,
    # hence the lower agreement limit): the gate can go either way.
    kept = reduce_precision(source, "int8", data, calibration(dataset.x_train[:128]),
                            LOOSER, target=target)
    low = run(target, {"image": np.concatenate([b["image"] for b in data.batches])})
    assert kept.gate.accuracy == pytest.approx(np.mean(low.argmax(-1) == data.labels))
    assert kept.method.startswith("static int8 QDQ") and kept.reduced_ops["Conv (QDQ)"] == 3
    methods = kept.calibration["methods"]
    assert set(methods) == {"MinMax", "Entropy", "Percentile"}
    scored = {m: s for m, s in methods.items() if "failed" not in s}
    chosen = kept.method.split(", ")[2].split(" ")[0]
    assert chosen == max(scored, key=lambda m: (scored[m]["agreement"],
                                                -scored[m]["relative_error"]))
    held_out = dataset.x_train[96:128]  # calibration()'s held-out batch, run here directly
    agree = np.mean(run(target, {"image": held_out}).argmax(-1)
                    == run(source, {"image": held_out}).argmax(-1))
    assert scored[chosen]["agreement"] == pytest.approx(agree)


def test_a_reduced_file_accepts_what_its_float32_file_accepts(files, twins_of, tmp_path):
    source = files / "lstm.torch.onnx"
    spec = twins_of("lstm").spec
    result = reduce_precision(source, "int8", gate_data(spec, None),
                              target=tmp_path / "lstm.torch.int8.onnx")
    assert result.method.startswith("dynamic int8")
    assert result.reduced_ops["DynamicQuantizeLSTM"] == 2
    assert read_signature(onnx.load(str(result.path))) == read_signature(onnx.load(str(source)))
    stamp = metadata.read_metadata(onnx.load(str(result.path)))
    assert stamp[metadata.PRECISION] == "int8" and stamp[metadata.VARIANT] == "lstm"
    full, low = Session(source, strict=True), Session(result.path, strict=True)
    for batch, seq in ((3, 17), (1, 300)):  # shapes the gate never ran
        x = sample_inputs(spec, batch=batch, seq=seq, seed=5)
        a, b = full.run(x)["logits"], low.run(x)["logits"]
        assert b.shape == a.shape and np.abs(b - a).max() <= 0.1 * np.abs(a).max()
    bad = {"tokens": np.full((2, 5), 10_000, np.int64)}  # an id beyond the vocabulary
    messages = []
    for session in (full, low):
        with pytest.raises(OnnxtwinError) as e:
            session.run(bad)
        messages.append(str(e.value).replace(session.path.name, "FILE"))
    assert messages[0] == messages[1]


def test_int8_of_a_gru_says_why_the_gru_stays_float32(files, twins_of, tmp_path, monkeypatch):
    monkeypatch.chdir(files)  # a relative path, as `--out out/` gives
    result = reduce_precision(Path("gru.torch.onnx"), "int8",
                              gate_data(twins_of("gru").spec, None),
                              target=tmp_path / "gru.int8.onnx")
    assert "GRU" in {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert result.kept_ops["GRU"] == "onnxruntime has no quantized GRU (onnxruntime issue #9796)"
    assert result.divergence and all(np.isfinite(t.error) for t in result.divergence)


def test_the_transformer_keeps_its_attention_mask_and_scores_in_float32(files, twins_of,
                                                                        tmp_path):
    from onnxtwin.export.float16 import OVERFLOW

    source, spec = files / "transformer.keras.onnx", twins_of("transformer").spec
    half = reduce_precision(source, "fp16", gate_data(spec, None),
                            target=tmp_path / "half.onnx")
    assert half.kept_ops["Where"] == half.kept_ops["Softmax"] == OVERFLOW  # the mask's -1e9
    assert all(np.isfinite(t.error) for t in half.divergence)
    quarter = reduce_precision(source, "int8", gate_data(spec, None),
                               target=tmp_path / "int8.onnx")
    assert quarter.kept_ops["MatMul"].startswith("both inputs are activations")
    assert quarter.reduced_ops["MatMulInteger"] >= 8  # q, k, v, out and two FFN per layer


def test_outputs_with_a_seq_dim_are_gated_batch_by_batch(tmp_path):
    """Matrix inputs vary seq: outputs [batch, seq, 3] of different seq are not stacked."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3],
                                np.random.default_rng(0).random(12).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "tagger",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 3])], [weight])
    source = tmp_path / "tagger.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                ir_version=10), str(source))
    rng = np.random.default_rng(1)
    batches = tuple({"x": rng.random((2, seq, 4), dtype=np.float32)} for seq in (1, 5, 9))
    result = reduce_precision(source, "fp16", GateData("inputs", batches))
    expected = max(np.abs(run(result.path, b) - run(source, b)).max() / np.abs(run(source, b)).max()
                   for b in batches)
    assert result.gate.relative_error == pytest.approx(expected, rel=1e-6)
    assert result.gate.agreement == pytest.approx(np.mean(np.concatenate(
        [(run(result.path, b).argmax(-1) == run(source, b).argmax(-1)).ravel() for b in batches])))


def test_a_non_finite_output_fails_the_gate_whatever_the_accuracy():
    from onnxtwin.export.precision import PrecisionGate

    perfect = PrecisionGate("d", 10, 0.9, 0.9, 1.0, float("inf"), LIMITS["int8"])
    assert perfect.drop == 0 and not perfect.passed
    assert PrecisionGate("d", 10, 0.9, 0.9, 1.0, 0.05, LIMITS["int8"]).passed


def overflowing_model() -> onnx.ModelProto:
    """y = sqrt(x * x) + x: for x in [300, 400) the square passes float16's 65504."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["square"], name="square"),
             helper.make_node("Sqrt", ["square"], ["root"], name="root"),
             helper.make_node("Add", ["root", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "overflow",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_float16_blocks_the_nodes_that_overflow(tmp_path):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from onnxtwin.export.float16 import OVERFLOW

    model = overflowing_model()
    x = [{"x": 300 + 100 * np.random.default_rng(0).random((5, 4), dtype=np.float32)}]
    half = x[0]["x"].astype(np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(half * half).all()  # float16 arithmetic overflows on the square
    naive = tmp_path / "naive.onnx"
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(naive))
    assert {n.op_type for n in onnx.load(str(naive)).graph.node} == {"Mul", "Sqrt", "Add", "Cast"}
    converted = convert_float16(model, x)
    # The square writes values beyond 65504 and the Sqrt reads them: both stay float32.
    assert converted.blocked == {"square": OVERFLOW, "root": OVERFLOW}
    fixed = tmp_path / "fixed.onnx"
    onnx.save(converted.model, str(fixed))
    np.testing.assert_allclose(run(fixed, x[0]), 2 * x[0]["x"], rtol=1e-3)
    source = tmp_path / "overflow.onnx"
    onnx.save(model, str(source))
    result = reduce_precision(source, "fp16", GateData("inputs", tuple(x)))
    assert result.kept_ops == {"Mul": OVERFLOW, "Sqrt": OVERFLOW}
    assert result.reduced_ops == {"Add": 1}
    assert result.gate.relative_error < LIMITS["fp16"].relative_error


def test_the_matrix_runs_reduced_files_as_paths_with_their_own_tolerance(twins_of, tmp_path):
    from onnxtwin.conformance.orchestrator import CheckOptions, check
    from onnxtwin.conformance.tolerances import REDUCED

    samples = tmp_path / "calibration.npz"
    save_arrays(samples, {"image": images(40, seed=3)})
    strict = {**LIMITS, "fp16": replace(LIMITS["fp16"], relative_error=1e-9)}
    report = check([get_spec("cnn")], tmp_path / "out", CheckOptions(
        providers=("cpu",), precisions=("int8", "fp16"), calibration=samples, timing_runs=1,
        limits=strict))
    model = report.to_dict()["models"][0]
    # fp16 misses a limit it cannot meet: recorded, the check goes on, and fails.
    assert [r.split(": expected")[0] for r in model["reduced"]["refused"]] == [
        "fp16 file of cnn.torch.onnx", "fp16 file of cnn.keras.onnx"]
    assert "expected outputs within 1e-09 of their scale" in model["reduced"]["refused"][0]
    assert not report.passed and model["passed"] is False
    assert not (tmp_path / "out" / "cnn.torch.fp16.onnx").exists()
    names = {c["actual"] for c in model["reduced"]["comparisons"]}
    assert names == {"cnn.torch.int8.onnx@cpu", "cnn.keras.int8.onnx@cpu"}
    oracle = twins_of("cnn").oracle()
    for c in model["reduced"]["comparisons"]:
        x = sample_inputs(get_spec("cnn"), {"batch": c["batch"]}, seed=0)
        scale = max(1.0, float(np.abs(oracle.run(x)["logits"]).max()))
        assert c["tolerance"] == pytest.approx(REDUCED["int8"] * scale)
        assert c["passed"] and c["max_abs"] <= c["tolerance"]
    assert model["reduced"]["files"][0]["calibration"]["data"] == "32 samples of calibration.npz"
    assert all(c["passed"] for c in model["comparisons"])  # float32 paths unaffected


def test_serve_and_deploy_take_a_reduced_file(trained_cnn, tmp_path):
    from tests.test_serving import infer, parse_config, serving

    source, data, dataset = trained_cnn
    result = reduce_precision(source, "int8", data, calibration(dataset.x_train[:128]), LOOSER)
    session = Session(result.path, strict=True)
    x = images(3, seed=4)
    with serving({"cnn": session}) as url:
        served = infer(url, "cnn", "image", x)
    np.testing.assert_array_equal(served, session.run({"image": x})["logits"])
    repo = tmp_path / "repo"
    for file in (result.path, source):
        done = onnxtwin("deploy", str(file), "--out", str(repo), timeout=120)
        assert done.returncode == 0, done.stderr
    low, full = (parse_config(repo / f"{name}/config.pbtxt")
                 for name in ("cnn_torch_int8", "cnn_torch"))
    assert list(low.input) == list(full.input) and list(low.output) == list(full.output)


@pytest.mark.parametrize("args, line", [
    (["--precision", "int4"], "precision: expected one of ['fp32', 'fp16', 'int8'], got 'int4'"),
    (["--precision", "int8", "--gate", "int8.agreement=1.5"],
     "--gate: expected PRECISION.FIELD=VALUE with PRECISION in ['fp16', 'int8'], FIELD in "
     "['accuracy_drop', 'agreement', 'relative_error'] and a finite value >= 0 (agreement <= 1),"
     " got 'int8.agreement=1.5'"),
    (["--gate", "int8.agreement=0.9"], "--gate int8.agreement=0.9: expected --precision fp16 "
                                        "or int8 to gate, got precisions ['fp32']"),
    (["--precision", "int8"], "int8 of cnn.torch.onnx: expected calibration samples for static "
                              "quantization (its graph has a Conv): a trained model (--trained)"
                              " or --calibration FILE.npz, got none"),
])
def test_bad_precision_requests_are_one_line_and_write_nothing(tmp_path, args, line):
    out = tmp_path / "out"
    done = onnxtwin("export", "-m", "cnn", "--framework", "torch", "--out", str(out), *args)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: {line}"]
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == [".onnxtwin.lock"]


def test_a_calibration_file_that_does_not_fit_the_signature_is_refused(files, tmp_path):
    wrong = tmp_path / "wrong.npz"
    save_arrays(wrong, {"image": np.zeros((8, 3, 28, 28), np.float32)})
    with pytest.raises(OnnxtwinError, match=r"^--calibration .*wrong.npz: expected samples that "
                                            r"fit cnn.torch.onnx's signature, got: .*image"):
        file_calibration(wrong, files / "cnn.torch.onnx")
    out = tmp_path / "out"
    done = onnxtwin("export", "-m", "cnn", "--precision", "int8", "--calibration", str(wrong),
                    "--out", str(out))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "expected samples that fit" in done.stderr
    assert not out.exists() or [p.name for p in out.iterdir()] == [".onnxtwin.lock"]


def test_check_precision_refuses_onnx_file_entries_before_any_work(files, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[models.given]\nonnx = "{files / "cnn.torch.onnx"}"\n')
    out = tmp_path / "report"
    done = onnxtwin("check", "--spec", str(spec), "-m", "given", "--precision", "fp16",
                    "--out", str(out))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --precision: expected models that onnxtwin exports (it reduces its own float32 "
        "exports), got ONNX file entries ['given']"]
    assert not out.exists()

