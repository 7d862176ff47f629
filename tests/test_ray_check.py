"""`onnxtwin check --ray ADDRESS`: the models run as Ray tasks on a real two-node cluster,
and OUT holds what a local run writes; a bad address or a missing ray is one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from onnxtwin.conformance.report import without_timings
from tests.cli_runner import CLI, onnxtwin
from tests.ray_cluster import free_port, local_cluster
from tests.test_user_pairs import MODELS, PAIRS

BUILTINS = ("cnn", "gru", "textcnn")
SPEC = "[models.user-text]\n" + textwrap.dedent(PAIRS["user-text"])
"""One of test_user_pairs' torch/Keras pairs; its module is that file's MODELS."""
DIFFERS = {"command"}
"""What report.json may hold differently, besides its timings (report.TIMINGS): argv."""


def _onnx_content(path: Path) -> tuple:
    """What a file computes and says: metadata, ops, initializer values. tf2onnx names
    some tensors by a counter of its process (new_shape__46 or __47), and orders nodes and
    initializers differently from one process to the next: names and order are left out."""
    model = onnx.load(str(path))
    return ([(p.key, p.value) for p in model.metadata_props],
            sorted(n.op_type for n in model.graph.node),
            sorted(numpy_helper.to_array(t).tobytes() for t in model.graph.initializer))


@pytest.mark.slow
def test_check_on_a_two_node_cluster_writes_the_local_run_s_report_and_files(tmp_path):
    (tmp_path / "pairs.py").write_text(MODELS)
    (tmp_path / "spec.toml").write_text(SPEC)
    models = [a for name in (*BUILTINS, "user-text") for a in ("-m", name)]
    args = ["check", *models, "--spec", "spec.toml"]  # relative: a node resolves nothing
    with local_cluster(worker_nodes=1) as cluster:
        on_ray = onnxtwin(*args, "--ray", cluster.address, "--out", "ray", cwd=tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    local = onnxtwin(*args, "--no-cache", "--out", "local", cwd=tmp_path)  # exported anew
    assert local.returncode == 0, local.stderr[-3000:]

    placed = re.search(r"ran on the Ray cluster at \S+: (.*)", on_ray.stdout)[1]
    nodes = dict(re.findall(r"(\S+) on node (\w+) \(", placed))
    assert sorted(nodes) == sorted((*BUILTINS, "user-text"))
    assert len(set(nodes.values())) == 2, placed  # 4 tasks of 1 CPU on 2 nodes of 2 CPUs
    for name in nodes:  # each task's last step, streamed back to the progress bars
        assert f"{name}: timing 4 paths" in on_ray.stdout

    reports = [json.loads((tmp_path / out / "report.json").read_text())
               for out in ("ray", "local")]
    ray_report, local_report = ({k: v for k, v in without_timings(r).items() if k not in DIFFERS}
                                for r in reports)
    assert ray_report == local_report
    assert [m["name"] for m in reports[0]["models"]] == [*BUILTINS, "user-text"]

    files = {out: sorted(p.name for p in (tmp_path / out).iterdir()) for out in ("ray", "local")}
    assert files["ray"] == files["local"]
    assert len([f for f in files["ray"] if f.endswith(".onnx")]) == 8
    for name in (f for f in files["ray"] if f.endswith(".onnx")):
        ray_file, local_file = tmp_path / "ray" / name, tmp_path / "local" / name
        assert _onnx_content(ray_file) == _onnx_content(local_file), name
        if ".torch." in name:
            assert ray_file.read_bytes() == local_file.read_bytes(), name


@pytest.mark.parametrize(("address", "said"), [
    ("127.0.0.1:{port}", "expected a Ray cluster listening at 127.0.0.1:{port}, got "
                         "Connection refused"),
    ("a-head-without-port", "expected HOST:PORT of a Ray head (or auto), got "
                            "'a-head-without-port'"),
    ("ray://127.0.0.1:10001", "expected HOST:PORT of a Ray head (or auto), got "
                              "'ray://127.0.0.1:10001' (Ray Client is not supported)"),
])
def test_a_bad_address_is_one_line_and_writes_nothing(tmp_path, address, said):
    port = free_port()  # nothing listens there once it is returned
    result = onnxtwin("check", "-m", "cnn", "--ray", address.format(port=port),
                      "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: --ray: {said.format(port=port)}")
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["check", "-m", "cnn", "--ray", "127.0.0.1:6379", "--out", "{out}"],
    ["serve", "{model}", "--ray", "127.0.0.1:6379"],
    ["deploy", "{model}", "--to", "ray", "--out", "{out}"],
])
def test_without_ray_installed_ray_is_one_line_saying_what_to_install(tmp_path, args):
    hidden = "import sys; sys.modules['ray'] = None; " + CLI[-1]  # `import ray` then fails
    option = "--to ray" if "--to" in args else "--ray"
    args = [a.format(out=tmp_path / "out", model=tmp_path / "model.onnx") for a in args]
    result = subprocess.run([sys.executable, "-c", hidden, *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {option}: expected ray installed (pip install "
                                    "'onnxtwin[ray]'), got ")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
