"""`onnxtwin bench`: interleaving, validation before timing, targets from the measured numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxtwin.builders import get_spec, make_spec
from onnxtwin.conformance.bench.run import (
    TUNING,
    BenchOptions,
    Contender,
    choose_deploy,
    deploy_settings,
    interleave,
    relative_to_fastest_native,
    relative_to_float32_file,
    run_bench,
    startup_seconds,
    targets,
    validate,
)
from onnxtwin.runtime.paths import FunctionPath, PathInfo
from tests.cli_runner import onnxtwin


def _path(name: str, fn, inputs=("x",), outputs=("logits", "hidden")) -> FunctionPath:
    return FunctionPath(PathInfo(name, "test"), fn, inputs, outputs)


def test_interleaving_rotates_the_order_every_round():
    order = []
    contenders = [Contender(_path(n, lambda n=n: order.append(n), (), ()), "native")
                  for n in "abc"]
    interleave(contenders, {}, rounds=3, calls=2, settle_s=0)
    assert "".join(order) == "aaabbbccc" "bbbcccaaa" "cccaaabbb"  # one untimed call each
    assert [len(c.seconds) for c in contenders] == [6, 6, 6]


def test_a_path_that_disagrees_on_any_output_or_fails_is_not_timed():
    logits, hidden = np.ones((2, 10), np.float32), np.zeros((2, 3), np.float32)
    reference = _path("torch eager", lambda x: (logits, hidden))
    good = Contender(_path("good", lambda x: (logits + 1e-6, hidden - 2e-6)), "onnx")
    loose = Contender(_path("loose", lambda x: (logits + 1e-3, hidden)), "onnx", tolerance=1e-2)
    second = Contender(_path("second", lambda x: (logits, hidden + 1e-3)), "onnx")
    nan = Contender(_path("nan", lambda x: (logits * np.nan, hidden)), "onnx")
    shape = Contender(_path("shape", lambda x: (logits[:1], hidden)), "onnx")
    broken = Contender(_path("broken", lambda x: 1 / 0), "native")
    contenders = [good, loose, second, nan, shape, broken]
    dropped = validate(contenders, {"x": np.zeros(1, np.float32)}, reference, {"batch": 2})
    assert contenders == [good, loose]
    assert good.max_abs_vs_torch == pytest.approx(2e-6, rel=0.1)  # the worse of two outputs
    assert loose.max_abs_vs_torch == pytest.approx(1e-3, rel=0.1)  # within its own 1e-2
    assert dropped == {"broken": "path 'broken': expected the model to run, got "
                                 "ZeroDivisionError: division by zero",
                       "second": "hidden: max abs 1.00e-03 vs torch > 1e-05",
                       "nan": "logits: 20 non-finite values vs torch",
                       "shape": "logits: shape (1, 10) vs (2, 10) (this path vs torch)"}


def test_targets_are_ratios_of_the_best_medians_and_the_headline_is_the_confirmed_one():
    timed = [{"name": "torch", "kind": "native", "p50_ms": 10.0},
             {"name": "keras", "kind": "native", "p50_ms": 8.0},
             {"name": "torch.onnx@cpu", "kind": "onnx", "p50_ms": 6.0},
             {"name": "torch.onnx@cpu tuned", "kind": "onnx", "p50_ms": 4.0},
             {"name": "keras.onnx@cpu tuned", "kind": "onnx", "p50_ms": 5.0}]
    confirmed = {"contender": "torch.onnx@cpu tuned", "vs_fastest_native": 0.9}
    found = {t["target"]: (t["value"], t["met"])
             for t in targets("cnn", 64, timed, 1e9, 400.0, confirmed)}
    assert found == {"onnx_cpu_vs_fastest_native": (0.9, False),  # not the exploration's 0.5
                     "keras_file_vs_torch_file": (1.25, False),
                     "cnn_fraction_of_matmul_peak": (0.625, True)}  # 1e9 / 4 ms = 250 GFLOP/s
    assert "onnx_cpu_vs_fastest_native" not in {  # no confirmation, no headline
        t["target"] for t in targets("cnn", 64, timed, 1e9, 400.0)}


@pytest.mark.parametrize(("model", "batch", "expected"), [
    ("lstm", 64, 0.5), ("transformer", 64, 0.5), ("lstm", 1, None), ("gru", 64, None)])
def test_the_int8_target_is_the_better_tuned_file_against_its_own_float32_file(
        model, batch, expected):
    def onnx(name, ratio, precision="int8"):
        return {"name": name, "kind": "onnx", "p50_ms": 1.0, "vs_float32_file": ratio,
                "settings": {"precision": precision}}

    timed = [{"name": "torch", "kind": "native", "p50_ms": 1.0},
             onnx("torch.int8.onnx@cpu", 0.1),  # default settings: not the target's
             onnx("torch.int8.onnx@cpu tuned", 0.7), onnx("keras.int8.onnx@cpu tuned", 0.5),
             onnx("torch.fp16.onnx@cpu tuned", 0.2, "fp16"),
             onnx("torch.int8.onnx@cuda tuned", 0.05)]
    found = {t["target"]: t for t in targets(model, batch, timed, None, 1.0)}
    if expected is None:
        assert "int8_vs_float32_file" not in found
    else:
        assert found["int8_vs_float32_file"] == {
            "target": "int8_vs_float32_file", "value": expected, "limit": 0.6, "met": True,
            "contender": "keras.int8.onnx@cpu tuned"}


def test_a_reduced_file_is_timed_against_its_float32_file_with_the_same_settings_kind():
    def onnx(name, p50, precision):
        return {"name": name, "kind": "onnx", "p50_ms": p50,
                "settings": {"precision": precision}}

    timed = [{"name": "torch", "kind": "native", "p50_ms": 9.0, "settings": {}},
             onnx("torch.onnx@cpu", 4.0, "fp32"), onnx("torch.onnx@cpu tuned", 2.0, "fp32"),
             onnx("torch.int8.onnx@cpu", 3.0, "int8"),
             onnx("torch.int8.onnx@cpu tuned", 1.5, "int8"),
             onnx("keras.fp16.onnx@cpu tuned", 1.0, "fp16")]  # its float32 file not timed
    relative_to_float32_file(timed)
    assert [r.get("vs_float32_file", "-") for r in timed] == ["-", "-", "-", 0.75, 0.75, None]


def test_the_deploy_choice_has_the_lowest_geometric_mean_over_the_batches():
    def batch(size, ratios, threads):
        contenders = [{"name": "torch", "kind": "native", "vs_fastest_native": 1.0,
                       "settings": {}}]
        contenders += [{"name": n, "kind": "onnx", "vs_fastest_native": r, "settings": {
            "optimization": "all", "threads": threads, "spinning": True, "file": f"m.{n[:5]}",
            "precision": "int8" if n.startswith("E") else "fp32"}} for n, r in ratios.items()]
        return {"batch": size, "contenders": contenders}

    results = [batch(1, {"A@cpu": 0.5, "B@cpu tuned": 0.9, "C@cpu": 0.1, "D@cuda": 0.01,
                         "E.int8@cpu": 0.2}, 1),
               batch(64, {"A@cpu": 2.0, "B@cpu tuned": 0.9, "D@cuda": 0.01, "E.int8@cpu": 0.2},
                     0)]
    # A: sqrt(0.5 x 2) = 1.0; C missed batch 64; E is int8, gated on random weights only
    choice = choose_deploy(results)
    assert choice["contender"] == "B@cpu tuned"
    assert choice["exploration_geomean_vs_fastest_native"] == pytest.approx(0.9)
    assert choice["settings"] == {"threads": 0, "optimization": "all", "spinning": True}
    assert choose_deploy([batch(1, {"D@cuda": 0.5}, 0)]) is None


@pytest.mark.parametrize(("model", "batch"), [("cnn", 1), ("lstm", 64)])
def test_targets_count_cpu_files_only_and_the_peak_only_for_the_cnn_at_batch_64(model, batch):
    timed = [{"name": "torch", "kind": "native", "p50_ms": 10.0},
             {"name": "keras", "kind": "native", "p50_ms": 8.0},
             {"name": "torch.onnx@cuda tuned", "kind": "onnx", "p50_ms": 1.0},  # not CPU
             {"name": "torch.onnx@cpu", "kind": "onnx", "p50_ms": 6.4},
             {"name": "keras.int8.onnx@cpu", "kind": "onnx", "p50_ms": 1.0,  # not float32
              "settings": {"precision": "int8"}},
             {"name": "keras.onnx@cpu tuned", "kind": "onnx", "p50_ms": 8.0}]
    found = {t["target"]: (t["value"], t["limit"], t["met"]) for t in targets(
        model, batch, timed, 1e9, 400.0, {"contender": "x", "vs_fastest_native": 0.8})}
    assert found == {"onnx_cpu_vs_fastest_native": (0.8, 0.8, True),  # at the limit
                     "keras_file_vs_torch_file": (1.25, 1.15, False)}  # 8 / 6.4


def test_each_path_is_timed_relative_to_the_fastest_native_framework():
    timed = [{"kind": "native", "p50_ms": 10.0}, {"kind": "native", "p50_ms": 8.0},
             {"kind": "onnx", "p50_ms": 4.0}, {"kind": "onnx", "p50_ms": 2.0}]
    relative_to_fastest_native(timed)
    assert [r["vs_fastest_native"] for r in timed] == [1.25, 1.0, 0.5, 0.25]


def test_bench_times_every_path_of_the_cnn_and_checks_it_first(tmp_path):
    options = BenchOptions(batches=(3,), rounds=2, calls=2, compile_torch=False,
                           startup=False, precisions=())
    document = run_bench([get_spec("cnn")], tmp_path, options)
    assert [(m["name"], m["batch"]) for m in document["models"]] == [("cnn", 3)]
    for m in document["models"]:
        assert m["skipped"] == {}
        names = [c["name"] for c in m["contenders"]]
        assert names == ["torch", "keras", "torch.onnx@cpu", "torch.onnx@cpu tuned",
                         "torch.opt.onnx@cpu tuned", "keras.onnx@cpu", "keras.onnx@cpu tuned",
                         "keras.opt.onnx@cpu tuned"]
        assert all(c["runs"] == 4 and c["max_abs_vs_torch"] <= 1e-5 for c in m["contenders"])
        tuned = [c["settings"] for c in m["contenders"] if c["name"].endswith("tuned")]
        assert all(s in TUNING for s in ({k: v for k, v in t.items()
                                          if k not in ("file", "precision")} for t in tuned))
        assert m["flops"] == pytest.approx(m["batch"] * 2 * (
            26 * 26 * 32 * 9 + 11 * 11 * 64 * 288 + 3 * 3 * 64 * 576 + 576 * 64 + 64 * 10))
        # the documented limits; the CNN's peak target is for batch 64 only
        found = {t["target"]: t for t in m["targets"]}
        assert {name: t["limit"] for name, t in found.items()} == {
            "onnx_cpu_vs_fastest_native": 0.8, "keras_file_vs_torch_file": 1.15}
        assert all(t["met"] == (t["value"] <= t["limit"]) for t in found.values())
    assert document["matmul_peak_gflops"] > 1.0
    assert document["summary"]["targets"] == sum(len(m["targets"]) for m in document["models"])
    assert document["reduced"] == [] and set(document["deploy"]) == {"cnn"}


def test_reduced_files_race_and_the_deploy_choice_is_confirmed_against_the_natives(tmp_path):
    """A tiny LSTM (dynamic int8 needs no calibration): each fp16/int8 copy races with its own
    tolerance and ratio to its float32 file; one exploration contender is confirmed."""
    from onnxtwin.builders import build_twins, sample_inputs
    from onnxtwin.export.float16 import FLOAT16_REL_TOLERANCE

    spec = make_spec("rnn", "tinylstm", cell="lstm", hidden=[8], vocab=30, embed_dim=4)
    options = BenchOptions(batches=(3,), seq=6, rounds=1, calls=1, compile_torch=False,
                           startup=False)
    document = run_bench([spec], tmp_path, options)
    (m,) = document["models"]
    assert m["skipped"] == {} and document["settings"]["precisions"] == ["fp16", "int8"]
    by_name = {c["name"]: c for c in m["contenders"]}
    twins = build_twins(spec)  # the same seed-0 weights: the tolerance's scale, independently
    outputs = twins.torch.run(sample_inputs(spec, batch=3, seq=6, seed=0))
    scale = max(1.0, max(float(np.abs(v).max()) for v in outputs.values()))
    for fw in ("torch", "keras"):
        for precision, relative in (("fp16", FLOAT16_REL_TOLERANCE), ("int8", 0.1)):
            for kind in ("", " tuned"):
                c = by_name[f"{fw}.{precision}.onnx@cpu{kind}"]
                base = next(b for b in m["contenders"] if b["kind"] == "onnx" and
                            b["settings"]["file"] == f"tinylstm.{fw}.onnx" and
                            b["name"].endswith(" tuned") == bool(kind))
                assert c["vs_float32_file"] == pytest.approx(c["p50_ms"] / base["p50_ms"])
                assert c["settings"]["file"] == f"tinylstm.{fw}.{precision}.onnx"
                assert c["tolerance"] == pytest.approx(relative * scale)
                assert 1e-5 < c["max_abs_vs_torch"] <= c["tolerance"]  # really reduced
            assert (tmp_path / f"tinylstm.{fw}.{precision}.onnx").exists()
    assert [(r["file"], r["refused"], r["calibration"]) for r in document["reduced"]] == [
        (f"tinylstm.{fw}.{p}.onnx", None, None) for fw in ("torch", "keras")
        for p in ("fp16", "int8")]
    deploy = document["deploy"]["tinylstm"]
    chosen = by_name[deploy["contender"]]  # the exploration's fastest float32 file at batch 3
    cpu = [c for c in m["contenders"]
           if "@cpu" in c["name"] and c["settings"].get("precision", "fp32") == "fp32"]
    assert chosen["vs_fastest_native"] == pytest.approx(min(c["vs_fastest_native"] for c in cpu))
    assert deploy["exploration_geomean_vs_fastest_native"] == pytest.approx(
        chosen["vs_fastest_native"])
    assert deploy["settings"] == {k: chosen["settings"][k]
                                  for k in ("threads", "optimization", "spinning")}
    assert (deploy["file"], deploy["precision"]) == (chosen["settings"]["file"],
                                                     chosen["settings"]["precision"])
    (confirmed,) = deploy["confirmed"]
    assert confirmed == m["confirmed"] and confirmed["batch"] == 3 and confirmed["runs"] == 1
    assert confirmed["fastest_native"] in ("torch", "keras")
    assert confirmed["vs_fastest_native"] == pytest.approx(
        confirmed["p50_ms"] / confirmed["fastest_native_p50_ms"])
    headline = next(t for t in m["targets"] if t["target"] == "onnx_cpu_vs_fastest_native")
    assert headline["value"] == confirmed["vs_fastest_native"]
    assert headline["contender"] == deploy["contender"]


def _tiny_onnx(path):
    """A hand-made [batch, 4] -> [batch, 2] MatMul: a model file for serve and deploy."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                ir_version=10), str(path))
    return path


def test_deploy_json_round_trips_into_serve_sessions_and_triton_config(tmp_path):
    from onnxtwin.conformance.cli.core import session
    from onnxtwin.conformance.cli.runtime import session_settings

    model = _tiny_onnx(tmp_path / "m.torch.int8.onnx")
    chosen = {"threads": 1, "optimization": "extended", "spinning": False}
    document = {"benchmark": "onnxtwin bench", "deploy": {"m": {
        "contender": "torch.int8.onnx@cpu tuned", "file": model.name, "precision": "int8",
        "provider": "cpu", "settings": chosen, "confirmed": [{"batch": 64,
                                                              "vs_fastest_native": 0.5}]}}}
    settings = tmp_path / "deploy.json"
    settings.write_text(json.dumps(deploy_settings(document)))
    assert session_settings(settings, [model]) == {model: chosen}
    assert session_settings(None, [model]) == {}
    options = session(model, "cpu", False, **chosen)._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_EXTENDED")
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    repo = tmp_path / "repo"
    result = onnxtwin("deploy", str(model), "--out", str(repo), "--settings", str(settings),
                      timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cannot be told so" in result.stdout  # spinning: not expressible in Triton
    text = (repo / "m_torch_int8" / "config.pbtxt").read_text()
    assert 'key: "intra_op_thread_count"' in text and 'string_value: "1"' in text
    assert "graph {\n    level: 1\n  }" in text


@pytest.mark.parametrize(("command", "content", "message"), [
    ("serve", None, "FileNotFoundError"),
    ("serve", "not json", "JSONDecodeError"),
    ("deploy", '{"models": {"m": {"file": "m.torch.onnx", "settings": {"threads": 1, '
               '"optimization": "fast", "spinning": true}}}}', "got 'm.torch.onnx': {"),
    ("serve", '{"models": {"m": {"file": "other.onnx", "settings": {"threads": 1, '
              '"optimization": "all", "spinning": true}}}}',
     "expected settings for ['m.torch.onnx'], got settings for ['other.onnx']"),
])
def test_a_bad_settings_file_is_a_one_line_error(tmp_path, command, content, message):
    model = _tiny_onnx(tmp_path / "m.torch.onnx")
    settings = tmp_path / "deploy.json"
    if content is not None:
        settings.write_text(content)
    extra = ["--port", "0"] if command == "serve" else ["--out", str(tmp_path / "repo")]
    result = onnxtwin(command, str(model), "--settings", str(settings), *extra, timeout=60)
    assert result.returncode == 2 and f"--settings {settings}: expected" in result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_int8_of_a_conv_graph_is_calibrated_on_random_inputs(tmp_path):
    from onnxtwin.builders import build_twins
    from onnxtwin.conformance.bench.run import reduced_files
    from onnxtwin.export import export_model

    spec = make_spec("cnn", "tinycnn", channels=[4, 4, 4], dense=8)
    source = export_model(build_twins(spec), "torch", tmp_path).path
    made, (record,) = reduced_files(source, spec, ("int8",), 50, lambda _: None)
    assert made == {"torch.int8.onnx": tmp_path / "tinycnn.torch.int8.onnx"}
    assert record["method"].startswith("static int8 QDQ") and record["refused"] is None
    assert "calibrated on random inputs" in record["calibration"]
    assert record["relative_error"] <= 0.1


def test_run_and_serve_reach_their_first_inference_without_torch_or_tensorflow(tmp_path,
                                                                               twins_of):
    from onnxtwin.export import export_model

    export_model(twins_of("cnn"), "torch", tmp_path)
    result = startup_seconds(tmp_path, "cnn", repeats=1)
    names = ("help", "run_first_inference", "serve_first_inference")
    for name in names:
        assert result[name]["imports"] == [] and result[name]["best_s"] > 0
    assert [(t["target"], t["limit"]) for t in result["targets"]] == [
        ("help_s", 0.5), ("run_first_inference_s", 1.0), ("serve_first_inference_s", 1.0)]
    for name, t in zip(names, result["targets"], strict=True):  # no imports: met is the time
        assert t["value"] == result[name]["best_s"]
        assert t["met"] == (result[name]["best_s"] <= t["limit"])


def test_bench_command_writes_json_markdown_and_html(tmp_path):
    result = onnxtwin("bench", "-m", "cnn", "--batch", "2", "--rounds", "1", "--calls", "1",
                      "--no-compile", "--no-startup", "--precision", "fp32", "--out",
                      str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["settings"]["batches"] == [2] and document["startup"] is None
    assert document["settings"]["precisions"] == [] and document["reduced"] == []
    markdown = (tmp_path / "bench.md").read_text()
    assert "onnx_cpu_vs_fastest_native" in markdown and "## Deploy" in markdown
    assert "<svg" in (tmp_path / "bench.html").read_text()
    assert "targets met on" in result.stdout
    chosen = document["deploy"]["cnn"]
    assert json.loads((tmp_path / "deploy.json").read_text())["models"]["cnn"] == {
        "file": chosen["file"], "precision": "fp32", "provider": "cpu",
        "settings": chosen["settings"], "confirmed_vs_fastest_native": {
            "2": chosen["confirmed"][0]["vs_fastest_native"]}}
    assert (tmp_path / chosen["file"]).exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "0"], "expected --rounds, --calls, --seq and --batch >= 1, got 0"),
    (["--seq", "1000000000"], "seq: expected a number <= 65536, got 1000000000"),
    (["-m", "nope"], "unknown model 'nope'"),
    (["--precision", "int4"], "precision: expected one of ['fp32', 'fp16', 'int8'], got 'int4'"),
])
def test_bench_usage_errors_are_one_line(tmp_path, args, message):
    result = onnxtwin("bench", *args, "--out", str(tmp_path / "b"), timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "b").exists()


def test_device_bench_runs_torch_and_io_bound_onnxruntime_in_both_precisions(tmp_path):
    """conformance/bench/device.py on the CPU (the code a GPU runs with device="cuda"):
    float16 paths are kept within their own tolerance, and really are float16."""
    from onnxtwin.builders import build_twins
    from onnxtwin.conformance.bench.device import run_device_bench
    from onnxtwin.export import export_model
    from onnxtwin.export.float16 import FLOAT16_REL_TOLERANCE

    path = export_model(build_twins("cnn"), "torch", tmp_path).path
    document = run_device_bench([path], tmp_path / "out", device="cpu", batches=(3,),
                                rounds=1, calls=2)
    (model,) = document["models"]
    assert model["skipped"] == {}
    by_name = {c["name"]: c for c in model["contenders"]}
    assert list(by_name) == ["torch@cpu", "torch@cpu float16", "cnn.torch@cpu bound",
                             "cnn.torch.float16@cpu bound"]
    for name, c in by_name.items():
        assert c["runs"] == 2 and c["fraction_of_peak"] > 0
        if "float16" in name:  # half precision: off by more than float32, within 0.5%
            assert c["tolerance"] == pytest.approx(FLOAT16_REL_TOLERANCE * max(
                1.0, abs(model["reference_max_abs"])))
            assert 1e-5 < c["max_abs_vs_torch"] <= c["tolerance"]
        else:
            assert c["tolerance"] == 1e-5 and c["max_abs_vs_torch"] <= 1e-5
    assert (tmp_path / "out" / "cnn.torch.float16.onnx").exists()
    assert set(document["matmul_peak_tflops"]) == {"float32", "float16"}


def test_device_bench_refuses_a_file_of_other_weights(tmp_path):
    from onnxtwin.builders import build_twins
    from onnxtwin.conformance.bench.device import torch_twin
    from onnxtwin.export import export_model
    from onnxtwin.runtime.errors import OnnxtwinError

    path = export_model(build_twins("cnn", seed=1), "torch", tmp_path).path
    with pytest.raises(OnnxtwinError, match=r"^cnn.torch.onnx: expected the seed-0 weights"):
        torch_twin(path)


def test_torch_flops_sees_through_the_fused_transformer_and_skips_rnns():
    from onnxtwin.builders import build_twins, sample_inputs
    from onnxtwin.conformance.bench.run import torch_flops

    twins = build_twins("transformer")
    b, s, d, h, f = 64, 50, 64, 4, 128
    layer = 2 * b * s * d * (3 * d + d + 2 * f) + 2 * 2 * b * h * s * s * (d // h)
    expected = 2 * layer + 2 * b * s * d + 2 * b * d * 10  # + masked-mean pool + fc
    inputs = sample_inputs(twins.spec, batch=b, seq=s)
    assert torch_flops(twins.spec, twins.torch_model, inputs) == expected
    lstm = build_twins("lstm")
    inputs = sample_inputs(lstm.spec, batch=2, seq=5)
    assert torch_flops(lstm.spec, lstm.torch_model, inputs) is None
