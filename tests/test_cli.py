"""The `onnxtwin` command as a user runs it: exit codes, files, one-line errors, fast --help."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from cli_runner import onnxtwin


@pytest.mark.parametrize("module", ["onnxtwin.conformance.cli", "onnxtwin.runtime"])
def test_cli_and_runtime_import_neither_torch_nor_tensorflow(module):
    code = textwrap.dedent(f"""
        import sys, {module}
        heavy = sorted(m for m in ("torch", "tensorflow", "keras") if m in sys.modules)
        print(heavy)
    """)
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_help_lists_the_commands():
    result = onnxtwin("--help")
    assert result.returncode == 0
    for command in ("build", "models"):
        assert command in result.stdout


def test_build_writes_weights_and_parity(tmp_path):
    result = onnxtwin("build", "--model", "cnn", "--model", "gru", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "pass" in result.stdout and "FAIL" not in result.stdout
    for name in ("cnn", "gru"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == \
            ["keras.weights.h5", "spec.json", "torch.safetensors"]
    report = json.loads((tmp_path / "parity.json").read_text())
    assert [m["model"] for m in report["models"]] == ["cnn", "gru"]
    gru = report["models"][1]
    assert len(gru["cases"]) == 6
    assert max(c["torch_vs_keras"]["max_abs"] for c in gru["cases"]) <= 1e-5
    assert not list(tmp_path.glob("**/.tmp-*"))


def test_build_from_keras_with_a_toml_variant(tmp_path):
    spec = tmp_path / "m.toml"
    spec.write_text('[models.mini]\nfamily = "rnn"\nhidden = [8]\nvocab = 30\nembed_dim = 4\n')
    result = onnxtwin("build", "--spec", str(spec), "--model", "mini", "--source", "keras",
                      "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "mini" / "spec.json").read_text())[
        "hyperparameters"]["hidden"] == [8]


@pytest.mark.parametrize(("args", "message"), [
    (["build", "--model", "resnet"], "error: unknown model 'resnet': expected one of ['cnn', "),
    (["models", "--spec", "missing.toml"],
     "error: spec file: expected a readable TOML file, got missing.toml (No such file"),
])
def test_user_errors_are_one_line_with_exit_2(tmp_path, args, message):
    result = onnxtwin(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_option_value_is_a_usage_error():
    result = onnxtwin("build", "--source", "jax")
    assert result.returncode == 2 and "jax" in result.stderr


def test_export_writes_files_and_summary(tmp_path):
    result = onnxtwin("export", "--model", "cnn", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["cnn.keras.onnx", "cnn.torch.onnx", "export.json"]
    summary = json.loads((tmp_path / "export.json").read_text())["models"][0]
    assert [f["framework"] for f in summary["files"]] == ["torch", "keras"]
    assert all(max(c["max_abs"] for c in f["gate"]) <= 1e-5 for f in summary["files"])
    assert summary["files"][0]["ops"]["Conv"] == 3


def test_export_refuses_an_opset_before_any_work(tmp_path):
    result = onnxtwin("export", "--framework", "keras", "--opset", "20", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "error: opset for keras: expected one of [17, 18], got 20" in result.stderr
    assert not list(tmp_path.iterdir())
