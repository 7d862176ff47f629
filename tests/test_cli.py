"""The `onnxtwin` command as a user runs it: exit codes, files, one-line errors, fast --help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest
from cli_runner import onnxtwin
from rich.console import Console
from typer.testing import CliRunner

from onnxtwin.conformance.cli import app
from onnxtwin.conformance.render import ACCURACY_COLUMNS
from onnxtwin.runtime.files import TEMPORARY_PREFIX

TENSORFLOW_NOISE = ("absl::InitializeLog()", "oneDNN custom operations")

# Each command, and options a user looks for in its help.
COMMAND_OPTIONS = {
    "": ["--version", "--help", "models", "build", "export", "check", "train", "bench",
         "providers", "run", "serve", "deploy"],
    "models": ["--spec"],
    "build": ["--model", "--spec", "--seed", "--source", "--out"],
    "export": ["--model", "--framework", "--opset", "--cache", "--optimized", "--out",
               "--precision", "--trained", "--calibration", "--gate"],
    "check": ["--model", "--provider", "--opset", "--json", "--tolerance", "--trained",
              "--precision", "--calibration", "--gate", "--ray"],
    "train": ["--model", "--framework", "--epochs", "--data", "--limit", "--provider"],
    "bench": ["--batch", "--seq", "--provider", "--rounds", "--calls", "--compile", "--startup",
              "--precision"],
    "providers": ["--help"],
    "run": ["--input", "--output", "--provider", "--strict", "--check-finite"],
    "serve": ["--provider", "--host", "--port", "--max-batch", "--max-delay-ms", "--max-queue",
              "--max-request-mb", "--settings", "--ray", "--replicas", "--replica-cpus"],
    "deploy": ["--out", "--to", "--name", "--max-batch", "--max-delay-us", "--instances",
               "--settings", "--replicas", "--max-replicas", "--replicas-per-node",
               "--replica-cpus", "--max-ongoing", "--host", "--port", "--max-request-mb",
               "--max-run-mb"],
}


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", list(COMMAND_OPTIONS))
def test_help_fits_the_terminal_and_names_the_options(command, width):
    args = [*command.split(), "--help"]
    result = CliRunner().invoke(app, args, prog_name="onnxtwin", env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, "\n".join(too_long)
    assert "…" not in result.stdout  # no word cut to fit a column
    assert f"Usage: onnxtwin {command}".rstrip() in result.stdout
    words = set(re.findall(r"--[a-z-]+|\b[a-z]+\b", result.stdout))
    assert [o for o in COMMAND_OPTIONS[command] if o not in words] == []


def test_help_paragraphs_are_rewrapped_not_broken_mid_sentence():
    """A hard-wrapped docstring paragraph is filled to the terminal's width, not shown
    with the source's line breaks (which leave one or two words on a line at 80)."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "80"})
    lines = [line.strip() for line in result.stdout.splitlines()]
    start = lines.index(next(x for x in lines if x.startswith("Per model:")))
    paragraph = lines[start:lines.index("", start)]
    assert all(len(line) > 60 for line in paragraph[:-1]), paragraph
    assert " ".join(paragraph).startswith("Per model: OUT/NAME/ (spec.json, torch.safetensors, "
                                          "keras.weights.h5, training.json, tokenizer.json")


def test_version_prints_the_installed_version():
    result = onnxtwin("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"onnxtwin {version('onnxtwin')}\n"


@pytest.mark.parametrize(("width", "models", "turned"), [
    (200, ("transformer-gelu", "bilstm"), False),
    (80, ("transformer-gelu", "bilstm"), True),
    (80, ("transformer-gelu", "transformer", "bilstm", "textcnn", "gru", "lstm", "cnn"), True),
])
def test_wide_result_tables_turn_on_a_narrow_console(monkeypatch, width, models, turned):
    """The accuracy table (11 columns) at 80 columns: one line per column, models side by
    side in as many tables as needed; every name and value whole."""
    from onnxtwin.conformance.cli import core

    rows = [[name, "bbc-news", "445", "97.08% (all 6)", "100.00%", "3.58e-06", "41.0", "0", "0",
             "0 (1.20e-02)", "pass"] for name in models]
    console = Console(width=width, record=True, color_system=None)
    monkeypatch.setattr(core, "console", console)
    console.print(core.result_table("accuracy", ACCURACY_COLUMNS, rows))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in "".join(lines)
    assert all(sum(f" {m} " in line for line in lines) == 1 for m in models)
    labelled = [line for line in lines if line.strip("│┃ ").startswith("unexplained")]
    if not turned:
        assert not labelled and any("unexplained" in line and "model" in line for line in lines)
        return
    # one "unexplained" line per table, holding one value ("0") per model of that table
    assert sum(line.count(" 0 ") for line in labelled) == len(models)
    assert (len(labelled) == 1) == (len(models) == 2)  # two fit side by side, seven do not


def test_filtered_stderr_drops_only_the_named_lines(capfd):
    from onnxtwin.conformance.cli.core import filtered_stderr

    with filtered_stderr((b"noise",)):
        os.write(2, b"some noise from C\nkept line\n")
    assert capfd.readouterr().err == "kept line\n"


@pytest.mark.parametrize("module", ["onnxtwin.conformance.cli", "onnxtwin.runtime",
                                    "onnxtwin.runtime.serve.server",
                                    "onnxtwin.runtime.serve.triton",
                                    "onnxtwin.runtime.serve.ray_app",
                                    "onnxtwin.runtime.serve.ray_config"])
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
    assert not list(tmp_path.glob(f"**/{TEMPORARY_PREFIX}*"))
    assert not [n for n in TENSORFLOW_NOISE if n in result.stderr], result.stderr


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
        [".onnxtwin.lock", "cnn.keras.onnx", "cnn.torch.onnx", "export.json"]
    summary = json.loads((tmp_path / "export.json").read_text())["models"][0]
    assert [f["framework"] for f in summary["files"]] == ["torch", "keras"]
    assert all(max(c["max_abs"] for c in f["gate"]) <= 1e-5 for f in summary["files"])
    assert summary["files"][0]["ops"]["Conv"] == 3
    assert not [n for n in TENSORFLOW_NOISE if n in result.stderr], result.stderr


def test_export_refuses_an_opset_before_any_work(tmp_path):
    result = onnxtwin("export", "--framework", "keras", "--opset", "20", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "error: opset for keras: expected one of [17, 18], got 20" in result.stderr
    assert not list(tmp_path.iterdir())
