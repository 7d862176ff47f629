"""Hostile and careless files, names and options (issue 17): each ends in one line and
exit 2 (or is handled), and never costs a user's file or the machine's memory.

Every hostile file is built here; every expectation is computed here, not by the code
under test.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runner import onnxtwin
from onnx import TensorProto, helper, numpy_helper

from onnxtwin.conformance.cli import main
from onnxtwin.runtime import OnnxtwinError, Session
from onnxtwin.runtime.arrays import MAX_ARRAY_BYTES, load_arrays, save_arrays
from onnxtwin.runtime.errors import ResourceLimit
from onnxtwin.runtime.files import atomic_path, existing_file
from onnxtwin.runtime.serve import triton
from onnxtwin.runtime.serve.triton import TritonOptions, external_data, write_repository

NAME_RULE = "1 to 64 ASCII letters, digits, '_', '.' or '-', starting with a letter or digit"
NEVER_A_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def relu_model(path: Path, extra_outputs=(), nodes=(), width: int = 4) -> Path:
    """y = Relu(x) for x float32[batch, width], plus any extra nodes and outputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), *nodes], "g", [x],
                              [y, *extra_outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 refuses
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def external_data_model(folder: Path, location: str = "data/w.bin") -> tuple[Path, np.ndarray]:
    """y = x + w, with w (float32[1, 256]) kept as external data at `location`."""
    w = np.arange(256, dtype=np.float32).reshape(1, 256)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path, w


def in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`onnxtwin ARGS` through main() in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["onnxtwin", *args])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return stderr.splitlines()


# --- temporary files: cleanup touches only onnxtwin's own ----------------------------------

def test_run_output_leaves_a_users_file_that_looks_like_an_old_temporary(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.array([[-1, 2, -3, 4]], np.float32))
    out = tmp_path / "out"
    out.mkdir()
    looks_alike = [".tmp-2024-01-backup.txt", ".onnxtwin-tmp-2024-01-backup.txt",
                   f".onnxtwin-tmp-{NEVER_A_PID}-0123abcd"]  # no name after the random part
    for name in looks_alike:
        (out / name).write_text("the user's")
    result = onnxtwin("run", str(model), "-i", str(tmp_path / "x.npy"), "-o",
                      str(out / "y.npz"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*looks_alike, "y.npz"])
    assert all((out / name).read_text() == "the user's" for name in looks_alike)
    np.testing.assert_array_equal(np.load(out / "y.npz")["y"], [[0, 2, 0, 4]])


def test_a_stale_temporary_is_removed_but_not_a_folder_or_link_named_like_one(tmp_path):
    stale = f".onnxtwin-tmp-{NEVER_A_PID}-0123abcd-a.txt"
    folder = f".onnxtwin-tmp-{NEVER_A_PID}-89abcdef-b.txt"
    link = f".onnxtwin-tmp-{NEVER_A_PID}-deadbeef-c.txt"
    (tmp_path / stale).write_text("left by a SIGKILLed writer")
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "inside.txt").write_text("kept")
    (tmp_path / "precious.txt").write_text("kept")
    (tmp_path / link).symlink_to(tmp_path / "precious.txt")
    with atomic_path(tmp_path / "new.txt") as tmp:
        assert tmp.name.startswith(f".onnxtwin-tmp-{os.getpid()}-")
        assert tmp.name.endswith("-new.txt") and len(tmp.name.split("-")[3]) == 8
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [folder, link, "new.txt", "precious.txt"])
    assert (tmp_path / folder / "inside.txt").read_text() == "kept"
    assert (tmp_path / "precious.txt").read_text() == "kept"


def test_writing_over_a_directory_is_one_line_before_the_work(tmp_path):
    (tmp_path / "y.npz").mkdir()
    with pytest.raises(OnnxtwinError) as caught:
        save_arrays(tmp_path / "y.npz", {"y": np.zeros(3)})
    assert str(caught.value) == f"{tmp_path / 'y.npz'}: expected a file path to write, got a " \
                                "directory"
    assert [p.name for p in tmp_path.iterdir()] == ["y.npz"]


def test_an_os_error_names_the_users_path_not_the_temporary_one(tmp_path):
    with pytest.raises(OSError) as caught, atomic_path(tmp_path / "a.txt") as tmp:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp))
    assert (caught.value.errno, caught.value.filename) == (errno.EROFS, str(tmp_path / "a.txt"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("make", "got"), [(lambda p: p.write_text("x"), "a file"),
                                            (lambda p: os.mkfifo(p), "a FIFO (named pipe)")])
def test_a_file_where_the_output_folder_should_be_is_one_line(tmp_path, monkeypatch, capsys,
                                                               make, got):
    model = relu_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    make(tmp_path / "taken")
    for args in (["run", str(model), "-i", str(tmp_path / "x.npy"), "-o",
                  str(tmp_path / "taken" / "y.npz")],
                 ["deploy", str(model), "--out", str(tmp_path / "taken")]):
        code, _, err = in_process(monkeypatch, capsys, *args)
        assert (code, error_lines(err)) == (
            2, [f"error: {tmp_path / 'taken'}: expected a folder, got {got}"])


# --- .npy / .npz: bounded before anything is allocated -------------------------------------

def npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "<f4",
                    data: bytes = b"\0" * 16) -> int:
    """An .npy whose header declares `shape` but that holds only `data`; returns the bytes
    after the header."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False,
                                                 "shape": shape})
        f.write(data)
    return len(data)


def test_an_npy_header_claiming_terabytes_is_one_line_with_exit_2(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    shape = (390_000, 2_000_000)  # float32: 3.12e12 bytes, 2.84 TiB
    held = npy_header_only(tmp_path / "x.npy", shape)
    result = onnxtwin("run", str(model), "-i", str(tmp_path / "x.npy"), "-o",
                      str(tmp_path / "y.npz"), timeout=120)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: {tmp_path / 'x.npy'}: expected a file that holds the "
        f"{390_000 * 2_000_000 * 4} bytes its header declares (float32[390000, 2000000]), "
        f"got {held}"]
    assert not (tmp_path / "y.npz").exists()


def test_a_complete_npy_over_the_bound_is_a_resource_limit(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 100), np.float32))  # 4000 bytes
    with pytest.raises(ResourceLimit) as caught:
        load_arrays(tmp_path / "x.npy", ["x"], max_bytes=3999)
    assert str(caught.value) == (f"{tmp_path / 'x.npy'}: expected arrays of at most 3999 "
                                 f"bytes, got float32[10, 100], 4000 bytes")
    assert load_arrays(tmp_path / "x.npy", ["x"], max_bytes=4000)["x"].shape == (10, 100)


def test_a_deflated_npz_is_bounded_by_its_decompressed_size(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(2**21, np.float32))  # 8 MiB of zeros
    assert path.stat().st_size < 2**16
    declared = zipfile.ZipFile(path).getinfo("x.npy").file_size
    assert declared > 2**23
    with pytest.raises(ResourceLimit) as caught:
        load_arrays(path, ["x"], max_bytes=2**22)
    assert str(caught.value) == (f"{path}: expected an .npz of at most {2**22} bytes "
                                 f"decompressed, got members declaring {declared}")
    assert load_arrays(path, ["x"], max_bytes=declared)["x"].shape == (2**21,)


def patch_member_size(path: Path, size: int) -> None:
    """Make the zip's (only) member declare `size` decompressed bytes, in the local and
    central headers, whatever its data holds."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at:at + 4] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def test_an_npz_member_whose_zip_header_lies_inflates_no_further_than_it_says(tmp_path):
    path = tmp_path / "liar.npz"
    np.savez_compressed(path, x=np.zeros(2**18, np.float32))  # 1 MiB, deflated
    patch_member_size(path, 200)  # the zip says 200 bytes: zipfile stops there
    with pytest.raises(OnnxtwinError) as caught:
        load_arrays(path, ["x"])
    assert str(caught.value) == (f"{path}: expected an .npy or .npz file of numeric arrays, "
                                 f"got BadZipFile: Bad CRC-32 for file 'x.npy'")


def test_an_npz_member_that_holds_less_than_its_array_declares_is_refused(tmp_path):
    member = tmp_path / "x.npy"
    held = npy_header_only(member, (2**18,), data=b"\0" * 72)
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(member, "x.npy")
    with pytest.raises(OnnxtwinError) as caught:
        load_arrays(path, ["x"])
    assert str(caught.value) == (f"{path}: x.npy: expected a file that holds the {2**20} bytes "
                                 f"its header declares (float32[{2**18}]), got {held}")


def test_an_npz_declaring_more_than_the_default_bound_is_exit_2(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    path = tmp_path / "x.npz"
    np.savez_compressed(path, x=np.zeros((1, 4), np.float32))
    patch_member_size(path, 3 * 2**30)
    result = onnxtwin("run", str(model), "-i", str(path), "-o", str(tmp_path / "y.npz"),
                      timeout=120)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: {path}: expected an .npz of at most {2**31} bytes decompressed, got members "
        f"declaring {3 * 2**30}"]
    assert MAX_ARRAY_BYTES == 2**31


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
     "expected an array without Python objects (only pickle loads those), got dtype object"),
    (lambda p: np.save(p, np.zeros(2, [("a", "<f4"), ("b", "O")]), allow_pickle=True),
     "expected an array without Python objects (only pickle loads those), got dtype "
     "[('a', '<f4'), ('b', 'O')]"),
    (lambda p: p.write_bytes(b"\x80\x04K\x01."),  # a pickle
     r"expected an .npy or .npz file of numeric arrays, got a file that starts with "
     r"b'\x80\x04K\x01.'"),
])
def test_pickled_npy_files_are_refused(tmp_path, write, message):
    path = tmp_path / "x.npy"
    write(path)
    with pytest.raises(OnnxtwinError) as caught:
        load_arrays(path, ["x"])
    assert str(caught.value) == f"{path}: {message}"


def npy_with_shape(path: Path, shape: object) -> None:
    """A version 1.0 .npy header with any `shape` text numpy's parser accepts, and 64 bytes."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}".ljust(117)
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.encode() +
                     b"\n" + b"\0" * 64)


def npy_bytes(array: np.ndarray, version: tuple[int, int]) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, version=version)
    return stream.getvalue()


def zip_with(path: Path, compression: int = zipfile.ZIP_STORED, encrypted: bool = False):
    """An .npz of one float32[3] member, compressed as told, flagged encrypted if told."""
    member = path.with_suffix(".npy")
    np.save(member, np.zeros(3, np.float32))
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.write(member, "x.npy")
    if encrypted:  # bit 0 of the general-purpose flags, in the local and central headers
        data = bytearray(path.read_bytes())
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            data[data.index(signature) + offset] |= 1
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: npy_with_shape(p, (-1,)), "expected a shape of sizes >= 0, got (-1,)"),
    (lambda p: npy_with_shape(p, (True, 2)), "expected a shape of sizes >= 0, got (True, 2)"),
    (lambda p: p.write_bytes(npy_bytes(np.zeros(3, np.float32), version=(3, 0))),
     "expected .npy format version 1.0 or 2.0, got 3.0"),
    (lambda p: zip_with(p, zipfile.ZIP_LZMA),
     "x.npy: expected a stored or deflated member (what numpy writes), got compression "
     "method 14"),
    (lambda p: zip_with(p, encrypted=True),
     "x.npy: expected an unencrypted member, got an encrypted one"),
])
def test_malformed_array_files_are_one_line(tmp_path, make, message):
    path = tmp_path / "x.npz"
    make(path)
    with pytest.raises(OnnxtwinError) as caught:
        load_arrays(path, ["x"])
    assert str(caught.value) == f"{path}: {message}"


def test_a_string_output_is_written_without_pickle(tmp_path):
    text = helper.make_tensor("text", TensorProto.STRING, [2], [b"ab", b"c"])
    model = relu_model(tmp_path / "m.onnx",
                       extra_outputs=[helper.make_tensor_value_info("s", TensorProto.STRING,
                                                                    [2])],
                       nodes=[helper.make_node("Constant", [], ["s"], value=text)])
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    result = onnxtwin("run", str(model), "-i", str(tmp_path / "x.npy"), "-o",
                      str(tmp_path / "y.npz"), timeout=120)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "y.npz", allow_pickle=False) as written:
        assert written["s"].dtype == np.dtype("<U2")
        assert written["s"].tolist() == ["ab", "c"]
        assert written["y"].tolist() == [[1, 1, 1, 1]]


def test_outputs_no_npy_can_hold_without_pickle_are_refused_and_any_name_is_kept(tmp_path):
    with pytest.raises(OnnxtwinError) as caught:
        save_arrays(tmp_path / "y.npz", {"m": [{"key": 1.0}]})
    assert str(caught.value) == "output 'm': expected a tensor of numbers, booleans or " \
                                "strings, got dict"
    assert not list(tmp_path.iterdir())
    save_arrays(tmp_path / "y.npz", {"file": np.ones(2), "allow_pickle": np.zeros(1)})
    with np.load(tmp_path / "y.npz", allow_pickle=False) as written:  # np.savez's own kwargs
        assert sorted(written.files) == ["allow_pickle", "file"]


# --- deploy: external data, names, bounds --------------------------------------------------

def test_deploy_copies_external_data_and_the_repository_runs(tmp_path):
    model, w = external_data_model(tmp_path / "model")
    repo = tmp_path / "repo"
    result = onnxtwin("deploy", str(model), "--out", str(repo), timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "ext", "ext/1", "ext/1/data", "ext/1/data/w.bin", "ext/1/model.onnx",
        "ext/config.pbtxt"]
    assert (repo / "ext/1/data/w.bin").read_bytes() == w.tobytes()
    x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    np.testing.assert_array_equal(Session(repo / "ext/1/model.onnx").run({"x": x})["y"], x + w)


def test_deploy_checks_the_staged_repository_loads_before_it_is_renamed(tmp_path, monkeypatch):
    model, _ = external_data_model(tmp_path / "model")
    monkeypatch.setattr(triton, "external_data", lambda path: [])  # as before the fix
    with pytest.raises(OnnxtwinError) as caught:
        write_repository(model, tmp_path / "repo", None, TritonOptions())
    message = str(caught.value)
    assert message.startswith(f"{model}: expected a Triton repository whose model onnxruntime "
                              f"loads, got: ")
    assert "w.bin" in message and "\n" not in message
    assert not list((tmp_path / "repo").iterdir())  # neither the model nor its staging


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "data/../../s.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location):
    model, _ = external_data_model(tmp_path / "model")
    proto = onnx.load(str(model), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    model.write_bytes(proto.SerializeToString())
    with pytest.raises(OnnxtwinError) as caught:
        external_data(model)
    assert str(caught.value) == (f"{model}: expected external data inside the model's folder "
                                 f"{(tmp_path / 'model').resolve()}, got location {location!r}")


@pytest.mark.parametrize(("name", "shown"), [
    ("", "''"), (".", "'.'"), ("..", "'..'"), ("a/b", "'a/b'"), ("a\x01b", r"'a\x01b'"),
    ("-a", "'-a'"), ("a" * 65, repr("a" * 65)),
])
def test_deploy_names_are_held_to_a_safe_alphabet(tmp_path, name, shown):
    with pytest.raises(OnnxtwinError) as caught:
        write_repository(tmp_path / "never-read.onnx", tmp_path / "repo", name, TritonOptions())
    assert str(caught.value) == f"name: expected {NAME_RULE}, got {shown}"
    assert not (tmp_path / "repo").exists()


def test_an_unusable_default_name_is_refused_where_it_is_derived(tmp_path, monkeypatch,
                                                                 capsys):
    model = relu_model(tmp_path / "my model!.onnx")
    code, _, err = in_process(monkeypatch, capsys, "deploy", str(model), "--out",
                              str(tmp_path / "repo"))
    assert code == 2
    assert error_lines(err) == [f"error: my model!.onnx: the model name (choose one with "
                                f"--name): expected {NAME_RULE}, got 'my model!'"]
    code, _, err = in_process(monkeypatch, capsys, "deploy", str(model), "--out",
                              str(tmp_path / "repo"), "--name", "")
    assert (code, error_lines(err)) == (2, [f"error: name: expected {NAME_RULE}, got ''"])
    assert not (tmp_path / "repo").exists()


def test_deploy_max_batch_beyond_int32_is_one_line_before_anything_is_written(tmp_path):
    model = relu_model(tmp_path / "m.onnx")
    result = onnxtwin("deploy", str(model), "--out", str(tmp_path / "repo"), "--max-batch",
                      "99999999999", timeout=120)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: max_batch: expected an integer from 0 to {2**31 - 1}, got 99999999999"]
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(("field", "value", "low", "high"), [
    ("max_batch", -1, 0, 2**31 - 1), ("max_batch", 2**31, 0, 2**31 - 1),
    ("instances", 0, 1, 1024), ("instances", 10**6, 1, 1024),
    ("max_delay_us", -1, 0, 60_000_000), ("max_delay_us", 2**63, 0, 60_000_000),
    ("version", 0, 1, 2**31 - 1), ("max_batch", 8.5, 0, 2**31 - 1),
])
def test_triton_options_are_bounded_when_made(field, value, low, high):
    with pytest.raises(OnnxtwinError) as caught:
        TritonOptions(**{field: value})
    assert str(caught.value) == f"{field}: expected an integer from {low} to {high}, " \
                                f"got {value!r}"


# --- the command line: numbers, OS errors, verbatim text, files that are not files ---------

@pytest.mark.parametrize(("args", "line"), [
    (["--max-request-mb", "nan"], "max_request_mb: expected a number from 0.0009765625 to "
                                  "1024, got nan"),
    (["--max-request-mb", "inf"], "max_request_mb: expected a number <= 1024, got inf"),
    (["--max-request-mb", "-1"], "max_request_mb: expected a number >= 0.0009765625, got -1.0"),
    (["--max-request-mb", "1e30"], "max_request_mb: expected a number <= 1024, got 1e+30"),
    (["--max-delay-ms", "nan"], "max_delay_ms: expected a number from 0 to 60000, got nan"),
    (["--max-batch", "99999999999"], "max_batch: expected a number <= 65536, got 99999999999"),
    (["--max-queue", "0"], "max_queue: expected a number >= 1, got 0"),
])
def test_serve_numbers_are_bounded_before_any_model_loads(tmp_path, monkeypatch, capsys, args,
                                                          line):
    # the model does not exist: the options are refused before it would be opened
    code, _, err = in_process(monkeypatch, capsys, "serve", str(tmp_path / "none.onnx"), *args)
    assert (code, error_lines(err)) == (2, [f"error: {line}"])


def test_a_full_disk_names_the_file_being_written_and_leaves_nothing(tmp_path, monkeypatch,
                                                                     capsys):
    model = relu_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np.lib.format, "write_array", full)
    out = tmp_path / "out" / "y.npz"
    code, _, err = in_process(monkeypatch, capsys, "run", str(model), "-i",
                              str(tmp_path / "x.npy"), "-o", str(out))
    assert code == 2
    assert error_lines(err) == [f"error: {out}: expected a path onnxtwin can read or write, "
                                f"got No space left on device"]
    assert not list((tmp_path / "out").iterdir())


def test_an_os_error_without_a_path_never_prints_none(tmp_path, monkeypatch, capsys):
    model = relu_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))

    def lost(self, inputs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Session, "run", lost)
    code, _, err = in_process(monkeypatch, capsys, "run", str(model), "-i",
                              str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz"))
    assert (code, error_lines(err)) == (
        2, ["error: expected the file system to read and write, got Input/output error"])


def test_data_too_large_for_memory_is_one_line(tmp_path, monkeypatch, capsys):
    model = relu_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))

    def too_large(self, inputs):  # what numpy raises for a float32 copy of a large dataset
        raise MemoryError("Unable to allocate 7.89 GiB for an array with shape "
                          "(2700000, 1, 28, 28) and data type float32")

    monkeypatch.setattr(Session, "run", too_large)
    code, _, err = in_process(monkeypatch, capsys, "run", str(model), "-i",
                              str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz"))
    assert (code, error_lines(err)) == (2, [
        "error: expected data that fits in memory, got: Unable to allocate 7.89 GiB for an "
        "array with shape (2700000, 1, 28, 28) and data type float32"])
    assert not (tmp_path / "y.npz").exists()


def test_user_text_is_printed_verbatim_without_emoji_or_markup(tmp_path, monkeypatch, capsys):
    model = relu_model(tmp_path / "m:thumbs_up:[bold]x.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    out = tmp_path / ":-1:[red]" / "y.npz"
    code, stdout, err = in_process(monkeypatch, capsys, "run", str(model), "-i",
                                   str(tmp_path / "x.npy"), "-o", str(out))
    assert code == 0, err
    assert stdout == (f"ran m:thumbs_up:[bold]x.onnx on CPUExecutionProvider: wrote "
                      f"{out} (y float32[1, 4])\n")
    code, _, err = in_process(monkeypatch, capsys, "run", str(tmp_path / "a\nb:-1:.onnx"),
                              "-i", "x.npy", "-o", "y.npz")
    assert (code, error_lines(err)) == (2, [
        f"error: {tmp_path}/a\\nb:-1:.onnx: expected an ONNX model file, got a path that does "
        f"not exist"])


def test_the_serve_announce_line_is_verbatim(tmp_path, monkeypatch, capsys):
    from onnxtwin.runtime.serve import server

    model = relu_model(tmp_path / "m.onnx")  # model names are held to a safe alphabet
    monkeypatch.setattr(server, "serve", lambda sessions, host, port, options, announce:
                        announce(f"serving {', '.join(sessions)} at {host}"))
    code, stdout, err = in_process(monkeypatch, capsys, "serve", str(model), "--host",
                                   "127.0.0.1:-1:[red]")
    assert (code, stdout) == (0, "serving m at 127.0.0.1:-1:[red]\n"), err


def test_result_tables_print_titles_and_cells_verbatim(capsys):
    from onnxtwin.conformance.cli import core

    core.console.print(core.result_table("from [b]x[/b] :smile:", ["model", "verdict"],
                                         [["m[/]:-1:", "pass"]]))
    out = capsys.readouterr().out
    assert "from [b]x[/b] :smile:" in out and "m[/]:-1:" in out and "pass" in out


@pytest.mark.parametrize("role", ["model", "input"])
def test_a_fifo_is_named_as_one_and_never_read(tmp_path, role):
    model = relu_model(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    paths = {"model": tmp_path / "m.onnx", "input": tmp_path / "x.npy", role: fifo}
    result = onnxtwin("run", str(paths["model"]), "-i", str(paths["input"]), "-o",
                      str(tmp_path / "y.npz"), timeout=60)
    what = {"model": "an ONNX model file", "input": "an .npy or .npz file"}[role]
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: {fifo}: expected {what}, got a FIFO (named "
                                          f"pipe)"]
    assert model.exists() and not (tmp_path / "y.npz").exists()


@pytest.mark.parametrize(("make", "got"), [
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: p.symlink_to(p.parent / "nowhere"), "a symbolic link to nothing"),
    (lambda p: p.write_bytes(b""), "an empty file"),
    (lambda p: p.symlink_to("/dev/zero"), "a character device"),
])
def test_existing_file_says_what_a_path_is(tmp_path, make, got):
    make(tmp_path / "f")
    with pytest.raises(OnnxtwinError) as caught:
        existing_file(tmp_path / "f", "a thing")
    assert str(caught.value) == f"{tmp_path / 'f'}: expected a thing, got {got}"


def test_run_may_write_its_outputs_over_its_input(tmp_path, monkeypatch, capsys):
    model = relu_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "io.npz", x=np.array([[-1, 1, -2, 2]], np.float32))
    code, _, err = in_process(monkeypatch, capsys, "run", str(model), "-i",
                              str(tmp_path / "io.npz"), "-o", str(tmp_path / "io.npz"))
    assert code == 0, err
    with np.load(tmp_path / "io.npz") as written:
        assert written.files == ["y"] and written["y"].tolist() == [[0, 1, 0, 2]]
