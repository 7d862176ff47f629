"""Interrupted writes, and files that are not models: each ends in one line, nothing partial."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_runner import CLI, onnxtwin

from onnxtwin.builders.weights import read_weights
from onnxtwin.conformance.report import without_timings
from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime.files import TEMPORARY_PREFIX, atomic_path, folder_lock, staging_folder

PREVIOUS = b"the previous export"


def export_until_a_temporary_exists(out: Path) -> tuple[subprocess.Popen, list[Path]]:
    """Start a Keras transformer export into `out`; return once its temporary file exists
    (the model is written and the gate is running on it)."""
    (out / "transformer.keras.onnx").write_bytes(PREVIOUS)
    process = subprocess.Popen([*CLI, "export", "-m", "transformer", "--framework", "keras",
                                "--no-cache", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (temporaries := list(out.glob(f"{TEMPORARY_PREFIX}*"))):
        assert process.poll() is None, "the export ended before writing its temporary file"
        assert time.monotonic() < deadline, "no temporary file within 180 s"
        time.sleep(0.01)
    return process, temporaries


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_export_leaves_the_previous_file_intact(tmp_path, how):
    process, temporaries = export_until_a_temporary_exists(tmp_path)
    process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (143, -signal.SIGKILL), stderr[-2000:]
    assert (tmp_path / "transformer.keras.onnx").read_bytes() == PREVIOUS
    assert not (tmp_path / "export.json").exists()
    if how == "SIGTERM":  # exits through the finally blocks
        assert not list(tmp_path.glob(f"{TEMPORARY_PREFIX}*")), stderr[-2000:]
    else:  # nothing runs after SIGKILL: the next write into the folder removes the leftover
        assert list(tmp_path.glob(f"{TEMPORARY_PREFIX}*")) == temporaries
        with atomic_path(tmp_path / "other.txt") as tmp:
            tmp.write_text("next")
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            ".onnxtwin.lock", "other.txt", "transformer.keras.onnx"]  # the lock file stays


SIGTERM_DURING_AN_IMPORT = """
import os, signal, time
from onnxtwin.conformance.cli import core

def app():  # SIGTERM while a C extension initialises: its SystemExit becomes an ImportError
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except SystemExit:
        raise ImportError("initialization failed") from None

core.app = app
core.main()
"""


def test_sigterm_exits_143_even_when_it_surfaces_as_another_error():
    result = subprocess.run([sys.executable, "-c", SIGTERM_DURING_AN_IMPORT],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr and "ImportError" not in result.stderr


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    with atomic_path(tmp_path / "a.txt") as first:
        first.write_text("being written")
        with atomic_path(tmp_path / "b.txt") as second:
            second.write_text("b")
        assert first.read_text() == "being written"  # same (live) pid: not stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_dead_writers_staging_folder_goes_and_look_alike_folders_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"{TEMPORARY_PREFIX}{dead}-0123abcd-staging"
    other = tmp_path / f"{TEMPORARY_PREFIX}{dead}-0123abcd-mine"  # not a staging name
    live = staging_folder(tmp_path)
    for folder in (stale, other, live):
        folder.mkdir()
        (folder / "cnn.torch.onnx").write_text("x")
    with atomic_path(tmp_path / "next.txt") as tmp:
        tmp.write_text("next")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, live.name,
                                                                 "next.txt"])


# --- files that are not models ------------------------------------------------------------------

def tiny_model(path: Path, node: str = "Relu", opset: int = 18, initializers=()) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    inputs = ["x", *(i.name for i in initializers)]
    graph = helper.make_graph([helper.make_node(node, inputs, ["y"])], "g", [x], [y],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


def external_weight(location: str):
    from onnx import TensorProto, numpy_helper

    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return w


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: tiny_model(d / "m.onnx", node="NoSuchOp"), "No Op registered for NoSuchOp"),
    (lambda d: tiny_model(d / "m.onnx", opset=99), "Opset 99 is under development"),
    (lambda d: tiny_model(d / "model" / "m.onnx", node="Add",
                          initializers=[external_weight("../secret.bin")]),
     "External data path escapes model directory"),
])
def test_models_onnxruntime_cannot_or_must_not_load_are_one_line(tmp_path, make, message):
    (tmp_path / "model").mkdir()
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = make(tmp_path)
    with pytest.raises(OnnxtwinError, match="expected an ONNX model onnxruntime can load, got: "
                                            ".*" + message) as caught:
        Session(path)
    assert "\n" not in str(caught.value)


def test_an_oversized_file_is_refused_before_onnxruntime_reads_it(tmp_path):
    path = tmp_path / "huge.onnx"
    with path.open("wb") as f:  # sparse: no disk is used
        f.truncate(2**31 + 1)
    with pytest.raises(OnnxtwinError, match=r"expected a single-file ONNX model of at most "
                                            r"2 GiB .*, got 2147483649 bytes"):
        Session(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\xff" * 64, b"{\"a\": 1}", 2**31 + 1])
def test_corrupt_weight_files_are_one_line(tmp_path, content):
    path = tmp_path / "torch.safetensors"
    if isinstance(content, int):  # an oversized file of zeros, sparse: no disk is used
        with path.open("wb") as f:
            f.truncate(content)
    else:
        path.write_bytes(content)
    with pytest.raises(OnnxtwinError, match=r"expected .*safetensors file") as caught:
        read_weights(path)
    assert "\n" not in str(caught.value)


def test_an_unwritable_output_folder_is_one_line_with_exit_2(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = onnxtwin("build", "-m", "cnn", "--out", str(tmp_path / "file" / "out"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'file' / 'out'}")
    assert lines[0].endswith(": expected a path onnxtwin can read or write, got Not a directory")


# --- two processes ----------------------------------------------------------------------------

def test_a_second_writer_into_a_held_folder_fails_at_once_in_one_line(tmp_path):
    with folder_lock(tmp_path / "out"):
        result = onnxtwin("check", "-m", "cnn", "--out", str(tmp_path / "out"))
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".onnxtwin.lock"]
    assert not list(tmp_path.iterdir())  # the holder wrote nothing either: no trace left
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: output folder {tmp_path / 'out'}: expected no other onnxtwin "
                     "process writing into it, got one holding .onnxtwin.lock"]


def test_two_checks_into_different_folders_at_once_do_not_interfere(tmp_path):
    runs = [subprocess.Popen([*CLI, "check", "-m", "cnn", "--out", str(tmp_path / name)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
    a, b = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("a", "b"))
    assert a["command"] != b["command"]  # --out differs, nothing else
    assert without_timings({**a, "command": None}) == without_timings({**b, "command": None})
    assert (tmp_path / "a" / "cnn.torch.onnx").read_bytes() == \
        (tmp_path / "b" / "cnn.torch.onnx").read_bytes()
