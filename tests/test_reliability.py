"""Interrupted writes: a process killed mid-export leaves the previous file and no temporary."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxtwin.runtime.files import atomic_path

CLI = [sys.executable, "-c", "from onnxtwin.conformance.cli import main; main()"]
PREVIOUS = b"the previous export"


def export_until_a_temporary_exists(out: Path) -> tuple[subprocess.Popen, list[Path]]:
    """Start a Keras transformer export into `out`; return once its temporary file exists
    (the model is written and the gate is running on it)."""
    (out / "transformer.keras.onnx").write_bytes(PREVIOUS)
    process = subprocess.Popen([*CLI, "export", "-m", "transformer", "--framework", "keras",
                                "--no-cache", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (temporaries := list(out.glob(".tmp-*"))):
        assert process.poll() is None, "the export ended before writing its temporary file"
        assert time.monotonic() < deadline, "no temporary file within 180 s"
        time.sleep(0.01)
    return process, temporaries


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_export_leaves_the_previous_file_intact(tmp_path, how):
    process, temporaries = export_until_a_temporary_exists(tmp_path)
    process.send_signal(getattr(signal, how))
    assert process.wait(timeout=60) in (143, -signal.SIGKILL)
    assert (tmp_path / "transformer.keras.onnx").read_bytes() == PREVIOUS
    assert not (tmp_path / "export.json").exists()
    if how == "SIGTERM":  # exits through the finally blocks
        assert process.returncode == 143 and not list(tmp_path.glob(".tmp-*"))
    else:  # nothing runs after SIGKILL: the next write into the folder removes the leftover
        assert list(tmp_path.glob(".tmp-*")) == temporaries
        with atomic_path(tmp_path / "other.txt") as tmp:
            tmp.write_text("next")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt",
                                                               "transformer.keras.onnx"]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    with atomic_path(tmp_path / "a.txt") as first:
        first.write_text("being written")
        with atomic_path(tmp_path / "b.txt") as second:
            second.write_text("b")
        assert first.read_text() == "being written"  # same (live) pid: not stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
