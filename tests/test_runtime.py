"""The runtime: honest providers, validated inputs, safe loading, threads, IO binding, float16."""

from __future__ import annotations

import functools
import importlib
import os
import re
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
from cli_runner import onnxtwin

from onnxtwin.builders import sample_inputs
from onnxtwin.export import export_model
from onnxtwin.export.float16 import FLOAT16_REL_TOLERANCE, to_float16
from onnxtwin.runtime import (
    FLOAT32_ABS_TOLERANCE,
    OnnxtwinError,
    ProviderFallbackWarning,
    ProviderStatus,
    Session,
    compare,
    measure,
    probe,
    providers,
)

CUDA = probe("cuda")
needs_cuda = pytest.mark.skipif(not CUDA.usable, reason=f"CUDA provider not usable here: "
                                                       f"{CUDA.reason}")


@pytest.fixture(scope="module")
def exported(twins_of, tmp_path_factory):
    """exported(name, framework) -> path of an accepted export (built once per module)."""
    out, paths = tmp_path_factory.mktemp("exports"), {}

    def get(name: str, framework: str = "torch"):
        if (name, framework) not in paths:
            paths[name, framework] = export_model(twins_of(name), framework, out).path
        return paths[name, framework]

    return get


def test_cpu_is_usable_and_every_unusable_provider_says_why():
    statuses = {s.alias: s for s in providers()}
    assert statuses["cpu"].usable and statuses["cpu"].listed
    for s in statuses.values():
        assert s.reason and "\n" not in s.reason
        if s.listed and not s.usable:  # the case itself is made for certain in the next test
            assert s.reason.startswith("onnxruntime fell back to CPU")


# What onnxruntime-gpu writes to fd 2 when the CUDA provider's libraries are missing (in
# colour), before it quietly creates the session on CPU.
_CUDA_LOG = ("\x1b[1;31m2026-01-01 00:00:00.000 [E:onnxruntime:Default, provider_bridge_ort.cc:"
             "2251 TryGetProviderInfo_CUDA] Failed to load library "
             "libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot open "
             "shared object file: No such file or directory\x1b[m\n")
_TENSORRT_ERROR = "Failed to create TensorrtExecutionProvider: libnvinfer.so.10 missing"
_LISTED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class _FallingBackSession:
    """onnxruntime.InferenceSession on a machine that lists every provider but runs only CPU:
    CUDA logs why and falls back to CPU, TensorRT raises."""

    def __init__(self, model, providers):
        if providers == ["TensorrtExecutionProvider"]:
            raise RuntimeError(_TENSORRT_ERROR)
        if providers == ["CUDAExecutionProvider"]:
            os.write(2, _CUDA_LOG.encode())

    def get_providers(self):
        return ["CPUExecutionProvider"]


class _WorkingSession:
    """onnxruntime.InferenceSession where every requested provider really runs."""

    def __init__(self, model, providers):
        self.ran = list(dict.fromkeys([*providers, "CPUExecutionProvider"]))

    def get_providers(self):
        return self.ran


def _fake_onnxruntime(monkeypatch, session_class):
    """Probe against a faked onnxruntime with a fresh probe cache (the real cache is kept)."""
    import onnxruntime as ort

    module = importlib.import_module("onnxtwin.runtime.providers")
    monkeypatch.setattr(module, "probe", functools.cache(module.probe.__wrapped__))
    monkeypatch.setattr(module, "preload_cuda_libraries", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(_LISTED))
    monkeypatch.setattr(ort, "InferenceSession", session_class)
    return module


def test_a_listed_provider_that_falls_back_is_unusable_says_why_and_warns(monkeypatch):
    module = _fake_onnxruntime(monkeypatch, _FallingBackSession)
    statuses = {s.alias: s for s in providers()}
    fell_back = "onnxruntime fell back to CPU: "
    assert statuses == {
        "cpu": ProviderStatus("cpu", "CPUExecutionProvider", True, True, "a session ran on it"),
        "cuda": ProviderStatus("cuda", "CUDAExecutionProvider", True, False,
                               fell_back + "libcublasLt.so.12: cannot open shared object file: "
                                           "No such file or directory"),
        "tensorrt": ProviderStatus("tensorrt", "TensorrtExecutionProvider", True, False,
                                   fell_back + _TENSORRT_ERROR)}
    unusable = [s for s in statuses.values() if s.listed and not s.usable]
    assert [s.alias for s in unusable] == ["cuda", "tensorrt"]
    for s in unusable:  # the assertion of the test above, here certain to run
        assert s.reason.startswith("onnxruntime fell back to CPU") and "\n" not in s.reason
    assert module.usable_aliases() == ["cpu"]
    for alias in ("cuda", "tensorrt"):  # a session asked for it runs on CPU, and says so
        expected = f"provider '{alias}': expected it to run here, got: {statuses[alias].reason}"
        with pytest.warns(ProviderFallbackWarning,
                          match=f"^{re.escape(expected)}; running on CPU instead$"):
            assert module.resolve(alias, strict=False) == ["CPUExecutionProvider"]
        with pytest.raises(OnnxtwinError, match=f"^{re.escape(expected)}$"):
            module.resolve(alias, strict=True)


def test_a_listed_provider_that_runs_is_usable_and_asked_for_first(monkeypatch):
    """The same probe where the provider does run: so the test above sees a real fallback."""
    module = _fake_onnxruntime(monkeypatch, _WorkingSession)
    assert all(s.listed and s.usable and s.reason == "a session ran on it"
               for s in providers())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        assert module.resolve("cuda", strict=True) == ["CUDAExecutionProvider",
                                                      "CPUExecutionProvider"]


def test_an_unusable_provider_falls_back_with_a_warning_or_is_refused(exported):
    if CUDA.usable:
        pytest.skip("CUDA runs here; the fallback cannot happen")
    path = exported("cnn")
    with pytest.warns(ProviderFallbackWarning, match=r"^provider 'cuda': expected it to run "
                                                    r"here, got: .*; running on CPU instead$"):
        session = Session(path, "cuda")
    assert session.providers == ("CPUExecutionProvider",)
    with pytest.raises(OnnxtwinError, match=r"^provider 'cuda': expected it to run here, got: "):
        Session(path, "cuda", strict=True)
    with pytest.raises(OnnxtwinError, match=r"^provider: expected one of \['cpu', 'cuda', "
                                            r"'tensorrt'\], got 'tpu'$"):
        Session(path, "tpu")


def test_outputs_by_name_match_the_framework_at_unseen_shapes(exported, twins_of):
    twins = twins_of("bilstm")
    session = Session(exported("bilstm", "keras"))
    assert [(i.name, str(i), i.vocab) for i in session.inputs] == \
        [("tokens", "int64[batch, seq]", 10000)]
    x = sample_inputs(twins.spec, batch=5, seq=17, seed=3)
    out = session.run(x)
    assert list(out) == ["logits"] and out["logits"].shape == (5, 10)
    assert compare(out["logits"], twins.torch.run(x)["logits"]).max_abs <= FLOAT32_ABS_TOLERANCE


TOKENS = np.ones((2, 9), np.int64)


@pytest.mark.parametrize(("given", "message"), [
    ({}, r"expected inputs \['tokens'\], got \[\] \(missing \['tokens'\], unexpected \[\]\)"),
    ({"tokens": TOKENS, "mask": TOKENS}, r"unexpected \['mask'\]"),
    ({"tokens": TOKENS.astype(np.int32)}, r"^input 'tokens': expected int64\[batch, seq\], "
                                          r"got int32\[2, 9\]$"),
    ({"tokens": TOKENS[0]}, r"^input 'tokens': expected int64\[batch, seq\], got int64\[9\]$"),
    ({"tokens": TOKENS[:0]}, r"expected int64\[batch, seq\] with no empty dim, got int64\[0, 9\]"),
    ({"tokens": TOKENS * 10000}, r"^input 'tokens': expected token ids in \[0, 10000\), got "
                                 r"ids from 10000 to 10000$"),
    ({"tokens": -TOKENS}, r"got ids from -1 to -1$"),
    ({"tokens": [[1.5, 2.0]]}, r"expected int64\[batch, seq\], got float64\[1, 2\]"),
    ([TOKENS], r"expected a mapping of input names to arrays, got list"),
])
def test_bad_token_inputs_are_named_with_expected_and_given(exported, given, message):
    session = Session(exported("gru"))
    with pytest.raises(OnnxtwinError, match=message):
        session.run(given)


def test_bad_image_inputs_fixed_dims_and_non_finite_values(exported):
    session = Session(exported("cnn"), check_finite=True)
    image = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(OnnxtwinError, match=r"^input 'image': expected size 28 in dim 3 "
                                            r"\(float32\[batch, 1, 28, 28\]\), got "
                                            r"float32\[2, 1, 28, 27\]$"):
        session.run({"image": image[..., :27]})
    image[1, 0, 3, 4], image[0, 0, 0, 0] = np.nan, np.inf
    with pytest.raises(OnnxtwinError, match=r"^input 'image': expected finite values, got 2 "
                                            r"NaN/Inf of 1568$"):
        session.run({"image": image})
    unchecked = Session(exported("cnn"))  # check_finite off: NaN flows through, as asked
    assert np.isnan(unchecked.run({"image": image})["logits"]).any()


@pytest.mark.parametrize(("content", "message"), [
    (None, r"expected an ONNX model file, got a path that does not exist$"),
    (b"", r"expected an ONNX model file, got an empty file$"),
    (b"\x8f\x00 not a model at all \xff" * 40, r"expected an ONNX model onnxruntime can load, "
                                               r"got: \[ONNXRuntimeError\] : 7 : INVALID_PROTOBUF"),
    ("truncated", r"expected an ONNX model onnxruntime can load, got: "),
])
def test_unloadable_files_give_one_line_errors(exported, tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content == "truncated":
        content = exported("cnn").read_bytes()[:5000]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(OnnxtwinError, match=message) as caught:
        Session(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(OnnxtwinError, match=r"got a directory$"):
        Session(tmp_path)


RUNS, THREADS = 10_000, 8


def test_eight_threads_share_one_session_for_10000_runs_bit_identical_to_sequential(exported,
                                                                                   twins_of):
    session = Session(exported("transformer"), threads=1)
    batches = [sample_inputs(twins_of("transformer").spec, batch=1 + i % 4, seq=5 + i % 11,
                             seed=i) for i in range(64)]
    expected = [session.run(x)["logits"] for x in batches]
    done, differing = [0] * THREADS, [0] * THREADS

    def worker(t: int) -> None:
        for run in range(RUNS // THREADS):
            i = (t + run * THREADS + run // 8) % len(batches)  # every thread visits every batch
            done[t] += 1
            differing[t] += not np.array_equal(session.run(batches[i])["logits"], expected[i])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(done) == RUNS and sum(differing) == 0


def test_io_binding_on_cpu_equals_run_and_accepts_device_values(exported):
    import onnxruntime as ort

    session = Session(exported("gru", "keras"))
    tokens = np.arange(1, 25, dtype=np.int64).reshape(3, 8)
    plain = session.run({"tokens": tokens})["logits"]
    assert np.array_equal(session.run_bound({"tokens": tokens}, device="cpu")["logits"], plain)
    resident = ort.OrtValue.ortvalue_from_numpy(tokens, "cpu", 0)
    assert np.array_equal(session.run_bound({"tokens": resident}, device="cpu")["logits"], plain)
    wrong = ort.OrtValue.ortvalue_from_numpy(tokens.astype(np.int32), "cpu", 0)
    with pytest.raises(OnnxtwinError, match=r"expected int64\[batch, seq\], got int32\[3, 8\]"):
        session.run_bound({"tokens": wrong}, device="cpu")


@pytest.mark.parametrize(("name", "framework"), [("cnn", "torch"), ("gru", "keras"),
                                                 ("transformer", "torch"),
                                                 ("transformer", "keras")])
def test_float16_copy_is_within_its_tolerance_on_cpu(exported, twins_of, tmp_path, name,
                                                     framework):
    spec = twins_of(name).spec
    inputs = [sample_inputs(spec, batch=b, seq=12, seed=b)
              for b in (1, 7)]
    result = to_float16(exported(name, framework), tmp_path / "half.onnx", inputs, provider="cpu")
    assert 0 < result.max_rel <= FLOAT16_REL_TOLERANCE
    assert result.max_abs > FLOAT32_ABS_TOLERANCE / 10  # it really is float16 arithmetic
    assert result.path.stat().st_size < exported(name, framework).stat().st_size * 0.6


def test_a_float16_copy_outside_tolerance_is_not_written(exported, twins_of, tmp_path):
    inputs = [sample_inputs(twins_of("cnn").spec, batch=7, seed=0)]
    with pytest.raises(OnnxtwinError, match=r"^float16 copy of cnn.torch.onnx: expected max "
                                            r"error within 1e-06 of the output scale, got "):
        to_float16(exported("cnn"), tmp_path / "half.onnx", inputs, "cpu", tolerance=1e-6)
    assert not list(tmp_path.iterdir())


@needs_cuda
def test_cuda_session_io_binding_and_float16(exported, twins_of, tmp_path):
    spec = twins_of("transformer").spec
    x = sample_inputs(spec, batch=7, seq=50, seed=2)
    cpu = Session(exported("transformer")).run(x)["logits"]
    session = Session(exported("transformer"), "cuda", strict=True)
    assert session.provider == "CUDAExecutionProvider"
    assert compare(session.run(x)["logits"], cpu).max_abs <= FLOAT32_ABS_TOLERANCE
    assert compare(session.run_bound(x)["logits"], cpu).max_abs <= FLOAT32_ABS_TOLERANCE
    result = to_float16(exported("transformer"), tmp_path / "half.onnx", [x], provider="cuda")
    assert result.provider == "CUDAExecutionProvider"
    assert result.max_rel <= FLOAT16_REL_TOLERANCE


def test_measure_counts_warmup_and_reports_ordered_percentiles():
    calls = []
    timing = measure(lambda: calls.append(sum(range(2000))), batch=8, runs=40, warmup=3)
    assert len(calls) == 43
    assert 0 < timing.p50_ms <= timing.p90_ms <= timing.p99_ms
    assert timing.throughput == pytest.approx(8 / (timing.mean_ms / 1e3))
    with pytest.raises(ValueError, match="expected runs >= 1"):
        measure(lambda: None, batch=1, runs=0)


def test_run_command_writes_outputs_and_imports_no_framework(exported, tmp_path):
    model = exported("gru")
    tokens = np.arange(1, 21, dtype=np.int64).reshape(2, 10)
    np.savez(tmp_path / "x.npz", tokens=tokens)
    code = textwrap.dedent(f"""
        import sys
        from onnxtwin.conformance.cli import app
        try:
            app(["run", {str(model)!r}, "-i", {str(tmp_path / "x.npz")!r},
                 "-o", {str(tmp_path / "y.npz")!r}], standalone_mode=False)
        finally:
            print(sorted(m for m in ("torch", "tensorflow", "keras", "tf2onnx")
                         if m in sys.modules))  # onnx is: the memory bound's shape inference
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "ran gru.torch.onnx on CPUExecutionProvider" in result.stdout
    with np.load(tmp_path / "y.npz") as y:
        assert np.array_equal(y["logits"], Session(model).run({"tokens": tokens})["logits"])


def test_run_command_errors_are_one_line_with_exit_2_and_no_output(exported, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 1, 28, 28)))  # float64: the model wants float32
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    cases = [
        (exported("cnn"), "x.npy", r"error: input 'image': expected float32\[batch, 1, 28, 28\], "
                                   r"got float64\[2, 1, 28, 28\]"),
        (tmp_path / "junk.onnx", "x.npy", r"junk.onnx: expected an ONNX model onnxruntime can "
                                          r"load, got: "),
        (tmp_path / "none.onnx", "x.npy", r"none.onnx: expected an ONNX model file, got a path "
                                          r"that does not exist"),
        (exported("cnn"), "junk.onnx", r"junk.onnx: expected an .npy or .npz file of numeric "
                                       r"arrays"),
    ]
    for model, given, message in cases:
        result = onnxtwin("run", str(model), "-i", str(tmp_path / given), "-o",
                          str(tmp_path / "y.npz"), timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert re.search(message, lines[0]), lines[0]
        assert not (tmp_path / "y.npz").exists()


def test_providers_command_prints_the_probe_table():
    result = onnxtwin("providers", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines()
            if line.startswith("│") and "ExecutionProvider" in line}
    assert "yes" in rows["cpu"].split("│")[4]
    for status in providers():
        assert (("yes" in rows[status.alias].split("│")[4]) == status.usable)


def test_cuda_sessions_ask_for_float32_not_tf32(exported, monkeypatch):
    """onnxruntime's CUDA provider runs float32 MatMul/Conv in TF32 unless told not to."""
    import onnxruntime as ort

    from onnxtwin.runtime.session import _create

    seen = {}

    def capture(path, options, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(ort, "InferenceSession", capture)
    _create(ort, exported("cnn"), ort.SessionOptions(),
            ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert seen["provider_options"] == [{"use_tf32": "0"}, {}]
    assert seen["disabled_optimizers"] == []  # CUDA keeps SkipLayerNormalization
