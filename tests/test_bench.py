"""`onnxtwin bench`: interleaving, validation before timing, targets from the measured numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxtwin.builders import get_spec
from onnxtwin.conformance.bench.run import (
    TUNING,
    BenchOptions,
    Contender,
    interleave,
    relative_to_fastest_native,
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


def test_targets_are_ratios_of_the_best_medians():
    timed = [{"name": "torch", "kind": "native", "p50_ms": 10.0},
             {"name": "keras", "kind": "native", "p50_ms": 8.0},
             {"name": "torch.onnx@cpu", "kind": "onnx", "p50_ms": 6.0},
             {"name": "torch.onnx@cpu tuned", "kind": "onnx", "p50_ms": 4.0},
             {"name": "keras.onnx@cpu tuned", "kind": "onnx", "p50_ms": 5.0}]
    found = {t["target"]: (t["value"], t["met"])
             for t in targets("cnn", 64, timed, flops=1e9, peak_gflops=400.0)}
    assert found == {"onnx_cpu_vs_fastest_native": (0.5, True),
                     "keras_file_vs_torch_file": (1.25, False),
                     "cnn_fraction_of_matmul_peak": (0.625, True)}  # 1e9 / 4 ms = 250 GFLOP/s


@pytest.mark.parametrize(("model", "batch"), [("cnn", 1), ("lstm", 64)])
def test_targets_count_cpu_files_only_and_the_peak_only_for_the_cnn_at_batch_64(model, batch):
    timed = [{"name": "torch", "kind": "native", "p50_ms": 10.0},
             {"name": "keras", "kind": "native", "p50_ms": 8.0},
             {"name": "torch.onnx@cuda tuned", "kind": "onnx", "p50_ms": 1.0},  # not CPU
             {"name": "torch.onnx@cpu", "kind": "onnx", "p50_ms": 6.4},
             {"name": "keras.onnx@cpu tuned", "kind": "onnx", "p50_ms": 8.0}]
    found = {t["target"]: (t["value"], t["limit"], t["met"])
             for t in targets(model, batch, timed, flops=1e9, peak_gflops=400.0)}
    assert found == {"onnx_cpu_vs_fastest_native": (0.8, 0.8, True),  # 6.4 / 8: at the limit
                     "keras_file_vs_torch_file": (1.25, 1.15, False)}  # 8 / 6.4


def test_each_path_is_timed_relative_to_the_fastest_native_framework():
    timed = [{"kind": "native", "p50_ms": 10.0}, {"kind": "native", "p50_ms": 8.0},
             {"kind": "onnx", "p50_ms": 4.0}, {"kind": "onnx", "p50_ms": 2.0}]
    relative_to_fastest_native(timed)
    assert [r["vs_fastest_native"] for r in timed] == [1.25, 1.0, 0.5, 0.25]


def test_bench_times_every_path_of_the_cnn_and_checks_it_first(tmp_path):
    options = BenchOptions(batches=(3,), rounds=2, calls=2, compile_torch=False,
                           startup=False)
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
        assert all(s in TUNING for s in ({k: v for k, v in t.items() if k != "file"}
                                         for t in tuned))
        assert m["flops"] == pytest.approx(m["batch"] * 2 * (
            26 * 26 * 32 * 9 + 11 * 11 * 64 * 288 + 3 * 3 * 64 * 576 + 576 * 64 + 64 * 10))
        # the documented limits; the CNN's peak target is for batch 64 only
        found = {t["target"]: t for t in m["targets"]}
        assert {name: t["limit"] for name, t in found.items()} == {
            "onnx_cpu_vs_fastest_native": 0.8, "keras_file_vs_torch_file": 1.15}
        assert all(t["met"] == (t["value"] <= t["limit"]) for t in found.values())
    assert document["matmul_peak_gflops"] > 1.0
    assert document["summary"]["targets"] == sum(len(m["targets"]) for m in document["models"])


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
                      "--no-compile", "--no-startup", "--out", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["settings"]["batches"] == [2] and document["startup"] is None
    assert "onnx_cpu_vs_fastest_native" in (tmp_path / "bench.md").read_text()
    assert "<svg" in (tmp_path / "bench.html").read_text()
    assert "targets met on" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "0"], "expected --rounds, --calls, --seq and --batch >= 1, got 0"),
    (["--seq", "1000000000"], "seq: expected a number <= 65536, got 1000000000"),
    (["-m", "nope"], "unknown model 'nope'"),
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
